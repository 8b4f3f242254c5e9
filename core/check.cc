#include "core/check.h"

#include <cstdio>
#include <cstdlib>

namespace latam {

std::string ProcessRankLabel() {
  for (const char* var : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}) {
    if (const char* v = std::getenv(var)) return v;
  }
  return "?";
}

void FatalError(const char* expr, const char* file, int line, const std::string& message) {
  std::fprintf(stderr, "[rank %s] FATAL %s:%d: check failed: %s%s%s\n", ProcessRankLabel().c_str(), file, line, expr,
               message.empty() ? "" : ": ", message.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace latam
