// GEMM on the CPU (oneDNN's dnnl_sgemm) and the linear-layer helpers built on
// it.
//
// Gemm: C[M,N] = alpha * op(A) op(B) + beta * C, fp32, row-major, where op(X)
// is X or X^T. A is [M,K] ([K,M] when trans_a), B is [K,N] ([N,K] when
// trans_b). beta = 0 overwrites C (its old contents are ignored, NaNs
// included); beta = 1 accumulates. Runs on the calling thread's OpenMP team.
//
// Linear layers keep weights in the Hugging Face layout W[out, in]:
//   forward          y  = x W^T             [M,out] = [M,in] [in,out]
//   input gradient   dx = dy W              [M,in]  = [M,out] [out,in]
//   weight gradient  dW += dy^T x           [out,in] = [out,M] [M,in]
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace latam::cpu {

void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// y[M,out] (= or +=) x[M,in] W[out,in]^T. accumulate=true adds into y (used
// for residual connections).
void LinearForward(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate);
// dx[M,in] (= or +=) dy[M,out] W[out,in].
void LinearBackwardInput(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate);
// dW[out,in] += dy[M,out]^T x[M,in]. Always accumulates (gradient accumulation).
void LinearBackwardWeight(const Tensor& dy, const Tensor& x, const Tensor& dw);

}  // namespace latam::cpu
