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

}  // namespace
}  // namespace latam
