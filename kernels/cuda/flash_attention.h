// FlashAttention-2-style grouped-query attention on tensor cores (bf16,
// head dims 64 and 128, causal or not): the fast path behind the same
// contract as kernels/cuda/attention.h (same qkv / out / lse layouts, same
// formulas, same saved log-sum-exp), so it can stand in for the simple
// kernel wherever FlashAttentionSupports() says so.
//
// Layout (as kernels/attention.h): qkv[B*T, (Hq + 2*Hkv) * hd] holds, per
// token row, the Hq query heads, then the Hkv key heads, then the Hkv value
// heads; query head h reads KV head h / (Hq / Hkv). out[B*T, Hq*hd] and
// lse[B, Hq, T] (f32, natural log). With `causal`, key j > query i is
// masked; without it every query sees all T keys.
//
// Document masking (AttentionDims::doc_start, kernels/attention.h: device
// memory, causal only): key j is visible to query i iff doc_start[i] <= j
// <= i. The mma.sync kernels implement it: a query tile starts at the key
// tile holding its first row's document start, a key tile's dK/dV stop at
// the query tile holding the end of its last key's document, and only tiles
// straddling a document boundary test each element. The wgmma kernels do
// not: FlashWgmmaSupports(dims) is false with doc_start set, and asking a
// wgmma path for it is a fatal error, as is doc_start without `causal`.
//
// Forward (one CTA per 64 query rows of one head, 4 warps of 16 rows):
//   S = Q K^T (mma.sync m16n8k16, bf16 in, fp32 accumulate), scaled by
//   log2(e) / sqrt(hd) so the online softmax uses exp2; running row max m and
//   sum l per row in registers; O += P V with P rounded to bf16; K and V
//   tiles of 64 keys stream through a two-stage cp.async pipeline in
//   swizzled shared memory read with ldmatrix. Causal: key tiles past the
//   query tile are never loaded, and only the diagonal tile is masked.
//   Sequence ends that are not tile multiples are zero-filled on load and
//   masked. lse = (m + log2 l) ln 2.
// Backward (deterministic: no atomics; every output element is written by
// exactly one thread, summing in a fixed order):
//   1. D_i = sum_d dO[i,d] O[i,d] into the f32 workspace (B*Hq*T);
//   2. dK, dV: one CTA per 64 keys of one KV head loops over the query
//      heads of its group and over the query tiles that see those keys,
//      recomputing P = exp(S - lse) on tensor cores:
//        dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D),  dK += dS^T Q / sqrt(hd);
//   3. dQ: one CTA per 64 query rows of one query head loops over key tiles:
//        dQ = sum_j dS_j K_j / sqrt(hd)
//      (recomputing S and dP: two more GEMMs than FlashAttention-2's atomic
//      dQ, the price of bitwise reproducible results).
//
// All tensors are bf16 except lse and the workspace (f32); pointers 16-byte
// aligned (arena views are). Everything is enqueued on `stream`; nothing is
// allocated. Shared memory above 48 KB is opted into per kernel on first use.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention.h"
#include "core/tensor.h"

namespace latam::cuda {

// bf16 operands, head_dim 64 or 128, batch and heads within grid limits
// (with or without document masking, on the mma.sync paths).
bool FlashAttentionSupports(const AttentionDims& dims, DType dtype);

// Whether the wgmma paths (FlashForwardPath::kWgmma, kWgmmaTma,
// FlashBackwardPath::kWgmma) compute this call: not with document masking
// (doc_start set), where a caller must pick kMmaSync.
bool FlashWgmmaSupports(const AttentionDims& dims);

// The forward kernel to run:
//   kMmaSync:  FlashForwardKernel above (mma.sync; sm_80 and later; the default);
//   kWgmma:    FlashForwardWgmmaKernel (kernels/cuda/flash_attention_wgmma.cuh):
//              128 query rows per CTA on Hopper's warpgroup MMAs, cp.async loads;
//   kWgmmaTma: FlashForwardWgmmaTmaKernel: the same MMAs, warp-specialised,
//              with TMA loads by a producer warpgroup (FlashAttention-3's layout).
// All compute the same function and write the same out and lse, so the
// backward pass takes any one's. The wgmma paths need sm_90a and stay opt-in
// until they have been measured against kMmaSync on an H100
// (bench/attention.sh).
enum class FlashForwardPath { kMmaSync, kWgmma, kWgmmaTma };

// Whether the wgmma paths can run on the current device: a compute
// capability 9.0 GPU, whose code is the sm_90a build's (wgmma and setmaxnreg
// do not exist elsewhere), and, for kWgmmaTma, the driver's tensor-map
// encoder.
bool FlashWgmmaForwardAvailable();

// out and lse are overwritten. A wgmma path where
// !FlashWgmmaForwardAvailable() is a fatal error naming the device.
void FlashAttentionForward(const Tensor& qkv, const AttentionDims& dims, bool causal, const Tensor& out,
                           const Tensor& lse, cudaStream_t stream,
                           FlashForwardPath path = FlashForwardPath::kMmaSync);

// f32 elements of the backward's workspace (D: B * Hq * T).
int64_t FlashAttentionBackwardWorkspaceElems(const AttentionDims& dims);

// The backward kernels to run after the D kernel:
//   kMmaSync: FlashKeyValueKernel and FlashQueryKernel (mma.sync; the default);
//   kWgmma:   FlashKeyValueWgmmaKernel and FlashQueryWgmmaKernel
//             (kernels/cuda/flash_attention_wgmma_backward.cuh): the same
//             algorithm on warpgroup MMAs, 128 keys or queries per CTA; sm_90a
//             only (FlashWgmmaForwardAvailable), opt-in until measured.
// Both are deterministic, with the same result up to fp32 summation order.
enum class FlashBackwardPath { kMmaSync, kWgmma };

// dqkv is overwritten (every element). lse is the forward's.
void FlashAttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                            const AttentionDims& dims, bool causal, const Tensor& dqkv, const Tensor& workspace,
                            cudaStream_t stream, FlashBackwardPath path = FlashBackwardPath::kMmaSync);

}  // namespace latam::cuda
