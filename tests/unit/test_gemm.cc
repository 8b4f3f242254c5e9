// GEMM and the linear-layer helpers against the double reference.
// Tolerance: |err| <= 2e-6 * K + 1e-6 (fp32 accumulation of K products of
// magnitude <= 1) and 1e-5 relative.
#include <gtest/gtest.h>

#include <limits>

#include "kernels/gemm.h"
#include "tests/reference/reference.h"
#include "tests/test_util.h"

namespace latam {
namespace {

class GemmTest : public testing::RandomTest {};

TEST_F(GemmTest, EveryTransposeMatchesReference) {
  for (int trial = 0; trial < 12; ++trial) {
    const bool ta = trial & 1, tb = trial & 2;
    const int64_t m = UniformInt(1, 150), n = UniformInt(1, 150), k = UniformInt(1, 200);
    const auto a = Uniform(static_cast<size_t>(m * k)), b = Uniform(static_cast<size_t>(k * n));
    std::vector<float> c(static_cast<size_t>(m * n), std::numeric_limits<float>::quiet_NaN());
    cpu::Gemm(ta, tb, m, n, k, 1.0f, a.data(), ta ? m : k, b.data(), tb ? k : n, 0.0f, c.data(), n);
    const auto expected = ref::Gemm(ta, tb, m, n, k, testing::ToDouble(a), testing::ToDouble(b));
    EXPECT_TRUE(testing::AllClose(c, expected, 2e-6 * static_cast<double>(k) + 1e-6, 1e-5))
        << "ta=" << ta << " tb=" << tb << " m=" << m << " n=" << n << " k=" << k;
  }
}

TEST_F(GemmTest, AlphaAndBetaAccumulate) {
  const int64_t m = 33, n = 17, k = 65;
  const auto a = Uniform(m * k), b = Uniform(k * n), c0 = Uniform(m * n);
  std::vector<float> c = c0;
  cpu::Gemm(false, false, m, n, k, 0.5f, a.data(), k, b.data(), n, 1.0f, c.data(), n);
  auto expected = ref::Gemm(false, false, m, n, k, testing::ToDouble(a), testing::ToDouble(b));
  for (size_t i = 0; i < expected.size(); ++i) expected[i] = 0.5 * expected[i] + c0[i];
  EXPECT_TRUE(testing::AllClose(c, expected, 2e-6 * k + 1e-6, 1e-5));
}

TEST_F(GemmTest, LinearForwardAndBackward) {
  const int64_t rows = UniformInt(1, 70), in = UniformInt(1, 90), out = UniformInt(1, 90);
  auto x = Uniform(rows * in), w = Uniform(out * in), dy = Uniform(rows * out);
  const auto xd = testing::ToDouble(x), wd = testing::ToDouble(w), dyd = testing::ToDouble(dy);

  std::vector<float> y(rows * out);
  cpu::LinearForward(Tensor::Of(x.data(), {rows, in}), Tensor::Of(w.data(), {out, in}),
                     Tensor::Of(y.data(), {rows, out}), false);
  EXPECT_TRUE(testing::AllClose(y, ref::Gemm(false, true, rows, out, in, xd, wd), 2e-6 * in + 1e-6, 1e-5));

  // accumulate=true adds to the existing contents (residual connections).
  const auto y_before = y;
  cpu::LinearForward(Tensor::Of(x.data(), {rows, in}), Tensor::Of(w.data(), {out, in}),
                     Tensor::Of(y.data(), {rows, out}), true);
  for (size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], 2.0f * y_before[i], 1e-5f);

  std::vector<float> dx(rows * in);
  cpu::LinearBackwardInput(Tensor::Of(dy.data(), {rows, out}), Tensor::Of(w.data(), {out, in}),
                           Tensor::Of(dx.data(), {rows, in}), false);
  EXPECT_TRUE(testing::AllClose(dx, ref::Gemm(false, false, rows, in, out, dyd, wd), 2e-6 * out + 1e-6, 1e-5));

  // The weight gradient accumulates: start from a known value.
  const auto dw0 = Uniform(out * in);
  std::vector<float> dw = dw0;
  cpu::LinearBackwardWeight(Tensor::Of(dy.data(), {rows, out}), Tensor::Of(x.data(), {rows, in}),
                            Tensor::Of(dw.data(), {out, in}));
  auto expected = ref::Gemm(true, false, out, in, rows, dyd, xd);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += dw0[i];
  EXPECT_TRUE(testing::AllClose(dw, expected, 2e-6 * rows + 1e-6, 1e-5));
}

}  // namespace
}  // namespace latam
