// AdamW on the GPU: the CUDA twin of kernels/adamw.h (same formulas).
//
// param (the fp32 master weights), grad, exp_avg and exp_avg_sq are f32
// device tensors of one shape, updated in place on `stream`. When
// param_bf16 is non-empty (data != nullptr) the updated weights are also
// written to it rounded to bf16 (the copy that bf16 training computes with).
// Accesses are 16-byte vectorised when every pointer is 16-byte aligned.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/adamw.h"
#include "core/tensor.h"

namespace latam::cuda {

void AdamWUpdate(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWHyper& hyper, const Tensor& param_bf16, cudaStream_t stream);

}  // namespace latam::cuda
