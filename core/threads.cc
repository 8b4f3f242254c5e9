#include "core/threads.h"

#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace latam {

int AvailableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? static_cast<int>(online) : 1;
}

int ConfigureCpuThreads(int local_ranks) {
  if (const char* env = std::getenv("OMP_NUM_THREADS"); env != nullptr && std::atoi(env) > 0) {
    return omp_get_max_threads();
  }
  const int usable = AvailableCpus();
  const long online = sysconf(_SC_NPROCESSORS_ONLN);
  // A mask narrower than the machine means the launcher already gave this
  // rank its share of cores; otherwise split the node's cores between ranks.
  const bool pinned = online > 0 && usable < online;
  const int threads = pinned ? usable : std::max(1, usable / std::max(1, local_ranks));
  omp_set_num_threads(threads);
  return threads;
}

}  // namespace latam
