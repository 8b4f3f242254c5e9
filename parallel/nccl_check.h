// NCCL_CHECK: fatal check for NCCL calls. On failure it prints the
// expression, NCCL's error string (and NCCL's last detailed message when it
// has one), file:line and the process's rank, then aborts (core/check.h).
#pragma once

#include <nccl.h>

#include <string>

#include "core/check.h"

namespace latam {

// "unhandled cuda error (run with NCCL_DEBUG=INFO for details) (detail)".
inline std::string NcclErrorMessage(ncclResult_t result) {
  std::string message = ncclGetErrorString(result);
  const char* detail = ncclGetLastError(nullptr);
  if (detail != nullptr && detail[0] != '\0') message += std::string(" (") + detail + ")";
  return message;
}

}  // namespace latam

#define NCCL_CHECK(expr)                                                                          \
  do {                                                                                            \
    const ncclResult_t latam_nccl_err_ = (expr);                                                  \
    if (latam_nccl_err_ != ncclSuccess) [[unlikely]] {                                            \
      ::latam::FatalError(#expr, __FILE__, __LINE__, ::latam::NcclErrorMessage(latam_nccl_err_)); \
    }                                                                                             \
  } while (0)
