// Context parallelism (parallel.context = C): the geometry of splitting each
// sequence over the C ranks of a context-parallel group, and the blocks of
// ring attention.
//
// A sequence of T tokens is cut into 2C chunks of L = T / 2C tokens; chunk c
// holds global positions [c L, (c+1) L). Rank r of the group holds chunks r
// and 2C-1-r, in that order, as its 2L local rows: local row i < L is global
// position r L + i, local row L + i is (2C-1-r) L + i. Under causal attention
// a query at position p attends to p + 1 keys, so pairing an early chunk with
// a late one gives every rank the same work (Megatron's load balance).
//
// Ring attention. The group passes key/value blocks around a ring: at step
// i = 0 .. C-1 rank r holds the keys and values of rank s = (r - i) mod C,
// attends its queries to them and forwards them to rank r + 1 while
// receiving rank r - i - 1's from rank r - 1 (model/ring_attention.h).
// Blocks(s) lists the (query half, key half) pairs of rank r's queries
// against rank s's keys that hold any causally visible key:
//   s == r: (0,0) and (1,1) on the diagonal (causal), (1,0) whole;
//   s <  r: chunk s precedes both of r's chunks: (0,0), (1,0), whole;
//           chunk 2C-1-s follows both: nothing;
//   s >  r: chunk s follows chunk r and precedes chunk 2C-1-r: (1,0);
//           chunk 2C-1-s precedes chunk 2C-1-r: (1,1), whole.
// Every step is thus two L x L blocks of work (the diagonal's two causal
// halves count as one), so the ring is balanced. Document masking needs no
// change here: the block kernels compare global positions with each query's
// global document start (kernels/attention.h AttentionBlockDims).
#pragma once

#include <cstdint>
#include <vector>

namespace latam {

class ContextSplit {
 public:
  struct Block {
    int q_half = 0, kv_half = 0;        // local halves (rows [half L, (half+1) L))
    int64_t q_pos0 = 0, kv_pos0 = 0;  // their first global positions
  };

  ContextSplit() = default;
  // `size` ranks (>= 1) split sequences of `seq_len` tokens (divisible by
  // 2 size when size > 1; checked); this rank is `rank`.
  ContextSplit(int size, int rank, int64_t seq_len);

  int size() const { return size_; }
  int rank() const { return rank_; }
  int64_t seq_len() const { return seq_len_; }
  // Local rows per sequence: seq_len / size.
  int64_t local_len() const { return seq_len_ / size_; }
  // Tokens per chunk, L = seq_len / (2 size) (size > 1).
  int64_t chunk_len() const { return seq_len_ / (2 * size_); }

  // The chunk rank `of` holds as its local half `half` (0 or 1).
  int ChunkOf(int of, int half) const { return half == 0 ? of : 2 * size_ - 1 - of; }
  // Global position of local row i (0 <= i < local_len) of rank `of`.
  int64_t GlobalPosition(int of, int64_t i) const;
  // The blocks of this rank's queries against rank kv_rank's keys that hold
  // any visible key (see the header comment).
  std::vector<Block> Blocks(int kv_rank) const;

  // local[b * local_len + i] <- full[b * seq_len + GlobalPosition(rank, i)]
  // for `batch` sequences: this rank's rows of whole windows.
  void Scatter(const int32_t* full, int64_t batch, int32_t* local) const;

 private:
  int size_ = 1, rank_ = 0;
  int64_t seq_len_ = 0;
};

}  // namespace latam
