// NF4 quantisation and the NF4 linear layer (kernels/nf4.h):
//   code book       against the paper's definition, recomputed here from an
//                   inverse normal CDF (bisection on std::erfc, in double).
//   nearest code    every code-book value maps to itself, a midpoint to the
//                   lower code, the next float above it to the upper one, and
//                   random x in [-1, 1] to a nearest value.
//   packing         element 2j in the high nibble of byte j, 2j + 1 in the
//                   low one.
//   grid values     weights built as code * absmax, with absmaxes the int8
//                   double quantisation represents exactly, come back bit
//                   for bit, and their codes are the ones they were built
//                   from.
//   random weights  normal weights (core/random.h, a fresh seed per test)
//                   with row scales spread over 2^-6..2^6: per-element error
//                   within half the largest code-book gap times the block's
//                   absmax plus the scale's double-quantisation error; the
//                   block scales within their bound; several scale groups
//                   with a short last one.
//   dequantisation  bf16 = f32 rounded once; any row range equals the same
//                   rows of the whole, including blocks that span rows and
//                   rows that start in the middle of a byte (odd cols).
//   linear layer    forward and input gradient against cpu::Gemm with the
//                   whole dequantised W, one and many scratch tiles, with and
//                   without accumulation, for odd shapes.
//   refusals        element counts not a multiple of 64, empty and
//                   non-finite weights (Status), and bad GEMM/dequantisation
//                   arguments (fatal checks).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "core/random.h"
#include "kernels/gemm.h"
#include "kernels/nf4.h"
#include "tests/test_util.h"

