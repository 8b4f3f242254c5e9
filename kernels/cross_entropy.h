// Softmax cross-entropy over a vocabulary that may be split across
// tensor-parallel ranks (vocab-parallel, Megatron style), in three phases
// whose per-row results the caller combines across ranks:
//
//   1. LogitsRowMax:      max[m]    = max_v logits[m, v]                  (combine: max)
//   2. LogitsRowSumExp:   sumexp[m] = sum_v exp(logits[m, v] - gmax[m])   (combine: sum)
//                         tlogit[m] = logits[m, t - vocab_begin] if the target t
//                                     is in this shard, else 0          (combine: sum)
//      then lse[m] = gmax[m] + log(sumexp[m]),  loss[m] = lse[m] - tlogit[m]
//   3. SoftmaxCrossEntropyBackward overwrites the logits IN PLACE with
//      d(grad_scale * sum_m loss[m]) / dlogits:
//         grad_scale * (exp(logits[m, v] - lse[m]) - [v + vocab_begin == t])
//
// logits[M, V_local] holds vocabulary ids [vocab_begin, vocab_begin +
// V_local); rows whose target is negative are ignored (loss 0, gradient 0).
// With one rank (vocab_begin 0, no combining) this is the plain fused
// softmax + cross-entropy; the full [M, V] logits are never gathered, and no
// second [M, V] buffer is needed.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace latam::cpu {

// row_max[M] is overwritten.
void LogitsRowMax(const Tensor& logits, const Tensor& row_max);
// row_sumexp[M] and target_logit[M] are overwritten. Aborts on a target >=
// the full vocabulary size `vocab`.
void LogitsRowSumExp(const Tensor& logits, const Tensor& global_max, const Tensor& targets, int64_t vocab_begin,
                     int64_t vocab, const Tensor& row_sumexp, const Tensor& target_logit);
// logits is overwritten with its gradient.
void SoftmaxCrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin, const Tensor& lse,
                                 float grad_scale);

}  // namespace latam::cpu
