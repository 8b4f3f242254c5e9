// CUBLAS_CHECK: fatal check for cuBLAS and cuBLASLt calls (both return
// cublasStatus_t), the twin of CUDA_CHECK in core/cuda_check.h. On
// failure it prints the expression, the status name and description,
// file:line and the process's rank, then aborts (see core/check.h).
//
// The name and description come from cublasLtGetStatusName/String, which
// live in libcublasLt and name every cublasStatus_t (cublasGetStatusName/
// String would give the same text but need libcublas as well).
#pragma once

#include <cublasLt.h>

#include <string>

#include "core/check.h"

#define CUBLAS_CHECK(expr)                                                                  \
  do {                                                                                      \
    const cublasStatus_t latam_cublas_status_ = (expr);                                     \
    if (latam_cublas_status_ != CUBLAS_STATUS_SUCCESS) [[unlikely]] {                       \
      ::latam::FatalError(#expr, __FILE__, __LINE__,                                        \
                          std::string(cublasLtGetStatusName(latam_cublas_status_)) + ": " + \
                              cublasLtGetStatusString(latam_cublas_status_));               \
    }                                                                                       \
  } while (0)
