// The collectives of Megatron-style tensor parallelism, named for what they
// do in the model, over the tensor-parallel group of T ranks.
//
// A linear layer y = x W^T is split two ways:
//   column-parallel  rank t holds rows W_t of W (output features): y_t = x W_t^T
//                    needs x replicated; backward dx = sum_t dy_t W_t, so the
//                    input gradient is summed (ColumnParallelInputGrad);
//   row-parallel     rank t holds columns W_t of W (input features) and the
//                    matching slice x_t of its input: y = sum_t x_t W_t^T, so
//                    the output is summed (RowParallelOutput); backward
//                    dx_t = dy W_t needs dy replicated, no collective.
// A column-parallel layer followed by a row-parallel one (QKV -> o_proj,
// gate/up -> down) needs one sum forward and one backward per block.
//   vocab-parallel   the embedding table and the LM head are split over
//                    the vocabulary: each rank embeds the ids in its range
//                    and zeros elsewhere (VocabParallelEmbedding sums the
//                    rows); cross-entropy combines per-row max, sum-exp and
//                    target logit over the shards (VocabParallelMax / Sum)
//                    so the logits are never gathered.
// Every call above is an in-place all-reduce that returns when the result is
// in `t` (on CUDA: enqueued on the communicator's stream, ordered with the
// compute stream). With T = 1 they do nothing but cost a call.
//
// Sequence parallelism (Megatron, parallel.sequence_parallel): between the
// GEMM pairs, the [m, dim] activations (norm inputs and outputs, residual
// stream) are split by rows: rank t holds rows [t m/T, (t+1) m/T) (m =
// tokens of the micro-batch, T | m). Each all-reduce of a [m, dim] partial
// sum becomes a reduce-scatter to the row shards, and each column-parallel
// GEMM is preceded by an all-gather of its input from the shards:
//   GatherSequence(shard, full)      full <- the T shards in rank order
//   ReduceScatterSequence(full, shard)  shard <- rows of (sum over ranks of full)
// A ring all-reduce moves the bytes of one reduce-scatter plus one
// all-gather, so replacing each all-reduce by that pair moves the same
// bytes, while the activations between the pairs shrink T-fold. Both return
// when the result is in place (ordered on CUDA as above).
#pragma once

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace latam {

class TensorParallel {
 public:
  explicit TensorParallel(Communicator* group) : group_(group) {}
  int size() const { return group_->size(); }
  int rank() const { return group_->rank(); }

  void RowParallelOutput(const Tensor& partial) const { group_->AllReduceSync(partial, ReduceOp::kSum); }
  void ColumnParallelInputGrad(const Tensor& dx) const { group_->AllReduceSync(dx, ReduceOp::kSum); }
  void VocabParallelEmbedding(const Tensor& rows) const { group_->AllReduceSync(rows, ReduceOp::kSum); }
  void VocabParallelMax(const Tensor& row_max) const { group_->AllReduceSync(row_max, ReduceOp::kMax); }
  void VocabParallelSum(const Tensor& row_sums) const { group_->AllReduceSync(row_sums, ReduceOp::kSum); }

  void GatherSequence(const Tensor& shard, const Tensor& full) const { group_->AllGather(shard, full)->Wait(); }
  void ReduceScatterSequence(const Tensor& full, const Tensor& shard) const {
    group_->ReduceScatter(full, shard)->Wait();
  }
  // Sums a replicated tensor's gradient over the group: under sequence
  // parallelism each rank's norm-gain gradient covers its rows only.
  void SumReplicatedGrad(const Tensor& grad) const { group_->AllReduceSync(grad, ReduceOp::kSum); }

 private:
  Communicator* group_;
};

}  // namespace latam
