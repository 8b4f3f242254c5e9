// AdamW, gradient norm and scaling against double references.
#include <gtest/gtest.h>

#include "kernels/adamw.h"
#include "kernels/grad_norm.h"
#include "tests/reference/reference.h"
#include "tests/test_util.h"

namespace latam {
namespace {

class OptimizerKernelTest : public testing::RandomTest {};

// Five steps with fresh gradients; tolerance 1e-6 absolute + 1e-5 relative
// on parameters and moments.
TEST_F(OptimizerKernelTest, AdamWMatchesReference) {
  const int64_t n = 1003;
  auto p = Normal(n), m = std::vector<float>(n, 0.0f), v = std::vector<float>(n, 0.0f);
  ref::Vec pr = testing::ToDouble(p), mr(n, 0.0), vr(n, 0.0);
  AdamWHyper h;
  h.lr = 1e-2f;
  h.beta1 = 0.9f;
  h.beta2 = 0.95f;
  h.eps = 1e-8f;
  h.weight_decay = 0.1f;
  for (int64_t step = 1; step <= 5; ++step) {
    auto g = Normal(n, 0.1f);
    h.step = step;
    cpu::AdamWUpdate(Tensor::Of(p.data(), {n}), Tensor::Of(g.data(), {n}), Tensor::Of(m.data(), {n}),
                     Tensor::Of(v.data(), {n}), h);
    ref::AdamW(&pr, testing::ToDouble(g), &mr, &vr, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, step);
  }
  EXPECT_TRUE(testing::AllClose(p, pr, 1e-6, 1e-5));
  EXPECT_TRUE(testing::AllClose(m, mr, 1e-7, 1e-5));
  EXPECT_TRUE(testing::AllClose(v, vr, 1e-9, 1e-5));
}

TEST_F(OptimizerKernelTest, SumOfSquaresAndScale) {
  for (const int64_t n : {int64_t{1}, int64_t{255}, int64_t{16384}, int64_t{16385}, int64_t{100001}}) {
    auto x = Normal(n);
    double expected = 0.0;
    for (float v : x) expected += static_cast<double>(v) * v;
    EXPECT_NEAR(cpu::SumOfSquares(Tensor::Of(x.data(), {n})), expected, 1e-6 * expected) << "n=" << n;
    const auto before = x;
    cpu::Scale(Tensor::Of(x.data(), {n}), 0.25f);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(x[i], before[i] * 0.25f);
  }
}

}  // namespace
}  // namespace latam
