#include "kernels/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/vec_math.h"

namespace latam::cpu {

namespace {

// Query and key tile edge. Query tiles start at the query block's first row
// and key tiles at multiples of kTile in the key block; the two grids need
// not line up in position, so a row of a processed tile pair may see no key
// of it (its scores are zeroed and its running max and sum stay as they were).
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

// One attention call's operands and extent (AttentionBlockDims). Every
// tensor holds `rows` local rows per sequence; the query block is local rows
// [q_row0, q_row0 + q_rows) at positions q_pos0 + i, the key/value block is
// rows [kv_row0, kv_row0 + kv_rows) of kv at positions kv_pos0 + j. The
// whole-sequence kernels are the special case q = kv = qkv, both blocks
// every row, positions from 0. dq has q's layout and dkv has kv's.
struct Problem {
  int batch, rows, n_heads, n_kv_heads, hd;
  int group;        // query heads per KV head
  const float* q;   // query head h of row t: q + t q_stride + h hd
  const float* kv;  // key head g of row t: kv + t kv_stride + k_col + g hd
  int64_t q_stride, kv_stride;
  int64_t k_col, v_col;  // first column of the key heads, of the value heads
  int64_t out_stride;    // floats per row of out and dout
  int q_row0, q_rows, kv_row0, kv_rows;
  int64_t q_pos0, kv_pos0;
  const int32_t* doc_start;  // per local row, in the positions' frame; or null
  // The block kernels merge into out and lse and add to dq, dk and dv; the
  // whole-sequence kernels overwrite them.
  bool accumulate;
};

Problem WholeSequence(const float* qkv, const AttentionDims& d) {
  Problem p;
  p.batch = d.batch;
  p.rows = d.seq_len;
  p.n_heads = d.n_heads;
  p.n_kv_heads = d.n_kv_heads;
  p.hd = d.head_dim;
  p.group = d.n_heads / d.n_kv_heads;
  p.q = p.kv = qkv;
  p.q_stride = p.kv_stride = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  p.k_col = static_cast<int64_t>(d.n_heads) * d.head_dim;
  p.v_col = p.k_col + static_cast<int64_t>(d.n_kv_heads) * d.head_dim;
  p.out_stride = static_cast<int64_t>(d.n_heads) * d.head_dim;
  p.q_row0 = p.kv_row0 = 0;
  p.q_rows = p.kv_rows = d.seq_len;
  p.q_pos0 = p.kv_pos0 = 0;
  p.doc_start = d.doc_start;
  p.accumulate = false;
  return p;
}

// The whole-sequence dimensions of a block's tensors (and of its workspace).
AttentionDims TensorDims(const AttentionBlockDims& d) {
  return AttentionDims{d.batch, d.rows, d.n_heads, d.n_kv_heads, d.head_dim, d.doc_start};
}

Problem Block(const float* qkv, const float* kv, const AttentionBlockDims& d) {
  Problem p = WholeSequence(qkv, TensorDims(d));
  p.kv = kv;
  p.kv_stride = 2 * static_cast<int64_t>(d.n_kv_heads) * d.head_dim;
  p.k_col = 0;
  p.v_col = static_cast<int64_t>(d.n_kv_heads) * d.head_dim;
  p.q_row0 = d.q_row0;
  p.q_rows = d.q_rows;
  p.kv_row0 = d.kv_row0;
  p.kv_rows = d.kv_rows;
  p.q_pos0 = d.q_pos0;
  p.kv_pos0 = d.kv_pos0;
  p.accumulate = true;
  return p;
}

void CheckDims(const Tensor& qkv, const AttentionDims& d) {
  LATAM_CHECK(d.batch > 0 && d.seq_len > 0 && d.n_heads > 0 && d.n_kv_heads > 0 && d.head_dim > 0 &&
                  d.n_heads % d.n_kv_heads == 0,
              "bad attention dims B=" << d.batch << " T=" << d.seq_len << " Hq=" << d.n_heads << " Hkv=" << d.n_kv_heads
                                      << " hd=" << d.head_dim);
  const int64_t width = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  CheckTensor(qkv, DType::kF32, Shape{static_cast<int64_t>(d.batch) * d.seq_len, width}, Device::kCPU, "attention qkv");
}

// out [B*T, Hq*hd] and lse [B, Hq, T].
void CheckOutputs(const Tensor& out, const Tensor& lse, const AttentionDims& d) {
  CheckTensor(out, DType::kF32,
              Shape{static_cast<int64_t>(d.batch) * d.seq_len, static_cast<int64_t>(d.n_heads) * d.head_dim},
              Device::kCPU, "attention out");
  CheckTensor(lse, DType::kF32, Shape{d.batch, d.n_heads, d.seq_len}, Device::kCPU, "attention lse");
}

// Checks the document-start contract of kernels/attention.h on query rows
// [row0, row0 + n) of every sequence, at positions pos0 + i: the first row's
// document starts at or before it, and each later row starts a document or
// continues its predecessor's.
void CheckDocStarts(const int32_t* doc_start, int batch, int rows, int row0, int n, int64_t pos0) {
  if (doc_start == nullptr) return;
  for (int b = 0; b < batch; ++b) {
    const int32_t* doc = doc_start + static_cast<int64_t>(b) * rows + row0;
    for (int i = 0; i < n; ++i) {
      const int64_t pos = pos0 + i;
      const bool ok = i == 0 ? doc[0] >= 0 && doc[0] <= pos : doc[i] == pos || doc[i] == doc[i - 1];
      LATAM_CHECK(ok, "attention doc_start of sequence " << b << " position " << pos << " is " << doc[i]
                                                         << " (documents must be contiguous runs)");
    }
  }
}

// The block kernels' arguments: qkv, kv and the two row ranges.
void CheckBlock(const Tensor& qkv, const Tensor& kv, const AttentionBlockDims& d) {
  CheckDims(qkv, TensorDims(d));
  LATAM_CHECK(d.q_row0 >= 0 && d.q_rows >= 0 && static_cast<int64_t>(d.q_row0) + d.q_rows <= d.rows,
              "attention block query rows [" << d.q_row0 << ", " << static_cast<int64_t>(d.q_row0) + d.q_rows
                                             << ") outside the " << d.rows << " rows of a sequence");
  LATAM_CHECK(d.kv_row0 >= 0 && d.kv_rows >= 0 && static_cast<int64_t>(d.kv_row0) + d.kv_rows <= d.rows,
              "attention block key/value rows [" << d.kv_row0 << ", " << static_cast<int64_t>(d.kv_row0) + d.kv_rows
                                                 << ") outside the " << d.rows << " rows of a sequence");
  LATAM_CHECK(d.q_pos0 >= 0 && d.kv_pos0 >= 0,
              "attention block positions must be non-negative: q_pos0=" << d.q_pos0 << " kv_pos0=" << d.kv_pos0);
  CheckTensor(kv, DType::kF32,
              Shape{static_cast<int64_t>(d.batch) * d.rows, 2 * static_cast<int64_t>(d.n_kv_heads) * d.head_dim},
              Device::kCPU, "attention block kv");
  CheckDocStarts(d.doc_start, d.batch, d.rows, d.q_row0, d.q_rows, d.q_pos0);
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

// Keys [lo, hi) of the key block that some query of [q0, q0 + nq) in the
// query block sees, lo rounded down to the key tile grid: keys past hi follow
// the last query, keys before lo's tile precede the first query's document
// (the earliest any of them sees: document starts never decrease along the
// query block). lo >= hi when the queries see no key (or nq is 0). doc is
// the query block's document starts (or null).
struct KeyRange {
  int lo, hi;
};
LATAM_INLINE KeyRange VisibleKeys(const Problem& p, const int32_t* doc, int q0, int nq) {
  const int64_t hi = std::min<int64_t>(p.kv_rows, p.q_pos0 + q0 + nq - p.kv_pos0);
  if (nq <= 0 || hi <= 0) return KeyRange{0, 0};
  const int64_t lo = doc != nullptr ? std::max<int64_t>(0, doc[q0] - p.kv_pos0) : 0;
  if (lo >= hi) return KeyRange{0, 0};
  return KeyRange{static_cast<int>(lo / kTile * kTile), static_cast<int>(hi)};
}

// Keys [first, last) of the key tile [k0, k0 + nk) that query i of the block
// sees (by position: doc_start(i) <= key <= query); first == last for none.
struct RowSpan {
  int first, last;
};
LATAM_INLINE RowSpan RowKeys(const Problem& p, const int32_t* doc, int i, int k0, int nk) {
  const int64_t key_pos0 = p.kv_pos0 + k0;
  const int last = static_cast<int>(std::clamp<int64_t>(p.q_pos0 + i - key_pos0 + 1, 0, nk));
  const int first = doc != nullptr ? static_cast<int>(std::clamp<int64_t>(doc[i] - key_pos0, 0, last)) : 0;
  return RowSpan{first, last};
}

// dst (= or +=) src * scale, n floats.
LATAM_INLINE void StoreRow(float* dst, const float* src, int n, float scale, bool accumulate) {
  if (accumulate) {
    for (int e = 0; e < n; ++e) dst[e] += src[e] * scale;
  } else {
    for (int e = 0; e < n; ++e) dst[e] = src[e] * scale;
  }
}

// A query row's result over one block, o / sum with log-sum-exp max +
// log(sum), written to out_row and *lse, or merged by log-sum-exp into the
// running result there (out 0 and lse -inf before the row's first keys).
LATAM_INLINE void StoreResult(const float* o, float max, float sum, int hd, bool merge, float* out_row, float* lse) {
  const float inv = 1.0f / sum;
  const float block_lse = max + std::log(sum);
  const float old_lse = merge ? *lse : -std::numeric_limits<float>::infinity();
  if (old_lse == -std::numeric_limits<float>::infinity()) {
    StoreRow(out_row, o, hd, inv, false);
    *lse = block_lse;
    return;
  }
  const float new_lse = std::max(old_lse, block_lse) + std::log1p(std::exp(-std::abs(old_lse - block_lse)));
  const float keep = std::exp(old_lse - new_lse);
  for (int e = 0; e < hd; ++e) out_row[e] *= keep;
  StoreRow(out_row, o, hd, std::exp(block_lse - new_lse) * inv, true);
  *lse = new_lse;
}

// One (batch b, KV head g) task's view of the problem: its query block's
// rows, its key/value block's rows at head g's columns, the query block's
// document starts (or null), and the keys any of its queries sees.
struct TaskRows {
  const float* q;  // query block row i: q + i q_stride
  const float* k;  // key/value block row j: k + j kv_stride, v + j kv_stride
  const float* v;
  const int32_t* doc;
  KeyRange keys;
};
LATAM_INLINE TaskRows MakeTaskRows(const Problem& p, int b, int g) {
  const int64_t seq_row = static_cast<int64_t>(b) * p.rows;
  const float* kv = p.kv + (seq_row + p.kv_row0) * p.kv_stride + static_cast<int64_t>(g) * p.hd;
  TaskRows t;
  t.q = p.q + (seq_row + p.q_row0) * p.q_stride;
  t.k = kv + p.k_col;
  t.v = kv + p.v_col;
  t.doc = p.doc_start != nullptr ? p.doc_start + seq_row + p.q_row0 : nullptr;
  t.keys = VisibleKeys(p, t.doc, 0, p.q_rows);
  return t;
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
void ForwardTask(const Problem& p, float* out, float* lse, int b, int g, ForwardScratch& w) {
  const int hd = p.hd, nkv = p.kv_rows;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const TaskRows task = MakeTaskRows(p, b, g);
  const int32_t* doc = task.doc;
  // K^T [hd, kv_rows] and V [kv_rows, hd] of this KV head, contiguous; only
  // the keys some query sees are loaded.
  for (int t = task.keys.lo; t < task.keys.hi; ++t) {
    const float* krow = task.k + t * p.kv_stride;
    const float* vrow = task.v + t * p.kv_stride;
    for (int e = 0; e < hd; ++e) w.kt[e * nkv + t] = krow[e];
    std::copy(vrow, vrow + hd, w.v + static_cast<int64_t>(t) * hd);
  }
  for (int hi = 0; hi < p.group; ++hi) {
    const int h = g * p.group + hi;
    for (int q0 = 0; q0 < p.q_rows; q0 += kTile) {
      const int nq = std::min(kTile, p.q_rows - q0);
      const KeyRange tile_keys = VisibleKeys(p, doc, q0, nq);
      if (tile_keys.lo >= tile_keys.hi) continue;
      for (int i = 0; i < nq; ++i) {
        const float* qrow = task.q + static_cast<int64_t>(q0 + i) * p.q_stride + static_cast<int64_t>(h) * hd;
        for (int e = 0; e < hd; ++e) w.q[i * hd + e] = qrow[e] * scale;
        w.row_max[i] = -std::numeric_limits<float>::infinity();
        w.row_sum[i] = 0.0f;
      }
      std::fill_n(w.o, static_cast<int64_t>(kTile) * hd, 0.0f);
      for (int k0 = tile_keys.lo; k0 < tile_keys.hi; k0 += kTile) {
        const int nk = std::min(kTile, tile_keys.hi - k0);
        TileMatmul(nq, nk, hd, w.q, hd, w.kt + k0, nkv, w.s, kTile, false);
        for (int i = 0; i < nq; ++i) {
          float* srow = w.s + i * kTile;
          const RowSpan span = RowKeys(p, doc, q0 + i, k0, nk);
          const int first = span.first, visible = span.last;
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
            const float pv = ExpF(srow[j] - new_max);
            srow[j] = pv;
            tile_sum += pv;
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
        if (w.row_sum[i] == 0.0f) continue;  // the row sees no key of the block: unchanged
        const int64_t row = static_cast<int64_t>(b) * p.rows + p.q_row0 + q0 + i;
        StoreResult(w.o + i * hd, w.row_max[i], w.row_sum[i], hd, p.accumulate,
                    out + row * p.out_stride + static_cast<int64_t>(h) * hd,
                    lse + (static_cast<int64_t>(b) * p.n_heads + h) * p.rows + p.q_row0 + q0 + i);
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
void BackwardTask(const Problem& p, const float* out, const float* dout, const float* lse, float* dq, float* dkv, int b,
                  int g, BackwardScratch& w) {
  const int hd = p.hd, nkv = p.kv_rows;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const TaskRows task = MakeTaskRows(p, b, g);
  const int32_t* doc = task.doc;
  const KeyRange keys = task.keys;
  // K^T, V^T [hd, kv_rows] and K [kv_rows, hd] of this KV head, contiguous.
  for (int t = keys.lo; t < keys.hi; ++t) {
    const float* krow = task.k + t * p.kv_stride;
    const float* vrow = task.v + t * p.kv_stride;
    for (int e = 0; e < hd; ++e) {
      w.kt[e * nkv + t] = krow[e];
      w.vt[e * nkv + t] = vrow[e];
    }
    std::copy(krow, krow + hd, w.k + static_cast<int64_t>(t) * hd);
  }
  std::fill(w.dk + static_cast<int64_t>(keys.lo) * hd, w.dk + static_cast<int64_t>(keys.hi) * hd, 0.0f);
  std::fill(w.dv + static_cast<int64_t>(keys.lo) * hd, w.dv + static_cast<int64_t>(keys.hi) * hd, 0.0f);
  for (int hi = 0; hi < p.group; ++hi) {
    const int h = g * p.group + hi;
    for (int q0 = 0; q0 < p.q_rows; q0 += kTile) {
      const int nq = std::min(kTile, p.q_rows - q0);
      const KeyRange tile_keys = VisibleKeys(p, doc, q0, nq);
      if (tile_keys.lo >= tile_keys.hi) continue;
      const int64_t row0 = static_cast<int64_t>(b) * p.rows + p.q_row0 + q0;
      for (int i = 0; i < nq; ++i) {
        const float* qrow = task.q + static_cast<int64_t>(q0 + i) * p.q_stride + static_cast<int64_t>(h) * hd;
        const float* orow = out + (row0 + i) * p.out_stride + static_cast<int64_t>(h) * hd;
        const float* dorow = dout + (row0 + i) * p.out_stride + static_cast<int64_t>(h) * hd;
        float dsum = 0.0f;
        for (int e = 0; e < hd; ++e) {
          w.q[i * hd + e] = qrow[e] * scale;
          w.dout[i * hd + e] = dorow[e];
          dsum += dorow[e] * orow[e];
        }
        w.dsum[i] = dsum;
      }
      std::fill_n(w.dq, static_cast<int64_t>(kTile) * hd, 0.0f);
      const float* lse_rows = lse + (static_cast<int64_t>(b) * p.n_heads + h) * p.rows + p.q_row0 + q0;
      for (int k0 = tile_keys.lo; k0 < tile_keys.hi; k0 += kTile) {
        const int nk = std::min(kTile, tile_keys.hi - k0);
        // P = exp(Q K^T scale - lse) on the visible keys; dP = dO V^T.
        TileMatmul(nq, nk, hd, w.q, hd, w.kt + k0, nkv, w.p, kTile, false);
        TileMatmul(nq, nk, hd, w.dout, hd, w.vt + k0, nkv, w.ds, kTile, false);
        for (int i = 0; i < nq; ++i) {
          float* prow = w.p + i * kTile;
          float* dsrow = w.ds + i * kTile;
          const RowSpan span = RowKeys(p, doc, q0 + i, k0, nk);
          const int first = span.first, visible = span.last;
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
        StoreRow(dq + (row0 + i) * p.q_stride + static_cast<int64_t>(h) * hd, w.dq + i * hd, hd, scale, p.accumulate);
      }
    }
  }
  // Keys outside [lo, hi) get no gradient. For the whole sequence [lo, hi) is
  // every key (the first row's document starts at 0, the last row sees every
  // earlier key), so every row of dk and dv is written.
  for (int t = keys.lo; t < keys.hi; ++t) {
    float* drow = dkv + (static_cast<int64_t>(b) * p.rows + p.kv_row0 + t) * p.kv_stride;
    StoreRow(drow + p.k_col + static_cast<int64_t>(g) * hd, w.dk + static_cast<int64_t>(t) * hd, hd, 1.0f,
             p.accumulate);
    StoreRow(drow + p.v_col + static_cast<int64_t>(g) * hd, w.dv + static_cast<int64_t>(t) * hd, hd, 1.0f,
             p.accumulate);
  }
}

// Runs task(b, g, scratch) for every (batch, kv head) pair on the OpenMP
// team, each thread with its scratch carved from its slice of workspace.
template <typename Scratch, typename Task>
void ForEachTask(const Problem& p, const Tensor& workspace, const Task& task) {
  const AttentionDims d{p.batch, p.rows, p.n_heads, p.n_kv_heads, p.hd};
  const int tasks = p.batch * p.n_kv_heads;
#pragma omp parallel
  {
    Carver carver(ThreadWorkspace(workspace, d));
    Scratch scratch(carver, p.rows, p.hd);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < tasks; ++t) task(t / p.n_kv_heads, t % p.n_kv_heads, scratch);
  }
}

void RunForward(const Problem& p, const Tensor& out, const Tensor& lse, const Tensor& workspace) {
  ForEachTask<ForwardScratch>(p, workspace, [&](int b, int g, ForwardScratch& w) {
    ForwardTask(p, out.as<float>(), lse.as<float>(), b, g, w);
  });
}

// dq has the query source's layout, dkv the key/value source's (for the
// whole sequence both are dqkv).
void RunBackward(const Problem& p, const Tensor& out, const Tensor& dout, const Tensor& lse, const Tensor& dq,
                 const Tensor& dkv, const Tensor& workspace) {
  CheckTensor(dout, DType::kF32, out.shape, Device::kCPU, "attention dout");
  ForEachTask<BackwardScratch>(p, workspace, [&](int b, int g, BackwardScratch& w) {
    BackwardTask(p, out.as<float>(), dout.as<float>(), lse.as<float>(), dq.as<float>(), dkv.as<float>(), b, g, w);
  });
}

}  // namespace

int64_t AttentionWorkspaceElems(const AttentionDims& dims, int threads) {
  return PerThreadElems(dims) * std::max(1, threads);
}

void AttentionForward(const Tensor& qkv, const AttentionDims& d, const Tensor& out, const Tensor& lse,
                      const Tensor& workspace) {
  CheckDims(qkv, d);
  CheckOutputs(out, lse, d);
  CheckDocStarts(d.doc_start, d.batch, d.seq_len, 0, d.seq_len, 0);
  RunForward(WholeSequence(qkv.as<float>(), d), out, lse, workspace);
}

void AttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                       const AttentionDims& d, const Tensor& dqkv, const Tensor& workspace) {
  CheckDims(qkv, d);
  CheckOutputs(out, lse, d);
  CheckTensor(dqkv, DType::kF32, qkv.shape, Device::kCPU, "attention dqkv");
  CheckDocStarts(d.doc_start, d.batch, d.seq_len, 0, d.seq_len, 0);
  RunBackward(WholeSequence(qkv.as<float>(), d), out, dout, lse, dqkv, dqkv, workspace);
}

void AttentionBlockForward(const Tensor& qkv, const Tensor& kv, const AttentionBlockDims& d, const Tensor& out,
                           const Tensor& lse, const Tensor& workspace) {
  CheckBlock(qkv, kv, d);
  CheckOutputs(out, lse, TensorDims(d));
  RunForward(Block(qkv.as<float>(), kv.as<float>(), d), out, lse, workspace);
}

void AttentionBlockBackward(const Tensor& qkv, const Tensor& kv, const Tensor& out, const Tensor& dout,
                            const Tensor& lse, const AttentionBlockDims& d, const Tensor& dqkv, const Tensor& dkv,
                            const Tensor& workspace) {
  CheckBlock(qkv, kv, d);
  CheckOutputs(out, lse, TensorDims(d));
  CheckTensor(dqkv, DType::kF32, qkv.shape, Device::kCPU, "attention dqkv");
  CheckTensor(dkv, DType::kF32, kv.shape, Device::kCPU, "attention block dkv");
  RunBackward(Block(qkv.as<float>(), kv.as<float>(), d), out, dout, lse, dqkv, dkv, workspace);
}

}  // namespace latam::cpu
