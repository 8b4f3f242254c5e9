#include "kernels/cuda/attention.h"

#include <cuda_bf16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/vec.cuh"

namespace latam::cuda {

namespace {

// Query and key tile edge. Query and key tiles share one grid, so a query
// tile needs the key tiles up to and including its own. With document
// masking it starts at the key tile holding its first row's document start
// (documents' starts never decrease along a sequence, so no row of the tile
// sees an earlier key), and a row may see no key of the first tiles.
constexpr int kTile = 32;
constexpr int kMaxHeadDim = 256;
constexpr size_t kDefaultSharedBytes = 48 * 1024;
// Leading dimension of the kTile x kTile score tiles in shared memory (the
// padding puts the rows of a warp on distinct banks).
constexpr int kScoreLd = kTile + 1;

// Thread layout of the tile kernels, for head dims up to kMaxHd: a block has
// kMaxHd threads, kTile tile rows of kLanes adjacent threads (one warp holds
// whole rows, so row reductions are shuffles and a row's scores passed
// through shared memory need only __syncwarp). Thread (row, lane) owns the
// score columns j = lane + kLanes * c (c < kCols) and the head-dim columns
// e = lane + kLanes * a (a < kAcc) of its row.
template <int kMaxHd>
struct Threads {
  static constexpr int kCount = kMaxHd;
  static constexpr int kLanes = kMaxHd / kTile;
  static constexpr int kCols = kTile / kLanes;
  static constexpr int kAcc = kMaxHd / kLanes;
  static_assert(kLanes >= 1 && kLanes <= 32 && kTile % kLanes == 0, "tile rows must not straddle warps");
};

// Index arithmetic shared by the kernels (element offsets into qkv / out).
struct Geometry {
  int seq_len;
  int n_heads;
  int head_dim;
  int group;           // query heads per KV head
  int64_t row_stride;  // elements per token row of qkv
  int64_t k_col;       // first column of the key heads
  int64_t v_col;       // first column of the value heads
  int64_t out_stride;  // elements per token row of out
  float scale;         // 1 / sqrt(head_dim)
  // Document masking (kernels/attention.h): null, or [batch * seq_len] with
  // where each token's document begins; key j is visible to query i iff
  // doc_start[i] <= j <= i.
  const int32_t* doc_start;
};

Geometry MakeGeometry(const AttentionDims& d) {
  Geometry g;
  g.seq_len = d.seq_len;
  g.n_heads = d.n_heads;
  g.head_dim = d.head_dim;
  g.group = d.n_heads / d.n_kv_heads;
  g.row_stride = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  g.k_col = static_cast<int64_t>(d.n_heads) * d.head_dim;
  g.v_col = g.k_col + static_cast<int64_t>(d.n_kv_heads) * d.head_dim;
  g.out_stride = static_cast<int64_t>(d.n_heads) * d.head_dim;
  g.scale = 1.0f / std::sqrt(static_cast<float>(d.head_dim));  // as the CPU kernel rounds it
  g.doc_start = d.doc_start;
  return g;
}

// dst[r, e] = scale * src[r * stride + e] for the first n_rows of the kTile
// rows, 0 for the rest; dst has leading dimension ld. Each row is read
// contiguously in 16-byte packs (hd is a multiple of the pack size).
template <typename T>
__device__ void LoadTile(const T* __restrict__ src, int64_t stride, int n_rows, int hd, float scale, float* dst,
                         int ld) {
  constexpr int kN = Pack<T>::kN;
  const int packs = hd / kN;
  for (int idx = threadIdx.x; idx < kTile * packs; idx += blockDim.x) {
    const int r = idx / packs, e = idx % packs * kN;
    float* d = dst + r * ld + e;
    if (r < n_rows) {
      const Pack<T> p = *reinterpret_cast<const Pack<T>*>(src + r * stride + e);
#pragma unroll
      for (int k = 0; k < kN; ++k) d[k] = ToFloat(p.v[k]) * scale;
    } else {
#pragma unroll
      for (int k = 0; k < kN; ++k) d[k] = 0.0f;
    }
  }
}

// dst[r * stride + e] = src[r, e] for r < n_rows, e < hd, in 16-byte packs.
template <typename T>
__device__ void StoreTile(const float* src, int ld, int n_rows, int hd, T* __restrict__ dst, int64_t stride) {
  constexpr int kN = Pack<T>::kN;
  const int packs = hd / kN;
  for (int idx = threadIdx.x; idx < n_rows * packs; idx += blockDim.x) {
    const int r = idx / packs, e = idx % packs * kN;
    Pack<T> p;
#pragma unroll
    for (int k = 0; k < kN; ++k) p.v[k] = FromFloat<T>(src[r * ld + e + k]);
    *reinterpret_cast<Pack<T>*>(dst + r * stride + e) = p;
  }
}

// Max and sum over the kLanes adjacent threads of a tile row.
template <int kLanes>
__device__ __forceinline__ float RowMax(float v) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <int kLanes>
__device__ __forceinline__ float RowSum(float v) {
#pragma unroll
  for (int o = kLanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Forward. Grid (query tiles, Hq, B). Shared: Q (pre-scaled), K, V tiles
// [kTile, hd + 1] and the probability tile P [kTile, kScoreLd]. Per key tile,
// with m the running max, l the running sum and o the unnormalised output:
//   m' = max(m, max_j S_ij),  alpha = exp(m - m'),  P_ij = exp(S_ij - m')
//   l  = alpha l + sum_j P_ij,  o = alpha o + P V
// then out = o / l and lse = m + log(l).
template <typename T, int kMaxHd>
__global__ void __launch_bounds__(Threads<kMaxHd>::kCount)
    AttentionForwardKernel(const T* __restrict__ qkv, T* __restrict__ out, float* __restrict__ lse, Geometry g) {
  using Th = Threads<kMaxHd>;
  float* smem = DynamicShared<float>();
  const int hd = g.head_dim, ld = hd + 1, seq_len = g.seq_len;
  float* sq = smem;
  float* sk = sq + kTile * ld;
  float* sv = sk + kTile * ld;
  float* sp = sv + kTile * ld;

  const int q0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z;
  const int kv = h / g.group;
  const int row = threadIdx.x / Th::kLanes, lane = threadIdx.x % Th::kLanes;
  const int nq = min(kTile, seq_len - q0);
  const T* base = qkv + static_cast<int64_t>(b) * seq_len * g.row_stride;
  LoadTile(base + q0 * g.row_stride + static_cast<int64_t>(h) * hd, g.row_stride, nq, hd, g.scale, sq, ld);

  // Causal mask: key j is visible to query q0 + row iff first_key <= j <=
  // q0 + row, first_key the start of the row's document (0 without document
  // masking). Rows past the end (never stored) see the last row's keys,
  // which keeps their running max finite.
  const int last_key = min(q0 + row, seq_len - 1);
  const int32_t* doc = g.doc_start == nullptr ? nullptr : g.doc_start + static_cast<int64_t>(b) * seq_len;
  const int first_key = doc == nullptr ? 0 : doc[last_key];
  const int k_begin = doc == nullptr ? 0 : doc[q0] / kTile * kTile;
  float m = -INFINITY, l = 0.0f;
  float o[Th::kAcc];
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) o[a] = 0.0f;

  const int k_end = min(seq_len, q0 + kTile);
  for (int k0 = k_begin; k0 < k_end; k0 += kTile) {
    const int nk = min(kTile, seq_len - k0);
    __syncthreads();  // the previous K, V tiles are consumed (and Q is loaded)
    const T* krows = base + k0 * g.row_stride + static_cast<int64_t>(kv) * hd;
    LoadTile(krows + g.k_col, g.row_stride, nk, hd, 1.0f, sk, ld);
    LoadTile(krows + g.v_col, g.row_stride, nk, hd, 1.0f, sv, ld);
    __syncthreads();

    // S_ij = (Q_i scale) . K_j for this thread's columns.
    float s[Th::kCols];
#pragma unroll
    for (int c = 0; c < Th::kCols; ++c) s[c] = 0.0f;
    for (int e = 0; e < hd; ++e) {
      const float qe = sq[row * ld + e];
#pragma unroll
      for (int c = 0; c < Th::kCols; ++c) s[c] += qe * sk[(lane + Th::kLanes * c) * ld + e];
    }
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < Th::kCols; ++c) {
      const int j = k0 + lane + Th::kLanes * c;
      if (j > last_key || j < first_key) s[c] = -INFINITY;
      tile_max = fmaxf(tile_max, s[c]);
    }
    const float m_new = fmaxf(m, RowMax<Th::kLanes>(tile_max));
    // A row that has seen no key yet (only with documents) keeps l = o = 0.
    const float m_base = m_new == -INFINITY ? 0.0f : m_new;
    const float alpha = expf(m - m_base);
    float tile_sum = 0.0f;
#pragma unroll
    for (int c = 0; c < Th::kCols; ++c) {
      const float p = expf(s[c] - m_base);  // 0 where masked
      sp[row * kScoreLd + lane + Th::kLanes * c] = p;
      tile_sum += p;
    }
    l = l * alpha + RowSum<Th::kLanes>(tile_sum);
    m = m_new;
    __syncwarp();  // the row's P values, written by its own warp

    // o = alpha o + P V.
#pragma unroll
    for (int a = 0; a < Th::kAcc; ++a) o[a] *= alpha;
    for (int j = 0; j < nk; ++j) {
      const float p = sp[row * kScoreLd + j];
      const float* vj = sv + j * ld;
#pragma unroll
      for (int a = 0; a < Th::kAcc; ++a) {
        const int e = lane + Th::kLanes * a;
        if (e < hd) o[a] += p * vj[e];
      }
    }
  }

  // out = o / l, staged through the Q tile so rows are stored contiguously.
  __syncthreads();
  const float inv = 1.0f / l;
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) {
    const int e = lane + Th::kLanes * a;
    if (e < hd) sq[row * ld + e] = o[a] * inv;
  }
  if (lane == 0 && row < nq) lse[(static_cast<int64_t>(b) * g.n_heads + h) * seq_len + q0 + row] = m + logf(l);
  __syncthreads();
  StoreTile(sq, ld, nq, hd,
            out + (static_cast<int64_t>(b) * seq_len + q0) * g.out_stride + static_cast<int64_t>(h) * hd, g.out_stride);
}

constexpr int kRowDotThreads = 256;

// D[b, h, t] = sum_e dout[b*T + t, h*hd + e] * out[b*T + t, h*hd + e]: one
// warp per (token row, query head); consecutive warps take consecutive heads
// of a row, so the reads are contiguous.
template <typename T>
__global__ void __launch_bounds__(kRowDotThreads) RowDotKernel(const T* __restrict__ out, const T* __restrict__ dout,
                                                               float* __restrict__ dsum, Geometry g, int64_t n_items) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (kRowDotThreads / 32) + threadIdx.x / 32;
  if (item >= n_items) return;  // whole warps
  const int lane = threadIdx.x % 32;
  const int64_t token = item / g.n_heads;
  const int h = static_cast<int>(item % g.n_heads);
  const int64_t offset = token * g.out_stride + static_cast<int64_t>(h) * g.head_dim;
  float s = 0.0f;
  for (int e = lane; e < g.head_dim; e += 32) s += ToFloat(dout[offset + e]) * ToFloat(out[offset + e]);
  s = RowSum<32>(s);
  if (lane == 0) {
    const int64_t b = token / g.seq_len, t = token % g.seq_len;
    dsum[(b * g.n_heads + h) * g.seq_len + t] = s;
  }
}

