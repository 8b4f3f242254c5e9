// RMSNorm forward and backward against the double reference.
// Tolerance: 1e-5 absolute + 1e-4 relative (fp32 row reductions).
#include <gtest/gtest.h>

#include "kernels/rmsnorm.h"
#include "tests/reference/reference.h"
#include "tests/test_util.h"

namespace latam {
namespace {

class RmsNormTest : public testing::RandomTest {};

TEST_F(RmsNormTest, ForwardAndBackwardMatchReference) {
  for (const auto& [rows, d] : std::vector<std::pair<int64_t, int64_t>>{{1, 8}, {37, 96}, {100, 130}, {70, 256}}) {
    const float eps = 1e-5f;
    auto x = Normal(rows * d, 2.0f), w = Uniform(d, 0.5f, 1.5f), dy = Normal(rows * d);
    ref::Vec y_ref, rstd_ref, dx_ref, dw_ref;
    ref::RmsNormForward(testing::ToDouble(x), testing::ToDouble(w), rows, d, eps, &y_ref, &rstd_ref);
    ref::RmsNormBackward(testing::ToDouble(dy), testing::ToDouble(x), testing::ToDouble(w), rows, d, eps, &dx_ref,
                         &dw_ref);

    std::vector<float> y(rows * d), rstd(rows);
    cpu::RmsNormForward(Tensor::Of(x.data(), {rows, d}), Tensor::Of(w.data(), {d}), eps,
                        Tensor::Of(y.data(), {rows, d}), Tensor::Of(rstd.data(), {rows}));
    EXPECT_TRUE(testing::AllClose(y, y_ref, 1e-5, 1e-4)) << rows << "x" << d;
    EXPECT_TRUE(testing::AllClose(rstd, rstd_ref, 1e-6, 1e-5));

    // Overwrite mode, with dw accumulating onto a known start.
    std::vector<float> dx(rows * d, 123.0f);
    const auto dw0 = Uniform(d);
    std::vector<float> dw = dw0;
    cpu::RmsNormBackward(Tensor::Of(dy.data(), {rows, d}), Tensor::Of(x.data(), {rows, d}), Tensor::Of(w.data(), {d}),
                         Tensor::Of(rstd.data(), {rows}), Tensor::Of(dx.data(), {rows, d}), false,
                         Tensor::Of(dw.data(), {d}));
    EXPECT_TRUE(testing::AllClose(dx, dx_ref, 1e-5, 1e-4));
    for (int64_t j = 0; j < d; ++j) dw_ref[j] += dw0[j];
    EXPECT_TRUE(testing::AllClose(dw, dw_ref, 1e-4, 1e-4));

    // Accumulate mode adds to dx.
    const auto dx0 = Uniform(rows * d);
    std::vector<float> dx_acc = dx0;
    cpu::RmsNormBackward(Tensor::Of(dy.data(), {rows, d}), Tensor::Of(x.data(), {rows, d}), Tensor::Of(w.data(), {d}),
                         Tensor::Of(rstd.data(), {rows}), Tensor::Of(dx_acc.data(), {rows, d}), true,
                         Tensor::Of(dw.data(), {d}));
    for (size_t i = 0; i < dx_ref.size(); ++i) dx_ref[i] += dx0[i];
    EXPECT_TRUE(testing::AllClose(dx_acc, dx_ref, 1e-5, 1e-4));
  }
}

TEST_F(RmsNormTest, InPlaceForward) {
  const int64_t rows = 9, d = 48;
  auto x = Normal(rows * d), w = Uniform(d, 0.5f, 1.5f);
  ref::Vec y_ref, rstd_ref;
  ref::RmsNormForward(testing::ToDouble(x), testing::ToDouble(w), rows, d, 1e-6, &y_ref, &rstd_ref);
  std::vector<float> rstd(rows);
  cpu::RmsNormForward(Tensor::Of(x.data(), {rows, d}), Tensor::Of(w.data(), {d}), 1e-6f,
                      Tensor::Of(x.data(), {rows, d}), Tensor::Of(rstd.data(), {rows}));
  EXPECT_TRUE(testing::AllClose(x, y_ref, 1e-5, 1e-4));
}

}  // namespace
}  // namespace latam
