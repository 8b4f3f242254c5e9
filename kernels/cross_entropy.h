// Fused softmax + cross-entropy over the vocabulary.
//
// For each row m of logits[M, V] with target t = targets[m]:
//   loss[m] = log(sum_v exp(logits[m, v])) - logits[m, t]
// and, when compute_grad, logits is overwritten IN PLACE by the gradient of
// grad_scale * sum_m loss[m]:
//   logits[m, v] <- grad_scale * (softmax(logits[m])[v] - [v == t])
// so no second [M, V] buffer is ever needed. Rows whose target is negative
// are ignored: loss 0, gradient 0.
#pragma once

#include "kernels/tensor.h"

namespace latam::cpu {

// losses[M] is overwritten. Aborts if a target is >= V.
void CrossEntropyForwardBackward(const Tensor& logits, const Tensor& targets, const Tensor& losses, float grad_scale,
                                 bool compute_grad);

}  // namespace latam::cpu
