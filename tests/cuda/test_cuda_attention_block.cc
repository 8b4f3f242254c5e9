// Ring attention's CUDA block kernels (kernels/cuda/attention.h:
// AttentionBlockForward, AttentionBlockBackward, PackKeyValues,
// UnpackKeyValueGrads) on fresh random inputs.
//
// Oracle: the CPU whole-sequence attention (cpu::AttentionForward and
// AttentionBackward, fp32) on the global sequence. The GPU runs ring
// attention's decomposition of it: T = 2 C L tokens in chunks c = positions
// [c L, (c + 1) L); rank r of C holds chunks r and 2C-1-r as its 2L local
// rows, and its kv is packed from its qkv (PackKeyValues). At ring step k,
// rank r merges every (query half, key/value half) block of rank
// (r - k) mod C's kv into its out and lse, which start at 0 and -inf
// (cuda::Fill); blocks whose keys all follow their queries are passed too
// (the kernels skip them). The backward adds every block's dQ to rank r's
// dqkv and its dK, dV to the kv owner's dkv, which is then unpacked into the
// owner's dqkv (UnpackKeyValueGrads). The rows of every rank, put back in
// global order, are compared with the oracle: out and lse with its forward,
// dqkv with its backward run on the ring's own out and lse (so each pass is
// checked alone). C in {1, 2, 4} x L in {1, 5, 64, 70}: one-token chunks,
// chunks shorter than the kernels' 32-row tile, whole tiles and a partial
// last tile; per case a random head dim (a multiple of 8 in [16, 128]),
// query/KV head counts (GQA groups 1 to 4) and batch 1 or 2. With document
// masking, every sequence is a random mix of one-token, short and long
// documents (up to 90 tokens: longer than a tile, spanning chunks and so
// ranks); for L = 70 the first sequence has a fixed mix instead (one-token
// documents, one ending on a chunk boundary, ones of 32 and 100 tokens).
//
// Tolerances: |gpu - oracle| <= atol + rtol |oracle| + s (2C + 1) max|oracle|
// element-wise, (2C + 1) bounding the bf16 roundings a value goes through:
// up to 2C blocks merged or added into it, and one more.
//   f32     out, lse 2e-5 + 1e-5 rel; dqkv 5e-5 + 1e-4 rel; s = 0: as for the
//           whole-sequence kernels (tests/cuda/test_cuda_attention.cc). Both
//           sides compute in fp32; the ring adds up to 2C merges of (out,
//           lse) in fp32 and sums dQ, dK, dV over the blocks in another order.
//   bf16    inputs are rounded to bf16 first, and the oracle gets the same
//           values. out is rounded to bf16 at every merge, each time by up
//           to 2^-9 of the running out (a convex mix of V rows, so about
//           max|out| in size): 1e-3 + 1e-2 rel (one rounding, as in the
//           whole-sequence test) and s = 2^-8 (twice the bound). lse stays
//           f32, from the same inputs: as f32. dqkv with bf16 gradients is
//           rounded at every block added to it, each time by up to 2^-9 of
//           a running sum of the gradient's scale (partial sums that cancel
//           make bounds relative to each element meaningless): 1e-3 + 1e-2
//           rel, s = 2^-8. With f32 gradients the oracle's backward sees the
//           same bf16 inputs and the ring's own out: the f32 tolerance.
//
// Also: a block covering a whole sequence merged into (0, -inf) gives
// AttentionForward's out and lse, and its backward into zeros gives
// AttentionBackward's dqkv (equal values); a block leaves every row it does
// not own, and every query row that sees none of its keys, bit for bit as it
// was (out, lse, dqkv's key/value columns and other rows, dkv's other rows);
// PackKeyValues / UnpackKeyValueGrads move exactly the key/value columns (f32
// and bf16, converting between them).
#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/elementwise.h"
#include "tests/cuda/attention_documents.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::FromFloats;
using testing::RoundTo;
using testing::ToDevice;
using testing::ToFloats;
using testing::ToHost;
using testing::View;

// |actual - expected| <= atol + rtol |expected| + per_step steps max|expected|
// element-wise, steps the number of bf16 roundings a value goes through.
struct Tolerance {
  double atol, rtol, per_step = 0.0;
};

::testing::AssertionResult Close(const std::vector<float>& actual, const std::vector<float>& expected,
                                 const Tolerance& tol, int steps) {
  double max_abs = 0.0;
  for (const float x : expected) max_abs = std::max(max_abs, static_cast<double>(std::abs(x)));
  return testing::AllClose(actual, testing::ToDouble(expected), tol.atol + tol.per_step * steps * max_abs, tol.rtol);
}

constexpr float kInf = std::numeric_limits<float>::infinity();

