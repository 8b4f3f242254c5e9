#include "kernels/decode_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/gemm.h"

namespace latam {

void CheckDecodeAttention(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position,
                          const Tensor& k_cache, const Tensor& v_cache, const Tensor* out, Device device) {
  LATAM_CHECK(dims.n_heads > 0 && dims.n_kv_heads > 0 && dims.n_heads % dims.n_kv_heads == 0 && dims.head_dim > 0,
              "decode attention: " << dims.n_heads << " query heads, " << dims.n_kv_heads << " KV heads, head dim "
                                   << dims.head_dim);
  LATAM_CHECK(qkv.shape.rank() == 2, "decode attention qkv must be [n, (Hq + 2 Hkv) hd], got " << qkv.str());
  const int64_t n = qkv.shape[0], hd = dims.head_dim;
  CheckTensor(qkv, qkv.dtype, Shape{n, (dims.n_heads + 2 * dims.n_kv_heads) * hd}, device, "decode attention qkv");
  const Shape cache{dims.n_kv_heads, dims.max_context, hd};
  CheckTensor(k_cache, qkv.dtype, cache, device, "decode attention k_cache");
  CheckTensor(v_cache, qkv.dtype, cache, device, "decode attention v_cache");
  if (out != nullptr) CheckTensor(*out, qkv.dtype, Shape{n, dims.n_heads * hd}, device, "decode attention out");
  LATAM_CHECK(first_position >= 0 && first_position + n <= dims.max_context,
              "decode attention: " << n << " rows at position " << first_position << " exceed the cache of "
                                   << dims.max_context << " positions");
}

}  // namespace latam

namespace latam::cpu {

namespace {

// Softmax rows of at least this many scores in total are normalised in parallel.
constexpr int64_t kParallelSoftmaxElems = 16384;

// In place over each row i of s[m, ld]: the first visible(i) = first_visible
// + i * visible_step entries become softmax probabilities, the rest of the
// first `cols` become 0.
//   p_j = exp(s_j - max) / sum_k exp(s_k - max)
void MaskedSoftmaxRows(float* s, int64_t m, int64_t cols, int64_t ld, int64_t first_visible, int64_t visible_step) {
#pragma omp parallel for schedule(static) if (m * cols >= kParallelSoftmaxElems)
  for (int64_t i = 0; i < m; ++i) {
    float* row = s + i * ld;
    const int64_t visible = first_visible + i * visible_step;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, row[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < visible; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
    for (int64_t j = visible; j < cols; ++j) row[j] = 0.0f;
  }
}

}  // namespace

int64_t DecodeAttentionWorkspaceElems(const DecodeAttentionDims& dims, int64_t max_rows) {
  return std::max<int64_t>(max_rows, dims.n_heads / dims.n_kv_heads) * dims.max_context;
}

void KvCacheAppend(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position, const Tensor& k_cache,
                   const Tensor& v_cache) {
  LATAM_CHECK(qkv.dtype == DType::kF32, "cpu decode attention is f32, got " << qkv.str());
  CheckDecodeAttention(qkv, dims, first_position, k_cache, v_cache, nullptr, Device::kCPU);
  const int64_t n = qkv.shape[0], hq = dims.n_heads, hkv = dims.n_kv_heads, hd = dims.head_dim;
  const int64_t row_width = qkv.shape[1];
  const size_t head_bytes = static_cast<size_t>(hd) * sizeof(float);
  const float* rows = qkv.as<float>();
  for (int64_t g = 0; g < hkv; ++g) {
    float* k = k_cache.as<float>() + (g * dims.max_context + first_position) * hd;
    float* v = v_cache.as<float>() + (g * dims.max_context + first_position) * hd;
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(k + i * hd, rows + i * row_width + (hq + g) * hd, head_bytes);
      std::memcpy(v + i * hd, rows + i * row_width + (hq + hkv + g) * hd, head_bytes);
    }
  }
}

void DecodeAttention(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position,
                     const Tensor& k_cache, const Tensor& v_cache, const Tensor& out, const Tensor& workspace) {
  LATAM_CHECK(qkv.dtype == DType::kF32, "cpu decode attention is f32, got " << qkv.str());
  CheckDecodeAttention(qkv, dims, first_position, k_cache, v_cache, &out, Device::kCPU);
  const int64_t n = qkv.shape[0], hq = dims.n_heads, hkv = dims.n_kv_heads, hd = dims.head_dim;
  const int64_t group = hq / hkv, row_width = qkv.shape[1], out_width = hq * hd;
  const int64_t p0 = first_position, ctx = p0 + n;
  LATAM_CHECK(workspace.dtype == DType::kF32 && workspace.device == Device::kCPU &&
                  workspace.numel() >= std::max(n, group) * ctx,
              "decode attention workspace " << workspace.str() << " is smaller than "
                                            << std::max(n, group) * ctx << " f32 elements");
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* q_rows = qkv.as<float>();
  float* att = out.as<float>();
  float* scores = workspace.as<float>();
  for (int64_t g = 0; g < hkv; ++g) {
    const float* k = k_cache.as<float>() + g * dims.max_context * hd;  // [ctx, hd] in use
    const float* v = v_cache.as<float>() + g * dims.max_context * hd;
    if (n == 1) {
      // Q [group, hd] (the group's heads are adjacent in the row), S [group, ctx], out [group, hd].
      const float* q = q_rows + g * group * hd;
      Gemm(false, true, group, ctx, hd, scale, q, hd, k, hd, 0.0f, scores, ctx);
      MaskedSoftmaxRows(scores, group, ctx, ctx, ctx, 0);
      Gemm(false, false, group, hd, ctx, 1.0f, scores, ctx, v, hd, 0.0f, att + g * group * hd, hd);
      continue;
    }
    for (int64_t head = g * group; head < (g + 1) * group; ++head) {
      // Q [n, hd] (row stride row_width), S [n, ctx], out [n, hd] (row stride
      // out_width); row i sees positions [0, p0 + i].
      Gemm(false, true, n, ctx, hd, scale, q_rows + head * hd, row_width, k, hd, 0.0f, scores, ctx);
      MaskedSoftmaxRows(scores, n, ctx, ctx, p0 + 1, 1);
      Gemm(false, false, n, hd, ctx, 1.0f, scores, ctx, v, hd, 0.0f, att + head * hd, out_width);
    }
  }
}

}  // namespace latam::cpu
