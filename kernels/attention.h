// Causal grouped-query attention, computed tile by tile with an online
// softmax (FlashAttention-2 algorithm) so that the T x T score matrix is
// never stored: memory is linear in the sequence length.
//
// Layout: qkv[B*T, (Hq + 2*Hkv) * hd] holds, per token row, the Hq query
// heads, then the Hkv key heads, then the Hkv value heads (the output of the
// fused QKV projection, after RoPE). Query head h reads key/value head
// h / (Hq / Hkv).
//   S      = Q K^T / sqrt(hd), with S[i,j] = -inf for j > i (causal)
//   out    = softmax(S) V                         out[B*T, Hq*hd]
//   lse    = log(sum_j exp(S[i,j]))               lse[B, Hq, T]
// Backward (given dout; D_i = sum_d dout[i,d] out[i,d]):
//   P = exp(S - lse),  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - D)
//   dQ = dS K / sqrt(hd),  dK = dS^T Q / sqrt(hd)
// dK and dV of a KV head sum over the query heads of its group.
//
// Ring attention (context parallelism) computes the same block by block:
// AttentionBlockForward/Backward at the end take a query block and a
// key/value block (possibly another rank's) at global positions; forward
// merges the blocks' results by log-sum-exp, backward adds each block's
// share of the gradients. On the CPU the whole-sequence kernels are the
// special case of one block holding every row, and share their code.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace latam {

// The shape of one attention call, shared by the CPU and CUDA kernels.
//
// Document masking (block-causal attention over packed documents). With
// doc_start null every query sees every earlier key of its sequence. Else
// doc_start[b * seq_len + t] (int32, in the same memory as qkv: host for
// the CPU kernels, device for the CUDA ones) is the position in sequence b
// where token t's document begins, and key j is visible to query i iff
// doc_start[i] <= j <= i. Documents are contiguous runs: within a sequence
// doc_start[0] == 0, and doc_start[t] is either t (a document starts) or
// doc_start[t - 1]. Every query sees at least itself, so lse stays finite;
// a document of one token attends only to itself. The kernels skip whole
// key tiles that lie before the first document of a query tile. The result
// equals running each document alone as its own sequence.
struct AttentionDims {
  int batch = 0;
  int seq_len = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads; divides n_heads
  int head_dim = 0;
  const int32_t* doc_start = nullptr;
};

// One block of ring attention (context parallelism, parallel/context_parallel.h):
// the query rows of one block of a rank's local sequence attend to the key and
// value rows of one block, local or received from another rank, by global
// position. Every tensor holds, per sequence b of `batch`, `rows` local rows
// (the rank's share of the sequence), in the layouts:
//   qkv  [batch*rows, (Hq + 2 Hkv) hd]  the fused QKV activation (queries read)
//   kv   [batch*rows, 2 Hkv hd]         keys (Hkv heads) then values (Hkv heads)
//   out  [batch*rows, Hq hd],  lse [batch, Hq, rows]
// The query block is local rows [q_row0, q_row0 + q_rows) of every sequence,
// at global positions q_pos0 + i; the key/value block is rows
// [kv_row0, kv_row0 + kv_rows) of kv, at global positions kv_pos0 + j. Key j
// is visible to query i iff
//   kv_pos0 + j <= q_pos0 + i                       (causal), and
//   kv_pos0 + j >= doc_start[b * rows + q_row0 + i] (same document; when
//                                                    doc_start is not null)
// where doc_start holds, per local row, the GLOBAL position at which that
// row's document begins (memory as qkv's). A query may see no key of a block.
struct AttentionBlockDims {
  int batch = 0;
  int rows = 0;  // local rows per sequence, in every tensor above
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int q_row0 = 0, q_rows = 0;
  int kv_row0 = 0, kv_rows = 0;
  int64_t q_pos0 = 0, kv_pos0 = 0;
  const int32_t* doc_start = nullptr;
};

}  // namespace latam

namespace latam::cpu {

// Scratch floats the kernels need when run by `threads` OpenMP threads: per
// thread O(seq_len x head_dim) for one KV head's keys and values plus a few
// tiles, so memory stays linear in the sequence length. The caller owns it
// (an f32 CPU tensor of at least this many elements) and allocates it once.
int64_t AttentionWorkspaceElems(const AttentionDims& dims, int threads);

// out and lse are overwritten.
void AttentionForward(const Tensor& qkv, const AttentionDims& dims, const Tensor& out, const Tensor& lse,
                      const Tensor& workspace);

// dqkv is overwritten (every element is written).
void AttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                       const AttentionDims& dims, const Tensor& dqkv, const Tensor& workspace);

// Ring attention's block kernels (AttentionBlockDims). The workspace of
// AttentionWorkspaceElems(AttentionDims{batch, rows, ...}, threads) serves any
// block of those dimensions.
//
// AttentionBlockForward merges the block into a running result: out and lse
// of the query rows hold the normalised output and log-sum-exp over the keys
// seen so far (out 0 and lse -inf before the first block), and become those
// over the keys seen so far plus this block's visible keys:
//   lse' = log(exp(lse) + exp(lse_b)),  out' = out exp(lse - lse') + out_b exp(lse_b - lse')
// Rows that see no key of the block are left unchanged; other rows of out and
// lse are not touched. Merging the blocks in any order gives one attention
// over all of them (to rounding).
void AttentionBlockForward(const Tensor& qkv, const Tensor& kv, const AttentionBlockDims& dims, const Tensor& out,
                           const Tensor& lse, const Tensor& workspace);

// The block's share of the backward pass, given the FINAL out and lse (after
// every block was merged) and dout:
//   P = exp(S - lse) on the visible keys,  D_i = sum_d dout[i,d] out[i,d],
//   dQ += dS K / sqrt(hd),  dK += dS^T Q / sqrt(hd),  dV += P^T dO
// dQ is added to the query columns of dqkv (query rows only; its key/value
// columns are not touched); dK, dV are added to dkv's key/value block rows
// (dkv has kv's layout).
void AttentionBlockBackward(const Tensor& qkv, const Tensor& kv, const Tensor& out, const Tensor& dout,
                            const Tensor& lse, const AttentionBlockDims& dims, const Tensor& dqkv, const Tensor& dkv,
                            const Tensor& workspace);

}  // namespace latam::cpu
