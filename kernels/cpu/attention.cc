#include "kernels/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/vec_math.h"

namespace latam::cpu {

namespace {

// Query and key tile edge. Query tiles and key tiles are aligned to the same
// grid, so every row of a processed tile pair has at least one unmasked key.
constexpr int kTile = 64;

// The tile products below use GCC's generic 16-float vectors. Every helper
// is force-inlined into the target_clones callers, so each clone compiles
// them for its own ISA (one zmm on AVX-512, two ymm on AVX2); they never
// cross a call boundary, which makes GCC's ABI note about passing such
// vectors moot.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float Vec16 __attribute__((vector_size(64)));
#define LATAM_INLINE __attribute__((always_inline)) inline

LATAM_INLINE Vec16 Load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
LATAM_INLINE void Store16(float* p, Vec16 v) { std::memcpy(p, &v, sizeof(v)); }

// C[kRows, 16 kVecs] (= or +=) A[kRows, k] B[k, 16 kVecs], row-major with
// leading dimensions. The kRows x kVecs accumulators stay in vector
// registers; 8 x 2 reaches about 80% of an AVX-512 core's FMA peak.
template <int kRows, int kVecs>
LATAM_INLINE void MicroTile(int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
                            bool accumulate) {
  Vec16 acc[kRows][kVecs];
  for (int i = 0; i < kRows; ++i) {
    for (int v = 0; v < kVecs; ++v) acc[i][v] = accumulate ? Load16(c + i * ldc + 16 * v) : Vec16{};
  }
  for (int p = 0; p < k; ++p) {
    Vec16 bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = Load16(b + static_cast<int64_t>(p) * ldb + 16 * v);
    for (int i = 0; i < kRows; ++i) {
      const float av = a[i * lda + p];
      for (int v = 0; v < kVecs; ++v) acc[i][v] += av * bv[v];
    }
  }
  for (int i = 0; i < kRows; ++i) {
    for (int v = 0; v < kVecs; ++v) Store16(c + i * ldc + 16 * v, acc[i][v]);
  }
}

// Edge tiles (columns left over after the 16-wide blocks, rows after the
// 8- and 4-row blocks).
LATAM_INLINE void EdgeTile(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
                           bool accumulate) {
  for (int i = 0; i < m; ++i) {
    float* ci = c + static_cast<int64_t>(i) * ldc;
    if (!accumulate) {
      for (int j = 0; j < n; ++j) ci[j] = 0.0f;
    }
    for (int p = 0; p < k; ++p) {
      const float av = a[static_cast<int64_t>(i) * lda + p];
      const float* bp = b + static_cast<int64_t>(p) * ldb;
      for (int j = 0; j < n; ++j) ci[j] += av * bp[j];
    }
  }
}

template <int kRows>
LATAM_INLINE void RowBlock(int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
                           bool accumulate) {
  int j = 0;
  for (; j + 32 <= n; j += 32) MicroTile<kRows, 2>(k, a, lda, b + j, ldb, c + j, ldc, accumulate);
  for (; j + 16 <= n; j += 16) MicroTile<kRows, 1>(k, a, lda, b + j, ldb, c + j, ldc, accumulate);
  if (j < n) EdgeTile(kRows, n - j, k, a, lda, b + j, ldb, c + j, ldc, accumulate);
}

// C[m, n] (= or +=) A[m, k] B[k, n] for the small tiles of attention.
LATAM_INLINE void TileMatmul(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
                             bool accumulate) {
  int i = 0;
  for (; i + 8 <= m; i += 8) {
    RowBlock<8>(n, k, a + static_cast<int64_t>(i) * lda, lda, b, ldb, c + static_cast<int64_t>(i) * ldc, ldc,
                accumulate);
  }
  if (i + 4 <= m) {
    RowBlock<4>(n, k, a + static_cast<int64_t>(i) * lda, lda, b, ldb, c + static_cast<int64_t>(i) * ldc, ldc,
                accumulate);
    i += 4;
  }
  if (i < m) {
    EdgeTile(m - i, n, k, a + static_cast<int64_t>(i) * lda, lda, b, ldb, c + static_cast<int64_t>(i) * ldc, ldc,
             accumulate);
  }
}

// dst[cols, rows] = src[rows, cols]^T.
LATAM_INLINE void Transpose(int rows, int cols, const float* src, int lds, float* dst, int ldd) {
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) dst[static_cast<int64_t>(j) * ldd + i] = src[static_cast<int64_t>(i) * lds + j];
  }
}

