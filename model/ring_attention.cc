#include "model/ring_attention.h"

#include <limits>
#include <memory>
#include <utility>

namespace latam {

namespace {

// Message tags of the ring (the group carries nothing else).
constexpr int kTagKv = 1;
constexpr int kTagDkv = 2;

}  // namespace

RingAttention::RingAttention(ModelOps* ops, Communicator* cp, const ContextSplit& split, const AttentionDims& dims,
                             std::array<Tensor, 4> buffers)
    : ops_(ops), cp_(cp), split_(split), dims_(dims) {
  LATAM_CHECK(cp_ != nullptr && cp_->size() == split.size() && cp_->rank() == split.rank(),
              "ring attention over a context-parallel group of " << (cp_ ? cp_->size() : 0) << " ranks for a split of "
                                                                 << split.size());
  LATAM_CHECK(dims.seq_len == split.local_len(),
              "ring attention on " << dims.seq_len << " local rows for a split of " << split.local_len());
  kv_ = {buffers[0], buffers[1]};
  dkv_ = {buffers[2], buffers[3]};
}

AttentionBlockDims RingAttention::BlockDims(const ContextSplit::Block& b, const int32_t* doc_start) const {
  const int l = static_cast<int>(split_.chunk_len());
  AttentionBlockDims d;
  d.batch = dims_.batch;
  d.rows = dims_.seq_len;
  d.n_heads = dims_.n_heads;
  d.n_kv_heads = dims_.n_kv_heads;
  d.head_dim = dims_.head_dim;
  d.q_row0 = b.q_half * l;
  d.q_rows = l;
  d.kv_row0 = b.kv_half * l;
  d.kv_rows = l;
  d.q_pos0 = b.q_pos0;
  d.kv_pos0 = b.kv_pos0;
  d.doc_start = doc_start;
  return d;
}

void RingAttention::Forward(const Tensor& qkv, const Tensor& out, const Tensor& lse, const int32_t* doc_start) {
  const int c = split_.size(), r = split_.rank();
  ops_->PackKeyValues(qkv, kv_[0]);
  ops_->Fill(out, 0.0f);
  ops_->Fill(lse, -std::numeric_limits<float>::infinity());
  int cur = 0;
  for (int i = 0; i < c; ++i) {
    std::unique_ptr<Request> send, recv;
    if (i + 1 < c) {
      recv = cp_->Recv(kv_[1 - cur], prev(), kTagKv);
      send = cp_->Send(kv_[cur], next(), kTagKv);
    }
    const int src = (r - i + c) % c;
    for (const ContextSplit::Block& b : split_.Blocks(src)) {
      ops_->AttentionBlockForward(qkv, kv_[cur], BlockDims(b, doc_start), out, lse);
    }
    if (send != nullptr) {
      send->Wait();
      recv->Wait();
    }
    cur = 1 - cur;
  }
}

void RingAttention::Backward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                             const Tensor& dqkv, const int32_t* doc_start) {
  const int c = split_.size(), r = split_.rank();
  ops_->Fill(dqkv, 0.0f);
  ops_->PackKeyValues(qkv, kv_[0]);
  ops_->Fill(dkv_[0], 0.0f);
  int cur = 0;
  for (int i = 0; i < c; ++i) {
    std::unique_ptr<Request> send, recv;
    if (i + 1 < c) {
      recv = cp_->Recv(kv_[1 - cur], prev(), kTagKv);
      send = cp_->Send(kv_[cur], next(), kTagKv);
    }
    const int src = (r - i + c) % c;
    for (const ContextSplit::Block& b : split_.Blocks(src)) {
      ops_->AttentionBlockBackward(qkv, kv_[cur], out, dout, lse, BlockDims(b, doc_start), dqkv, dkv_[cur]);
    }
    if (send != nullptr) {
      send->Wait();
      recv->Wait();
    }
    // dkv_[cur] (rank src's) is complete here: pass it on. After the last
    // step it belongs to rank r+1, and rank r's own arrives from r-1.
    std::unique_ptr<Request> grad_recv = cp_->Recv(dkv_[1 - cur], prev(), kTagDkv);
    cp_->Send(dkv_[cur], next(), kTagDkv)->Wait();
    grad_recv->Wait();
    cur = 1 - cur;
  }
  ops_->UnpackKeyValueGrads(dkv_[cur], dqkv);
}

}  // namespace latam