// The load-balanced causal layout of ring attention: C ranks, chunks of L
// tokens, rank r holding chunks r and 2C-1-r as local rows [0, L) and [L, 2L).
struct Ring {
  int ranks, chunk;
  int GlobalLen() const { return 2 * ranks * chunk; }
  int LocalRows() const { return 2 * chunk; }
  // The global position of half `half` (0 or 1) of rank r's rows.
  int HalfStart(int r, int half) const { return (half == 0 ? r : 2 * ranks - 1 - r) * chunk; }
  int Position(int r, int local) const { return HalfStart(r, local / chunk) + local % chunk; }
};

// Rank r's rows of `global` (n_seq sequences of GlobalLen() rows of `width`
// elements), in local order; and back.
template <typename V>
std::vector<V> ToLocal(const std::vector<V>& global, int64_t width, int n_seq, const Ring& ring, int r) {
  std::vector<V> local(static_cast<size_t>(n_seq) * ring.LocalRows() * width);
  for (int n = 0; n < n_seq; ++n) {
    for (int t = 0; t < ring.LocalRows(); ++t) {
      const int64_t from = (static_cast<int64_t>(n) * ring.GlobalLen() + ring.Position(r, t)) * width;
      const int64_t to = (static_cast<int64_t>(n) * ring.LocalRows() + t) * width;
      std::copy(global.begin() + from, global.begin() + from + width, local.begin() + to);
    }
  }
  return local;
}

void ToGlobal(const std::vector<float>& local, int64_t width, int n_seq, const Ring& ring, int r,
              std::vector<float>& global) {
  for (int n = 0; n < n_seq; ++n) {
    for (int t = 0; t < ring.LocalRows(); ++t) {
      const int64_t from = (static_cast<int64_t>(n) * ring.LocalRows() + t) * width;
      const int64_t to = (static_cast<int64_t>(n) * ring.GlobalLen() + ring.Position(r, t)) * width;
      std::copy(local.begin() + from, local.begin() + from + width, global.begin() + to);
    }
  }
}

// One attention problem: sizes and the host inputs (f32 values, already
// rounded to the dtype under test).
struct Problem {
  int batch = 1, hq = 1, hkv = 1, hd = 8;
  std::vector<float> qkv, dout;
  std::vector<int32_t> doc_start;  // empty: no document masking

  int64_t Width() const { return static_cast<int64_t>(hq + 2 * hkv) * hd; }
  int64_t OutWidth() const { return static_cast<int64_t>(hq) * hd; }
  int64_t KvWidth() const { return static_cast<int64_t>(2 * hkv) * hd; }
};

// The CPU oracle on a whole sequence of seq_len rows: the forward's out and
// lse, and the backward's dqkv given `out` and `lse`.
struct Oracle {
  std::vector<float> out, lse, dqkv;
};

AttentionDims CpuDims(const Problem& p, int seq_len) {
  return AttentionDims{p.batch, seq_len, p.hq, p.hkv, p.hd, p.doc_start.empty() ? nullptr : p.doc_start.data()};
}

Oracle CpuForward(const Problem& p, int seq_len) {
  const AttentionDims d = CpuDims(p, seq_len);
  const int64_t rows = static_cast<int64_t>(p.batch) * seq_len;
  std::vector<float> ws(static_cast<size_t>(cpu::AttentionWorkspaceElems(d, omp_get_max_threads())));
  std::vector<float> qkv = p.qkv;
  Oracle o;
  o.out.resize(static_cast<size_t>(rows * p.OutWidth()));
  o.lse.resize(static_cast<size_t>(p.batch) * p.hq * seq_len);
  cpu::AttentionForward(Tensor::Of(qkv.data(), {rows, p.Width()}), d, Tensor::Of(o.out.data(), {rows, p.OutWidth()}),
                        Tensor::Of(o.lse.data(), {p.batch, p.hq, seq_len}),
                        Tensor::Of(ws.data(), {static_cast<int64_t>(ws.size())}));
  return o;
}

std::vector<float> CpuBackward(const Problem& p, int seq_len, std::vector<float> out, std::vector<float> lse) {
  const AttentionDims d = CpuDims(p, seq_len);
  const int64_t rows = static_cast<int64_t>(p.batch) * seq_len;
  std::vector<float> ws(static_cast<size_t>(cpu::AttentionWorkspaceElems(d, omp_get_max_threads())));
  std::vector<float> qkv = p.qkv, dout = p.dout, dqkv(static_cast<size_t>(rows * p.Width()));
  cpu::AttentionBackward(
      Tensor::Of(qkv.data(), {rows, p.Width()}), Tensor::Of(out.data(), {rows, p.OutWidth()}),
      Tensor::Of(dout.data(), {rows, p.OutWidth()}), Tensor::Of(lse.data(), {p.batch, p.hq, seq_len}), d,
      Tensor::Of(dqkv.data(), {rows, p.Width()}), Tensor::Of(ws.data(), {static_cast<int64_t>(ws.size())}));
  return dqkv;
}