struct Layout {
  int64_t row_stride;  // floats per token row of qkv
  int64_t k_col;       // first column of the key heads
  int64_t v_col;       // first column of the value heads
  int64_t out_stride;  // floats per token row of out
  int group;           // query heads per KV head
};

Layout MakeLayout(const AttentionDims& d) {
  Layout l;
  l.row_stride = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  l.k_col = static_cast<int64_t>(d.n_heads) * d.head_dim;
  l.v_col = l.k_col + static_cast<int64_t>(d.n_kv_heads) * d.head_dim;
  l.out_stride = static_cast<int64_t>(d.n_heads) * d.head_dim;
  l.group = d.n_heads / d.n_kv_heads;
  return l;
}

void CheckDims(const Tensor& qkv, const AttentionDims& d) {
  LATAM_CHECK(d.batch > 0 && d.seq_len > 0 && d.n_heads > 0 && d.n_kv_heads > 0 && d.head_dim > 0 &&
                  d.n_heads % d.n_kv_heads == 0,
              "bad attention dims B=" << d.batch << " T=" << d.seq_len << " Hq=" << d.n_heads << " Hkv=" << d.n_kv_heads
                                      << " hd=" << d.head_dim);
  const int64_t width = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  CheckTensor(qkv, DType::kF32, Shape{static_cast<int64_t>(d.batch) * d.seq_len, width}, Device::kCPU, "attention qkv");
}

// Hands out 64-byte-aligned float arrays from one block; Carve(nullptr)
// only counts, which sizes the workspace.
class Carver {
 public:
  explicit Carver(float* base) : base_(base) {}
  float* Take(int64_t n) {
    float* p = base_ == nullptr ? nullptr : base_ + used_;
    used_ += (n + 15) / 16 * 16;
    return p;
  }
  int64_t used() const { return used_; }

 private:
  float* base_;
  int64_t used_ = 0;
};

// The first key tile a query tile starting at q0 sees: the one holding the
// start of its first row's document (the earliest any of its rows sees).
int FirstKeyTile(const int32_t* doc, int q0) { return doc != nullptr ? doc[q0] / kTile * kTile : 0; }

// Checks the document-start contract of kernels/attention.h.
void CheckDocStarts(const AttentionDims& d) {
  if (d.doc_start == nullptr) return;
  for (int b = 0; b < d.batch; ++b) {
    const int32_t* doc = d.doc_start + static_cast<int64_t>(b) * d.seq_len;
    for (int t = 0; t < d.seq_len; ++t) {
      const bool ok = t == 0 ? doc[0] == 0 : doc[t] == t || doc[t] == doc[t - 1];
      LATAM_CHECK(ok, "attention doc_start of sequence " << b << " position " << t << " is " << doc[t]
                                                         << " (documents must be contiguous runs)");
    }
  }
}

// Per-thread scratch for one (batch, kv head) task of the forward pass.
struct ForwardScratch {
  float *kt, *v, *q, *s, *o, *row_max, *row_sum;
  ForwardScratch(Carver& c, int seq_len, int hd)
      : kt(c.Take(static_cast<int64_t>(hd) * seq_len)),
        v(c.Take(static_cast<int64_t>(seq_len) * hd)),
        q(c.Take(static_cast<int64_t>(kTile) * hd)),
        s(c.Take(static_cast<int64_t>(kTile) * kTile)),
        o(c.Take(static_cast<int64_t>(kTile) * hd)),
        row_max(c.Take(kTile)),
        row_sum(c.Take(kTile)) {}
};

