#include "kernels/cuda/attention.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/cuda_check.h"
#include "kernels/cuda/elementwise.h"
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

// Index arithmetic shared by the kernels. One geometry describes both entry
// points: the whole-sequence attention (queries, keys and values are all the
// rows of qkv, results overwritten) and one block of ring attention (the
// queries a block of qkv's rows, the keys and values a block of kv's rows, by
// global position; results merged or added, `accumulate`). Indices i of
// queries and j of keys count from the first row of their block.
struct Geometry {
  int n_heads;
  int head_dim;
  int group;             // query heads per KV head
  float scale;           // 1 / sqrt(head_dim)
  int rows;              // rows per sequence of qkv, kv, out, lse, D and doc_start
  int64_t q_stride;      // elements per row of qkv (and dqkv)
  int64_t out_stride;    // elements per row of out (and dout)
  int64_t kv_stride;     // elements per row of the key/value buffer (qkv or kv; and its gradient)
  int64_t k_col;         // first column of the key heads in that buffer
  int64_t v_col;         // first column of the value heads
  int q_row0, q_rows;    // the query block: rows [q_row0, q_row0 + q_rows) of each sequence
  int kv_row0, kv_rows;  // the key/value block
  // Causal mask: key j is visible to query i only if j <= i + delta (delta is
  // q_pos0 - kv_pos0, clamped to [-q_rows, kv_rows], which changes no mask).
  int delta;
  int kv_pos0;      // the key block's first global position
  bool accumulate;  // the forward merges into out and lse, the backward adds to dqkv and dkv
  // Document masking (kernels/attention.h): null, or [batch * rows] with the
  // global position at which each row's document begins; key j is then
  // visible to query i only if kv_pos0 + j >= doc_start[i].
  const int32_t* doc_start;

  // Rows of qkv / out / doc_start (QueryRow) and of the key/value buffer
  // (KeyRow), counted over the whole batch.
  __device__ int64_t QueryRow(int b, int i) const { return static_cast<int64_t>(b) * rows + q_row0 + i; }
  __device__ int64_t KeyRow(int b, int j) const { return static_cast<int64_t>(b) * rows + kv_row0 + j; }
  // Index of lse and D for query i of head h.
  __device__ int64_t Stat(int b, int h, int i) const {
    return (static_cast<int64_t>(b) * n_heads + h) * rows + q_row0 + i;
  }
  // The first key query i's document lets it see (0 without documents; may
  // be negative: every key of the block).
  __device__ int FirstKey(int b, int i) const {
    return doc_start == nullptr ? 0 : doc_start[QueryRow(b, i)] - kv_pos0;
  }
  // The keys the query tile [q0, q0 + nq) may see lie in [KeyTileBegin,
  // KeyEnd): from the key tile holding its first row's first key (document
  // starts never decrease along a block) to its last row's last key.
  __device__ int KeyTileBegin(int b, int q0) const { return max(0, FirstKey(b, q0)) / kTile * kTile; }
  __device__ int KeyEnd(int q0, int nq) const { return min(kv_rows, q0 + nq + delta); }
  // The first query tile that may see a key of the key tile at k0.
  __device__ int QueryTileBegin(int k0) const { return max(0, k0 - delta) / kTile * kTile; }
};

// The whole sequence: queries, keys and values all of qkv, overwritten results.
Geometry MakeGeometry(const AttentionDims& d) {
  Geometry g;
  g.n_heads = d.n_heads;
  g.head_dim = d.head_dim;
  g.group = d.n_heads / d.n_kv_heads;
  g.scale = 1.0f / std::sqrt(static_cast<float>(d.head_dim));  // as the CPU kernel rounds it
  g.rows = d.seq_len;
  g.q_stride = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  g.out_stride = static_cast<int64_t>(d.n_heads) * d.head_dim;
  g.kv_stride = g.q_stride;
  g.k_col = static_cast<int64_t>(d.n_heads) * d.head_dim;
  g.v_col = g.k_col + static_cast<int64_t>(d.n_kv_heads) * d.head_dim;
  g.q_row0 = g.kv_row0 = 0;
  g.q_rows = g.kv_rows = d.seq_len;
  g.delta = 0;
  g.kv_pos0 = 0;
  g.accumulate = false;
  g.doc_start = d.doc_start;
  return g;
}

// The sequences of a ring-attention block as whole-sequence dims (its rows,
// heads and documents).
AttentionDims WholeDims(const AttentionBlockDims& d) {
  return AttentionDims{d.batch, d.rows, d.n_heads, d.n_kv_heads, d.head_dim, d.doc_start};
}

