// Attention over a key/value cache on the GPU: the CUDA twin of
// kernels/decode_attention.h (same layouts, same formulas).
//
//   KvCacheAppend:    k_cache[g, p0 + i] = K_g(qkv row i), v_cache[g, p0 + i] = V_g(qkv row i)
//                     (those positions overwritten, every other one untouched)
//   DecodeAttention:  for row i, query head h, KV head g = h / (Hq / Hkv):
//                     s_j       = q_{i,h} . k_cache[g, j] / sqrt(hd)      j in [0, p0 + i]
//                     out[i, h] = sum_j softmax(s)_j v_cache[g, j]        out overwritten
//
// qkv [n, (Hq + 2 Hkv) hd], the caches [Hkv, max_context, hd] and out
// [n, Hq hd] share one dtype, f32 or bf16, and live on the device;
// arithmetic is fp32 (products, the online softmax and the weighted sum of
// values), rounded to the dtype once on store. head_dim is at most 256.
//
// DecodeAttention runs one thread block per (row, query head): its warps
// take the visible positions in turn, each keeping an online softmax
// (running max m, sum l, and the weighted sum of values, lanes splitting
// hd), and the block merges the warps at the end:
//   M = max_w m_w,  L = sum_w l_w exp(m_w - M),  out = sum_w acc_w exp(m_w - M) / L.
// Work per block is linear in the context; nothing is stored but the output.
//
// All work is enqueued on `stream`; nothing is allocated.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/tensor.h"
#include "kernels/decode_attention.h"

namespace latam::cuda {

void KvCacheAppend(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position, const Tensor& k_cache,
                   const Tensor& v_cache, cudaStream_t stream);

void DecodeAttention(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position,
                     const Tensor& k_cache, const Tensor& v_cache, const Tensor& out, cudaStream_t stream);

}  // namespace latam::cuda