LATAM_CPU_CLONES
void ForwardTask(const float* qkv, float* out, float* lse, const AttentionDims& d, const Layout& l, int b, int g,
                 ForwardScratch& w) {
  const int T = d.seq_len, hd = d.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* base = qkv + static_cast<int64_t>(b) * T * l.row_stride;
  // K^T [hd, T] and V [T, hd] of this KV head, contiguous.
  for (int t = 0; t < T; ++t) {
    const float* krow = base + t * l.row_stride + l.k_col + static_cast<int64_t>(g) * hd;
    const float* vrow = base + t * l.row_stride + l.v_col + static_cast<int64_t>(g) * hd;
    for (int e = 0; e < hd; ++e) w.kt[e * T + t] = krow[e];
    std::copy(vrow, vrow + hd, w.v + static_cast<int64_t>(t) * hd);
  }
  const int32_t* doc = d.doc_start != nullptr ? d.doc_start + static_cast<int64_t>(b) * T : nullptr;
  for (int hi = 0; hi < l.group; ++hi) {
    const int h = g * l.group + hi;
    for (int q0 = 0; q0 < T; q0 += kTile) {
      const int nq = std::min(kTile, T - q0);
      for (int i = 0; i < nq; ++i) {
        const float* qrow = base + static_cast<int64_t>(q0 + i) * l.row_stride + static_cast<int64_t>(h) * hd;
        for (int e = 0; e < hd; ++e) w.q[i * hd + e] = qrow[e] * scale;
        w.row_max[i] = -std::numeric_limits<float>::infinity();
        w.row_sum[i] = 0.0f;
      }
      std::fill_n(w.o, static_cast<int64_t>(kTile) * hd, 0.0f);
      for (int k0 = FirstKeyTile(doc, q0); k0 < q0 + nq; k0 += kTile) {
        const int nk = std::min(kTile, q0 + nq - k0);
        TileMatmul(nq, nk, hd, w.q, hd, w.kt + k0, T, w.s, kTile, false);
        for (int i = 0; i < nq; ++i) {
          float* srow = w.s + i * kTile;
          // Key k0 + j is visible to query q0 + i iff doc_start(q0 + i) <=
          // k0 + j <= q0 + i: keys [first, visible) of the tile.
          const int visible = std::min(nk, q0 + i - k0 + 1);
          const int first = doc != nullptr ? std::max(0, doc[q0 + i] - k0) : 0;
          if (first >= visible) {  // nothing of this row here
            std::fill_n(srow, nk, 0.0f);
            continue;
          }
          std::fill_n(srow, first, 0.0f);
          float tile_max = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : tile_max)
          for (int j = first; j < visible; ++j) tile_max = srow[j] > tile_max ? srow[j] : tile_max;
          const float old_max = w.row_max[i];
          const float new_max = std::max(old_max, tile_max);
          const float alpha = ExpF(old_max - new_max);
          float tile_sum = 0.0f;
#pragma omp simd reduction(+ : tile_sum)
          for (int j = first; j < visible; ++j) {
            const float p = ExpF(srow[j] - new_max);
            srow[j] = p;
            tile_sum += p;
          }
          for (int j = visible; j < nk; ++j) srow[j] = 0.0f;
          w.row_max[i] = new_max;
          w.row_sum[i] = w.row_sum[i] * alpha + tile_sum;
          float* orow = w.o + i * hd;
          for (int e = 0; e < hd; ++e) orow[e] *= alpha;
        }
        TileMatmul(nq, hd, nk, w.s, kTile, w.v + static_cast<int64_t>(k0) * hd, hd, w.o, hd, true);
      }
      for (int i = 0; i < nq; ++i) {
        const float inv = 1.0f / w.row_sum[i];
        float* dst = out + (static_cast<int64_t>(b) * T + q0 + i) * l.out_stride + static_cast<int64_t>(h) * hd;
        const float* orow = w.o + i * hd;
        for (int e = 0; e < hd; ++e) dst[e] = orow[e] * inv;
        lse[(static_cast<int64_t>(b) * d.n_heads + h) * T + q0 + i] = w.row_max[i] + std::log(w.row_sum[i]);
      }
    }
  }
}

// Per-thread scratch for one (batch, kv head) task of the backward pass.
struct BackwardScratch {
  float *kt, *vt, *k, *dk, *dv, *q, *dout, *dsum, *dq, *p, *ds, *pt, *dst;
  BackwardScratch(Carver& c, int seq_len, int hd)
      : kt(c.Take(static_cast<int64_t>(hd) * seq_len)),
        vt(c.Take(static_cast<int64_t>(hd) * seq_len)),
        k(c.Take(static_cast<int64_t>(seq_len) * hd)),
        dk(c.Take(static_cast<int64_t>(seq_len) * hd)),
        dv(c.Take(static_cast<int64_t>(seq_len) * hd)),
        q(c.Take(static_cast<int64_t>(kTile) * hd)),
        dout(c.Take(static_cast<int64_t>(kTile) * hd)),
        dsum(c.Take(kTile)),
        dq(c.Take(static_cast<int64_t>(kTile) * hd)),
        p(c.Take(static_cast<int64_t>(kTile) * kTile)),
        ds(c.Take(static_cast<int64_t>(kTile) * kTile)),
        pt(c.Take(static_cast<int64_t>(kTile) * kTile)),
        dst(c.Take(static_cast<int64_t>(kTile) * kTile)) {}
};

