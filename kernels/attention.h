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

}  // namespace latam::cpu
