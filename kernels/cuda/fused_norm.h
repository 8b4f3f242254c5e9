// Residual add fused with the RMSNorm that follows it, on the GPU: one pass
// over the rows does what cpu::Add followed by cpu::RmsNormForward does
// (kernels/elementwise.h, kernels/rmsnorm.h), and the backward folds the
// residual-path gradient into the RMSNorm input gradient.
//
// Forward, per row m of x[M,D] and r[M,D]:
//   h[m,j]  = x[m,j] + r[m,j]                        (the new residual stream)
//   rstd[m] = 1 / sqrt(mean_j h[m,j]^2 + eps)
//   y[m,j]  = h[m,j] * rstd[m] * w[j]
// h is rounded to the tensor dtype before it is normalised, so the result is
// the CPU's Add then RmsNorm on the stored h.
// Backward, with dy the gradient of y and dh_in the gradient that reaches h
// from the residual path (the next layer's input):
//   dh[m,j] = dh_in[m,j] + rstd[m] w[j] dy[m,j]
//                        - h[m,j] rstd[m]^3 (sum_k dy[m,k] w[k] h[m,k]) / D
//   dw[j]  += sum_m dy[m,j] h[m,j] rstd[m]
// dh is then the gradient of both x and r (h = x + r passes it through).
//
// x, r, h, w, y, dy, dh_in, dh share one dtype, f32 or bf16; rstd and dw are
// f32. Arithmetic is fp32 in registers; loads and stores are 16 bytes wide
// when D is a multiple of the pack (4 f32, 8 bf16) and the pointers are
// 16-byte aligned, scalar otherwise. Everything is enqueued on `stream`;
// nothing is allocated. The backward writes one partial dw row per block of
// rows into a caller-owned f32 workspace of
// AddRmsNormBackwardWorkspaceElems(M, D) elements and then adds the partials
// to dw in block order, so dw is bitwise reproducible.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/tensor.h"

namespace latam::cuda {

// h, y and rstd are overwritten. h may alias x or r (each element is read
// before it is written by the same thread); y must not alias x, r or h.
void AddRmsNormForward(const Tensor& x, const Tensor& r, const Tensor& w, float eps, const Tensor& h, const Tensor& y,
                       const Tensor& rstd, cudaStream_t stream);

int64_t AddRmsNormBackwardWorkspaceElems(int64_t rows, int64_t d);

// dh is overwritten with dh_in + (the RMSNorm input gradient); dh may alias
// dh_in (no other input). dw is accumulated (+=). h and rstd are the
// forward's outputs.
void AddRmsNormBackward(const Tensor& dy, const Tensor& h, const Tensor& w, const Tensor& rstd, const Tensor& dh_in,
                        const Tensor& dh, const Tensor& dw, const Tensor& workspace, cudaStream_t stream);

}  // namespace latam::cuda