// Floats one thread's scratch needs (the larger of forward and backward).
int64_t PerThreadElems(const AttentionDims& d) {
  Carver fwd(nullptr), bwd(nullptr);
  ForwardScratch f(fwd, d.seq_len, d.head_dim);
  BackwardScratch b(bwd, d.seq_len, d.head_dim);
  return std::max(fwd.used(), bwd.used());
}

// This thread's slice of the caller's workspace.
float* ThreadWorkspace(const Tensor& workspace, const AttentionDims& d) {
  const int64_t per_thread = PerThreadElems(d);
  LATAM_CHECK(static_cast<int64_t>(omp_get_thread_num() + 1) * per_thread <= workspace.numel(),
              "attention workspace of " << workspace.numel() << " floats is too small for thread "
                                        << omp_get_thread_num() << " (size it with AttentionWorkspaceElems)");
  return workspace.as<float>() + omp_get_thread_num() * per_thread;
}

LATAM_CPU_CLONES
void BackwardTask(const float* qkv, const float* out, const float* dout, const float* lse, float* dqkv,
                  const AttentionDims& d, const Layout& l, int b, int g, BackwardScratch& w) {
  const int T = d.seq_len, hd = d.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float* base = qkv + static_cast<int64_t>(b) * T * l.row_stride;
  for (int t = 0; t < T; ++t) {
    const float* krow = base + t * l.row_stride + l.k_col + static_cast<int64_t>(g) * hd;
    const float* vrow = base + t * l.row_stride + l.v_col + static_cast<int64_t>(g) * hd;
    for (int e = 0; e < hd; ++e) {
      w.kt[e * T + t] = krow[e];
      w.vt[e * T + t] = vrow[e];
    }
    std::copy(krow, krow + hd, w.k + static_cast<int64_t>(t) * hd);
  }
  std::fill_n(w.dk, static_cast<int64_t>(T) * hd, 0.0f);
  std::fill_n(w.dv, static_cast<int64_t>(T) * hd, 0.0f);
  const int32_t* doc = d.doc_start != nullptr ? d.doc_start + static_cast<int64_t>(b) * T : nullptr;
  for (int hi = 0; hi < l.group; ++hi) {
    const int h = g * l.group + hi;
    for (int q0 = 0; q0 < T; q0 += kTile) {
      const int nq = std::min(kTile, T - q0);
      for (int i = 0; i < nq; ++i) {
        const int64_t row = static_cast<int64_t>(b) * T + q0 + i;
        const float* qrow = base + static_cast<int64_t>(q0 + i) * l.row_stride + static_cast<int64_t>(h) * hd;
        const float* orow = out + row * l.out_stride + static_cast<int64_t>(h) * hd;
        const float* dorow = dout + row * l.out_stride + static_cast<int64_t>(h) * hd;
        float dsum = 0.0f;
        for (int e = 0; e < hd; ++e) {
          w.q[i * hd + e] = qrow[e] * scale;
          w.dout[i * hd + e] = dorow[e];
          dsum += dorow[e] * orow[e];
        }
        w.dsum[i] = dsum;
      }
      std::fill_n(w.dq, static_cast<int64_t>(kTile) * hd, 0.0f);
      const float* lse_rows = lse + (static_cast<int64_t>(b) * d.n_heads + h) * T + q0;
      for (int k0 = FirstKeyTile(doc, q0); k0 < q0 + nq; k0 += kTile) {
        const int nk = std::min(kTile, q0 + nq - k0);
        // P = exp(Q K^T scale - lse) with the causal mask; dP = dO V^T.
        TileMatmul(nq, nk, hd, w.q, hd, w.kt + k0, T, w.p, kTile, false);
        TileMatmul(nq, nk, hd, w.dout, hd, w.vt + k0, T, w.ds, kTile, false);
        for (int i = 0; i < nq; ++i) {
          float* prow = w.p + i * kTile;
          float* dsrow = w.ds + i * kTile;
          const int visible = std::min(nk, q0 + i - k0 + 1);
          const int first = std::min(visible, doc != nullptr ? std::max(0, doc[q0 + i] - k0) : 0);
          const float row_lse = lse_rows[i];
          const float row_dsum = w.dsum[i];
          for (int j = 0; j < first; ++j) {
            prow[j] = 0.0f;
            dsrow[j] = 0.0f;
          }
          for (int j = first; j < visible; ++j) {
            const float pv = ExpF(prow[j] - row_lse);
            prow[j] = pv;
            dsrow[j] = pv * (dsrow[j] - row_dsum);
          }
          for (int j = visible; j < nk; ++j) {
            prow[j] = 0.0f;
            dsrow[j] = 0.0f;
          }
        }
        // dV += P^T dO;  dK += dS^T (Q scale);  dQ += dS K.
        Transpose(nq, nk, w.p, kTile, w.pt, kTile);
        Transpose(nq, nk, w.ds, kTile, w.dst, kTile);
        TileMatmul(nk, hd, nq, w.pt, kTile, w.dout, hd, w.dv + static_cast<int64_t>(k0) * hd, hd, true);
        TileMatmul(nk, hd, nq, w.dst, kTile, w.q, hd, w.dk + static_cast<int64_t>(k0) * hd, hd, true);
        TileMatmul(nq, hd, nk, w.ds, kTile, w.k + static_cast<int64_t>(k0) * hd, hd, w.dq, hd, true);
      }
      for (int i = 0; i < nq; ++i) {
        float* dst = dqkv + (static_cast<int64_t>(b) * T + q0 + i) * l.row_stride + static_cast<int64_t>(h) * hd;
        const float* dqrow = w.dq + i * hd;
        for (int e = 0; e < hd; ++e) dst[e] = dqrow[e] * scale;
      }
    }
  }
  for (int t = 0; t < T; ++t) {
    float* drow = dqkv + (static_cast<int64_t>(b) * T + t) * l.row_stride;
    std::copy(w.dk + static_cast<int64_t>(t) * hd, w.dk + static_cast<int64_t>(t + 1) * hd,
              drow + l.k_col + static_cast<int64_t>(g) * hd);
    std::copy(w.dv + static_cast<int64_t>(t) * hd, w.dv + static_cast<int64_t>(t + 1) * hd,
              drow + l.v_col + static_cast<int64_t>(g) * hd);
  }
}

}  // namespace

