// Tiled causal GQA attention (online softmax) against the naive full-matrix
// double reference, forward (out, lse) and backward (dqkv), over shapes that
// cover partial tiles, several tiles, GQA groups and head dims 8..128.
// Tolerance: 3e-5 absolute + 2e-4 relative.
#include <gtest/gtest.h>

#include <omp.h>

#include <tuple>

#include "kernels/attention.h"
#include "tests/reference/reference.h"
#include "tests/test_util.h"

namespace latam {
namespace {

class AttentionTest : public testing::RandomTest {
 protected:
  void Check(int batch, int seq, int hq, int hkv, int hd) {
    SCOPED_TRACE(::testing::Message() << "B=" << batch << " T=" << seq << " Hq=" << hq << " Hkv=" << hkv
                                      << " hd=" << hd);
    const AttentionDims d{batch, seq, hq, hkv, hd};
    const ref::AttnDims rd{batch, seq, hq, hkv, hd};
    const int64_t rows = static_cast<int64_t>(batch) * seq, width = static_cast<int64_t>(hq + 2 * hkv) * hd;
    const int64_t out_width = static_cast<int64_t>(hq) * hd;
    auto qkv = Normal(rows * width);
    auto dout = Normal(rows * out_width);
    ref::Vec out_ref, lse_ref;
    ref::AttentionForward(testing::ToDouble(qkv), rd, &out_ref, &lse_ref);

    std::vector<float> out(rows * out_width), lse(static_cast<size_t>(batch) * hq * seq);
    const Tensor qkv_t = Tensor::Of(qkv.data(), {rows, width});
    const Tensor out_t = Tensor::Of(out.data(), {rows, out_width});
    const Tensor lse_t = Tensor::Of(lse.data(), {batch, hq, seq});
    std::vector<float> ws(cpu::AttentionWorkspaceElems(d, omp_get_max_threads()));
    const Tensor ws_t = Tensor::Of(ws.data(), {static_cast<int64_t>(ws.size())});
    cpu::AttentionForward(qkv_t, d, out_t, lse_t, ws_t);
    EXPECT_TRUE(testing::AllClose(out, out_ref, 3e-5, 2e-4));
    EXPECT_TRUE(testing::AllClose(lse, lse_ref, 3e-5, 2e-4));

    std::vector<float> dqkv(rows * width, std::numeric_limits<float>::quiet_NaN());
    cpu::AttentionBackward(qkv_t, out_t, Tensor::Of(dout.data(), {rows, out_width}), lse_t, d,
                           Tensor::Of(dqkv.data(), {rows, width}), ws_t);
    EXPECT_TRUE(testing::AllClose(dqkv, ref::AttentionBackward(testing::ToDouble(qkv), testing::ToDouble(dout), rd),
                                  3e-5, 2e-4));
  }
};

TEST_F(AttentionTest, MatchesReferenceOverShapes) {
  const std::vector<std::tuple<int, int, int, int, int>> shapes = {
      {1, 1, 2, 1, 8},    {1, 5, 4, 4, 16},  {2, 64, 4, 2, 32},  {1, 65, 6, 1, 16},
      {2, 130, 4, 2, 32}, {1, 70, 2, 2, 64}, {1, 40, 2, 1, 128}, {1, 33, 3, 3, 24}};
  for (const auto& [b, t, hq, hkv, hd] : shapes) Check(b, t, hq, hkv, hd);
}

TEST_F(AttentionTest, RandomShapes) {
  for (int trial = 0; trial < 4; ++trial) {
    const int hkv = UniformInt(1, 3), group = UniformInt(1, 3);
    Check(UniformInt(1, 2), UniformInt(1, 150), hkv * group, hkv, 2 * UniformInt(2, 24));
  }
}

// The kernels' scratch grows linearly with the sequence length (keys and
// values of one KV head plus fixed-size tiles), never with T^2.
TEST(AttentionMemoryTest, WorkspaceIsLinearInSequenceLength) {
  const AttentionDims short_seq{1, 2048, 64, 8, 128}, long_seq{1, 8192, 64, 8, 128};
  const int64_t a = cpu::AttentionWorkspaceElems(short_seq, 1), b = cpu::AttentionWorkspaceElems(long_seq, 1);
  EXPECT_LE(b, 4 * a);
  EXPECT_GE(b, 3 * a);
  // 5 sequence-length buffers of head_dim floats dominate: 5 x 8192 x 128.
  EXPECT_LT(b, 6 * 8192 * 128);
  EXPECT_EQ(cpu::AttentionWorkspaceElems(long_seq, 4), 4 * b);
}

TEST(AttentionDeathTest, TooSmallWorkspaceAborts) {
  const AttentionDims d{1, 8, 2, 1, 8};
  std::vector<float> qkv(8 * 32), out(8 * 16), lse(16), ws(10);
  EXPECT_DEATH(cpu::AttentionForward(Tensor::Of(qkv.data(), {8, 32}), d, Tensor::Of(out.data(), {8, 16}),
                                     Tensor::Of(lse.data(), {1, 2, 8}), Tensor::Of(ws.data(), {10})),
               "attention workspace of 10 floats is too small");
}

TEST_F(AttentionTest, LargeScoresStayFinite) {
  // Scores of several hundred in magnitude exercise the online softmax's
  // rescaling; the reference in double is exact for them.
  const AttentionDims d{1, 96, 2, 1, 16};
  const int64_t rows = 96, width = 4 * 16;
  auto qkv = Normal(rows * width, 12.0f);
  std::vector<float> out(rows * 32), lse(2 * 96), ws(cpu::AttentionWorkspaceElems(d, omp_get_max_threads()));
  cpu::AttentionForward(Tensor::Of(qkv.data(), {rows, width}), d, Tensor::Of(out.data(), {rows, 32}),
                        Tensor::Of(lse.data(), {1, 2, 96}), Tensor::Of(ws.data(), {static_cast<int64_t>(ws.size())}));
  ref::Vec out_ref, lse_ref;
  ref::AttentionForward(testing::ToDouble(qkv), ref::AttnDims{1, 96, 2, 1, 16}, &out_ref, &lse_ref);
  EXPECT_TRUE(testing::AllClose(out, out_ref, 1e-3, 1e-3));
  EXPECT_TRUE(testing::AllClose(lse, lse_ref, 1e-3, 1e-4));
}

// Document masking (AttentionDims::doc_start) against its exact oracle:
// each document run alone as its own sequence, by the same kernel without
// the mask. Outputs, lse and dq/dk/dv, for random mixes of document lengths
// per sequence, with one-token documents and documents longer than a tile
// (64). The two runs tile differently, so they agree to rounding: 2e-5
// absolute + 1e-4 relative.
class DocumentMaskTest : public testing::RandomTest {
 protected:
  struct Run {
    std::vector<float> out, lse, dqkv;
  };
  Run Attend(const std::vector<float>& qkv, const std::vector<float>& dout, AttentionDims d) {
    const int64_t rows = static_cast<int64_t>(d.batch) * d.seq_len;
    const int64_t width = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
    const int64_t out_width = static_cast<int64_t>(d.n_heads) * d.head_dim;
    Run r{std::vector<float>(rows * out_width), std::vector<float>(static_cast<size_t>(d.batch) * d.n_heads * d.seq_len),
          std::vector<float>(rows * width, std::numeric_limits<float>::quiet_NaN())};
    std::vector<float> ws(cpu::AttentionWorkspaceElems(d, omp_get_max_threads()));
    std::vector<float> q = qkv;
    const Tensor qkv_t = Tensor::Of(q.data(), {rows, width});
    const Tensor out_t = Tensor::Of(r.out.data(), {rows, out_width});
    const Tensor lse_t = Tensor::Of(r.lse.data(), {d.batch, d.n_heads, d.seq_len});
    const Tensor ws_t = Tensor::Of(ws.data(), {static_cast<int64_t>(ws.size())});
    cpu::AttentionForward(qkv_t, d, out_t, lse_t, ws_t);
    std::vector<float> dq = dout;
    cpu::AttentionBackward(qkv_t, out_t, Tensor::Of(dq.data(), {rows, out_width}), lse_t, d,
                           Tensor::Of(r.dqkv.data(), {rows, width}), ws_t);
    return r;
  }

