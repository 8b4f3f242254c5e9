// RingAttention: causal attention over a sequence split by context
// parallelism (parallel/context_parallel.h), computed as a ring over the
// context-parallel group with the device's block kernels (ModelOps::
// AttentionBlockForward / AttentionBlockBackward, contract in
// kernels/attention.h).
//
// Forward, on rank r of C, for one layer's fused qkv [B * 2L, (Hq+2Hkv) hd]:
//   kv  <- the keys and values of qkv                      (PackKeyValues)
//   out <- 0,  lse <- -inf
//   for i = 0 .. C-1 (kv holds rank s = r - i's keys and values):
//     start sending kv to r+1 and receiving the next block from r-1
//       (i < C-1), then merge every block of ContextSplit::Blocks(s) into
//       (out, lse) while they travel; wait; swap buffers.
// Each query's result is the log-sum-exp merge of the blocks it saw, which
// equals attention over the whole sequence (kernels/attention.h).
//
// Backward (dout given; out and lse final), the same ring carrying the
// gradient of the keys and values with them:
//   dqkv <- 0 on the query columns;  kv <- own keys and values, dkv <- 0
//   for i = 0 .. C-1 (kv, dkv belong to rank s = r - i):
//     start receiving the next kv from r-1 and sending kv to r+1 (i < C-1);
//     add every block's dQ into dqkv and dK, dV into dkv;
//     wait for kv; then pass dkv on the same way (it is complete for this
//     rank only now);
//   after step C-1, dkv belongs to rank r+1: one more send to r+1 brings
//   rank r's own dK, dV back from r-1, into dqkv's key/value columns.
// Bytes sent per call and rank, with K = B 2L 2 Hkv hd elements: forward
// (C-1) K in the activation dtype; backward (C-1) K in the activation dtype
// plus C K in f32 (dkv).
//
// Buffers: four tensors of [B * 2L, 2 Hkv hd], two key/value blocks in the
// activation dtype and two gradient blocks in f32 (each rank adds its share
// into a travelling block, so it is not rounded to bf16 C times), owned by
// the caller (the model's activation arena) and shared by all layers.
#pragma once

#include <array>

#include "model/model_ops.h"
#include "parallel/communicator.h"
#include "parallel/context_parallel.h"

namespace latam {

class RingAttention {
 public:
  // `dims`: the local attention shape (seq_len = the local 2L rows); `cp`
  // the context-parallel group (size split.size(), rank split.rank()).
  RingAttention(ModelOps* ops, Communicator* cp, const ContextSplit& split, const AttentionDims& dims,
                std::array<Tensor, 4> buffers);

  // out, lse overwritten. doc_start: global document starts per local row
  // (AttentionBlockDims::doc_start) in the ops' memory, or null.
  void Forward(const Tensor& qkv, const Tensor& out, const Tensor& lse, const int32_t* doc_start);
  // dqkv overwritten (all columns).
  void Backward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse, const Tensor& dqkv,
                const int32_t* doc_start);

 private:
  AttentionBlockDims BlockDims(const ContextSplit::Block& b, const int32_t* doc_start) const;
  int next() const { return (split_.rank() + 1) % split_.size(); }
  int prev() const { return (split_.rank() + split_.size() - 1) % split_.size(); }

  ModelOps* ops_;
  Communicator* cp_;
  ContextSplit split_;
  AttentionDims dims_;
  std::array<Tensor, 2> kv_, dkv_;
};

}  // namespace latam
