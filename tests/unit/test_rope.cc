// RoPE against the double reference (rotate-half convention), its backward as
// the inverse rotation, and the Llama 3.1 frequency rescaling rule; rows at
// explicit positions (context-parallel chunks, positions restarting at each
// document) against a double reference of their own.
// Tolerance: 2e-5 absolute + 1e-5 relative (the tables are fp32-rounded
// cos/sin of double angles).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <numbers>
#include <vector>

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

// The rotation in double with row m at positions[m], written from the formula
// in kernels/rope.h (angle = position * inv_freq[i], rotate half), not from
// the kernel's table.
std::vector<double> RopeAtPositions(const std::vector<double>& x, int64_t width, const std::vector<int32_t>& positions,
                                    int64_t n_rot_heads, int64_t head_dim, const std::vector<double>& inv_freq,
                                    double direction) {
  std::vector<double> y = x;
  const int64_t half = head_dim / 2;
  for (size_t m = 0; m < positions.size(); ++m) {
    for (int64_t h = 0; h < n_rot_heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = direction * positions[m] * inv_freq[static_cast<size_t>(i)];
        const size_t lo = m * static_cast<size_t>(width) + static_cast<size_t>(h * head_dim + i);
        const size_t hi = lo + static_cast<size_t>(half);
        y[lo] = x[lo] * std::cos(angle) - x[hi] * std::sin(angle);
        y[hi] = x[hi] * std::cos(angle) + x[lo] * std::sin(angle);
      }
    }
  }
  return y;
}

TEST_F(RopeTest, ExplicitPositionsMatchReference) {
  // Llama 3.1 scaling, so that the scaled frequencies are covered too.
  RopeScaling scaling;
  scaling.factor = 8.0;
  scaling.original_max_position = 64.0;
  const int64_t batch = 3, seq = 29, hd = 16, hq = 4, hkv = 2, width = (hq + 2 * hkv) * hd;
  const int64_t rows = batch * seq;
  const int max_positions = 257;  // positions far beyond seq, as a context-parallel rank's are
  const RopeTable table = BuildRopeTable(500000.0, hd, max_positions, scaling);
  const std::vector<double> inv_freq = RopeInverseFrequencies(500000.0, hd, scaling);

  std::vector<int32_t> positions(static_cast<size_t>(rows));
  for (auto& p : positions) p = UniformInt(0, max_positions - 1);
  // The table's first and last rows, a repeated position, a decreasing run,
  // and positions restarting at every document (documents of three rows).
  positions[0] = 0;
  positions[1] = max_positions - 1;
  positions[2] = positions[3] = positions[4] = 77;
  for (int k = 0; k < 6; ++k) positions[static_cast<size_t>(40 + k)] = 200 - 3 * k;
  for (int k = 0; k < 9; ++k) positions[static_cast<size_t>(60 + k)] = k % 3;

  const auto x0 = Normal(static_cast<size_t>(rows * width));
  std::vector<float> x = x0;
  cpu::RopeForward(Tensor::Of(x.data(), {rows, width}), static_cast<int>(seq), hq + hkv, table, positions.data());
  EXPECT_TRUE(testing::AllClose(
      x, RopeAtPositions(testing::ToDouble(x0), width, positions, hq + hkv, hd, inv_freq, 1.0), 2e-5, 1e-5));
  // V heads (the last hkv heads of each row) are untouched.
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t c = (hq + hkv) * hd; c < width; ++c) ASSERT_EQ(x[m * width + c], x0[m * width + c]);
  }

  const auto dy = Normal(static_cast<size_t>(rows * width));
  std::vector<float> dx = dy;
  cpu::RopeBackward(Tensor::Of(dx.data(), {rows, width}), static_cast<int>(seq), hq + hkv, table, positions.data());
  EXPECT_TRUE(testing::AllClose(
      dx, RopeAtPositions(testing::ToDouble(dy), width, positions, hq + hkv, hd, inv_freq, -1.0), 2e-5, 1e-5));

  // Backward undoes forward at the same positions.
  cpu::RopeBackward(Tensor::Of(x.data(), {rows, width}), static_cast<int>(seq), hq + hkv, table, positions.data());
  EXPECT_TRUE(testing::AllClose(x, testing::ToDouble(x0), 2e-5, 1e-5));
}

TEST_F(RopeTest, PositionsOfTheSequenceGiveTheImplicitResultBitwise) {
  const int64_t batch = 2, seq = 37, hd = 16, hq = 4, hkv = 2, width = (hq + 2 * hkv) * hd;
  const int64_t rows = batch * seq;
  const RopeTable table = BuildRopeTable(500000.0, hd, 64, RopeScaling{});
  std::vector<int32_t> positions(static_cast<size_t>(rows));
  for (int64_t m = 0; m < rows; ++m) positions[static_cast<size_t>(m)] = static_cast<int32_t>(m % seq);
  const auto x0 = Normal(static_cast<size_t>(rows * width));
  const size_t bytes = x0.size() * sizeof(float);

  std::vector<float> implicit = x0, explicit_positions = x0;
  cpu::RopeForward(Tensor::Of(implicit.data(), {rows, width}), static_cast<int>(seq), hq + hkv, table);
  cpu::RopeForward(Tensor::Of(explicit_positions.data(), {rows, width}), static_cast<int>(seq), hq + hkv, table,
                   positions.data());
  EXPECT_EQ(std::memcmp(implicit.data(), explicit_positions.data(), bytes), 0) << "forward";

  implicit = x0;
  explicit_positions = x0;
  cpu::RopeBackward(Tensor::Of(implicit.data(), {rows, width}), static_cast<int>(seq), hq + hkv, table);
  cpu::RopeBackward(Tensor::Of(explicit_positions.data(), {rows, width}), static_cast<int>(seq), hq + hkv, table,
                    positions.data());
  EXPECT_EQ(std::memcmp(implicit.data(), explicit_positions.data(), bytes), 0) << "backward";
}

TEST_F(RopeTest, PositionOutsideTheTableAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // the OpenMP threads make fork() unsafe
  const int64_t rows = 8, hd = 8, width = 3 * hd;
  const RopeTable table = BuildRopeTable(10000.0, hd, 16, RopeScaling{});
  std::vector<float> x = Normal(static_cast<size_t>(rows * width));
  const Tensor xt = Tensor::Of(x.data(), {rows, width});
  std::vector<int32_t> positions(static_cast<size_t>(rows), 3);
  positions[5] = 16;  // one past the table
  EXPECT_DEATH(cpu::RopeForward(xt, 4, 2, table, positions.data()),
               "rope row 5 is at position 16, outside the RoPE table \\[0, 16\\)");
  positions[5] = 3;
  positions[6] = -1;
  EXPECT_DEATH(cpu::RopeBackward(xt, 4, 2, table, positions.data()), "rope row 6 is at position -1");
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