// dQ. Grid (query tiles, Hq, B). Shared: Q (pre-scaled), dO, K, V tiles
// [kTile, hd + 1] and dS [kTile, kScoreLd]. Per key tile:
//   P_ij = exp(S_ij - lse_i) (0 where masked),  dP_ij = dO_i . V_j
//   dS_ij = P_ij (dP_ij - D_i),  dq_i += sum_j dS_ij K_j
// then dQ = dq scale.
template <typename T, int kMaxHd>
__global__ void __launch_bounds__(Threads<kMaxHd>::kCount)
    AttentionBackwardQueryKernel(const T* __restrict__ qkv, const T* __restrict__ dout, const float* __restrict__ lse,
                                 const float* __restrict__ dsum, T* __restrict__ dqkv, Geometry g) {
  using Th = Threads<kMaxHd>;
  float* smem = DynamicShared<float>();
  const int hd = g.head_dim, ld = hd + 1, seq_len = g.seq_len;
  float* sq = smem;
  float* sdo = sq + kTile * ld;
  float* sk = sdo + kTile * ld;
  float* sv = sk + kTile * ld;
  float* sds = sv + kTile * ld;

  const int q0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z;
  const int kv = h / g.group;
  const int row = threadIdx.x / Th::kLanes, lane = threadIdx.x % Th::kLanes;
  const int nq = min(kTile, seq_len - q0), qi = q0 + row;
  const T* base = qkv + static_cast<int64_t>(b) * seq_len * g.row_stride;
  const int64_t out_offset = (static_cast<int64_t>(b) * seq_len + q0) * g.out_stride + static_cast<int64_t>(h) * hd;
  LoadTile(base + q0 * g.row_stride + static_cast<int64_t>(h) * hd, g.row_stride, nq, hd, g.scale, sq, ld);
  LoadTile(dout + out_offset, g.out_stride, nq, hd, 1.0f, sdo, ld);
  const int64_t stat = (static_cast<int64_t>(b) * g.n_heads + h) * seq_len + qi;
  const bool valid_row = qi < seq_len;
  const float row_lse = valid_row ? lse[stat] : 0.0f;
  const float row_dsum = valid_row ? dsum[stat] : 0.0f;
  const int32_t* doc = g.doc_start == nullptr ? nullptr : g.doc_start + static_cast<int64_t>(b) * seq_len;
  const int first_key = doc == nullptr || !valid_row ? 0 : doc[qi];  // the row's document start
  const int k_begin = doc == nullptr ? 0 : doc[q0] / kTile * kTile;

  float dq[Th::kAcc];
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) dq[a] = 0.0f;

  const int k_end = min(seq_len, q0 + kTile);
  for (int k0 = k_begin; k0 < k_end; k0 += kTile) {
    const int nk = min(kTile, seq_len - k0);
    __syncthreads();
    const T* krows = base + k0 * g.row_stride + static_cast<int64_t>(kv) * hd;
    LoadTile(krows + g.k_col, g.row_stride, nk, hd, 1.0f, sk, ld);
    LoadTile(krows + g.v_col, g.row_stride, nk, hd, 1.0f, sv, ld);
    __syncthreads();

    float s[Th::kCols], dp[Th::kCols];
#pragma unroll
    for (int c = 0; c < Th::kCols; ++c) s[c] = dp[c] = 0.0f;
    for (int e = 0; e < hd; ++e) {
      const float qe = sq[row * ld + e], doe = sdo[row * ld + e];
#pragma unroll
      for (int c = 0; c < Th::kCols; ++c) {
        const int j = lane + Th::kLanes * c;
        s[c] += qe * sk[j * ld + e];
        dp[c] += doe * sv[j * ld + e];
      }
    }
#pragma unroll
    for (int c = 0; c < Th::kCols; ++c) {
      const int j = lane + Th::kLanes * c;
      const bool visible = valid_row && k0 + j <= qi && k0 + j >= first_key;
      const float p = visible ? expf(s[c] - row_lse) : 0.0f;
      sds[row * kScoreLd + j] = p * (dp[c] - row_dsum);
    }
    __syncwarp();

    for (int j = 0; j < nk; ++j) {
      const float ds = sds[row * kScoreLd + j];
      const float* kj = sk + j * ld;
#pragma unroll
      for (int a = 0; a < Th::kAcc; ++a) {
        const int e = lane + Th::kLanes * a;
        if (e < hd) dq[a] += ds * kj[e];
      }
    }
  }

  __syncthreads();
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) {
    const int e = lane + Th::kLanes * a;
    if (e < hd) sq[row * ld + e] = dq[a] * g.scale;
  }
  __syncthreads();
  StoreTile(sq, ld, nq, hd,
            dqkv + (static_cast<int64_t>(b) * seq_len + q0) * g.row_stride + static_cast<int64_t>(h) * hd,
            g.row_stride);
}

