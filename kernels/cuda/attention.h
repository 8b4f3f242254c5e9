// Causal grouped-query attention on the GPU: the CUDA twin of
// kernels/attention.h (same layouts, same formulas, same saved log-sum-exp).
//
// Layout (as on the CPU): qkv[B*T, (Hq + 2*Hkv) * hd] holds, per token row,
// the Hq query heads, then the Hkv key heads, then the Hkv value heads; query
// head h reads key/value head h / (Hq / Hkv).
//   S    = Q K^T / sqrt(hd), with S[i,j] = -inf for j > i (causal)
//   out  = softmax(S) V                          out[B*T, Hq*hd]
//   lse  = log(sum_j exp(S[i,j]))                lse[B, Hq, T]  (always f32)
// Backward (given dout; D_i = sum_d dout[i,d] out[i,d]):
//   P = exp(S - lse),  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - D)
//   dQ = dS K / sqrt(hd),  dK = dS^T Q / sqrt(hd)
// dK and dV of a KV head sum over the query heads of its group.
//
// qkv, out, dout and dqkv share one dtype, f32 or bf16, and live on the
// device; lse and the workspace are f32. Arithmetic is fp32. head_dim must be
// a multiple of 8 and at most 256, and the qkv/out/dout/dqkv pointers 16-byte
// aligned (arena views are): every row is moved in 16-byte packs.
//
// The T x T score matrix never reaches global memory: one thread block per
// (query tile, head, batch) walks the key tiles with an online softmax in
// shared memory and registers. The backward first computes D into the
// workspace, then dQ with one block per (query tile, query head) and dK/dV
// with one block per (key tile, KV head) that loops over the group's query
// heads itself: no atomics, so results are bitwise reproducible.
//
// All work is enqueued on `stream`; nothing is allocated.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention.h"
#include "core/tensor.h"

namespace latam::cuda {

using AttentionDims = AttentionDims;

// out and lse are overwritten.
void AttentionForward(const Tensor& qkv, const AttentionDims& dims, const Tensor& out, const Tensor& lse,
                      cudaStream_t stream);

// f32 elements of the caller-owned backward workspace (D per (batch, query
// head, row): B * Hq * T).
int64_t AttentionBackwardWorkspaceElems(const AttentionDims& dims);

// dqkv is overwritten (every element is written). lse is the forward's.
void AttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                       const AttentionDims& dims, const Tensor& dqkv, const Tensor& workspace, cudaStream_t stream);

}  // namespace latam::cuda