// One rank's device buffers: qkv, kv, dout, doc_start (global positions) of
// its `rows` local rows per sequence, out and lse, and the gradients dqkv
// and dkv (element type G).
template <typename T, typename G>
struct RankBuffers {
  RankBuffers(const Problem& p, int rows_in, const std::vector<float>& qkv_host, const std::vector<float>& dout_host,
              const std::vector<int32_t>& doc_host)
      : rows(static_cast<int64_t>(p.batch) * rows_in),
        qkv_mem(ToDevice(FromFloats<T>(qkv_host))),
        dout_mem(ToDevice(FromFloats<T>(dout_host))),
        kv_mem(Device::kCUDA, rows * p.KvWidth() * sizeof(T)),
        out_mem(Device::kCUDA, rows * p.OutWidth() * sizeof(T)),
        lse_mem(Device::kCUDA, rows * p.hq * sizeof(float)),
        dqkv_mem(Device::kCUDA, rows * p.Width() * sizeof(G)),
        dkv_mem(Device::kCUDA, rows * p.KvWidth() * sizeof(G)),
        batch(p.batch),
        local_rows(rows_in),
        hq(p.hq),
        width(p.Width()),
        out_width(p.OutWidth()),
        kv_width(p.KvWidth()) {
    if (!doc_host.empty()) doc_mem = ToDevice(doc_host);
    testing::Poison(kv_mem);
    testing::Poison(out_mem);
    testing::Poison(lse_mem);
    testing::Poison(dqkv_mem);
    testing::Poison(dkv_mem);
  }
  Tensor qkv() const { return View<T>(qkv_mem, {rows, width}); }
  Tensor kv() const { return View<T>(kv_mem, {rows, kv_width}); }
  Tensor dout() const { return View<T>(dout_mem, {rows, out_width}); }
  Tensor out() const { return View<T>(out_mem, {rows, out_width}); }
  Tensor lse() const { return View<float>(lse_mem, {batch, hq, local_rows}); }
  Tensor dqkv() const { return View<G>(dqkv_mem, {rows, width}); }
  Tensor dkv() const { return View<G>(dkv_mem, {rows, kv_width}); }
  const int32_t* doc() const { return doc_mem.size() == 0 ? nullptr : static_cast<const int32_t*>(doc_mem.data()); }

  std::vector<float> Out() const { return ToFloats(ToHost<T>(out_mem, static_cast<size_t>(rows * out_width))); }
  std::vector<float> Lse() const { return ToHost<float>(lse_mem, static_cast<size_t>(rows * hq)); }
  std::vector<float> Dqkv() const { return ToFloats(ToHost<G>(dqkv_mem, static_cast<size_t>(rows * width))); }
  std::vector<float> Dkv() const { return ToFloats(ToHost<G>(dkv_mem, static_cast<size_t>(rows * kv_width))); }

  int64_t rows;
  Arena qkv_mem, dout_mem, kv_mem, out_mem, lse_mem, dqkv_mem, dkv_mem, doc_mem;
  int batch, local_rows, hq;
  int64_t width, out_width, kv_width;
};

// The block dims of rank q_rank's query half qh against rank kv_rank's half kh.
AttentionBlockDims RingBlock(const Problem& p, const Ring& ring, int q_rank, int qh, int kv_rank, int kh,
                             const int32_t* doc) {
  AttentionBlockDims d;
  d.batch = p.batch;
  d.rows = ring.LocalRows();
  d.n_heads = p.hq;
  d.n_kv_heads = p.hkv;
  d.head_dim = p.hd;
  d.q_row0 = qh * ring.chunk;
  d.q_rows = ring.chunk;
  d.kv_row0 = kh * ring.chunk;
  d.kv_rows = ring.chunk;
  d.q_pos0 = ring.HalfStart(q_rank, qh);
  d.kv_pos0 = ring.HalfStart(kv_rank, kh);
  d.doc_start = doc;
  return d;
}

// A one-sequence-wide block: queries and keys all `rows` rows, at position 0.
AttentionBlockDims WholeBlock(const Problem& p, int rows, const int32_t* doc) {
  AttentionBlockDims d;
  d.batch = p.batch;
  d.rows = rows;
  d.n_heads = p.hq;
  d.n_kv_heads = p.hkv;
  d.head_dim = p.hd;
  d.q_rows = d.kv_rows = rows;
  d.doc_start = doc;
  return d;
}