// dK and dV. Grid (key tiles, Hkv, B). Shared: K, V tiles of this block's
// keys, Q (pre-scaled) and dO tiles [kTile, hd + 1], the transposed tiles
// P^T and dS^T [kTile, kScoreLd], and lse, D of the query tile. Thread rows
// are keys here. For every query head of the group, every query tile at or
// after the key tile (earlier queries see none of these keys) and, with
// document masking, up to the one holding the end of the document of the
// tile's last key (later queries' documents start after it):
//   P^T_ji = exp(K_j . (Q_i scale) - lse_i),  dP^T_ji = V_j . dO_i
//   dS^T_ji = P^T_ji (dP^T_ji - D_i)
//   dv_j += sum_i P^T_ji dO_i,  dk_j += sum_i dS^T_ji (Q_i scale)
template <typename T, int kMaxHd>
__global__ void __launch_bounds__(Threads<kMaxHd>::kCount)
    AttentionBackwardKeyValueKernel(const T* __restrict__ qkv, const T* __restrict__ dout,
                                    const float* __restrict__ lse, const float* __restrict__ dsum, T* __restrict__ dqkv,
                                    Geometry g) {
  using Th = Threads<kMaxHd>;
  float* smem = DynamicShared<float>();
  const int hd = g.head_dim, ld = hd + 1, seq_len = g.seq_len;
  float* sk = smem;
  float* sv = sk + kTile * ld;
  float* sq = sv + kTile * ld;
  float* sdo = sq + kTile * ld;
  float* spt = sdo + kTile * ld;
  float* sdst = spt + kTile * kScoreLd;
  float* slse = sdst + kTile * kScoreLd;
  float* sdsum = slse + kTile;
  int32_t* sdoc = reinterpret_cast<int32_t*>(sdsum + kTile);

  const int k0 = blockIdx.x * kTile, kv = blockIdx.y, b = blockIdx.z;
  const int row = threadIdx.x / Th::kLanes, lane = threadIdx.x % Th::kLanes;
  const int nk = min(kTile, seq_len - k0), kj = k0 + row;
  const int32_t* doc = g.doc_start == nullptr ? nullptr : g.doc_start + static_cast<int64_t>(b) * seq_len;
  const T* base = qkv + static_cast<int64_t>(b) * seq_len * g.row_stride;
  const T* krows = base + k0 * g.row_stride + static_cast<int64_t>(kv) * hd;
  LoadTile(krows + g.k_col, g.row_stride, nk, hd, 1.0f, sk, ld);
  LoadTile(krows + g.v_col, g.row_stride, nk, hd, 1.0f, sv, ld);

  float dk[Th::kAcc], dv[Th::kAcc];
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) dk[a] = dv[a] = 0.0f;

  for (int hi = 0; hi < g.group; ++hi) {
    const int h = kv * g.group + hi;
    for (int q0 = k0; q0 < seq_len; q0 += kTile) {
      // doc_start never decreases: once the tile's first query's document
      // starts after the last key, so do all later ones' (uniform: every
      // thread reads the same element).
      if (doc != nullptr && doc[q0] > k0 + nk - 1) break;
      const int nq = min(kTile, seq_len - q0);
      __syncthreads();  // the previous Q, dO, lse, D tiles are consumed (and K, V are loaded)
      LoadTile(base + q0 * g.row_stride + static_cast<int64_t>(h) * hd, g.row_stride, nq, hd, g.scale, sq, ld);
      LoadTile(dout + (static_cast<int64_t>(b) * seq_len + q0) * g.out_stride + static_cast<int64_t>(h) * hd,
               g.out_stride, nq, hd, 1.0f, sdo, ld);
      if (threadIdx.x < kTile) {
        const int64_t stat = (static_cast<int64_t>(b) * g.n_heads + h) * seq_len + q0 + threadIdx.x;
        const bool valid = static_cast<int>(threadIdx.x) < nq;
        slse[threadIdx.x] = valid ? lse[stat] : 0.0f;
        sdsum[threadIdx.x] = valid ? dsum[stat] : 0.0f;
        sdoc[threadIdx.x] = valid && doc != nullptr ? doc[q0 + threadIdx.x] : 0;
      }
      __syncthreads();

      float st[Th::kCols], dpt[Th::kCols];
#pragma unroll
      for (int c = 0; c < Th::kCols; ++c) st[c] = dpt[c] = 0.0f;
      for (int e = 0; e < hd; ++e) {
        const float ke = sk[row * ld + e], ve = sv[row * ld + e];
#pragma unroll
        for (int c = 0; c < Th::kCols; ++c) {
          const int i = lane + Th::kLanes * c;
          st[c] += ke * sq[i * ld + e];
          dpt[c] += ve * sdo[i * ld + e];
        }
      }
#pragma unroll
      for (int c = 0; c < Th::kCols; ++c) {
        const int i = lane + Th::kLanes * c;
        // Keys past the end fail kj <= q0 + i < T; sdoc is 0 without documents.
        const bool visible = i < nq && kj <= q0 + i && kj >= sdoc[i];
        const float p = visible ? expf(st[c] - slse[i]) : 0.0f;
        spt[row * kScoreLd + i] = p;
        sdst[row * kScoreLd + i] = p * (dpt[c] - sdsum[i]);
      }
      __syncwarp();

      for (int i = 0; i < nq; ++i) {
        const float p = spt[row * kScoreLd + i], ds = sdst[row * kScoreLd + i];
        const float* qrow = sq + i * ld;
        const float* dorow = sdo + i * ld;
#pragma unroll
        for (int a = 0; a < Th::kAcc; ++a) {
          const int e = lane + Th::kLanes * a;
          if (e < hd) {
            dv[a] += p * dorow[e];
            dk[a] += ds * qrow[e];
          }
        }
      }
    }
  }

  // Stage dK and dV through the K and V tiles for contiguous stores.
  __syncthreads();
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) {
    const int e = lane + Th::kLanes * a;
    if (e < hd) {
      sk[row * ld + e] = dk[a];
      sv[row * ld + e] = dv[a];
    }
  }
  __syncthreads();
  T* drows = dqkv + (static_cast<int64_t>(b) * seq_len + k0) * g.row_stride + static_cast<int64_t>(kv) * hd;
  StoreTile(sk, ld, nk, hd, drows + g.k_col, g.row_stride);
  StoreTile(sv, ld, nk, hd, drows + g.v_col, g.row_stride);
}