namespace latam {
namespace {

// Phi(z) = erfc(-z / sqrt(2)) / 2, and its inverse by bisection: 200 halvings
// of [-40, 40] reach the double resolution of z.
double NormalCdf(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

double InverseNormalCdf(double p) {
  double lo = -40.0, hi = 40.0;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    if (NormalCdf(mid) < p) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return 0.5 * (lo + hi);
}

// The largest distance between neighbouring code-book values.
double MaxGap() {
  double gap = 0.0;
  for (int k = 0; k + 1 < kNf4Codes; ++k) gap = std::max(gap, double{kNf4CodeBook[k + 1]} - kNf4CodeBook[k]);
  return gap;
}

int CodeAt(const Nf4Weight& q, int64_t e) {
  const uint8_t byte = q.codes[static_cast<size_t>(e / 2)];
  return e % 2 == 0 ? byte >> 4 : byte & 0x0f;
}

std::vector<float> Dequantized(const Nf4Weight& q) {
  std::vector<float> out(static_cast<size_t>(q.numel()));
  cpu::DequantizeNf4(q.View(), 0, Tensor::Of(out.data(), Shape{q.rows, q.cols}));
  return out;
}

TEST(Nf4CodeBook, MatchesNormalQuantilesOfThePaper) {
  // delta = (1/(2*15) + 1/(2*16)) / 2: the paper's offset, so that the
  // extreme quantiles are finite.
  const double delta = 0.5 * (1.0 / 30.0 + 1.0 / 32.0);
  const double top = InverseNormalCdf(1.0 - delta);
  std::vector<double> expected;
  for (int j = 0; j <= 6; ++j) expected.push_back(-InverseNormalCdf(1.0 - delta - j * (0.5 - delta) / 7.0) / top);
  expected.push_back(0.0);
  for (int j = 7; j >= 0; --j) expected.push_back(InverseNormalCdf(1.0 - delta - j * (0.5 - delta) / 8.0) / top);
  ASSERT_EQ(expected.size(), static_cast<size_t>(kNf4Codes));
  // Tolerance 1e-6: the fp32 constants were computed from fp32 probabilities
  // (rounding error <= 3e-8), which the quantile function's slope over
  // Phi^-1(1 - delta) (<= 7.5 on this range) magnifies to <= 2.3e-7, plus
  // half an fp32 ulp of the value (<= 6e-8).
  for (int k = 0; k < kNf4Codes; ++k) {
    EXPECT_NEAR(kNf4CodeBook[k], expected[static_cast<size_t>(k)], 1e-6) << "code " << k;
  }
  // The structure is exact: ascending, -1 and 1 at the ends, 0 at index 7,
  // 7 negative and 8 positive values.
  EXPECT_EQ(kNf4CodeBook[0], -1.0f);
  EXPECT_EQ(kNf4CodeBook[kNf4Codes - 1], 1.0f);
  EXPECT_EQ(kNf4CodeBook[kNf4ZeroCode], 0.0f);
  for (int k = 0; k + 1 < kNf4Codes; ++k) EXPECT_LT(kNf4CodeBook[k], kNf4CodeBook[k + 1]);
  EXPECT_EQ(std::count_if(std::begin(kNf4CodeBook), std::end(kNf4CodeBook), [](float c) { return c < 0.0f; }), 7);
  EXPECT_EQ(std::count_if(std::begin(kNf4CodeBook), std::end(kNf4CodeBook), [](float c) { return c > 0.0f; }), 8);
}

class Nf4Test : public testing::RandomTest {};

TEST_F(Nf4Test, NearestCodeWithTiesToTheLowerCode) {
  for (int k = 0; k < kNf4Codes; ++k) EXPECT_EQ(Nf4Code(kNf4CodeBook[k]), k);
  for (int k = 0; k + 1 < kNf4Codes; ++k) {
    const float mid = (kNf4CodeBook[k] + kNf4CodeBook[k + 1]) * 0.5f;
    EXPECT_EQ(Nf4Code(mid), k) << "a tie goes to the lower code";
    EXPECT_EQ(Nf4Code(std::nextafter(mid, 2.0f)), k + 1);
    EXPECT_EQ(Nf4Code(std::nextafter(mid, -2.0f)), k);
  }
  // Any x in [-1, 1]: no code-book value is nearer than the chosen one
  // (strictly: a tie never happens for random x but would be allowed).
  for (const float x : Uniform(20000)) {
    const int code = Nf4Code(x);
    const float chosen = std::abs(x - kNf4CodeBook[code]);
    for (int k = 0; k < kNf4Codes; ++k) ASSERT_LE(chosen, std::abs(x - kNf4CodeBook[k])) << "x " << x;
  }
}

TEST(Nf4Layout, HighNibbleHoldsTheEvenElement) {
  // 64 elements whose codes are 0, 1, ..., 15, 0, 1, ...: absmax 1 (codes 0
  // and 15 are -1 and 1), so element i has code i % 16.
  std::vector<float> w(64);
  for (size_t i = 0; i < w.size(); ++i) w[i] = kNf4CodeBook[i % 16];
  const Result<Nf4Weight> q = QuantizeNf4(Tensor::Of(w.data(), Shape{1, 64}));
  ASSERT_TRUE(q.ok()) << q.status().message();
  ASSERT_EQ(q->codes.size(), 32u);
  for (size_t j = 0; j < 32; ++j) {
    const int even = static_cast<int>((2 * j) % 16), odd = static_cast<int>((2 * j + 1) % 16);
    EXPECT_EQ(q->codes[j], static_cast<uint8_t>(even << 4 | odd)) << "byte " << j;
  }
  EXPECT_EQ(q->codes[0], 0x01);
  EXPECT_EQ(q->codes[7], 0xef);
}

TEST(Nf4Layout, BytesPerParameter) {
  // 8192 x 8192 (a 70B model's attention projection): 4 + 8/64 + 32/16384
  // bits, plus the offset's 32 bits over 2^26 elements.
  const int64_t numel = int64_t{8192} * 8192;
  const double bits = 8.0 * static_cast<double>(Nf4Bytes(numel)) / static_cast<double>(numel);
  EXPECT_NEAR(bits, 4.0 + 8.0 / 64.0 + 32.0 / 16384.0, 1e-6);
  EXPECT_NEAR(bits, 4.127, 5e-4);
  EXPECT_EQ(Nf4Bytes(64), 32 + 1 + 4 + 4);
  EXPECT_EQ(Nf4ScaleGroups(64 * 256), 1);
  EXPECT_EQ(Nf4ScaleGroups(64 * 257), 2);
}

TEST_F(Nf4Test, ValuesOnTheGridComeBackExactly) {
  // One group of 256 blocks with absmax 2 + q_b / 64 for q_b a shuffle of
  // -127..127 and one 0: mu = 2 and g = (127/64) / 127 = 1/64 exactly, so
  // every s_b is an fp32 value the double quantisation stores exactly. Each
  // block holds +-s_b once (its absmax) and random codes elsewhere.
  constexpr int64_t kRows = 128, kCols = 128;  // 256 blocks of 64
  std::vector<int> scale_q;
  for (int v = -127; v <= 127; ++v) scale_q.push_back(v);
  scale_q.push_back(0);
  std::shuffle(scale_q.begin(), scale_q.end(), rng_);
  std::vector<float> w(kRows * kCols);
  std::vector<int> codes(w.size());
  for (int64_t b = 0; b < Nf4Blocks(kRows * kCols); ++b) {
    const float s = 2.0f + static_cast<float>(scale_q[static_cast<size_t>(b)]) / 64.0f;
    const int64_t extreme = b * kNf4BlockSize + UniformInt(0, kNf4BlockSize - 1);
    for (int64_t i = b * kNf4BlockSize; i < (b + 1) * kNf4BlockSize; ++i) {
      const int code = i == extreme ? (UniformInt(0, 1) == 0 ? 0 : kNf4Codes - 1) : UniformInt(0, kNf4Codes - 1);
      codes[static_cast<size_t>(i)] = code;
      w[static_cast<size_t>(i)] = kNf4CodeBook[code] * s;
    }
  }
  const Result<Nf4Weight> q = QuantizeNf4(Tensor::Of(w.data(), Shape{kRows, kCols}));
  ASSERT_TRUE(q.ok()) << q.status().message();
  EXPECT_EQ(q->scale_offset, 2.0f);
  ASSERT_EQ(q->group_scales.size(), 1u);
  EXPECT_EQ(q->group_scales[0], 1.0f / 64.0f);
  for (int64_t i = 0; i < q->numel(); ++i) ASSERT_EQ(CodeAt(*q, i), codes[static_cast<size_t>(i)]) << "element " << i;
  const std::vector<float> back = Dequantized(*q);
  for (size_t i = 0; i < w.size(); ++i) {
    ASSERT_EQ(testing::BitsOf(back[i]), testing::BitsOf(w[i])) << "element " << i << ": " << back[i] << " vs " << w[i];
  }
}

TEST_F(Nf4Test, EqualScalesAndZeroBlocksAreExact) {
  // Every block's absmax equal (g = 0, s'_b = mu exactly), and one all-zero
  // block (every code 7, dequantised to 0 whatever its scale).
  std::vector<float> w(64 * 6);
  for (size_t i = 0; i < w.size(); ++i) w[i] = kNf4CodeBook[UniformInt(0, kNf4Codes - 1)] * 0.375f;
  for (size_t b = 0; b < 6; ++b) w[b * 64 + 5] = 0.375f;
  for (size_t i = 64 * 3; i < 64 * 4; ++i) w[i] = 0.0f;
  const Result<Nf4Weight> q = QuantizeNf4(Tensor::Of(w.data(), Shape{6, 64}));
  ASSERT_TRUE(q.ok()) << q.status().message();
  for (int64_t i = 64 * 3; i < 64 * 4; ++i) EXPECT_EQ(CodeAt(*q, i), kNf4ZeroCode);
  const std::vector<float> back = Dequantized(*q);
  for (size_t i = 0; i < w.size(); ++i) {
    if (i / 64 == 3) {
      EXPECT_EQ(back[i], 0.0f) << "element " << i;
    } else {
      // mu = 0.375 * 5/6 (one zero block); s'_b = mu + g q_b reproduces 0.375
      // to the double-quantisation bound only, so compare the codes instead.
      EXPECT_EQ(kNf4CodeBook[CodeAt(*q, static_cast<int64_t>(i))] * 0.375f, w[i]) << "element " << i;
    }
  }
  // With every absmax equal the scales are exact.
  std::vector<float> same(64 * 4, 0.0f);
  for (size_t b = 0; b < 4; ++b) same[b * 64 + b] = -0.8125f;
  const Result<Nf4Weight> q_same = QuantizeNf4(Tensor::Of(same.data(), Shape{4, 64}));
  ASSERT_TRUE(q_same.ok());
  EXPECT_EQ(q_same->group_scales[0], 0.0f);
  const std::vector<float> back_same = Dequantized(*q_same);
  for (size_t i = 0; i < same.size(); ++i) EXPECT_EQ(back_same[i], same[i]) << "element " << i;
}

// Normal weights, row r scaled by 2^e_r with e_r uniform in [-6, 6], so block
// absmaxes differ by orders of magnitude across the groups.
std::vector<float> SpreadNormalWeights(int64_t rows, int64_t cols, uint64_t seed, std::mt19937_64& rng) {
  std::vector<float> w(static_cast<size_t>(rows * cols));
  FillNormal(w.data(), rows * cols, 1.0f, seed, StreamId("nf4 test weight"), 0);
  std::uniform_int_distribution<int> exponent(-6, 6);
  for (int64_t r = 0; r < rows; ++r) {
    const int e = exponent(rng);
    for (int64_t c = 0; c < cols; ++c)
      w[static_cast<size_t>(r * cols + c)] = std::ldexp(w[static_cast<size_t>(r * cols + c)], e);
  }
  return w;
}

TEST_F(Nf4Test, RandomNormalWeightsWithinTheErrorBound) {
  // 300 x 128: 600 blocks, groups of 256, 256 and a short 88.
  constexpr int64_t kRows = 300, kCols = 128;
  const std::vector<float> w = SpreadNormalWeights(kRows, kCols, seed_, rng_);
  const Result<Nf4Weight> q = QuantizeNf4(Tensor::Of(const_cast<float*>(w.data()), Shape{kRows, kCols}));
  ASSERT_TRUE(q.ok()) << q.status().message();
  const int64_t blocks = Nf4Blocks(kRows * kCols);
  ASSERT_EQ(q->group_scales.size(), 3u);
  ASSERT_EQ(q->scale_codes.size(), static_cast<size_t>(blocks));
  ASSERT_EQ(static_cast<int64_t>(q->codes.size() + q->scale_codes.size() + 4 * q->group_scales.size() + 4), q->bytes());

  // The exact absmaxes and the double-quantisation parameters, recomputed.
  std::vector<double> absmax(static_cast<size_t>(blocks), 0.0);
  double sum = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t i = 0; i < kNf4BlockSize; ++i) {
      absmax[static_cast<size_t>(b)] =
          std::max(absmax[static_cast<size_t>(b)], std::abs(double{w[static_cast<size_t>(b * kNf4BlockSize + i)]}));
    }
    sum += absmax[static_cast<size_t>(b)];
  }
  const double mu = sum / static_cast<double>(blocks);
  EXPECT_EQ(q->scale_offset, static_cast<float>(mu));
  const double max_gap = MaxGap();
  const std::vector<float> back = Dequantized(*q);
  for (int64_t g = 0; g < 3; ++g) {
    const int64_t first = g * kNf4ScaleGroupSize, last = std::min(blocks, first + kNf4ScaleGroupSize);
    double dev = 0.0;
    int extreme_codes = 0;
    for (int64_t b = first; b < last; ++b) {
      dev = std::max(dev, std::abs(absmax[static_cast<size_t>(b)] - static_cast<double>(q->scale_offset)));
      const int code = q->scale_codes[static_cast<size_t>(b)];
      EXPECT_LE(std::abs(code), 127);
      extreme_codes += std::abs(code) == 127 ? 1 : 0;
    }
    const double step = dev / 127.0;
    // g_k is max |s_b - mu| / 127 computed in fp32: the subtraction and the
    // division round once each (relative 2^-24), so 2^-22 relative covers it.
    EXPECT_NEAR(q->group_scales[static_cast<size_t>(g)], step, step * 0x1p-22) << "group " << g;
    EXPECT_GE(extreme_codes, 1) << "the block at max |s_b - mu| has code +-127";
    for (int64_t b = first; b < last; ++b) {
      const double s = absmax[static_cast<size_t>(b)];
      const double s_dq = cpu::Nf4BlockScale(q->View(), b);
      // Scale bound: rounding (s - mu) / g to an integer costs g / 2; the fp32
      // subtraction, division and fma add a few ulps of |mu| + 127 g (the
      // largest magnitude involved): 2^-21 of it is 8 ulps at 2^-24.
      const double scale_err = std::abs(s_dq - s);
      const double scale_bound = step / 2 + 0x1p-21 * (std::abs(mu) + 127 * step);
      ASSERT_LE(scale_err, scale_bound) << "block " << b << " s " << s << " s' " << s_dq;
      // Element bound: the nearest code is at most max_gap / 2 away from
      // w / s (times s), the scale error is multiplied by |code| <= 1, and
      // fp32 rounds w / s, the midpoints and code * s' (2^-21 (s + |s'|)
      // covers those three half-ulps with margin).
      const double bound = s * max_gap / 2 + scale_err + 0x1p-21 * (s + std::abs(s_dq));
      for (int64_t i = b * kNf4BlockSize; i < (b + 1) * kNf4BlockSize; ++i) {
        const double err = std::abs(double{back[static_cast<size_t>(i)]} - w[static_cast<size_t>(i)]);
        ASSERT_LE(err, bound) << "element " << i << " w " << w[static_cast<size_t>(i)] << " w' "
                              << back[static_cast<size_t>(i)];
        // And the code is a nearest one for x = w / s.
        const double x = w[static_cast<size_t>(i)] / s;
        const double chosen = std::abs(x - kNf4CodeBook[CodeAt(*q, i)]);
        for (int k = 0; k < kNf4Codes; ++k) ASSERT_LE(chosen, std::abs(x - kNf4CodeBook[k]) + 0x1p-22) << i;
      }
    }
  }
}

TEST_F(Nf4Test, RowRangesAndBf16MatchTheWholeDequantisation) {
  // cols = 33 (odd): blocks span rows and every other row starts in the
  // middle of a byte. cols = 96: blocks span rows on byte boundaries.
  for (const int64_t cols : {int64_t{33}, int64_t{96}}) {
    const int64_t rows = 128;
    const std::vector<float> w = SpreadNormalWeights(rows, cols, seed_, rng_);
    const Result<Nf4Weight> q = QuantizeNf4(Tensor::Of(const_cast<float*>(w.data()), Shape{rows, cols}));
    ASSERT_TRUE(q.ok()) << q.status().message();
    const std::vector<float> whole = Dequantized(*q);
    std::vector<BF16> whole_bf16(whole.size());
    cpu::DequantizeNf4(q->View(), 0, Tensor::Of(whole_bf16.data(), Shape{rows, cols}));
    for (size_t i = 0; i < whole.size(); ++i) {
      ASSERT_EQ(whole_bf16[i].bits, BF16::FromFloat(whole[i]).bits) << "bf16 is the f32 value rounded once";
    }
    for (const auto& [begin, count] :
         {std::pair<int64_t, int64_t>{0, 1}, {1, 1}, {3, 7}, {63, 2}, {127, 1}, {5, 123}}) {
      std::vector<float> part(static_cast<size_t>(count * cols), std::numeric_limits<float>::quiet_NaN());
      cpu::DequantizeNf4(q->View(), begin, Tensor::Of(part.data(), Shape{count, cols}));
      for (int64_t i = 0; i < count * cols; ++i) {
        ASSERT_EQ(testing::BitsOf(part[static_cast<size_t>(i)]),
                  testing::BitsOf(whole[static_cast<size_t>(begin * cols + i)]))
            << "cols " << cols << " rows from " << begin << " element " << i;
      }
    }
  }
}

// Sum over k of |a_ik| |b_kj| for C = A B^T (A [m, k], B [n, k]) in double:
// the scale of a dot product's rounding error.
std::vector<double> AbsProducts(const std::vector<float>& a, const std::vector<float>& b, int64_t m, int64_t n,
                                int64_t k, bool b_transposed) {
  std::vector<double> out(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t t = 0; t < k; ++t) {
        const float bv = b_transposed ? b[static_cast<size_t>(j * k + t)] : b[static_cast<size_t>(t * n + j)];
        s += std::abs(double{a[static_cast<size_t>(i * k + t)]} * bv);
      }
      out[static_cast<size_t>(i * n + j)] = s;
    }
  }
  return out;
}

