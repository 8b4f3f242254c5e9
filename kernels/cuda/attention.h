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
// Ring attention's block kernels (kernels/attention.h, AttentionBlockDims)
// are the same kernels run on one block: the queries a block of qkv's rows,
// the keys and values a block of a packed kv buffer, the mask by global
// position; the forward merges into out and lse, the backward adds to dqkv
// and dkv (details at their declarations below).
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

// ---------------------------------------------------------------------------
// Ring attention (the CUDA twins of cpu::AttentionBlockForward / Backward,
// same semantics; kernels/attention.h has the layouts and the mask).
//
// Dtypes: qkv, kv, out and dout share one dtype, f32 or bf16; lse is f32
// (the merged log-sum-exp stays f32 between blocks); arithmetic is fp32.
// Gradients: dqkv and dkv each have qkv's dtype or are f32, independently.
// Every block call rounds what it writes to its buffer's dtype, so with bf16
// buffers the running out (merged once per block) and dqkv / dkv (added to
// once per block, dkv once per ring step as it travels) are rounded to bf16
// at every step: keep dqkv and dkv f32 where that matters (then
// UnpackKeyValueGrads and elementwise Cast round once at the end). With f32
// buffers the blocks agree with one whole-sequence attention to fp32
// rounding. head_dim and 16-byte alignment as above (kv, dkv included);
// doc_start, if set, in device memory. Blocks lie inside the local rows
// (q_row0 + q_rows <= rows, the same for kv), positions are >= 0 and stay
// below 2^31. Start a ring with out = 0 and lse = -inf (cuda::Fill,
// kernels/cuda/elementwise.h), and zeroed gradients.
//
// A block whose keys all follow its last query (kv_pos0 > q_pos0 + q_rows
// - 1), or with no rows, launches nothing. Deterministic: no atomics.

// Merges the block into out and lse (cpu::AttentionBlockForward): for the
// query rows that see a key of the block,
//   lse' = log(exp(lse) + exp(lse_b)),  out' = out exp(lse - lse') + out_b exp(lse_b - lse')
// with out_b, lse_b the block's own attention; a row whose lse is -inf (no
// key seen yet) gets out_b and lse_b exactly as AttentionForward computes
// them, without its out being read. Rows seeing no key of the block, and
// all other rows, are not touched.
void AttentionBlockForward(const Tensor& qkv, const Tensor& kv, const AttentionBlockDims& dims, const Tensor& out,
                           const Tensor& lse, cudaStream_t stream);

// f32 elements of the caller-owned block backward workspace (D per (batch,
// query head, local row): B * Hq * rows; serves any block of these dims, and
// each call overwrites its query rows' entries).
int64_t AttentionBlockBackwardWorkspaceElems(const AttentionBlockDims& dims);

// The block's share of the backward (cpu::AttentionBlockBackward), given the
// FINAL out and lse: dQ is added to the query columns of dqkv's query-block
// rows, dK and dV to dkv's key/value-block rows (dkv [batch*rows, 2 Hkv hd]
// in kv's layout). Nothing else of dqkv or dkv is touched. D is recomputed
// for the query block on every call (O(rows hd), small next to the block).
void AttentionBlockBackward(const Tensor& qkv, const Tensor& kv, const Tensor& out, const Tensor& dout,
                            const Tensor& lse, const AttentionBlockDims& dims, const Tensor& dqkv, const Tensor& dkv,
                            const Tensor& workspace, cudaStream_t stream);

// kv [R, 2 Hkv hd] = the key and value columns of qkv [R, (Hq + 2 Hkv) hd]
// (kv overwritten; same dtype, f32 or bf16, 16-byte aligned).
void PackKeyValues(const Tensor& qkv, const Tensor& kv, int n_heads, int n_kv_heads, int head_dim,
                   cudaStream_t stream);

// The key and value columns of dqkv [R, (Hq + 2 Hkv) hd] = dkv [R, 2 Hkv hd],
// converted when the dtypes differ (each f32 or bf16; bf16 rounded once, as
// cuda::Cast). dqkv's query columns are not touched.
void UnpackKeyValueGrads(const Tensor& dkv, const Tensor& dqkv, int n_heads, int n_kv_heads, int head_dim,
                         cudaStream_t stream);

}  // namespace latam::cuda