  void Check(int batch, int seq, int hq, int hkv, int hd, const std::vector<std::vector<int>>& lengths) {
    SCOPED_TRACE(::testing::Message() << "B=" << batch << " T=" << seq << " Hq=" << hq << " Hkv=" << hkv
                                      << " hd=" << hd);
    const int64_t width = static_cast<int64_t>(hq + 2 * hkv) * hd, out_width = static_cast<int64_t>(hq) * hd;
    const auto qkv = Normal(static_cast<size_t>(batch) * seq * width);
    const auto dout = Normal(static_cast<size_t>(batch) * seq * out_width);
    std::vector<int32_t> doc(static_cast<size_t>(batch) * seq);
    for (int b = 0; b < batch; ++b) {
      int at = 0;
      for (int len : lengths[static_cast<size_t>(b)]) {
        for (int t = at; t < at + len; ++t) doc[static_cast<size_t>(b) * seq + t] = at;
        at += len;
      }
      ASSERT_EQ(at, seq);
    }
    AttentionDims d{batch, seq, hq, hkv, hd};
    d.doc_start = doc.data();
    const Run masked = Attend(qkv, dout, d);
    for (int b = 0; b < batch; ++b) {
      int at = 0;
      for (int len : lengths[static_cast<size_t>(b)]) {
        SCOPED_TRACE(::testing::Message() << "sequence " << b << " document at " << at << " of " << len);
        const size_t first = static_cast<size_t>(b) * seq + at;
        const std::vector<float> q(qkv.begin() + first * width, qkv.begin() + (first + len) * width);
        const std::vector<float> g(dout.begin() + first * out_width, dout.begin() + (first + len) * out_width);
        const Run alone = Attend(q, g, AttentionDims{1, len, hq, hkv, hd});
        const std::vector<float> out(masked.out.begin() + first * out_width,
                                     masked.out.begin() + (first + len) * out_width);
        const std::vector<float> dqkv(masked.dqkv.begin() + first * width, masked.dqkv.begin() + (first + len) * width);
        std::vector<float> lse;
        for (int h = 0; h < hq; ++h) {
          const size_t row = (static_cast<size_t>(b) * hq + h) * seq + at;
          lse.insert(lse.end(), masked.lse.begin() + row, masked.lse.begin() + row + len);
        }
        EXPECT_TRUE(testing::AllClose(out, testing::ToDouble(alone.out), 2e-5, 1e-4));
        EXPECT_TRUE(testing::AllClose(lse, testing::ToDouble(alone.lse), 2e-5, 1e-4));
        EXPECT_TRUE(testing::AllClose(dqkv, testing::ToDouble(alone.dqkv), 2e-5, 1e-4));
        at += len;
      }
    }
  }
};

TEST_F(DocumentMaskTest, EqualsEachDocumentAlone) {
  // One-token documents, documents across tile edges, one longer than two tiles.
  Check(2, 200, 4, 2, 16, {{1, 70, 1, 1, 127}, {150, 3, 1, 46}});
  Check(1, 64, 2, 2, 8, {{64}});                 // one document: plain causal
  Check(1, 9, 3, 1, 8, {{1, 1, 1, 1, 1, 1, 1, 1, 1}});  // every token alone
}

TEST_F(DocumentMaskTest, RandomDocumentMixes) {
  for (int trial = 0; trial < 4; ++trial) {
    const int batch = UniformInt(1, 2), seq = UniformInt(2, 260), hkv = UniformInt(1, 2);
    std::vector<std::vector<int>> lengths(static_cast<size_t>(batch));
    for (auto& l : lengths) {
      for (int left = seq; left > 0;) {
        const int len = std::min(left, UniformInt(0, 3) == 0 ? 1 : UniformInt(1, 140));
        l.push_back(len);
        left -= len;
      }
    }
    Check(batch, seq, hkv * UniformInt(1, 2), hkv, 2 * UniformInt(2, 12), lengths);
  }
}

TEST(AttentionDeathTest, DocumentsMustBeContiguousRuns) {
  AttentionDims d{1, 4, 1, 1, 8};
  const std::vector<int32_t> bad = {0, 0, 1, 2};  // position 2 starts at 1, inside the first document
  d.doc_start = bad.data();
  std::vector<float> qkv(4 * 24), out(4 * 8), lse(4), ws(cpu::AttentionWorkspaceElems(d, omp_get_max_threads()));
  EXPECT_DEATH(cpu::AttentionForward(Tensor::Of(qkv.data(), {4, 24}), d, Tensor::Of(out.data(), {4, 8}),
                                     Tensor::Of(lse.data(), {1, 1, 4}),
                                     Tensor::Of(ws.data(), {static_cast<int64_t>(ws.size())})),
               "doc_start of sequence 0 position 2 is 1");
}

}  // namespace
}  // namespace latam