// |actual - expected| <= tol_scale * scale[i] + tol_scale * |base[i]| per element.
::testing::AssertionResult WithinScaledBound(const std::vector<float>& actual, const std::vector<float>& expected,
                                             const std::vector<double>& scale, const std::vector<float>& base,
                                             double tol_scale) {
  for (size_t i = 0; i < actual.size(); ++i) {
    const double allowed = tol_scale * (scale[i] + std::abs(double{base[i]}));
    const double err = std::abs(double{actual[i]} - expected[i]);
    if (!(err <= allowed)) {
      return ::testing::AssertionFailure()
             << "element " << i << ": " << actual[i] << " vs " << expected[i] << " (allowed " << allowed << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

struct GemmShape {
  int64_t m, in, out;
  int64_t scratch_rows;  // rows of W per tile (a scratch of scratch_rows * in + extra floats)
  int64_t scratch_extra;
};

TEST_F(Nf4Test, LinearMatchesGemmWithTheDequantizedWeight) {
  const GemmShape shapes[] = {
      {3, 192, 130, 130, 0},  // one tile
      {3, 192, 130, 7, 5},    // 19 tiles, the last of 4 rows; scratch not a whole number of rows
      {1, 33, 64, 1, 0},      // one row of W per tile, odd in
      {17, 96, 200, 64, 95},  // 4 tiles, the last of 8 rows
      {5, 64, 3, 2, 0},       // fewer output features than a block
  };
  for (const GemmShape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "m " << s.m << " in " << s.in << " out " << s.out << " tile "
                                      << s.scratch_rows);
    const std::vector<float> w = SpreadNormalWeights(s.out, s.in, seed_, rng_);
    const Result<Nf4Weight> q = QuantizeNf4(Tensor::Of(const_cast<float*>(w.data()), Shape{s.out, s.in}));
    ASSERT_TRUE(q.ok()) << q.status().message();
    const std::vector<float> wd = Dequantized(*q);
    std::vector<float> scratch(static_cast<size_t>(s.scratch_rows * s.in + s.scratch_extra));
    const Tensor scratch_t = Tensor::Of(scratch.data(), Shape{static_cast<int64_t>(scratch.size())});
    const std::vector<float> x = Normal(static_cast<size_t>(s.m * s.in));
    const std::vector<float> dy = Normal(static_cast<size_t>(s.m * s.out));
    // The dot products' rounding scale, for y = x W^T and dx = dy W.
    std::vector<float> wd_t(wd.size());
    for (int64_t r = 0; r < s.out; ++r) {
      for (int64_t c = 0; c < s.in; ++c)
        wd_t[static_cast<size_t>(c * s.out + r)] = wd[static_cast<size_t>(r * s.in + c)];
    }
    const std::vector<double> y_scale = AbsProducts(x, wd, s.m, s.out, s.in, true);
    const std::vector<double> dx_scale = AbsProducts(dy, wd_t, s.m, s.in, s.out, true);

    for (const bool accumulate : {false, true}) {
      SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
      const std::vector<float> y0 =
          accumulate ? Normal(static_cast<size_t>(s.m * s.out)) : std::vector<float>(s.m * s.out, 0.0f);
      const std::vector<float> dx0 =
          accumulate ? Normal(static_cast<size_t>(s.m * s.in)) : std::vector<float>(s.m * s.in, 0.0f);

      std::vector<float> y_ref = y0, dx_ref = dx0;
      cpu::Gemm(false, true, s.m, s.out, s.in, 1.0f, x.data(), s.in, wd.data(), s.in, accumulate ? 1.0f : 0.0f,
                y_ref.data(), s.out);
      cpu::Gemm(false, false, s.m, s.in, s.out, 1.0f, dy.data(), s.out, wd.data(), s.in, accumulate ? 1.0f : 0.0f,
                dx_ref.data(), s.in);

      // Overwriting starts from NaNs: beta = 0 must ignore them.
      std::vector<float> y = accumulate ? y0 : std::vector<float>(y0.size(), std::numeric_limits<float>::quiet_NaN());
      std::vector<float> dx =
          accumulate ? dx0 : std::vector<float>(dx0.size(), std::numeric_limits<float>::quiet_NaN());
      cpu::Nf4LinearForward(Tensor::Of(const_cast<float*>(x.data()), Shape{s.m, s.in}), q->View(),
                            Tensor::Of(y.data(), Shape{s.m, s.out}), accumulate, scratch_t);
      cpu::Nf4LinearBackwardInput(Tensor::Of(const_cast<float*>(dy.data()), Shape{s.m, s.out}), q->View(),
                                  Tensor::Of(dx.data(), Shape{s.m, s.in}), accumulate, scratch_t);
      // Both results are fp32 sums of the same products in different orders
      // (the tiles split the output columns, or K for dx, and the GEMM may
      // block differently): each is within K * 2^-24 (sum |a b| + |c0|) of
      // the exact value (K + 1 roundings with the accumulated c0), so they
      // differ by at most twice that; (K + 1) * 2^-22 leaves a factor 2.
      EXPECT_TRUE(WithinScaledBound(y, y_ref, y_scale, y0, static_cast<double>(s.in + 1) * 0x1p-22));
      EXPECT_TRUE(WithinScaledBound(dx, dx_ref, dx_scale, dx0, static_cast<double>(s.out + 1) * 0x1p-22));
    }
  }
}

TEST(Nf4Refusals, BadWeightsGetAStatus) {
  std::vector<float> w(3 * 7, 0.5f);
  Result<Nf4Weight> q = QuantizeNf4(Tensor::Of(w.data(), Shape{3, 7}));
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), StatusCode::kInvalidInput);
  EXPECT_NE(q.status().message().find("[3, 7] has 21 elements, not a positive multiple of the block size 64"),
            std::string::npos)
      << q.status().message();

  q = QuantizeNf4(Tensor::Of(w.data(), Shape{0, 64}));
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("0 elements"), std::string::npos) << q.status().message();

  std::vector<float> big(2 * 64, 0.25f);
  big[77] = std::numeric_limits<float>::infinity();
  q = QuantizeNf4(Tensor::Of(big.data(), Shape{2, 64}));
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("element 77 is not finite"), std::string::npos) << q.status().message();
  big[77] = std::numeric_limits<float>::quiet_NaN();
  q = QuantizeNf4(Tensor::Of(big.data(), Shape{2, 64}));
  ASSERT_FALSE(q.ok());
  EXPECT_NE(q.status().message().find("element 77 is not finite"), std::string::npos) << q.status().message();
}