size_t TileBytes(int hd) { return static_cast<size_t>(kTile) * (hd + 1) * sizeof(float); }
constexpr size_t kScoreTileBytes = static_cast<size_t>(kTile) * kScoreLd * sizeof(float);

// Opts a kernel into more than the default 48 KB of dynamic shared memory.
template <typename Kernel>
void AllowSharedBytes(Kernel kernel, size_t bytes) {
  if (bytes > kDefaultSharedBytes) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

dim3 TileGrid(const AttentionDims& d, int heads) {
  return dim3(static_cast<unsigned>((d.seq_len + kTile - 1) / kTile), static_cast<unsigned>(heads),
              static_cast<unsigned>(d.batch));
}

template <typename T, int kMaxHd>
void LaunchForward(const Tensor& qkv, const AttentionDims& d, const Tensor& out, const Tensor& lse,
                   cudaStream_t stream) {
  const size_t bytes = 3 * TileBytes(d.head_dim) + kScoreTileBytes;
  AllowSharedBytes(AttentionForwardKernel<T, kMaxHd>, bytes);
  Launch(AttentionForwardKernel<T, kMaxHd>, TileGrid(d, d.n_heads), Threads<kMaxHd>::kCount, bytes, stream,
         static_cast<const T*>(qkv.data), static_cast<T*>(out.data), lse.as<float>(), MakeGeometry(d));
  CUDA_CHECK_LAUNCH();
}

template <typename T, int kMaxHd>
void LaunchBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse, const AttentionDims& d,
                    const Tensor& dqkv, const Tensor& workspace, cudaStream_t stream) {
  const Geometry g = MakeGeometry(d);
  const T* qkv_p = static_cast<const T*>(qkv.data);
  const T* dout_p = static_cast<const T*>(dout.data);
  T* dqkv_p = static_cast<T*>(dqkv.data);
  float* dsum = workspace.as<float>();

  const int64_t items = static_cast<int64_t>(d.batch) * d.seq_len * d.n_heads;
  const int64_t row_dot_blocks = (items + kRowDotThreads / 32 - 1) / (kRowDotThreads / 32);
  Launch(RowDotKernel<T>, static_cast<unsigned>(row_dot_blocks), kRowDotThreads, 0, stream,
         static_cast<const T*>(out.data), dout_p, dsum, g, items);
  CUDA_CHECK_LAUNCH();

  const size_t query_bytes = 4 * TileBytes(d.head_dim) + kScoreTileBytes;
  AllowSharedBytes(AttentionBackwardQueryKernel<T, kMaxHd>, query_bytes);
  Launch(AttentionBackwardQueryKernel<T, kMaxHd>, TileGrid(d, d.n_heads), Threads<kMaxHd>::kCount, query_bytes, stream,
         qkv_p, dout_p, lse.as<float>(), dsum, dqkv_p, g);
  CUDA_CHECK_LAUNCH();

  const size_t kv_bytes =
      4 * TileBytes(d.head_dim) + 2 * kScoreTileBytes + 2 * kTile * sizeof(float) + kTile * sizeof(int32_t);
  AllowSharedBytes(AttentionBackwardKeyValueKernel<T, kMaxHd>, kv_bytes);
  Launch(AttentionBackwardKeyValueKernel<T, kMaxHd>, TileGrid(d, d.n_kv_heads), Threads<kMaxHd>::kCount, kv_bytes,
         stream, qkv_p, dout_p, lse.as<float>(), dsum, dqkv_p, g);
  CUDA_CHECK_LAUNCH();
}

