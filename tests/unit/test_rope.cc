// RoPE against the double reference (rotate-half convention), its backward as
// the inverse rotation, and the Llama 3.1 frequency rescaling rule.
// Tolerance: 2e-5 absolute + 1e-5 relative (the tables are fp32-rounded
// cos/sin of double angles).
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include "kernels/rope.h"
#include "tests/reference/reference.h"
#include "tests/test_util.h"

namespace latam {
namespace {

class RopeTest : public testing::RandomTest {};

TEST_F(RopeTest, ForwardAndBackwardMatchReference) {
  const int64_t batch = 2, seq = 37, hd = 16, hq = 4, hkv = 2, width = (hq + 2 * hkv) * hd;
  const int64_t rows = batch * seq;
  const RopeTable table = BuildRopeTable(500000.0, hd, 64, RopeScaling{});
  const auto inv = RopeInverseFrequencies(500000.0, hd, RopeScaling{});
  const ref::Vec inv_freq(inv.begin(), inv.end());
  const auto x0 = Normal(rows * width);

  std::vector<float> x = x0;
  cpu::RopeForward(Tensor::Of(x.data(), {rows, width}), seq, hq + hkv, table);
  EXPECT_TRUE(testing::AllClose(x, ref::Rope(testing::ToDouble(x0), rows, width, seq, hq + hkv, hd, inv_freq, 1.0),
                                2e-5, 1e-5));
  // V heads (the last hkv heads of each row) are untouched.
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t c = (hq + hkv) * hd; c < width; ++c) ASSERT_EQ(x[m * width + c], x0[m * width + c]);
  }

  const auto dy = Normal(rows * width);
  std::vector<float> dx = dy;
  cpu::RopeBackward(Tensor::Of(dx.data(), {rows, width}), seq, hq + hkv, table);
  EXPECT_TRUE(testing::AllClose(dx, ref::Rope(testing::ToDouble(dy), rows, width, seq, hq + hkv, hd, inv_freq, -1.0),
                                2e-5, 1e-5));

  // Backward undoes forward (a rotation's adjoint is its inverse).
  cpu::RopeBackward(Tensor::Of(x.data(), {rows, width}), seq, hq + hkv, table);
  EXPECT_TRUE(testing::AllClose(x, testing::ToDouble(x0), 2e-5, 1e-5));
}

TEST(RopeScalingTest, Llama31RuleKeepsHighScalesLowAndBlendsTheBand) {
  // Llama 3.1: factor 8, low_freq_factor 1, high_freq_factor 4, 8192 original.
  RopeScaling s;
  s.factor = 8.0;
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  s.original_max_position = 8192.0;
  const int hd = 128;
  const auto plain = RopeInverseFrequencies(500000.0, hd, RopeScaling{});
  const auto scaled = RopeInverseFrequencies(500000.0, hd, s);
  int kept = 0, divided = 0, blended = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    const double wavelen = 2.0 * std::numbers::pi / plain[i];
    if (wavelen < 8192.0 / 4.0) {
      EXPECT_DOUBLE_EQ(scaled[i], plain[i]);
      ++kept;
    } else if (wavelen > 8192.0) {
      EXPECT_DOUBLE_EQ(scaled[i], plain[i] / 8.0);
      ++divided;
    } else {
      const double smooth = (8192.0 / wavelen - 1.0) / 3.0;
      EXPECT_NEAR(scaled[i], (1.0 - smooth) * plain[i] / 8.0 + smooth * plain[i], 1e-15);
      EXPECT_LT(scaled[i], plain[i]);
      EXPECT_GT(scaled[i], plain[i] / 8.0);
      ++blended;
    }
  }
  // All three regimes occur for these settings.
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(blended, 0);
  // The first frequency is theta^0 = 1 and is never rescaled.
  EXPECT_DOUBLE_EQ(scaled[0], 1.0);
}

}  // namespace
}  // namespace latam