TEST(Nf4DeathTest, BadLinearArgumentsAbort) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // the OpenMP threads make fork() unsafe
  std::vector<float> w(4 * 64, 0.5f);
  const Result<Nf4Weight> q = QuantizeNf4(Tensor::Of(w.data(), Shape{4, 64}));
  ASSERT_TRUE(q.ok());
  std::vector<float> x(2 * 64), y(2 * 4), scratch(64), small(63), out(2 * 64);
  const Tensor xt = Tensor::Of(x.data(), Shape{2, 64});
  const Tensor yt = Tensor::Of(y.data(), Shape{2, 4});
  const Tensor st = Tensor::Of(scratch.data(), Shape{64});
  // in mismatch: x has 32 columns, W 64.
  EXPECT_DEATH(cpu::Nf4LinearForward(Tensor::Of(x.data(), Shape{4, 32}), q->View(), yt, false, st),
               "NF4 linear forward shapes x\\[4, 32\\] W\\[4, 64\\] y\\[2, 4\\]");
  // dy must have W's 4 rows as columns.
  EXPECT_DEATH(cpu::Nf4LinearBackwardInput(Tensor::Of(y.data(), Shape{4, 2}), q->View(), xt, false, st),
               "NF4 linear backward shapes dy\\[4, 2\\]");
  EXPECT_DEATH(cpu::Nf4LinearForward(xt, q->View(), yt, false, Tensor::Of(small.data(), Shape{63})),
               "scratch of 63 elements holds no row of W \\[4, 64\\]");
  EXPECT_DEATH(cpu::DequantizeNf4(q->View(), 3, Tensor::Of(out.data(), Shape{2, 64})),
               "rows \\[3, 5\\) of W \\[4, 64\\]");
  EXPECT_DEATH(cpu::DequantizeNf4(q->View(), 0, Tensor::Of(out.data(), Shape{4, 32})), "with 64 columns");
}

}  // namespace
}  // namespace latam