// Calls fn(std::integral_constant<int, kMaxHd>) with the smallest thread
// layout (64, 128 or 256) that holds head dim hd.
template <typename Fn>
void ByHeadDim(int hd, Fn fn) {
  if (hd <= 64) {
    fn(std::integral_constant<int, 64>{});
  } else if (hd <= 128) {
    fn(std::integral_constant<int, 128>{});
  } else {
    fn(std::integral_constant<int, 256>{});
  }
}

bool Aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data) % 16 == 0; }

void CheckDims(const Tensor& qkv, const AttentionDims& d) {
  LATAM_CHECK(d.batch > 0 && d.seq_len > 0 && d.n_heads > 0 && d.n_kv_heads > 0 && d.head_dim > 0 &&
                  d.n_heads % d.n_kv_heads == 0 && d.batch <= 65535 && d.n_heads <= 65535,
              "bad cuda attention dims B=" << d.batch << " T=" << d.seq_len << " Hq=" << d.n_heads
                                           << " Hkv=" << d.n_kv_heads << " hd=" << d.head_dim);
  LATAM_CHECK(d.head_dim % 8 == 0 && d.head_dim <= kMaxHeadDim,
              "cuda attention needs head_dim a multiple of 8 and at most " << kMaxHeadDim << ", got " << d.head_dim);
  LATAM_CHECK(qkv.dtype == DType::kF32 || qkv.dtype == DType::kBF16,
              "cuda attention qkv must be f32 or bf16, got " << qkv.str());
  const int64_t width = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  CheckTensor(qkv, qkv.dtype, Shape{static_cast<int64_t>(d.batch) * d.seq_len, width}, Device::kCUDA,
              "cuda attention qkv");
  LATAM_CHECK(Aligned16(qkv), "cuda attention qkv must be 16-byte aligned: " << qkv.data);
}

