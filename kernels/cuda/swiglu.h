// SwiGLU on the GPU: the CUDA twin of kernels/swiglu.h (same formulas).
//
// gu[M, 2F] is the fused gate/up projection (gate = columns [0, F), up =
// columns [F, 2F)); out and dout are [M, F]. All share one dtype, f32 or
// bf16, and live on the device. Arithmetic is fp32 in registers; loads and
// stores are 16 bytes wide when F allows it and the pointers are 16-byte
// aligned, else scalar. All work is enqueued on `stream`; nothing is
// allocated.
//   out   = silu(gate) * up,              silu(g) = g s,  s = sigmoid(g)
//   dgate = dout * up * s (1 + g (1 - s))
//   dup   = dout * silu(gate)
#pragma once

#include <cuda_runtime_api.h>

#include "core/tensor.h"

namespace latam::cuda {

// out[M, F] is overwritten.
void SwigluForward(const Tensor& gu, const Tensor& out, cudaStream_t stream);
// dgu[M, 2F] is overwritten (both halves).
void SwigluBackward(const Tensor& dout, const Tensor& gu, const Tensor& dgu, cudaStream_t stream);

}  // namespace latam::cuda
