// RMSNorm on the GPU: the CUDA twin of kernels/rmsnorm.h (same formulas).
//
// x, w, y, dy, dx share one dtype, f32 or bf16; rstd and dw are always f32.
// Arithmetic is fp32 in registers. Loads and stores are 16 bytes wide when
// the row width allows it. All work is enqueued on `stream`; nothing is
// allocated: the backward takes a caller-owned f32 workspace of
// RmsNormBackwardWorkspaceElems(rows, d) elements for its per-block partial
// dw sums, which are then added to dw in block order (deterministic).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/tensor.h"

namespace latam::cuda {

// y and rstd are overwritten.
void RmsNormForward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd,
                    cudaStream_t stream);

int64_t RmsNormBackwardWorkspaceElems(int64_t rows, int64_t d);

// dx is overwritten (accumulate_dx=false) or added to; dw is accumulated.
void RmsNormBackward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dx,
                     bool accumulate_dx, const Tensor& dw, const Tensor& workspace, cudaStream_t stream);

}  // namespace latam::cuda
