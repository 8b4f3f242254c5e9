// Attention over a key/value cache, for autoregressive decoding: n new
// tokens at positions p0 .. p0 + n - 1 attend causally to the rotated keys
// and the values of every token so far, kept in a per-layer cache, so that
// no earlier token is ever recomputed.
//
// Layout. qkv[n, (Hq + 2 Hkv) hd] holds the new tokens' fused QKV rows after
// RoPE (the layout of kernels/attention.h: Hq query heads, then Hkv key
// heads, then Hkv value heads). One layer's cache is two tensors
// k_cache, v_cache [Hkv, max_context, hd]: the key of KV head g at position
// t is row t of k_cache[g].
//
//   KvCacheAppend:    k_cache[g, p0 + i] = K_g(qkv row i)
//                     v_cache[g, p0 + i] = V_g(qkv row i)      i in [0, n), g in [0, Hkv)
//                     (those positions overwritten, every other one untouched)
//   DecodeAttention:  for row i and query head h, KV head g = h / (Hq / Hkv):
//                     s_j        = q_{i,h} . k_cache[g, j] / sqrt(hd)     j in [0, p0 + i]
//                     out[i, h]  = sum_j softmax(s)_j v_cache[g, j]
//                     out [n, Hq hd] overwritten; positions [0, p0 + n) of the
//                     cache must hold keys and values (append first).
//
// This header is the CPU reference (f32, finished when the call returns);
// kernels/cuda/decode_attention.h is its CUDA twin.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace latam {

struct DecodeAttentionDims {
  int n_heads = 0;          // query heads
  int n_kv_heads = 0;       // key/value heads; divides n_heads
  int head_dim = 0;
  int64_t max_context = 0;  // positions the cache holds
};

// Checks (fatally) the shapes, dtypes and devices of one call: qkv
// [n, (Hq + 2 Hkv) hd], caches [Hkv, max_context, hd] in qkv's dtype,
// out [n, Hq hd] (when given) and p0 + n <= max_context.
void CheckDecodeAttention(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position,
                          const Tensor& k_cache, const Tensor& v_cache, const Tensor* out, Device device);

}  // namespace latam

namespace latam::cpu {

// f32 scratch elements DecodeAttention needs for up to `max_rows` new rows:
// one KV head's scores, [max(max_rows, Hq / Hkv), max_context]. The caller
// owns it and allocates it once.
int64_t DecodeAttentionWorkspaceElems(const DecodeAttentionDims& dims, int64_t max_rows);

void KvCacheAppend(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position, const Tensor& k_cache,
                   const Tensor& v_cache);

// Scores and outputs are GEMMs (kernels/gemm.h), per KV head g: a single new
// row stacks the group's Hq / Hkv query heads, which read the same keys, into
// one [group, hd] operand; n > 1 rows run one GEMM per query head over all
// p0 + n positions, row i's probabilities past its own position set to 0.
// The softmax is exact (std::exp), normalised by the row sum.
void DecodeAttention(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position,
                     const Tensor& k_cache, const Tensor& v_cache, const Tensor& out, const Tensor& workspace);

}  // namespace latam::cpu
