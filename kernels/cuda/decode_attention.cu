#include "kernels/cuda/decode_attention.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/vec.cuh"

namespace latam::cuda {

namespace {

constexpr int kAppendThreads = 256;
constexpr int64_t kMaxBlocks = 65535;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMaxHeadDim = 256;
constexpr int kPerLane = kMaxHeadDim / 32;  // head elements d = lane + 32 r, r < kPerLane

// One item per (row i, KV head g, element d), grid-stride:
//   k[g, p0 + i, d] = qkv[i, (Hq + g) hd + d],  v[g, p0 + i, d] = qkv[i, (Hq + Hkv + g) hd + d]
template <typename T>
__global__ void KvCacheAppendKernel(const T* __restrict__ qkv, T* __restrict__ k_cache, T* __restrict__ v_cache,
                                    int64_t n, int64_t row_width, int hq, int hkv, int hd, int64_t max_context,
                                    int64_t p0) {
  const int64_t per_row = static_cast<int64_t>(hkv) * hd;
  const int64_t n_items = n * per_row;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < n_items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = item / per_row;
    const int rest = static_cast<int>(item - i * per_row);
    const int g = rest / hd;
    const int d = rest - g * hd;
    const T* row = qkv + i * row_width;
    const int64_t at = (static_cast<int64_t>(g) * max_context + p0 + i) * hd + d;
    k_cache[at] = row[(hq + g) * hd + d];
    v_cache[at] = row[(hq + hkv + g) * hd + d];
  }
}

// Block (row i, query head h). Warp w takes positions j = w, w + kWarps, ...
// up to p0 + i and keeps, per lane, the elements d = lane + 32 r of
//   m   = max_j s_j,  l = sum_j exp(s_j - m),  acc[d] = sum_j exp(s_j - m) v_j[d]
// updated per position with s = q . k_j / sqrt(hd) (the dot product summed
// over the lanes):
//   m' = max(m, s),  alpha = exp(m - m'),  p = exp(s - m'),
//   l' = l alpha + p,  acc' = acc alpha + p v_j        (alpha = 0 while m = -inf)
// then the block merges its warps' (m, l, acc) in shared memory.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    DecodeAttentionKernel(const T* __restrict__ qkv, const T* __restrict__ k_cache, const T* __restrict__ v_cache,
                          T* __restrict__ out, int64_t row_width, int hq, int hkv, int hd, int64_t max_context,
                          int64_t p0, float scale) {
  __shared__ float q[kMaxHeadDim];
  __shared__ float warp_m[kWarps], warp_l[kWarps];
  __shared__ float warp_acc[kWarps][kMaxHeadDim];
  const int64_t i = blockIdx.x;
  const int h = static_cast<int>(blockIdx.y);
  const int g = h / (hq / hkv);
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const T* q_row = qkv + i * row_width + static_cast<int64_t>(h) * hd;
  for (int d = static_cast<int>(threadIdx.x); d < hd; d += kThreads) q[d] = ToFloat(q_row[d]);
  __syncthreads();

  const T* k = k_cache + static_cast<int64_t>(g) * max_context * hd;
  const T* v = v_cache + static_cast<int64_t>(g) * max_context * hd;
  const int64_t visible = p0 + i + 1;
  float m = -INFINITY, l = 0.0f;
  float acc[kPerLane];
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) acc[r] = 0.0f;
  for (int64_t j = warp; j < visible; j += kWarps) {
    const T* k_j = k + j * hd;
    float dot = 0.0f;
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int d = lane + 32 * r;
      if (d < hd) dot += q[d] * ToFloat(k_j[d]);
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    const float s = dot * scale;
    const float m_new = fmaxf(m, s);
    const float alpha = expf(m - m_new);
    const float p = expf(s - m_new);
    l = l * alpha + p;
    const T* v_j = v + j * hd;
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int d = lane + 32 * r;
      if (d < hd) acc[r] = acc[r] * alpha + p * ToFloat(v_j[d]);
    }
    m = m_new;
  }
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
#pragma unroll
  for (int r = 0; r < kPerLane; ++r) {
    const int d = lane + 32 * r;
    if (d < hd) warp_acc[warp][d] = acc[r];
  }
  __syncthreads();

  // A warp that saw no position (l = 0, m = -inf) contributes nothing; warp
  // 0 always sees position 0.
  float mx = -INFINITY;
  for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, warp_m[w]);
  float weight[kWarps];
  float total = 0.0f;
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = warp_l[w] > 0.0f ? expf(warp_m[w] - mx) : 0.0f;
    total += warp_l[w] * weight[w];
  }
  const float inv = 1.0f / total;
  T* out_row = out + i * static_cast<int64_t>(hq) * hd + static_cast<int64_t>(h) * hd;
  for (int d = static_cast<int>(threadIdx.x); d < hd; d += kThreads) {
    float o = 0.0f;
    for (int w = 0; w < kWarps; ++w) o += warp_acc[w][d] * weight[w];
    out_row[d] = FromFloat<T>(o * inv);
  }
}

