// CPU thread sizing.
//
// Every rank on a node shares the node's cores: a rank's OpenMP team (used by
// our kernels and by the oneDNN GEMM) is sized to cores / ranks-on-this-node,
// unless the launcher already pinned the rank to a subset of cores (then that
// subset is used) or the user set OMP_NUM_THREADS (then it is respected).
#pragma once

namespace latam {

// CPUs in this process's affinity mask (at least 1).
int AvailableCpus();

// Sets the OpenMP thread count for this process as described above and
// returns it. `local_ranks` is the number of ranks sharing this node.
int ConfigureCpuThreads(int local_ranks);

}  // namespace latam