// One block of ring attention; the caller has checked that some key of the
// block precedes the last query (q_pos0 + q_rows - 1 >= kv_pos0).
Geometry MakeGeometry(const AttentionBlockDims& d) {
  Geometry g = MakeGeometry(WholeDims(d));
  g.kv_stride = static_cast<int64_t>(2 * d.n_kv_heads) * d.head_dim;
  g.k_col = 0;
  g.v_col = static_cast<int64_t>(d.n_kv_heads) * d.head_dim;
  g.q_row0 = d.q_row0;
  g.q_rows = d.q_rows;
  g.kv_row0 = d.kv_row0;
  g.kv_rows = d.kv_rows;
  g.delta = static_cast<int>(std::clamp<int64_t>(d.q_pos0 - d.kv_pos0, -d.q_rows, d.kv_rows));
  g.kv_pos0 = static_cast<int>(d.kv_pos0);
  g.accumulate = true;
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

// How StoreTile treats what a row of dst holds: overwritten (add false), or
// dst = src + w dst (add true) with w = weight[r] (shared memory), or 1 when
// weight is null. A row whose w is 0 is overwritten without being read; one
// whose w is negative is left untouched.
struct Combine {
  bool add = false;
  const float* weight = nullptr;
};

// dst[r * stride + e] = src[r, e] (combined with dst as `combine` says) for
// r < n_rows, e < hd, in 16-byte packs.
template <typename T>
__device__ void StoreTile(const float* src, int ld, int n_rows, int hd, T* __restrict__ dst, int64_t stride,
                          Combine combine = {}) {
  constexpr int kN = Pack<T>::kN;
  const int packs = hd / kN;
  for (int idx = threadIdx.x; idx < n_rows * packs; idx += blockDim.x) {
    const int r = idx / packs, e = idx % packs * kN;
    const float w = combine.weight == nullptr ? 1.0f : combine.weight[r];
    if (w < 0.0f) continue;
    Pack<T>* d = reinterpret_cast<Pack<T>*>(dst + r * stride + e);
    Pack<T> p;
    if (combine.add && w != 0.0f) {
      const Pack<T> old = *d;
#pragma unroll
      for (int k = 0; k < kN; ++k) p.v[k] = FromFloat<T>(src[r * ld + e + k] + w * ToFloat(old.v[k]));
    } else {
#pragma unroll
      for (int k = 0; k < kN; ++k) p.v[k] = FromFloat<T>(src[r * ld + e + k]);
    }
    *d = p;
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

// Forward. Grid (query tiles of the query block, Hq, B). Shared: Q
// (pre-scaled), K, V tiles [kTile, hd + 1] and the probability tile P
// [kTile, kScoreLd]. Per key tile, with m the running max, l the running sum
// and o the unnormalised output:
//   m' = max(m, max_j S_ij),  alpha = exp(m - m'),  P_ij = exp(S_ij - m')
//   l  = alpha l + sum_j P_ij,  o = alpha o + P V
// then out_b = o / l and lse_b = m + log(l) are stored, or with g.accumulate
// merged into the running out and lse (kernels/cuda/attention.h):
//   lse' = log(exp(lse) + exp(lse_b)),  out' = out exp(lse - lse') + out_b exp(lse_b - lse')
// (out' = out_b, out not read, while lse is -inf; rows with l = 0 untouched).
template <typename T, int kMaxHd>
__global__ void __launch_bounds__(Threads<kMaxHd>::kCount)
    AttentionForwardKernel(const T* __restrict__ qkv, const T* __restrict__ kv_buf, T* __restrict__ out,
                           float* __restrict__ lse, Geometry g) {
  using Th = Threads<kMaxHd>;
  float* smem = DynamicShared<float>();
  const int hd = g.head_dim, ld = hd + 1;
  float* sq = smem;
  float* sk = sq + kTile * ld;
  float* sv = sk + kTile * ld;
  float* sp = sv + kTile * ld;

  const int q0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / g.group;
  const int row = threadIdx.x / Th::kLanes, lane = threadIdx.x % Th::kLanes;
  const int nq = min(kTile, g.q_rows - q0);
  LoadTile(qkv + g.QueryRow(b, q0) * g.q_stride + static_cast<int64_t>(h) * hd, g.q_stride, nq, hd, g.scale, sq, ld);

  // Mask: key j is visible to query q0 + row iff first_key <= j <= last_key,
  // first_key the start of the row's document (0 without document masking).
  // Rows past the end (never stored) see the last row's keys, which keeps
  // their running max finite in the whole-sequence attention.
  const int qi = min(q0 + row, g.q_rows - 1);
  const int last_key = min(qi + g.delta, g.kv_rows - 1);
  const int first_key = g.FirstKey(b, qi);
  const int k_begin = g.KeyTileBegin(b, q0);
  float m = -INFINITY, l = 0.0f;
  float o[Th::kAcc];
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) o[a] = 0.0f;

  const int k_end = g.KeyEnd(q0, nq);
  for (int k0 = k_begin; k0 < k_end; k0 += kTile) {
    const int nk = min(kTile, g.kv_rows - k0);
    __syncthreads();  // the previous K, V tiles are consumed (and Q is loaded)
    const T* krows = kv_buf + g.KeyRow(b, k0) * g.kv_stride + static_cast<int64_t>(kvh) * hd;
    LoadTile(krows + g.k_col, g.kv_stride, nk, hd, 1.0f, sk, ld);
    LoadTile(krows + g.v_col, g.kv_stride, nk, hd, 1.0f, sv, ld);
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
    // A row that has seen no key yet (with documents or blocks) keeps l = o = 0.
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

  // out_b = o / l and lse_b = m + log(l), staged through the Q tile so rows
  // are stored contiguously; the weight of the old out rows goes to sp (free
  // now) for StoreTile.
  __syncthreads();
  const float inv = 1.0f / l;
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) {
    const int e = lane + Th::kLanes * a;
    if (e < hd) sq[row * ld + e] = o[a] * inv;
  }
  // Lane 0 of each row: lse, and with g.accumulate the merge weights of the
  // old out (sp[row]) and of out_b (sp[kTile + row]).
  if (lane == 0) {
    const bool valid_row = q0 + row < g.q_rows;
    const int64_t stat = g.Stat(b, h, q0 + row);
    float row_lse = m + logf(l), old_weight = 0.0f, new_weight = 1.0f;
    if (g.accumulate) {
      const float old_lse = valid_row ? lse[stat] : -INFINITY;
      if (l == 0.0f) {
        old_weight = -1.0f;  // no key of this block: out and lse stay
      } else if (old_lse != -INFINITY) {
        const float merged = fmaxf(old_lse, row_lse) + log1pf(expf(-fabsf(old_lse - row_lse)));
        new_weight = expf(row_lse - merged);
        old_weight = expf(old_lse - merged);
        row_lse = merged;
      }
    }
    sp[row] = old_weight;
    sp[kTile + row] = new_weight;
    if (valid_row && old_weight >= 0.0f) lse[stat] = row_lse;
  }
  if (g.accumulate) {
    __syncwarp();
    const float new_weight = sp[kTile + row];
#pragma unroll
    for (int a = 0; a < Th::kAcc; ++a) {
      const int e = lane + Th::kLanes * a;
      if (e < hd) sq[row * ld + e] *= new_weight;
    }
  }
  __syncthreads();
  StoreTile(sq, ld, nq, hd, out + g.QueryRow(b, q0) * g.out_stride + static_cast<int64_t>(h) * hd, g.out_stride,
            Combine{g.accumulate, sp});
}

constexpr int kRowDotThreads = 256;

// D[b, h, i] = sum_e dout[row i, h*hd + e] * out[row i, h*hd + e] for the
// rows i of the query block: one warp per (row, query head); consecutive
// warps take consecutive heads of a row, so the reads are contiguous.
template <typename T>
__global__ void __launch_bounds__(kRowDotThreads) RowDotKernel(const T* __restrict__ out, const T* __restrict__ dout,
                                                               float* __restrict__ dsum, Geometry g, int64_t n_items) {
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (kRowDotThreads / 32) + threadIdx.x / 32;
  if (item >= n_items) return;  // whole warps
  const int lane = threadIdx.x % 32;
  const int64_t token = item / g.n_heads;
  const int h = static_cast<int>(item % g.n_heads);
  const int b = static_cast<int>(token / g.q_rows), i = static_cast<int>(token % g.q_rows);
  const int64_t offset = g.QueryRow(b, i) * g.out_stride + static_cast<int64_t>(h) * g.head_dim;
  float s = 0.0f;
  for (int e = lane; e < g.head_dim; e += 32) s += ToFloat(dout[offset + e]) * ToFloat(out[offset + e]);
  s = RowSum<32>(s);
  if (lane == 0) dsum[g.Stat(b, h, i)] = s;
}

// dQ. Grid (query tiles of the query block, Hq, B). Shared: Q (pre-scaled),
// dO, K, V tiles [kTile, hd + 1] and dS [kTile, kScoreLd]. Per key tile:
//   P_ij = exp(S_ij - lse_i) (0 where masked),  dP_ij = dO_i . V_j
//   dS_ij = P_ij (dP_ij - D_i),  dq_i += sum_j dS_ij K_j
// then dQ = dq scale, stored to (g.accumulate: added to) dqkv.
template <typename T, typename TG, int kMaxHd>
__global__ void __launch_bounds__(Threads<kMaxHd>::kCount)
    AttentionBackwardQueryKernel(const T* __restrict__ qkv, const T* __restrict__ kv_buf, const T* __restrict__ dout,
                                 const float* __restrict__ lse, const float* __restrict__ dsum, TG* __restrict__ dqkv,
                                 Geometry g) {
  using Th = Threads<kMaxHd>;
  float* smem = DynamicShared<float>();
  const int hd = g.head_dim, ld = hd + 1;
  float* sq = smem;
  float* sdo = sq + kTile * ld;
  float* sk = sdo + kTile * ld;
  float* sv = sk + kTile * ld;
  float* sds = sv + kTile * ld;

  const int q0 = blockIdx.x * kTile, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / g.group;
  const int row = threadIdx.x / Th::kLanes, lane = threadIdx.x % Th::kLanes;
  const int nq = min(kTile, g.q_rows - q0), qi = q0 + row;
  const int64_t head_col = static_cast<int64_t>(h) * hd;
  LoadTile(qkv + g.QueryRow(b, q0) * g.q_stride + head_col, g.q_stride, nq, hd, g.scale, sq, ld);
  LoadTile(dout + g.QueryRow(b, q0) * g.out_stride + head_col, g.out_stride, nq, hd, 1.0f, sdo, ld);
  const int64_t stat = g.Stat(b, h, qi);
  const bool valid_row = qi < g.q_rows;
  const float row_lse = valid_row ? lse[stat] : 0.0f;
  const float row_dsum = valid_row ? dsum[stat] : 0.0f;
  const int first_key = valid_row ? g.FirstKey(b, qi) : 0;  // the row's document start
  const int k_begin = g.KeyTileBegin(b, q0);

  float dq[Th::kAcc];
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) dq[a] = 0.0f;

  const int k_end = g.KeyEnd(q0, nq);
  for (int k0 = k_begin; k0 < k_end; k0 += kTile) {
    const int nk = min(kTile, g.kv_rows - k0);
    __syncthreads();
    const T* krows = kv_buf + g.KeyRow(b, k0) * g.kv_stride + static_cast<int64_t>(kvh) * hd;
    LoadTile(krows + g.k_col, g.kv_stride, nk, hd, 1.0f, sk, ld);
    LoadTile(krows + g.v_col, g.kv_stride, nk, hd, 1.0f, sv, ld);
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
      // Keys past the block's end (j >= nk) are zero rows, never summed below.
      const int j = lane + Th::kLanes * c;
      const bool visible = valid_row && k0 + j <= qi + g.delta && k0 + j >= first_key;
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
  StoreTile(sq, ld, nq, hd, dqkv + g.QueryRow(b, q0) * g.q_stride + head_col, g.q_stride, Combine{g.accumulate});
}

// dK and dV. Grid (key tiles of the key/value block, Hkv, B). Shared: K, V
// tiles of this block's keys, Q (pre-scaled) and dO tiles [kTile, hd + 1],
// the transposed tiles P^T and dS^T [kTile, kScoreLd], and lse, D and the
// first visible key of the query tile. Thread rows are keys here. For every
// query head of the group, every query tile from the one holding the first
// query that may see these keys (i >= k0 - delta) and, with document masking,
// up to the one holding the end of the document of the tile's last key
// (later queries' documents start after it):
//   P^T_ji = exp(K_j . (Q_i scale) - lse_i),  dP^T_ji = V_j . dO_i
//   dS^T_ji = P^T_ji (dP^T_ji - D_i)
//   dv_j += sum_i P^T_ji dO_i,  dk_j += sum_i dS^T_ji (Q_i scale)
// dK and dV are stored to (g.accumulate: added to) dkv, in the key/value
// buffer's layout.
template <typename T, typename TG, int kMaxHd>
__global__ void __launch_bounds__(Threads<kMaxHd>::kCount)
    AttentionBackwardKeyValueKernel(const T* __restrict__ qkv, const T* __restrict__ kv_buf, const T* __restrict__ dout,
                                    const float* __restrict__ lse, const float* __restrict__ dsum, TG* __restrict__ dkv,
                                    Geometry g) {
  using Th = Threads<kMaxHd>;
  float* smem = DynamicShared<float>();
  const int hd = g.head_dim, ld = hd + 1;
  float* sk = smem;
  float* sv = sk + kTile * ld;
  float* sq = sv + kTile * ld;
  float* sdo = sq + kTile * ld;
  float* spt = sdo + kTile * ld;
  float* sdst = spt + kTile * kScoreLd;
  float* slse = sdst + kTile * kScoreLd;
  float* sdsum = slse + kTile;
  int32_t* sdoc = reinterpret_cast<int32_t*>(sdsum + kTile);

  const int k0 = blockIdx.x * kTile, kvh = blockIdx.y, b = blockIdx.z;
  const int row = threadIdx.x / Th::kLanes, lane = threadIdx.x % Th::kLanes;
  const int nk = min(kTile, g.kv_rows - k0), kj = k0 + row;
  const int64_t kv_offset = g.KeyRow(b, k0) * g.kv_stride + static_cast<int64_t>(kvh) * hd;
  LoadTile(kv_buf + kv_offset + g.k_col, g.kv_stride, nk, hd, 1.0f, sk, ld);
  LoadTile(kv_buf + kv_offset + g.v_col, g.kv_stride, nk, hd, 1.0f, sv, ld);

  float dk[Th::kAcc], dv[Th::kAcc];
#pragma unroll
  for (int a = 0; a < Th::kAcc; ++a) dk[a] = dv[a] = 0.0f;

  for (int hi = 0; hi < g.group; ++hi) {
    const int h = kvh * g.group + hi;
    for (int q0 = g.QueryTileBegin(k0); q0 < g.q_rows; q0 += kTile) {
      // doc_start never decreases: once the tile's first query's document
      // starts after the last key, so do all later ones' (uniform: every
      // thread reads the same element).
      if (g.doc_start != nullptr && g.FirstKey(b, q0) > k0 + nk - 1) break;
      const int nq = min(kTile, g.q_rows - q0);
      __syncthreads();  // the previous Q, dO, lse, D tiles are consumed (and K, V are loaded)
      LoadTile(qkv + g.QueryRow(b, q0) * g.q_stride + static_cast<int64_t>(h) * hd, g.q_stride, nq, hd, g.scale, sq,
               ld);
      LoadTile(dout + g.QueryRow(b, q0) * g.out_stride + static_cast<int64_t>(h) * hd, g.out_stride, nq, hd, 1.0f,
               sdo, ld);
      if (threadIdx.x < kTile) {
        const int i = static_cast<int>(threadIdx.x);
        const bool valid = i < nq;
        slse[i] = valid ? lse[g.Stat(b, h, q0 + i)] : 0.0f;
        sdsum[i] = valid ? dsum[g.Stat(b, h, q0 + i)] : 0.0f;
        sdoc[i] = valid ? g.FirstKey(b, q0 + i) : 0;
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
        // Keys past the block's end (kj >= nk) are never stored.
        const bool visible = i < nq && kj <= q0 + i + g.delta && kj >= sdoc[i];
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
  StoreTile(sk, ld, nk, hd, dkv + kv_offset + g.k_col, g.kv_stride, Combine{g.accumulate});
  StoreTile(sv, ld, nk, hd, dkv + kv_offset + g.v_col, g.kv_stride, Combine{g.accumulate});
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

// Grid of the tile kernels: (tiles of `rows`, heads, batch).
dim3 TileGrid(int rows, int heads, int batch) {
  return dim3(static_cast<unsigned>((rows + kTile - 1) / kTile), static_cast<unsigned>(heads),
              static_cast<unsigned>(batch));
}

template <typename T, int kMaxHd>
void LaunchForward(const Tensor& qkv, const Tensor& kv, const Geometry& g, int batch, const Tensor& out,
                   const Tensor& lse, cudaStream_t stream) {
  const size_t bytes = 3 * TileBytes(g.head_dim) + kScoreTileBytes;
  AllowSharedBytes(AttentionForwardKernel<T, kMaxHd>, bytes);
  Launch(AttentionForwardKernel<T, kMaxHd>, TileGrid(g.q_rows, g.n_heads, batch), Threads<kMaxHd>::kCount, bytes,
         stream, static_cast<const T*>(qkv.data), static_cast<const T*>(kv.data), static_cast<T*>(out.data),
         lse.as<float>(), g);
  CUDA_CHECK_LAUNCH();
}

// The backward's three launches: D of the query block into the workspace,
// dQ into dqkv (element type TQ) and dK, dV into dkv (element type TKV, the
// key/value buffer's layout; dkv is dqkv for the whole sequence).
template <typename T, typename TQ, typename TKV, int kMaxHd>
void LaunchBackward(const Tensor& qkv, const Tensor& kv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                    const Geometry& g, int batch, const Tensor& dqkv, const Tensor& dkv, const Tensor& workspace,
                    cudaStream_t stream) {
  const T* qkv_p = static_cast<const T*>(qkv.data);
  const T* kv_p = static_cast<const T*>(kv.data);
  const T* dout_p = static_cast<const T*>(dout.data);
  float* dsum = workspace.as<float>();

  const int64_t items = static_cast<int64_t>(batch) * g.q_rows * g.n_heads;
  const int64_t row_dot_blocks = (items + kRowDotThreads / 32 - 1) / (kRowDotThreads / 32);
  Launch(RowDotKernel<T>, static_cast<unsigned>(row_dot_blocks), kRowDotThreads, 0, stream,
         static_cast<const T*>(out.data), dout_p, dsum, g, items);
  CUDA_CHECK_LAUNCH();

  const size_t query_bytes = 4 * TileBytes(g.head_dim) + kScoreTileBytes;
  AllowSharedBytes(AttentionBackwardQueryKernel<T, TQ, kMaxHd>, query_bytes);
  Launch(AttentionBackwardQueryKernel<T, TQ, kMaxHd>, TileGrid(g.q_rows, g.n_heads, batch), Threads<kMaxHd>::kCount,
         query_bytes, stream, qkv_p, kv_p, dout_p, lse.as<float>(), dsum, static_cast<TQ*>(dqkv.data), g);
  CUDA_CHECK_LAUNCH();

  const size_t kv_bytes =
      4 * TileBytes(g.head_dim) + 2 * kScoreTileBytes + 2 * kTile * sizeof(float) + kTile * sizeof(int32_t);
  AllowSharedBytes(AttentionBackwardKeyValueKernel<T, TKV, kMaxHd>, kv_bytes);
  Launch(AttentionBackwardKeyValueKernel<T, TKV, kMaxHd>, TileGrid(g.kv_rows, g.n_heads / g.group, batch),
         Threads<kMaxHd>::kCount, kv_bytes, stream, qkv_p, kv_p, dout_p, lse.as<float>(), dsum,
         static_cast<TKV*>(dkv.data), g);
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

// Calls fn(T{}) with T the device element type of t (f32 or bf16).
template <typename Fn>
void ByDType(const Tensor& t, Fn fn) {
  if (t.dtype == DType::kF32) {
    fn(float{});
  } else {
    fn(__nv_bfloat16{});
  }
}

// Calls fn(G{}) with G the element type of a gradient: T when `grad` has the
// dtype of the inputs, else float (checked to be f32).
template <typename T, typename Fn>
void ByGradType(const Tensor& grad, const Tensor& qkv, Fn fn) {
  if (grad.dtype == qkv.dtype) {
    fn(T{});
  } else {
    fn(float{});
  }
}

void RunForward(const Tensor& qkv, const Tensor& kv, const Geometry& g, int batch, const Tensor& out,
                const Tensor& lse, cudaStream_t stream) {
  ByDType(qkv, [&](auto typed) {
    ByHeadDim(g.head_dim, [&](auto max_hd) {
      LaunchForward<decltype(typed), decltype(max_hd)::value>(qkv, kv, g, batch, out, lse, stream);
    });
  });
}

void RunBackward(const Tensor& qkv, const Tensor& kv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                 const Geometry& g, int batch, const Tensor& dqkv, const Tensor& dkv, const Tensor& workspace,
                 cudaStream_t stream) {
  ByDType(qkv, [&](auto typed) {
    using T = decltype(typed);
    ByGradType<T>(dqkv, qkv, [&](auto q_grad) {
      ByGradType<T>(dkv, qkv, [&](auto kv_grad) {
        ByHeadDim(g.head_dim, [&](auto max_hd) {
          LaunchBackward<T, decltype(q_grad), decltype(kv_grad), decltype(max_hd)::value>(
              qkv, kv, out, dout, lse, g, batch, dqkv, dkv, workspace, stream);
        });
      });
    });
  });
}

bool Aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data) % 16 == 0; }

// A device tensor of `dtype` and `shape`, 16-byte aligned.
void CheckAligned(const Tensor& t, DType dtype, const Shape& shape, const char* what) {
  CheckTensor(t, dtype, shape, Device::kCUDA, what);
  LATAM_CHECK(Aligned16(t), what << " must be 16-byte aligned: " << t.data);
}

int64_t QkvWidth(const AttentionDims& d) { return static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim; }
int64_t KeyValueWidth(const AttentionDims& d) { return static_cast<int64_t>(2 * d.n_kv_heads) * d.head_dim; }
int64_t TotalRows(const AttentionDims& d) { return static_cast<int64_t>(d.batch) * d.seq_len; }

void CheckDims(const Tensor& qkv, const AttentionDims& d) {
  LATAM_CHECK(d.batch > 0 && d.seq_len > 0 && d.n_heads > 0 && d.n_kv_heads > 0 && d.head_dim > 0 &&
                  d.n_heads % d.n_kv_heads == 0 && d.batch <= 65535 && d.n_heads <= 65535,
              "bad cuda attention dims B=" << d.batch << " T=" << d.seq_len << " Hq=" << d.n_heads
                                           << " Hkv=" << d.n_kv_heads << " hd=" << d.head_dim);
  LATAM_CHECK(d.head_dim % 8 == 0 && d.head_dim <= kMaxHeadDim,
              "cuda attention needs head_dim a multiple of 8 and at most " << kMaxHeadDim << ", got " << d.head_dim);
  LATAM_CHECK(qkv.dtype == DType::kF32 || qkv.dtype == DType::kBF16,
              "cuda attention qkv must be f32 or bf16, got " << qkv.str());
  CheckAligned(qkv, qkv.dtype, Shape{TotalRows(d), QkvWidth(d)}, "cuda attention qkv");
}

// out and lse of the forward, or out, dout and lse of the backward (dout
// null in the forward).
void CheckResults(const Tensor& qkv, const AttentionDims& d, const Tensor& out, const Tensor* dout,
                  const Tensor& lse) {
  const Shape out_shape{TotalRows(d), static_cast<int64_t>(d.n_heads) * d.head_dim};
  CheckAligned(out, qkv.dtype, out_shape, "cuda attention out");
  if (dout != nullptr) CheckAligned(*dout, qkv.dtype, out_shape, "cuda attention dout");
  CheckTensor(lse, DType::kF32, Shape{d.batch, d.n_heads, d.seq_len}, Device::kCUDA, "cuda attention lse");
}

void CheckWorkspace(const Tensor& workspace, const AttentionDims& d) {
  LATAM_CHECK(workspace.dtype == DType::kF32 && workspace.device == Device::kCUDA &&
                  workspace.numel() >= AttentionBackwardWorkspaceElems(d),
              "cuda attention workspace too small (size it with AttentionBackwardWorkspaceElems): " << workspace.str());
}

// A gradient buffer of the block backward: the dtype of qkv or f32.
void CheckGradient(const Tensor& grad, const Tensor& qkv, const Shape& shape, const char* what) {
  LATAM_CHECK(grad.dtype == qkv.dtype || grad.dtype == DType::kF32,
              what << " must have qkv's dtype or be f32, got " << grad.str());
  CheckAligned(grad, grad.dtype, shape, what);
}

// The block's own fields and kv, after CheckDims(qkv, WholeDims(d)). False
// when no key of the block precedes the last query (nothing to do).
bool CheckBlock(const Tensor& qkv, const Tensor& kv, const AttentionBlockDims& d) {
  LATAM_CHECK(d.q_row0 >= 0 && d.q_rows >= 0 && d.q_row0 + d.q_rows <= d.rows && d.kv_row0 >= 0 &&
                  d.kv_rows >= 0 && d.kv_row0 + d.kv_rows <= d.rows && d.q_pos0 >= 0 && d.kv_pos0 >= 0 &&
                  d.q_pos0 + d.q_rows <= INT32_MAX && d.kv_pos0 + d.kv_rows <= INT32_MAX,
              "bad cuda attention block: rows " << d.rows << ", queries [" << d.q_row0 << ", +" << d.q_rows
                                                << ") at " << d.q_pos0 << ", keys [" << d.kv_row0 << ", +"
                                                << d.kv_rows << ") at " << d.kv_pos0);
  CheckAligned(kv, qkv.dtype, Shape{TotalRows(WholeDims(d)), KeyValueWidth(WholeDims(d))}, "cuda attention kv");
  return d.q_rows > 0 && d.kv_rows > 0 && d.kv_pos0 <= d.q_pos0 + d.q_rows - 1;
}

}  // namespace

void AttentionForward(const Tensor& qkv, const AttentionDims& dims, const Tensor& out, const Tensor& lse,
                      cudaStream_t stream) {
  CheckDims(qkv, dims);
  CheckResults(qkv, dims, out, nullptr, lse);
  RunForward(qkv, qkv, MakeGeometry(dims), dims.batch, out, lse, stream);
}

int64_t AttentionBackwardWorkspaceElems(const AttentionDims& dims) {
  return static_cast<int64_t>(dims.batch) * dims.n_heads * dims.seq_len;
}

void AttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                       const AttentionDims& dims, const Tensor& dqkv, const Tensor& workspace, cudaStream_t stream) {
  CheckDims(qkv, dims);
  CheckResults(qkv, dims, out, &dout, lse);
  CheckAligned(dqkv, qkv.dtype, qkv.shape, "cuda attention dqkv");
  CheckWorkspace(workspace, dims);
  RunBackward(qkv, qkv, out, dout, lse, MakeGeometry(dims), dims.batch, dqkv, dqkv, workspace, stream);
}

void AttentionBlockForward(const Tensor& qkv, const Tensor& kv, const AttentionBlockDims& dims, const Tensor& out,
                           const Tensor& lse, cudaStream_t stream) {
  const AttentionDims whole = WholeDims(dims);
  CheckDims(qkv, whole);
  CheckResults(qkv, whole, out, nullptr, lse);
  if (!CheckBlock(qkv, kv, dims)) return;
  RunForward(qkv, kv, MakeGeometry(dims), dims.batch, out, lse, stream);
}

int64_t AttentionBlockBackwardWorkspaceElems(const AttentionBlockDims& dims) {
  return AttentionBackwardWorkspaceElems(WholeDims(dims));
}

void AttentionBlockBackward(const Tensor& qkv, const Tensor& kv, const Tensor& out, const Tensor& dout,
                            const Tensor& lse, const AttentionBlockDims& dims, const Tensor& dqkv, const Tensor& dkv,
                            const Tensor& workspace, cudaStream_t stream) {
  const AttentionDims whole = WholeDims(dims);
  CheckDims(qkv, whole);
  CheckResults(qkv, whole, out, &dout, lse);
  CheckGradient(dqkv, qkv, qkv.shape, "cuda attention dqkv");
  CheckGradient(dkv, qkv, kv.shape, "cuda attention dkv");
  CheckWorkspace(workspace, whole);
  if (!CheckBlock(qkv, kv, dims)) return;
  RunBackward(qkv, kv, out, dout, lse, MakeGeometry(dims), dims.batch, dqkv, dkv, workspace, stream);
}

// The key/value columns of qkv are [Hq hd, (Hq + 2 Hkv) hd), in kv's order.
void PackKeyValues(const Tensor& qkv, const Tensor& kv, int n_heads, int n_kv_heads, int head_dim,
                   cudaStream_t stream) {
  const AttentionDims d{1, static_cast<int>(qkv.shape.rows()), n_heads, n_kv_heads, head_dim};
  CheckDims(qkv, d);
  CheckAligned(kv, qkv.dtype, Shape{TotalRows(d), KeyValueWidth(d)}, "cuda attention kv");
  CopyColumns(qkv, static_cast<int64_t>(n_heads) * head_dim, kv, 0, KeyValueWidth(d), stream);
}

void UnpackKeyValueGrads(const Tensor& dkv, const Tensor& dqkv, int n_heads, int n_kv_heads, int head_dim,
                         cudaStream_t stream) {
  const AttentionDims d{1, static_cast<int>(dqkv.shape.rows()), n_heads, n_kv_heads, head_dim};
  CheckDims(dqkv, d);
  LATAM_CHECK(dkv.dtype == DType::kF32 || dkv.dtype == DType::kBF16,
              "cuda attention dkv must be f32 or bf16, got " << dkv.str());
  CheckAligned(dkv, dkv.dtype, Shape{TotalRows(d), KeyValueWidth(d)}, "cuda attention dkv");
  CopyColumns(dkv, 0, dqkv, static_cast<int64_t>(n_heads) * head_dim, KeyValueWidth(d), stream);
}

}  // namespace latam::cuda
