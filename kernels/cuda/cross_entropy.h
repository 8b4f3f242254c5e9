// Vocab-parallel softmax cross-entropy on the GPU: the CUDA twin of
// kernels/cross_entropy.h (same three phases, same formulas; the caller
// combines the per-row results across tensor-parallel ranks in between):
//
//   1. LogitsRowMax:      max[m]    = max_v logits[m, v]                  (combine: max)
//   2. LogitsRowSumExp:   sumexp[m] = sum_v exp(logits[m, v] - gmax[m])   (combine: sum)
//                         tlogit[m] = logits[m, t - vocab_begin] if the target t
//                                     is in this shard, else 0          (combine: sum)
//      then lse[m] = gmax[m] + log(sumexp[m]),  loss[m] = lse[m] - tlogit[m]
//   3. SoftmaxCrossEntropyBackward overwrites the logits IN PLACE with
//         grad_scale * (exp(logits[m, v] - lse[m]) - [v + vocab_begin == t])
//
// logits[M, V_local] (vocabulary ids [vocab_begin, vocab_begin + V_local))
// are f32 or bf16; the gradient is written in the logits' dtype. targets[M]
// are int32; rows with a negative target are ignored (target logit 0,
// gradient 0). Row statistics (max, sumexp, target logit, and the lse
// input) are f32. Arithmetic is fp32 in registers: one block per row with a
// block reduction, 16-byte loads and stores when V_local allows it; no
// [M, V] fp32 buffer is ever materialised. All work is enqueued on `stream`;
// nothing is allocated.
//
// Out-of-vocabulary targets (t >= vocab) are a device-side error reported
// through a caller-owned int32 flag `target_error[1]` rather than an abort
// (the CPU twin aborts): LogitsRowSumExp does
//   target_error[0] = max(target_error[0], t)   for every such t,
// so the caller zeroes it once and, whenever it next reads results back,
// treats a nonzero value as the largest offending target. The kernels never
// clear it, and still produce finite results for such rows.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/tensor.h"

namespace latam::cuda {

// row_max[M] is overwritten.
void LogitsRowMax(const Tensor& logits, const Tensor& row_max, cudaStream_t stream);

// row_sumexp[M] and target_logit[M] are overwritten; target_error[1] is
// raised (atomic max) for targets >= the full vocabulary size `vocab`.
void LogitsRowSumExp(const Tensor& logits, const Tensor& global_max, const Tensor& targets, int64_t vocab_begin,
                     int64_t vocab, const Tensor& row_sumexp, const Tensor& target_logit, const Tensor& target_error,
                     cudaStream_t stream);

// logits is overwritten with its gradient. lse is not read for ignored rows.
void SoftmaxCrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin, const Tensor& lse,
                                 float grad_scale, cudaStream_t stream);

}  // namespace latam::cuda
