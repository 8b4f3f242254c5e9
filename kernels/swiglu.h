// SwiGLU activation of the Llama MLP.
//
// gu[M, 2F] is the output of the fused gate/up projection: columns [0, F)
// are gate, [F, 2F) are up.
//   out = silu(gate) * up,                 silu(g) = g * sigmoid(g)
// Backward:
//   dgate = dout * up * silu'(gate),       silu'(g) = s (1 + g (1 - s)), s = sigmoid(g)
//   dup   = dout * silu(gate)
#pragma once

#include "core/tensor.h"

namespace latam::cpu {

// out[M,F] is overwritten.
void SwigluForward(const Tensor& gu, const Tensor& out);
// dgu[M,2F] is overwritten.
void SwigluBackward(const Tensor& dout, const Tensor& gu, const Tensor& dgu);

}  // namespace latam::cpu
