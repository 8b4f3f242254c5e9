// CUDA_CHECK / CUBLAS_CHECK: fatal checks for CUDA runtime and cuBLAS calls.
// On failure they print the expression, the library's error string,
// file:line and the process's rank, then abort (see core/check.h).
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "core/check.h"

#define CUDA_CHECK(expr)                                                                                \
  do {                                                                                                  \
    const cudaError_t latam_cuda_err_ = (expr);                                                         \
    if (latam_cuda_err_ != cudaSuccess) [[unlikely]] {                                                  \
      ::latam::FatalError(                                                                              \
          #expr, __FILE__, __LINE__,                                                                    \
          std::string(cudaGetErrorName(latam_cuda_err_)) + ": " + cudaGetErrorString(latam_cuda_err_)); \
    }                                                                                                   \
  } while (0)

// Checks the last kernel launch (configuration errors surface here).
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