template <typename T>
void LaunchAppend(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t p0, const Tensor& k_cache,
                  const Tensor& v_cache, cudaStream_t stream) {
  const int64_t n = qkv.shape[0];
  const int64_t n_items = n * dims.n_kv_heads * dims.head_dim;
  if (n_items == 0) return;
  const int blocks =
      static_cast<int>(std::min<int64_t>((n_items + kAppendThreads - 1) / kAppendThreads, kMaxBlocks));
  Launch(KvCacheAppendKernel<T>, blocks, kAppendThreads, 0, stream, static_cast<const T*>(qkv.data),
         static_cast<T*>(k_cache.data), static_cast<T*>(v_cache.data), n, qkv.shape[1], dims.n_heads,
         dims.n_kv_heads, dims.head_dim, dims.max_context, p0);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void LaunchDecode(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t p0, const Tensor& k_cache,
                  const Tensor& v_cache, const Tensor& out, cudaStream_t stream) {
  const int64_t n = qkv.shape[0];
  if (n == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(dims.head_dim));
  Launch(DecodeAttentionKernel<T>, dim3(static_cast<unsigned>(n), static_cast<unsigned>(dims.n_heads)), kThreads, 0,
         stream, static_cast<const T*>(qkv.data), static_cast<const T*>(k_cache.data),
         static_cast<const T*>(v_cache.data), static_cast<T*>(out.data), qkv.shape[1], dims.n_heads, dims.n_kv_heads,
         dims.head_dim, dims.max_context, p0, scale);
  CUDA_CHECK_LAUNCH();
}

void CheckDtype(const Tensor& qkv) {
  LATAM_CHECK(qkv.dtype == DType::kF32 || qkv.dtype == DType::kBF16,
              "cuda decode attention qkv must be f32 or bf16, got " << qkv.str());
}

}  // namespace

void KvCacheAppend(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position, const Tensor& k_cache,
                   const Tensor& v_cache, cudaStream_t stream) {
  CheckDtype(qkv);
  CheckDecodeAttention(qkv, dims, first_position, k_cache, v_cache, nullptr, Device::kCUDA);
  if (qkv.dtype == DType::kF32) {
    LaunchAppend<float>(qkv, dims, first_position, k_cache, v_cache, stream);
  } else {
    LaunchAppend<__nv_bfloat16>(qkv, dims, first_position, k_cache, v_cache, stream);
  }
}

void DecodeAttention(const Tensor& qkv, const DecodeAttentionDims& dims, int64_t first_position,
                     const Tensor& k_cache, const Tensor& v_cache, const Tensor& out, cudaStream_t stream) {
  CheckDtype(qkv);
  CheckDecodeAttention(qkv, dims, first_position, k_cache, v_cache, &out, Device::kCUDA);
  LATAM_CHECK(dims.head_dim <= kMaxHeadDim,
              "cuda decode attention supports head dim up to " << kMaxHeadDim << ", got " << dims.head_dim);
  LATAM_CHECK(qkv.shape[0] <= 0x7fffffff && dims.n_heads <= 65535,
              "cuda decode attention: " << qkv.shape[0] << " rows of " << dims.n_heads << " heads exceed the grid");
  if (qkv.dtype == DType::kF32) {
    LaunchDecode<float>(qkv, dims, first_position, k_cache, v_cache, out, stream);
  } else {
    LaunchDecode<__nv_bfloat16>(qkv, dims, first_position, k_cache, v_cache, out, stream);
  }
}

}  // namespace latam::cuda