void CheckActivation(const Tensor& t, const Tensor& qkv, const AttentionDims& d, const char* what) {
  CheckTensor(t, qkv.dtype,
              Shape{static_cast<int64_t>(d.batch) * d.seq_len, static_cast<int64_t>(d.n_heads) * d.head_dim},
              Device::kCUDA, what);
  LATAM_CHECK(Aligned16(t), what << " must be 16-byte aligned: " << t.data);
}

}  // namespace

void AttentionForward(const Tensor& qkv, const AttentionDims& dims, const Tensor& out, const Tensor& lse,
                      cudaStream_t stream) {
  CheckDims(qkv, dims);
  CheckActivation(out, qkv, dims, "cuda attention out");
  CheckTensor(lse, DType::kF32, Shape{dims.batch, dims.n_heads, dims.seq_len}, Device::kCUDA, "cuda attention lse");
  auto run = [&](auto typed) {
    using T = decltype(typed);
    ByHeadDim(dims.head_dim,
              [&](auto max_hd) { LaunchForward<T, decltype(max_hd)::value>(qkv, dims, out, lse, stream); });
  };
  if (qkv.dtype == DType::kF32) {
    run(float{});
  } else {
    run(__nv_bfloat16{});
  }
}

int64_t AttentionBackwardWorkspaceElems(const AttentionDims& dims) {
  return static_cast<int64_t>(dims.batch) * dims.n_heads * dims.seq_len;
}

void AttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                       const AttentionDims& dims, const Tensor& dqkv, const Tensor& workspace, cudaStream_t stream) {
  CheckDims(qkv, dims);
  CheckActivation(out, qkv, dims, "cuda attention out");
  CheckActivation(dout, qkv, dims, "cuda attention dout");
  CheckTensor(lse, DType::kF32, Shape{dims.batch, dims.n_heads, dims.seq_len}, Device::kCUDA, "cuda attention lse");
  CheckTensor(dqkv, qkv.dtype, qkv.shape, Device::kCUDA, "cuda attention dqkv");
  LATAM_CHECK(Aligned16(dqkv), "cuda attention dqkv must be 16-byte aligned: " << dqkv.data);
  LATAM_CHECK(workspace.dtype == DType::kF32 && workspace.device == Device::kCUDA &&
                  workspace.numel() >= AttentionBackwardWorkspaceElems(dims),
              "cuda attention workspace too small (size it with AttentionBackwardWorkspaceElems): " << workspace.str());
  auto run = [&](auto typed) {
    using T = decltype(typed);
    ByHeadDim(dims.head_dim, [&](auto max_hd) {
      LaunchBackward<T, decltype(max_hd)::value>(qkv, out, dout, lse, dims, dqkv, workspace, stream);
    });
  };
  if (qkv.dtype == DType::kF32) {
    run(float{});
  } else {
    run(__nv_bfloat16{});
  }
}

}  // namespace latam::cuda
