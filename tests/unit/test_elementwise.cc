// SwiGLU, embedding, cross-entropy and the vectorised exp against double
// references.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "kernels/cpu/vec_math.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/swiglu.h"
#include "tests/reference/reference.h"
#include "tests/test_util.h"

namespace latam {
namespace {

class ElementwiseTest : public testing::RandomTest {};

// ExpF: relative error <= 4e-7 wherever the result is a normal float; exactly
// 0 for x < -87.34 and -inf.
TEST_F(ElementwiseTest, ExpMatchesStdExp) {
  auto x = Uniform(200000, -87.3f, 88.3f);
  x.push_back(0.0f);
  x.push_back(-1e-8f);
  x.push_back(1e-8f);
  for (float v : x) {
    const double expected = std::exp(static_cast<double>(v));
    ASSERT_NEAR(cpu::ExpF(v), expected, 4e-7 * expected) << "x=" << v;
  }
  EXPECT_EQ(cpu::ExpF(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(cpu::ExpF(-100.0f), 0.0f);
  EXPECT_TRUE(std::isfinite(cpu::ExpF(1000.0f)));
}

// SwiGLU tolerance: 1e-6 absolute + 2e-6 relative.
TEST_F(ElementwiseTest, SwigluMatchesReference) {
  const int64_t rows = 23, f = 77;
  auto gu = Uniform(rows * 2 * f, -8.0f, 8.0f), dout = Normal(rows * f);
  std::vector<float> out(rows * f), dgu(rows * 2 * f);
  cpu::SwigluForward(Tensor::Of(gu.data(), {rows, 2 * f}), Tensor::Of(out.data(), {rows, f}));
  EXPECT_TRUE(testing::AllClose(out, ref::SwigluForward(testing::ToDouble(gu), rows, f), 1e-6, 2e-6));
  cpu::SwigluBackward(Tensor::Of(dout.data(), {rows, f}), Tensor::Of(gu.data(), {rows, 2 * f}),
                      Tensor::Of(dgu.data(), {rows, 2 * f}));
  EXPECT_TRUE(
      testing::AllClose(dgu, ref::SwigluBackward(testing::ToDouble(dout), testing::ToDouble(gu), rows, f), 1e-6, 2e-6));
}

// Embedding lookups are copies: exact. The backward sums per id in token
// order: compared to double sums with 1e-6 tolerance.
TEST_F(ElementwiseTest, EmbeddingForwardBackwardWithVocabShard) {
  const int64_t vocab = 50, d = 12, m = 200, begin = 20, v_local = 15;  // shard holds ids [20, 35)
  auto table = Normal(v_local * d);
  std::vector<int32_t> ids(m);
  for (auto& id : ids) id = UniformInt(0, vocab - 1);
  ids[0] = 20;
  ids[1] = 34;
  ids[2] = 35;  // first id past the shard
  std::vector<float> out(m * d, 7.0f);
  cpu::EmbeddingForward(Tensor::Of(ids.data(), {m}), Tensor::Of(table.data(), {v_local, d}), begin,
                        Tensor::Of(out.data(), {m, d}));
  for (int64_t r = 0; r < m; ++r) {
    const int64_t local = ids[r] - begin;
    for (int64_t c = 0; c < d; ++c) {
      ASSERT_EQ(out[r * d + c], (local >= 0 && local < v_local) ? table[local * d + c] : 0.0f) << r << "," << c;
    }
  }
  auto dout = Normal(m * d);
  const auto dtable0 = Normal(v_local * d);
  std::vector<float> dtable = dtable0;
  cpu::EmbeddingBackward(Tensor::Of(ids.data(), {m}), Tensor::Of(dout.data(), {m, d}), begin,
                         Tensor::Of(dtable.data(), {v_local, d}));
  ref::Vec expected(dtable0.begin(), dtable0.end());
  for (int64_t r = 0; r < m; ++r) {
    const int64_t local = ids[r] - begin;
    if (local < 0 || local >= v_local) continue;
    for (int64_t c = 0; c < d; ++c) expected[local * d + c] += dout[r * d + c];
  }
  EXPECT_TRUE(testing::AllClose(dtable, expected, 1e-5, 1e-6));
}

// Cross-entropy tolerance: losses 2e-5 absolute + 1e-5 relative; gradients
// 1e-6 absolute (they are scaled probabilities).
TEST_F(ElementwiseTest, CrossEntropyMatchesReference) {
  for (const int64_t v : {int64_t{7}, int64_t{1000}, int64_t{4099}}) {
    const int64_t rows = 31;
    auto logits = Normal(rows * v, 4.0f);
    logits[5] = 80.0f;  // an extreme logit must not overflow
    std::vector<int32_t> targets(rows);
    for (auto& t : targets) t = UniformInt(0, static_cast<int>(v) - 1);
    targets[3] = -1;  // ignored row
    const double scale = 1.0 / 29.0;
    ref::Vec loss_ref, grad_ref;
    ref::CrossEntropy(testing::ToDouble(logits), targets, v, scale, &loss_ref, &grad_ref);

    std::vector<float> losses(rows), work = logits;
    cpu::CrossEntropyForwardBackward(Tensor::Of(work.data(), {rows, v}), Tensor::Of(targets.data(), {rows}),
                                     Tensor::Of(losses.data(), {rows}), static_cast<float>(scale), false);
    EXPECT_EQ(work, logits) << "compute_grad=false must leave the logits untouched";
    EXPECT_TRUE(testing::AllClose(losses, loss_ref, 2e-5, 1e-5)) << "V=" << v;

    cpu::CrossEntropyForwardBackward(Tensor::Of(work.data(), {rows, v}), Tensor::Of(targets.data(), {rows}),
                                     Tensor::Of(losses.data(), {rows}), static_cast<float>(scale), true);
    EXPECT_TRUE(testing::AllClose(losses, loss_ref, 2e-5, 1e-5)) << "V=" << v;
    EXPECT_TRUE(testing::AllClose(work, grad_ref, 1e-6, 1e-4)) << "V=" << v;
  }
}

}  // namespace
}  // namespace latam