int64_t AttentionWorkspaceElems(const AttentionDims& dims, int threads) {
  return PerThreadElems(dims) * std::max(1, threads);
}

void AttentionForward(const Tensor& qkv, const AttentionDims& d, const Tensor& out, const Tensor& lse,
                      const Tensor& workspace) {
  CheckDims(qkv, d);
  const int64_t rows = static_cast<int64_t>(d.batch) * d.seq_len;
  CheckTensor(out, DType::kF32, Shape{rows, static_cast<int64_t>(d.n_heads) * d.head_dim}, Device::kCPU,
              "attention out");
  CheckTensor(lse, DType::kF32, Shape{d.batch, d.n_heads, d.seq_len}, Device::kCPU, "attention lse");
  CheckDocStarts(d);
  const Layout l = MakeLayout(d);
  const int tasks = d.batch * d.n_kv_heads;
#pragma omp parallel
  {
    Carver carver(ThreadWorkspace(workspace, d));
    ForwardScratch scratch(carver, d.seq_len, d.head_dim);
#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < tasks; ++task) {
      ForwardTask(qkv.as<float>(), out.as<float>(), lse.as<float>(), d, l, task / d.n_kv_heads, task % d.n_kv_heads,
                  scratch);
    }
  }
}

void AttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                       const AttentionDims& d, const Tensor& dqkv, const Tensor& workspace) {
  CheckDims(qkv, d);
  const int64_t rows = static_cast<int64_t>(d.batch) * d.seq_len;
  const Shape out_shape{rows, static_cast<int64_t>(d.n_heads) * d.head_dim};
  CheckTensor(out, DType::kF32, out_shape, Device::kCPU, "attention out");
  CheckTensor(dout, DType::kF32, out_shape, Device::kCPU, "attention dout");
  CheckTensor(lse, DType::kF32, Shape{d.batch, d.n_heads, d.seq_len}, Device::kCPU, "attention lse");
  CheckTensor(dqkv, DType::kF32, qkv.shape, Device::kCPU, "attention dqkv");
  CheckDocStarts(d);
  const Layout l = MakeLayout(d);
  const int tasks = d.batch * d.n_kv_heads;
#pragma omp parallel
  {
    Carver carver(ThreadWorkspace(workspace, d));
    BackwardScratch scratch(carver, d.seq_len, d.head_dim);
#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < tasks; ++task) {
      BackwardTask(qkv.as<float>(), out.as<float>(), dout.as<float>(), lse.as<float>(), dqkv.as<float>(), d, l,
                   task / d.n_kv_heads, task % d.n_kv_heads, scratch);
    }
  }
}

}  // namespace latam::cpu