bool SameValues(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i] == b[i])) return false;  // -0 == +0; NaN fails
  }
  return true;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class CudaAttentionBlockTest : public testing::RandomTest {
 protected:
  // A random problem over `seq_len` rows per sequence; with `documents`, the
  // first sequence's documents are the fixed mix of FixedLengths when
  // `fixed_mix`, every other's random.
  template <typename T>
  Problem RandomProblem(int batch, int seq_len, int hq, int hkv, int hd, bool documents, bool fixed_mix = false) {
    Problem p;
    p.batch = batch;
    p.hq = hq;
    p.hkv = hkv;
    p.hd = hd;
    p.qkv = RoundTo<T>(Normal(static_cast<size_t>(batch * seq_len * p.Width())));
    p.dout = RoundTo<T>(Normal(static_cast<size_t>(batch * seq_len * p.OutWidth())));
    documents_.clear();
    if (documents) {
      testing::DocumentLengths lengths;
      auto uniform = [this](int lo, int hi) { return UniformInt(lo, hi); };
      for (int b = 0; b < batch; ++b) {
        lengths.push_back(fixed_mix && b == 0 ? FixedLengths(seq_len)
                                              : testing::RandomDocumentLengths(seq_len, uniform));
      }
      p.doc_start = testing::DocStarts(lengths);
      documents_ = " documents" + testing::DescribeDocuments(lengths).second;
    }
    return p;
  }

  // Documents of 1, 69, 1, 1, 32, 3, 100, 1, 2, ... tokens (the pattern
  // repeated), the last cut to end at seq_len: one-token documents, a
  // document ending on a chunk boundary when chunks are 70 tokens, ones
  // longer than a tile, spanning chunks.
  static std::vector<int> FixedLengths(int seq_len) {
    static constexpr int kPattern[] = {1, 69, 1, 1, 32, 3, 100, 1, 2};
    std::vector<int> lengths;
    for (int left = seq_len, k = 0; left > 0; ++k) {
      lengths.push_back(std::min(left, kPattern[k % std::size(kPattern)]));
      left -= lengths.back();
    }
    return lengths;
  }

  // A random GQA shape: (query heads, KV heads) and a head dim, a multiple
  // of 8 in [16, 128].
  void RandomHeads(int& hq, int& hkv, int& hd) {
    static constexpr int kHeads[][2] = {{4, 2}, {4, 1}, {2, 2}, {6, 2}, {3, 1}};
    const auto& h = kHeads[UniformInt(0, static_cast<int>(std::size(kHeads)) - 1)];
    hq = h[0];
    hkv = h[1];
    hd = 8 * UniformInt(2, 16);
  }

  // The ring of C ranks x chunks of L against the oracle (see the top).
  template <typename T, typename G>
  void CheckRing(int C, int L, bool documents, Tolerance out_tol, Tolerance lse_tol, Tolerance grad_tol) {
    const Ring ring{C, L};
    const int T_len = ring.GlobalLen();
    int hq, hkv, hd;
    RandomHeads(hq, hkv, hd);
    const int batch = C * L <= 20 ? 2 : 1;
    const Problem p = RandomProblem<T>(batch, T_len, hq, hkv, hd, documents, L == 70);
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " gradients " << DTypeName(DTypeOf<G>::value)
                                      << " C=" << C << " L=" << L << " B=" << batch << " Hq=" << hq << " Hkv=" << hkv
                                      << " hd=" << hd << documents_);
    const Oracle oracle = CpuForward(p, T_len);

    std::vector<std::unique_ptr<RankBuffers<T, G>>> rank;
    for (int r = 0; r < C; ++r) {
      const std::vector<int32_t> doc =
          p.doc_start.empty() ? std::vector<int32_t>{} : ToLocal(p.doc_start, 1, batch, ring, r);
      rank.push_back(std::make_unique<RankBuffers<T, G>>(p, ring.LocalRows(), ToLocal(p.qkv, p.Width(), batch, ring, r),
                                                         ToLocal(p.dout, p.OutWidth(), batch, ring, r), doc));
      RankBuffers<T, G>& b = *rank.back();
      cuda::PackKeyValues(b.qkv(), b.kv(), hq, hkv, hd, nullptr);
      cuda::Fill(b.out(), 0.0f, nullptr);
      cuda::Fill(b.lse(), -kInf, nullptr);
      cuda::Fill(b.dqkv(), 0.0f, nullptr);
      cuda::Fill(b.dkv(), 0.0f, nullptr);
    }
    // Each step, rank r gets the kv of rank (r - step) mod C.
    auto for_each_block = [&](auto&& fn) {
      for (int step = 0; step < C; ++step) {
        for (int r = 0; r < C; ++r) {
          const int s = (r - step + C) % C;
          for (int qh = 0; qh < 2; ++qh) {
            for (int kh = 0; kh < 2; ++kh) fn(*rank[r], *rank[s], RingBlock(p, ring, r, qh, s, kh, rank[r]->doc()));
          }
        }
      }
    };
    for_each_block([](RankBuffers<T, G>& q, RankBuffers<T, G>& kv, const AttentionBlockDims& d) {
      cuda::AttentionBlockForward(q.qkv(), kv.kv(), d, q.out(), q.lse(), nullptr);
    });
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> out(oracle.out.size()), lse(oracle.lse.size());
    for (int r = 0; r < C; ++r) {
      ToGlobal(rank[r]->Out(), p.OutWidth(), batch, ring, r, out);
      ToGlobal(rank[r]->Lse(), 1, batch * hq, ring, r, lse);
    }
    // Up to 2C merges per row, and one rounding of the block's own result.
    const int steps = 2 * C + 1;
    EXPECT_TRUE(Close(out, oracle.out, out_tol, steps)) << "out";
    EXPECT_TRUE(Close(lse, oracle.lse, lse_tol, steps)) << "lse";

    const AttentionBlockDims any_block = RingBlock(p, ring, 0, 0, 0, 0, nullptr);
    Arena ws_mem(Device::kCUDA, cuda::AttentionBlockBackwardWorkspaceElems(any_block) * sizeof(float));
    const Tensor ws = View<float>(ws_mem, {cuda::AttentionBlockBackwardWorkspaceElems(any_block)});
    for_each_block([&](RankBuffers<T, G>& q, RankBuffers<T, G>& kv, const AttentionBlockDims& d) {
      cuda::AttentionBlockBackward(q.qkv(), kv.kv(), q.out(), q.dout(), q.lse(), d, q.dqkv(), kv.dkv(), ws, nullptr);
    });
    for (int r = 0; r < C; ++r) cuda::UnpackKeyValueGrads(rank[r]->dkv(), rank[r]->dqkv(), hq, hkv, hd, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> dqkv(p.qkv.size());
    for (int r = 0; r < C; ++r) ToGlobal(rank[r]->Dqkv(), p.Width(), batch, ring, r, dqkv);
    const std::vector<float> expected = CpuBackward(p, T_len, out, lse);
    EXPECT_TRUE(Close(dqkv, expected, grad_tol, steps)) << "dqkv";
  }

  template <typename T, typename G>
  void CheckRings(bool documents, Tolerance out_tol, Tolerance lse_tol, Tolerance grad_tol) {
    for (const int C : {1, 2, 4}) {
      for (const int L : {1, 5, 64, 70}) CheckRing<T, G>(C, L, documents, out_tol, lse_tol, grad_tol);
    }
  }

  // One block spanning whole sequences of `seq_len` rows, merged into
  // (0, -inf) and its backward into zeros, against AttentionForward and
  // AttentionBackward on the same device data: equal values.
  template <typename T>
  void CheckWholeBlock(int seq_len, bool documents) {
    int hq, hkv, hd;
    RandomHeads(hq, hkv, hd);
    const Problem p = RandomProblem<T>(2, seq_len, hq, hkv, hd, documents);
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " T=" << seq_len << " Hq=" << hq
                                      << " Hkv=" << hkv << " hd=" << hd << documents_);
    RankBuffers<T, T> block(p, seq_len, p.qkv, p.dout, p.doc_start), whole(p, seq_len, p.qkv, p.dout, p.doc_start);
    const AttentionBlockDims bd = WholeBlock(p, seq_len, block.doc());
    const AttentionDims wd{p.batch, seq_len, hq, hkv, hd, whole.doc()};

    cuda::PackKeyValues(block.qkv(), block.kv(), hq, hkv, hd, nullptr);
    cuda::Fill(block.out(), 0.0f, nullptr);
    cuda::Fill(block.lse(), -kInf, nullptr);
    cuda::AttentionBlockForward(block.qkv(), block.kv(), bd, block.out(), block.lse(), nullptr);
    cuda::AttentionForward(whole.qkv(), wd, whole.out(), whole.lse(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(SameValues(block.Out(), whole.Out())) << "out";
    EXPECT_TRUE(SameValues(block.Lse(), whole.Lse())) << "lse";

    const int64_t ws_elems = cuda::AttentionBackwardWorkspaceElems(wd);
    ASSERT_EQ(ws_elems, cuda::AttentionBlockBackwardWorkspaceElems(bd));
    Arena ws_mem(Device::kCUDA, ws_elems * sizeof(float));
    const Tensor ws = View<float>(ws_mem, {ws_elems});
    cuda::Fill(block.dqkv(), 0.0f, nullptr);
    cuda::Fill(block.dkv(), 0.0f, nullptr);
    cuda::AttentionBlockBackward(block.qkv(), block.kv(), block.out(), block.dout(), block.lse(), bd, block.dqkv(),
                                 block.dkv(), ws, nullptr);
    cuda::UnpackKeyValueGrads(block.dkv(), block.dqkv(), hq, hkv, hd, nullptr);
    cuda::AttentionBackward(whole.qkv(), whole.out(), whole.dout(), whole.lse(), wd, whole.dqkv(), ws, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(SameValues(block.Dqkv(), whole.Dqkv())) << "dqkv";
  }

  // One block of `rows` local rows per sequence (batch 2) applied to random
  // finite out, lse, dqkv and dkv: everything the block does not own, and
  // every query row (key row) that sees no key (is seen by no query) of it,
  // keeps its bits; the rows that see keys change their lse. doc_start gives
  // the first query row's document start per query row offset, or is empty.
  template <typename T>
  void CheckTouchesOnlyItsRows(int rows, AttentionBlockDims d, const std::vector<int32_t>& query_doc_start) {
    int hq, hkv, hd;
    RandomHeads(hq, hkv, hd);
    Problem p = RandomProblem<T>(2, rows, hq, hkv, hd, false);
    // Documents of the query rows (global starts); other rows' are never read.
    std::vector<int32_t> doc;
    if (!query_doc_start.empty()) {
      doc.assign(static_cast<size_t>(2 * rows), 0);
      for (int b = 0; b < 2; ++b) {
        for (int i = 0; i < d.q_rows; ++i) doc[static_cast<size_t>(b * rows + d.q_row0 + i)] = query_doc_start[i];
      }
    }
    p.doc_start = doc;
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " rows=" << rows << " queries [" << d.q_row0
                                      << ", +" << d.q_rows << ") at " << d.q_pos0 << ", keys [" << d.kv_row0 << ", +"
                                      << d.kv_rows << ") at " << d.kv_pos0 << (doc.empty() ? "" : " documents"));
    RankBuffers<T, T> buf(p, rows, p.qkv, p.dout, doc);
    d.batch = 2;
    d.rows = rows;
    d.n_heads = hq;
    d.n_kv_heads = hkv;
    d.head_dim = hd;
    d.doc_start = buf.doc();

    // Which query rows see a key, which key rows are seen.
    std::vector<bool> sees(static_cast<size_t>(d.q_rows), false), seen(static_cast<size_t>(d.kv_rows), false);
    for (int i = 0; i < d.q_rows; ++i) {
      for (int j = 0; j < d.kv_rows; ++j) {
        const int64_t key = d.kv_pos0 + j, query = d.q_pos0 + i;
        if (key <= query && (doc.empty() || key >= query_doc_start[i])) sees[i] = seen[j] = true;
      }
    }
    ASSERT_TRUE(std::count(sees.begin(), sees.end(), true) > 0 && std::count(sees.begin(), sees.end(), false) > 0);

    auto upload = [](const Arena& a, const auto& host) {
      CUDA_CHECK(cudaMemcpy(a.data(), host.data(), host.size() * sizeof(host[0]), cudaMemcpyHostToDevice));
    };
    const std::vector<float> out0 = RoundTo<T>(Normal(static_cast<size_t>(buf.rows * buf.out_width)));
    const std::vector<float> lse0 = Normal(static_cast<size_t>(buf.rows * hq), 2.0f);
    const std::vector<float> dqkv0 = RoundTo<T>(Normal(static_cast<size_t>(buf.rows * buf.width)));
    const std::vector<float> dkv0 = RoundTo<T>(Normal(static_cast<size_t>(buf.rows * buf.kv_width)));
    upload(buf.out_mem, FromFloats<T>(out0));
    upload(buf.lse_mem, lse0);
    upload(buf.dqkv_mem, FromFloats<T>(dqkv0));
    upload(buf.dkv_mem, FromFloats<T>(dkv0));
    cuda::PackKeyValues(buf.qkv(), buf.kv(), hq, hkv, hd, nullptr);
    cuda::AttentionBlockForward(buf.qkv(), buf.kv(), d, buf.out(), buf.lse(), nullptr);
    const int64_t ws_elems = cuda::AttentionBlockBackwardWorkspaceElems(d);
    Arena ws_mem(Device::kCUDA, ws_elems * sizeof(float));
    cuda::AttentionBlockBackward(buf.qkv(), buf.kv(), buf.out(), buf.dout(), buf.lse(), d, buf.dqkv(), buf.dkv(),
                                 View<float>(ws_mem, {ws_elems}), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> out = buf.Out(), lse = buf.Lse(), dqkv = buf.Dqkv(), dkv = buf.Dkv();

    // Elements [from, from + n) of every listed row of a and b.
    auto rows_of = [](const std::vector<float>& v, const std::vector<int64_t>& row_list, int64_t width, int64_t from,
                      int64_t n) {
      std::vector<float> picked;
      for (const int64_t r : row_list)
        picked.insert(picked.end(), v.begin() + r * width + from, v.begin() + r * width + from + n);
      return picked;
    };
    std::vector<int64_t> q_kept, q_changed, kv_kept, all_rows;  // rows over the batch
    for (int b = 0; b < 2; ++b) {
      for (int t = 0; t < rows; ++t) {
        const int64_t r = static_cast<int64_t>(b) * rows + t;
        all_rows.push_back(r);
        const int i = t - d.q_row0, j = t - d.kv_row0;
        (i >= 0 && i < d.q_rows && sees[i] ? q_changed : q_kept).push_back(r);
        if (!(j >= 0 && j < d.kv_rows && seen[j])) kv_kept.push_back(r);
      }
    }
    // lse [B, Hq, rows] as rows of one element: (b, h, t) -> (b * Hq + h) * rows + t.
    auto lse_rows = [&](const std::vector<int64_t>& row_list) {
      std::vector<int64_t> out_rows;
      for (const int64_t r : row_list) {
        for (int h = 0; h < hq; ++h) out_rows.push_back((r / rows * hq + h) * rows + r % rows);
      }
      return out_rows;
    };
    EXPECT_TRUE(SameBits(rows_of(out, q_kept, buf.out_width, 0, buf.out_width),
                         rows_of(out0, q_kept, buf.out_width, 0, buf.out_width)))
        << "out rows the block does not own or that see none of its keys";
    EXPECT_TRUE(SameBits(rows_of(lse, lse_rows(q_kept), 1, 0, 1), rows_of(lse0, lse_rows(q_kept), 1, 0, 1)))
        << "lse of those rows";
    const std::vector<float> lse_new = rows_of(lse, lse_rows(q_changed), 1, 0, 1);
    const std::vector<float> lse_old = rows_of(lse0, lse_rows(q_changed), 1, 0, 1);
    size_t grown = 0;
    for (size_t k = 0; k < lse_new.size(); ++k) grown += lse_new[k] > lse_old[k] ? 1 : 0;
    EXPECT_EQ(grown, lse_new.size()) << "lse of the rows that see keys must grow";
    const int64_t q_cols = static_cast<int64_t>(hq) * hd;
    EXPECT_TRUE(SameBits(rows_of(dqkv, q_kept, buf.width, 0, q_cols), rows_of(dqkv0, q_kept, buf.width, 0, q_cols)))
        << "dqkv query columns of rows the block does not own or that see none of its keys";
    EXPECT_TRUE(SameBits(rows_of(dqkv, all_rows, buf.width, q_cols, buf.width - q_cols),
                         rows_of(dqkv0, all_rows, buf.width, q_cols, buf.width - q_cols)))
        << "dqkv key/value columns";
    EXPECT_TRUE(SameBits(rows_of(dkv, kv_kept, buf.kv_width, 0, buf.kv_width),
                         rows_of(dkv0, kv_kept, buf.kv_width, 0, buf.kv_width)))
        << "dkv rows the block does not own or that no query sees";
  }

  std::string documents_;  // the last RandomProblem's documents, for traces
};

TEST_F(CudaAttentionBlockTest, Float32RingMatchesWholeAttention) {
  LATAM_REQUIRE_GPU();
  CheckRings<float, float>(false, {2e-5, 1e-5}, {2e-5, 1e-5}, {5e-5, 1e-4});
}

TEST_F(CudaAttentionBlockTest, Float32RingWithDocumentsMatchesWholeAttention) {
  LATAM_REQUIRE_GPU();
  CheckRings<float, float>(true, {2e-5, 1e-5}, {2e-5, 1e-5}, {5e-5, 1e-4});
}

TEST_F(CudaAttentionBlockTest, BFloat16RingMatchesWholeAttention) {
  LATAM_REQUIRE_GPU();
  CheckRings<BF16, BF16>(false, {1e-3, 1e-2, 0x1p-8}, {2e-5, 1e-5}, {1e-3, 1e-2, 0x1p-8});
}

TEST_F(CudaAttentionBlockTest, BFloat16RingWithDocumentsMatchesWholeAttention) {
  LATAM_REQUIRE_GPU();
  CheckRings<BF16, BF16>(true, {1e-3, 1e-2, 0x1p-8}, {2e-5, 1e-5}, {1e-3, 1e-2, 0x1p-8});
}

TEST_F(CudaAttentionBlockTest, BFloat16RingWithFloat32GradientsMatchesWholeAttention) {
  LATAM_REQUIRE_GPU();
  CheckRings<BF16, float>(true, {1e-3, 1e-2, 0x1p-8}, {2e-5, 1e-5}, {5e-5, 1e-4});
}

TEST_F(CudaAttentionBlockTest, WholeSequenceBlockEqualsWholeSequenceAttention) {
  LATAM_REQUIRE_GPU();
  for (const bool documents : {false, true}) {
    CheckWholeBlock<float>(70, documents);
    CheckWholeBlock<BF16>(37, documents);
  }
}

TEST_F(CudaAttentionBlockTest, BlockTouchesOnlyItsRows) {
  LATAM_REQUIRE_GPU();
  AttentionBlockDims causal;  // queries at 170.. see keys at 180.. from the 11th on
  causal.q_row0 = 10;
  causal.q_rows = 40;
  causal.q_pos0 = 170;
  causal.kv_row0 = 30;
  causal.kv_rows = 35;
  causal.kv_pos0 = 180;
  AttentionBlockDims documents = causal;  // keys at 180..214; queries at 200..239
  documents.q_pos0 = 200;
  // Queries 0-14 in a document from 190, 15-24 in one from 215, 25- in one
  // from 225: only the first 15 see keys of the block.
  std::vector<int32_t> starts(40, 190);
  std::fill(starts.begin() + 15, starts.end(), 215);
  std::fill(starts.begin() + 25, starts.end(), 225);
  for (int k = 0; k < 2; ++k) {
    CheckTouchesOnlyItsRows<float>(80, causal, {});
    CheckTouchesOnlyItsRows<BF16>(80, causal, {});
    CheckTouchesOnlyItsRows<float>(80, documents, starts);
    CheckTouchesOnlyItsRows<BF16>(80, documents, starts);
  }
}

// PackKeyValues copies exactly the key/value columns; UnpackKeyValueGrads
// writes exactly those of dqkv (converted as BF16::FromFloat when dkv is f32
// and dqkv bf16), leaving its query columns and every guard byte.
template <typename T, typename G>
void CheckPackUnpack(int rows, int hq, int hkv, int hd, const std::vector<float>& qkv_values,
                     const std::vector<float>& dkv_values, const std::vector<float>& dqkv_values) {
  SCOPED_TRACE(::testing::Message() << "qkv " << DTypeName(DTypeOf<T>::value) << " dkv " << DTypeName(DTypeOf<G>::value)
                                    << " rows=" << rows << " Hq=" << hq << " Hkv=" << hkv << " hd=" << hd);
  const int64_t width = static_cast<int64_t>(hq + 2 * hkv) * hd, kv_width = static_cast<int64_t>(2 * hkv) * hd;
  const int64_t q_cols = static_cast<int64_t>(hq) * hd;
  const std::vector<T> qkv = FromFloats<T>(qkv_values);
  testing::GuardedBuffer<T> qkv_d(qkv, false), kv_d(static_cast<size_t>(rows * kv_width), false);
  cuda::PackKeyValues(qkv_d.View({rows, width}), kv_d.View({rows, kv_width}), hq, hkv, hd, nullptr);

  // dqkv has qkv's dtype T; dkv is G.
  const std::vector<G> dkv = FromFloats<G>(dkv_values);
  const std::vector<T> dqkv0 = FromFloats<T>(dqkv_values);
  testing::GuardedBuffer<G> dkv_d(dkv, false);
  testing::GuardedBuffer<T> dqkv_d(dqkv0, false);
  cuda::UnpackKeyValueGrads(dkv_d.View({rows, kv_width}), dqkv_d.View({rows, width}), hq, hkv, hd, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());

  const std::vector<float> kv = ToFloats(kv_d.Read()), dqkv = ToFloats(dqkv_d.Read());
  const std::vector<float> qkv_f = ToFloats(qkv), dkv_f = ToFloats(dkv), dqkv0_f = ToFloats(dqkv0);
  std::vector<float> kv_expected, dqkv_expected = dqkv0_f;
  for (int64_t r = 0; r < rows; ++r) {
    kv_expected.insert(kv_expected.end(), qkv_f.begin() + r * width + q_cols, qkv_f.begin() + (r + 1) * width);
    for (int64_t c = 0; c < kv_width; ++c) {
      dqkv_expected[r * width + q_cols + c] = RoundTo<T>({dkv_f[r * kv_width + c]})[0];
    }
  }
  EXPECT_TRUE(SameBits(kv, kv_expected)) << "kv";
  EXPECT_TRUE(SameBits(dqkv, dqkv_expected)) << "dqkv";
  EXPECT_TRUE(kv_d.GuardsIntact());
  EXPECT_TRUE(dqkv_d.GuardsIntact());
  EXPECT_TRUE(SameBits(ToFloats(qkv_d.Read()), qkv_f)) << "qkv changed";
}

TEST_F(CudaAttentionBlockTest, PackAndUnpackMoveExactlyTheKeyValueColumns) {
  LATAM_REQUIRE_GPU();
  for (const auto& [rows, hq, hkv, hd] : {std::tuple{1, 2, 1, 8}, std::tuple{37, 4, 2, 16}, std::tuple{70, 6, 2, 72}}) {
    const int64_t width = static_cast<int64_t>(hq + 2 * hkv) * hd, kv_width = static_cast<int64_t>(2 * hkv) * hd;
    const auto qkv = Normal(static_cast<size_t>(rows * width));
    const auto dkv = Normal(static_cast<size_t>(rows * kv_width));
    const auto dqkv = Normal(static_cast<size_t>(rows * width));
    CheckPackUnpack<float, float>(rows, hq, hkv, hd, qkv, dkv, dqkv);
    CheckPackUnpack<BF16, BF16>(rows, hq, hkv, hd, qkv, dkv, dqkv);
    CheckPackUnpack<BF16, float>(rows, hq, hkv, hd, qkv, dkv, dqkv);  // rounded once
    CheckPackUnpack<float, BF16>(rows, hq, hkv, hd, qkv, dkv, dqkv);  // widened exactly
  }
}

}  // namespace
}  // namespace latam
