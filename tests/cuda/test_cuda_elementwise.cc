// CUDA Add, Cast, CopyColumns, Fill and CrossEntropyLoss
// (kernels/cuda/elementwise.h) on fresh random inputs:
//   Add               f32 against cpu::Add; bf16 against the host's
//                     BF16::FromFloat of the fp32 sum of the (bf16) inputs.
//                     Sizes that take the 16-byte path with and without a
//                     scalar tail (4099 = 512 * 8 + 3, 65539) and tiny ones
//                     (1, 7), views one element off 16-byte alignment (the
//                     scalar path), a 3-D shape, and out aliasing a, b or
//                     both.
//   Cast              f32 -> bf16 on random 32-bit patterns (NaNs with every
//                     payload, infinities, subnormals) and hand-picked
//                     rounding ties, against BF16::FromFloat; bf16 -> f32 on
//                     all 65536 bf16 patterns; the round trip; same-dtype
//                     copies, including a tensor onto itself.
//   CopyColumns       every dtype pair, against the host's copy (bf16
//                     rounded by BF16::FromFloat): column blocks on and off
//                     16-byte packs, misaligned views, odd row strides, and
//                     zero columns; the other columns keep their values.
//   Fill              f32 and bf16, 0, -inf and values bf16 rounds, sizes
//                     with and without a scalar tail, misaligned views.
//   CrossEntropyLoss  against a host double reference, with ignored rows
//                     (negative targets), row counts below, at and above the
//                     kernel's block size; accumulation into loss_sum over
//                     two calls; two runs bitwise equal.
// Every output sits between guard bytes and starts as all 0xff bytes (a NaN
// in f32 and bf16), so an unwritten element or a stray write fails.
//
// Tolerances:
//   Add, Cast         exact, bit for bit (one IEEE fp32 add; one rounding
//                     to bf16 with the host's rounding rule).
//   lse               |lse - ref| <= 1e-6 (|row_max| + |log row_sumexp|),
//                     ref = row_max + log(row_sumexp) in double: the GPU
//                     rounds log and the sum to fp32 (half an ulp each, about
//                     6e-8) and its logf is within 1 ulp; scaling by the
//                     terms, not by |lse|, keeps the bound meaningful when
//                     they cancel.
//   loss_sum          1e-6 relative against the double reference, relative
//                     to the sum over counted rows of |row_max| +
//                     |log row_sumexp| + |target_logit| (the terms' own size:
//                     the fp32 lse is only that accurate, however small the
//                     loss; with these inputs the scale is within a few
//                     times |loss| once there are more than a few rows), and
//                     1e-10 relative against the double sum of the GPU's own
//                     lse values (the same terms, added in another order).
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "kernels/cuda/elementwise.h"
#include "kernels/elementwise.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::GuardedBuffer;
using testing::Poison;

using testing::BitsOf;
using testing::FloatFromBits;

BF16 Bf16FromBits(uint32_t u) {
  BF16 b;
  b.bits = static_cast<uint16_t>(u);
  return b;
}

template <typename T>
::testing::AssertionResult BitwiseEqual(const std::vector<T>& actual, const std::vector<T>& expected) {
  if (actual.size() != expected.size()) {
    return ::testing::AssertionFailure() << "size " << actual.size() << " != " << expected.size();
  }
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (BitsOf(actual[i]) != BitsOf(expected[i])) {
      if (bad == 0) first = i;
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << actual.size() << " elements differ; first at " << first
                                       << ": actual bits 0x" << std::hex << BitsOf(actual[first]) << " expected bits 0x"
                                       << BitsOf(expected[first]) << std::dec;
}

// ---------------------------------------------------------------------------
// Add

class CudaAddTest : public testing::RandomTest {
 protected:
  // Values spread over many binades (so sums round, and bf16 sums hit
  // ties), with a few infinities and extremes in a (b stays finite, so no
  // inf - inf NaN, whose bits the host and the GPU choose differently).
  std::vector<float> Values(size_t n, bool specials) {
    std::vector<float> v = Normal(n);
    for (size_t i = 0; i < n; ++i) v[i] = std::ldexp(v[i], UniformInt(-12, 12));
    if (specials) {
      const float kSpecial[] = {std::numeric_limits<float>::infinity(),
                                -std::numeric_limits<float>::infinity(),
                                FLT_MAX,
                                -FLT_MAX,
                                -0.0f,
                                0.0f,
                                std::numeric_limits<float>::denorm_min()};
      for (size_t i = 0; i < n && i < std::size(kSpecial); ++i) v[i * 5 % n] = kSpecial[i];
    }
    return v;
  }

  // out = a + b with each buffer aligned or one element off, checked bit
  // for bit against the host.
  template <typename T>
  void Run(Shape shape, bool misalign_a, bool misalign_b, bool misalign_out) {
    const size_t n = static_cast<size_t>(shape.numel());
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " shape=" << shape.str()
                                      << " misalign a/b/out=" << misalign_a << misalign_b << misalign_out);
    const std::vector<T> a = testing::FromFloats<T>(Values(n, true)), b = testing::FromFloats<T>(Values(n, false));
    const std::vector<T> expected = Expected(a, b);

    GuardedBuffer<T> ad(a, misalign_a), bd(b, misalign_b), outd(n, misalign_out);
    cuda::Add(ad.View(shape), bd.View(shape), outd.View(shape), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(BitwiseEqual(outd.Read(), expected));
    EXPECT_TRUE(BitwiseEqual(ad.Read(), a)) << "a changed";
    EXPECT_TRUE(BitwiseEqual(bd.Read(), b)) << "b changed";
    EXPECT_TRUE(ad.GuardsIntact());
    EXPECT_TRUE(bd.GuardsIntact());
    EXPECT_TRUE(outd.GuardsIntact());
  }

  // a = a + b, b = a + b and a = a + a, in place.
  template <typename T>
  void RunInPlace(size_t n, bool misalign) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " in place n=" << n
                                      << " misalign=" << misalign);
    const std::vector<T> a = testing::FromFloats<T>(Values(n, false)), b = testing::FromFloats<T>(Values(n, false));
    {
      GuardedBuffer<T> ad(a, misalign), bd(b, misalign);
      cuda::Add(ad.View(), bd.View(), ad.View(), nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(BitwiseEqual(ad.Read(), Expected(a, b))) << "out = a";
      EXPECT_TRUE(ad.GuardsIntact());
    }
    {
      GuardedBuffer<T> ad(a, misalign), bd(b, misalign);
      cuda::Add(ad.View(), bd.View(), bd.View(), nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(BitwiseEqual(bd.Read(), Expected(a, b))) << "out = b";
      EXPECT_TRUE(bd.GuardsIntact());
    }
    {
      GuardedBuffer<T> ad(a, misalign);
      cuda::Add(ad.View(), ad.View(), ad.View(), nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_TRUE(BitwiseEqual(ad.Read(), Expected(a, a))) << "out = a = b";
      EXPECT_TRUE(ad.GuardsIntact());
    }
  }

 private:
  // f32: cpu::Add. bf16: the fp32 sum of the inputs, rounded once.
  template <typename T>
  static std::vector<T> Expected(const std::vector<T>& a, const std::vector<T>& b) {
    const int64_t n = static_cast<int64_t>(a.size());
    std::vector<T> out(a.size());
    if constexpr (std::is_same_v<T, float>) {
      std::vector<float> a_copy = a, b_copy = b;
      cpu::Add(Tensor::Of(a_copy.data(), {n}), Tensor::Of(b_copy.data(), {n}), Tensor::Of(out.data(), {n}));
    } else {
      for (size_t i = 0; i < a.size(); ++i) out[i] = BF16::FromFloat(a[i].ToFloat() + b[i].ToFloat());
    }
    return out;
  }
};

TEST_F(CudaAddTest, Float32MatchesCpuBitForBit) {
  LATAM_REQUIRE_GPU();
  for (const int64_t n : {1, 7, 8, 4099, 65536 + 3}) {
    Run<float>({n}, false, false, false);  // 16-byte path (+ scalar tail); n < 8: scalar only
    Run<float>({n}, true, true, true);     // misaligned: scalar
  }
  Run<float>({4099}, true, false, false);  // one misaligned operand is enough to go scalar
  Run<float>({4099}, false, false, true);
  Run<float>({3, 5, 7}, false, false, false);
}

TEST_F(CudaAddTest, BFloat16MatchesHostRoundingBitForBit) {
  LATAM_REQUIRE_GPU();
  for (const int64_t n : {1, 7, 8, 4099, 65536 + 3}) {
    Run<BF16>({n}, false, false, false);
    Run<BF16>({n}, true, true, true);
  }
  Run<BF16>({4099}, false, true, false);
  Run<BF16>({4099}, false, false, true);
  Run<BF16>({3, 5, 7}, false, false, false);
}

TEST_F(CudaAddTest, OutMayAliasAnInput) {
  LATAM_REQUIRE_GPU();
  for (const bool misalign : {false, true}) {
    RunInPlace<float>(4099, misalign);
    RunInPlace<BF16>(4099, misalign);
    RunInPlace<float>(65536 + 3, misalign);
    RunInPlace<BF16>(65536 + 3, misalign);
  }
}

// ---------------------------------------------------------------------------
// Cast

class CudaCastTest : public testing::RandomTest {
 protected:
  // n random 32-bit patterns as floats (about 1 in 256 is a NaN, and as
  // many are subnormals), led by hand-picked cases.
  std::vector<float> RandomBitPatterns(size_t n) {
    const uint32_t kSpecial[] = {
        0x7fc00000u,                            // quiet NaN
        0x7f800001u,                            // signalling NaN, lowest payload bit only: must stay NaN
        0xff800001u,                            // negative signalling NaN
        0x7fffffffu, 0xffffffffu, 0x7fbfffffu,  // NaNs with the largest payloads
        0x7f800000u,                            // +inf
        0xff800000u,                            // -inf
        0x00000000u, 0x80000000u,               // +-0
        0x00000001u, 0x807fffffu,               // subnormals
        0x7f7fffffu,                            // FLT_MAX: rounds up to +inf
        0x7f7f8000u,                            // tie just below FLT_MAX's bf16 neighbour: ties to even (+inf)
        0x3f808000u,                            // 1 + 2^-8: a tie, down to the even 1.0
        0x3f818000u,                            // a tie, up to the even neighbour
        0x3f808001u,                            // just above a tie: up
        0x3f807fffu,                            // just below a tie: down
        0xbf818000u,                            // negative tie
    };
    std::uniform_int_distribution<uint32_t> dist;
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = FloatFromBits(i < std::size(kSpecial) ? kSpecial[i] : dist(rng_));
    return v;
  }

  void RunF32ToBf16(Shape in_shape, Shape out_shape, bool misalign_in, bool misalign_out) {
    SCOPED_TRACE(::testing::Message() << "f32 " << in_shape.str() << " -> bf16 " << out_shape.str()
                                      << " misalign in/out=" << misalign_in << misalign_out);
    const size_t n = static_cast<size_t>(in_shape.numel());
    const std::vector<float> in = RandomBitPatterns(n);
    const std::vector<BF16> expected = testing::ToBF16(in);  // BF16::FromFloat

    GuardedBuffer<float> ind(in, misalign_in);
    GuardedBuffer<BF16> outd(n, misalign_out);
    cuda::Cast(ind.View(in_shape), outd.View(out_shape), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<BF16> out = outd.Read();
    EXPECT_TRUE(BitwiseEqual(out, expected));
    // Spelled out, though implied by the bitwise match: NaN stays NaN, an
    // infinity stays the same infinity.
    size_t nan_lost = 0, inf_lost = 0;
    for (size_t i = 0; i < n; ++i) {
      nan_lost += (std::isnan(in[i]) && !std::isnan(out[i].ToFloat())) ? 1 : 0;
      inf_lost += (std::isinf(in[i]) && out[i].ToFloat() != in[i]) ? 1 : 0;
    }
    EXPECT_EQ(nan_lost, 0u) << "NaNs that did not stay NaN";
    EXPECT_EQ(inf_lost, 0u) << "infinities that did not stay infinite";
    EXPECT_TRUE(BitwiseEqual(ind.Read(), in)) << "input changed";
    EXPECT_TRUE(ind.GuardsIntact());
    EXPECT_TRUE(outd.GuardsIntact());
  }

  // Every bf16 pattern (n_repeats times, shuffled) to f32 and back.
  void RunBf16RoundTrip(size_t n_repeats, bool misalign) {
    SCOPED_TRACE(::testing::Message() << "bf16 -> f32 -> bf16, " << n_repeats << " x 65536, misalign=" << misalign);
    std::vector<BF16> in;
    for (size_t r = 0; r < n_repeats; ++r) {
      for (uint32_t u = 0; u <= 0xffffu; ++u) in.push_back(Bf16FromBits(u));
    }
    std::shuffle(in.begin(), in.end(), rng_);
    const size_t n = in.size();
    std::vector<float> widened(n);
    std::vector<BF16> back(n);
    for (size_t i = 0; i < n; ++i) {
      widened[i] = FloatFromBits(static_cast<uint32_t>(in[i].bits) << 16);  // exact: the bits, shifted
      back[i] = BF16::FromFloat(widened[i]);                                // == in[i], but for NaNs made quiet
    }

    GuardedBuffer<BF16> ind(in, misalign), backd(n, misalign);
    GuardedBuffer<float> midd(n, misalign);
    cuda::Cast(ind.View(), midd.View(), nullptr);
    cuda::Cast(midd.View(), backd.View(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(BitwiseEqual(midd.Read(), widened)) << "bf16 -> f32";
    EXPECT_TRUE(BitwiseEqual(backd.Read(), back)) << "f32 -> bf16";
    size_t changed = 0;
    for (size_t i = 0; i < n; ++i) changed += (back[i].bits != in[i].bits && !std::isnan(widened[i])) ? 1 : 0;
    EXPECT_EQ(changed, 0u) << "a non-NaN value did not survive the round trip";
    EXPECT_TRUE(ind.GuardsIntact());
    EXPECT_TRUE(midd.GuardsIntact());
    EXPECT_TRUE(backd.GuardsIntact());
  }

  template <typename T>
  void RunCopy(Shape in_shape, Shape out_shape, bool misalign_in, bool misalign_out) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " copy " << in_shape.str() << " -> "
                                      << out_shape.str() << " misalign in/out=" << misalign_in << misalign_out);
    const size_t n = static_cast<size_t>(in_shape.numel());
    std::vector<T> in(n);
    std::uniform_int_distribution<uint32_t> dist;
    for (T& x : in) {
      if constexpr (std::is_same_v<T, BF16>) {
        x = Bf16FromBits(dist(rng_));
      } else {
        x = FloatFromBits(dist(rng_));
      }
    }
    GuardedBuffer<T> ind(in, misalign_in), outd(n, misalign_out);
    cuda::Cast(ind.View(in_shape), outd.View(out_shape), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(BitwiseEqual(outd.Read(), in));
    EXPECT_TRUE(ind.GuardsIntact());
    EXPECT_TRUE(outd.GuardsIntact());

    cuda::Cast(ind.View(in_shape), ind.View(out_shape), nullptr);  // onto itself: a no-op
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(BitwiseEqual(ind.Read(), in)) << "cast onto itself";
    EXPECT_TRUE(ind.GuardsIntact());
  }
};

TEST_F(CudaCastTest, Float32ToBFloat16MatchesHostRoundingBitForBit) {
  LATAM_REQUIRE_GPU();
  for (const int64_t n : {1, 7, 19, 4099, 65536 + 3}) {
    RunF32ToBf16({n}, {n}, false, false);  // 16-byte path (+ scalar tail)
    RunF32ToBf16({n}, {n}, true, false);   // misaligned: scalar
    RunF32ToBf16({n}, {n}, false, true);
  }
  RunF32ToBf16({3, 7, 11}, {21, 11}, false, false);  // shapes differ, sizes equal
}

TEST_F(CudaCastTest, BFloat16ToFloat32IsExactAndRoundTrips) {
  LATAM_REQUIRE_GPU();
  RunBf16RoundTrip(1, false);
  RunBf16RoundTrip(1, true);
  RunBf16RoundTrip(3, false);
}

TEST_F(CudaCastTest, SameDTypeIsACopy) {
  LATAM_REQUIRE_GPU();
  for (const int64_t n : {1, 7, 4099}) {
    RunCopy<float>({n}, {n}, false, false);
    RunCopy<float>({n}, {n}, true, false);
    RunCopy<BF16>({n}, {n}, false, true);
    RunCopy<BF16>({n}, {n}, true, true);
  }
  RunCopy<float>({6, 5}, {30}, false, false);
}

// ---------------------------------------------------------------------------
// CopyColumns and Fill

class CudaCopyColumnsTest : public testing::RandomTest {
 protected:
  // Columns [in_col0, + cols) of in [rows, in_width] to [out_col0, + cols) of
  // out [rows, out_width], which starts with other random values.
  template <typename In, typename Out>
  void Run(int64_t rows, int64_t in_width, int64_t in_col0, int64_t out_width, int64_t out_col0, int64_t cols,
           bool misalign_in, bool misalign_out) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<In>::value) << " [" << rows << ", " << in_width
                                      << "] columns " << in_col0 << "+" << cols << " -> "
                                      << DTypeName(DTypeOf<Out>::value) << " [" << rows << ", " << out_width
                                      << "] at " << out_col0 << ", misalign in/out=" << misalign_in << misalign_out);
    const std::vector<In> in = testing::FromFloats<In>(Normal(static_cast<size_t>(rows * in_width)));
    const std::vector<Out> out0 = testing::FromFloats<Out>(Normal(static_cast<size_t>(rows * out_width)));
    std::vector<Out> expected = out0;
    const std::vector<float> in_f = testing::ToFloats(in);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        expected[r * out_width + out_col0 + c] = testing::FromFloats<Out>({in_f[r * in_width + in_col0 + c]})[0];
      }
    }
    GuardedBuffer<In> ind(in, misalign_in);
    GuardedBuffer<Out> outd(out0, misalign_out);
    cuda::CopyColumns(ind.View({rows, in_width}), in_col0, outd.View({rows, out_width}), out_col0, cols, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(BitwiseEqual(outd.Read(), expected));
    EXPECT_TRUE(BitwiseEqual(ind.Read(), in)) << "in changed";
    EXPECT_TRUE(ind.GuardsIntact());
    EXPECT_TRUE(outd.GuardsIntact());
  }

  template <typename In, typename Out>
  void RunAll() {
    Run<In, Out>(37, 48, 16, 24, 8, 16, false, false);  // 16-byte packs
    Run<In, Out>(1, 8, 0, 8, 0, 8, false, false);       // one row, all of it
    Run<In, Out>(37, 48, 16, 24, 8, 16, true, false);   // misaligned: element by element
    Run<In, Out>(37, 48, 16, 24, 8, 16, false, true);
    Run<In, Out>(5, 48, 3, 24, 8, 16, false, false);    // a column block off a pack boundary
    Run<In, Out>(5, 48, 16, 24, 1, 13, false, false);   // cols not a multiple of 8
    Run<In, Out>(6, 10, 2, 7, 0, 5, false, false);      // odd row strides
    Run<In, Out>(3, 10, 2, 7, 0, 0, false, false);      // no columns: nothing written
  }
};

TEST_F(CudaCopyColumnsTest, MovesExactlyTheColumnsConverted) {
  LATAM_REQUIRE_GPU();
  RunAll<float, float>();
  RunAll<BF16, BF16>();
  RunAll<float, BF16>();  // rounded once, as BF16::FromFloat
  RunAll<BF16, float>();  // exact
}

class CudaFillTest : public testing::RandomTest {
 protected:
  template <typename T>
  void Run(Shape shape, float value, bool misalign) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " " << shape.str() << " = " << value
                                      << " misalign=" << misalign);
    const size_t n = static_cast<size_t>(shape.numel());
    GuardedBuffer<T> buf(n, misalign);  // poisoned: every element must be written
    cuda::Fill(buf.View(shape), value, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<T> expected(n, testing::FromFloats<T>({value})[0]);
    EXPECT_TRUE(BitwiseEqual(buf.Read(), expected));
    EXPECT_TRUE(buf.GuardsIntact());
  }
};

TEST_F(CudaFillTest, WritesEveryElement) {
  LATAM_REQUIRE_GPU();
  for (const float value : {0.0f, -std::numeric_limits<float>::infinity(), 1.0f / 3.0f, -2.5f}) {
    for (const int64_t n : {1, 7, 8, 4099}) {
      for (const bool misalign : {false, true}) {
        Run<float>({n}, value, misalign);
        Run<BF16>({n}, value, misalign);  // 1/3 rounds as BF16::FromFloat
      }
    }
    Run<float>({3, 5, 7}, value, false);
    Run<BF16>({3, 5, 7}, value, false);
  }
}

// ---------------------------------------------------------------------------
// CrossEntropyLoss

struct LossInputs {
  std::vector<float> row_max, row_sumexp, target_logit;
  std::vector<int32_t> targets;
};

struct LossReference {
  std::vector<double> lse;    // row_max + log(row_sumexp), in double
  std::vector<double> scale;  // |row_max| + |log(row_sumexp)|: the lse error bound's scale
  double loss = 0.0;          // sum over rows with a target >= 0 of lse - target_logit
  double loss_scale = 0.0;    // sum over the same rows of scale + |target_logit|
};

LossReference Reference(const LossInputs& in) {
  LossReference ref;
  for (size_t m = 0; m < in.row_max.size(); ++m) {
    const double log_se = std::log(static_cast<double>(in.row_sumexp[m]));
    ref.lse.push_back(static_cast<double>(in.row_max[m]) + log_se);
    ref.scale.push_back(std::abs(static_cast<double>(in.row_max[m])) + std::abs(log_se));
    if (in.targets[m] >= 0) {
      ref.loss += ref.lse[m] - static_cast<double>(in.target_logit[m]);
      ref.loss_scale += ref.scale[m] + std::abs(static_cast<double>(in.target_logit[m]));
    }
  }
  return ref;
}

// *p (one double on the device) = value, and back.
void SetDeviceDouble(const Arena& a, double value) {
  CUDA_CHECK(cudaMemcpy(a.data(), &value, sizeof(value), cudaMemcpyHostToDevice));
}
double GetDeviceDouble(const Arena& a) {
  double value;
  CUDA_CHECK(cudaMemcpy(&value, a.data(), sizeof(value), cudaMemcpyDeviceToHost));
  return value;
}

bool SameBits(double x, double y) { return std::memcmp(&x, &y, sizeof(x)) == 0; }

class CudaCrossEntropyLossTest : public testing::RandomTest {
 protected:
  // Statistics as the combined row passes leave them: sumexp >= 1 (the
  // max's own term), a target logit at or below the max; about one row in
  // `ignore_every` has a negative target (0: none). Each row's loss is then
  // >= 0.
  LossInputs Inputs(int64_t m, int ignore_every) {
    LossInputs in;
    in.row_max = Uniform(static_cast<size_t>(m), -4.0f, 12.0f);
    const std::vector<float> log_se = Uniform(static_cast<size_t>(m), 0.0f, 11.0f);
    const std::vector<float> gap = Uniform(static_cast<size_t>(m), 0.0f, 8.0f);
    for (int64_t r = 0; r < m; ++r) {
      in.row_sumexp.push_back(std::exp(log_se[r]));
      in.target_logit.push_back(in.row_max[r] - gap[r]);
      const bool ignored = ignore_every > 0 && UniformInt(0, ignore_every - 1) == 0;
      in.targets.push_back(ignored ? (UniformInt(0, 1) == 0 ? -1 : -100) : UniformInt(0, 128255));
    }
    return in;
  }

  // Device copies of the inputs and a poisoned lse, all guarded.
  struct DeviceInputs {
    GuardedBuffer<float> row_max, row_sumexp, target_logit;
    GuardedBuffer<int32_t> targets;
    GuardedBuffer<float> lse;
    explicit DeviceInputs(const LossInputs& in)
        : row_max(in.row_max, false),
          row_sumexp(in.row_sumexp, false),
          target_logit(in.target_logit, false),
          targets(in.targets, false),
          lse(in.row_max.size(), false) {}
    void Call(const Arena& loss_sum) const {
      cuda::CrossEntropyLoss(row_max.View(), row_sumexp.View(), target_logit.View(), targets.View(), lse.View(),
                             static_cast<double*>(loss_sum.data()), nullptr);
    }
  };

  void Run(int64_t m, int ignore_every) {
    SCOPED_TRACE(::testing::Message() << "rows=" << m << " ignore_every=" << ignore_every);
    const LossInputs in = Inputs(m, ignore_every);
    const LossReference ref = Reference(in);
    DeviceInputs d(in);
    Arena loss_sum(Device::kCUDA, sizeof(double));
    const double start = 12.5;  // accumulated into, not overwritten
    SetDeviceDouble(loss_sum, start);

    d.Call(loss_sum);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> lse = d.lse.Read();
    const double after_one = GetDeviceDouble(loss_sum);

    size_t bad = 0, first = 0;
    for (size_t r = 0; r < lse.size(); ++r) {
      if (!(std::abs(static_cast<double>(lse[r]) - ref.lse[r]) <= 1e-6 * ref.scale[r])) {  // false for NaN
        if (bad == 0) first = r;
        ++bad;
      }
    }
    EXPECT_EQ(bad, 0u) << "lse: first bad row " << first << ": " << lse[first] << " expected " << ref.lse[first];

    const double loss = after_one - start;
    EXPECT_NEAR(loss, ref.loss, 1e-6 * ref.loss_scale) << "loss against the double reference";
    double from_lse = 0.0;  // the same terms from the GPU's lse, in row order
    for (size_t r = 0; r < lse.size(); ++r) {
      if (in.targets[r] >= 0) from_lse += static_cast<double>(lse[r]) - static_cast<double>(in.target_logit[r]);
    }
    EXPECT_NEAR(loss, from_lse, 1e-10 * std::abs(from_lse)) << "loss against the GPU's own lse";
    if (ref.loss == 0.0) {
      EXPECT_TRUE(SameBits(after_one, start)) << "nothing to add, yet loss_sum changed";
    }

    // A second call adds the same sum again and rewrites lse identically.
    d.Call(loss_sum);
    CUDA_CHECK(cudaDeviceSynchronize());
    const double after_two = GetDeviceDouble(loss_sum);
    EXPECT_NEAR(after_two - start, 2.0 * ref.loss, 2e-6 * ref.loss_scale + 1e-12) << "second call";
    EXPECT_TRUE(BitwiseEqual(d.lse.Read(), lse)) << "lse changed on the second call";
    EXPECT_TRUE(d.row_max.GuardsIntact());
    EXPECT_TRUE(d.row_sumexp.GuardsIntact());
    EXPECT_TRUE(d.target_logit.GuardsIntact());
    EXPECT_TRUE(d.targets.GuardsIntact());
    EXPECT_TRUE(d.lse.GuardsIntact());
  }
};

TEST_F(CudaCrossEntropyLossTest, MatchesDoubleReferenceAndAccumulates) {
  LATAM_REQUIRE_GPU();
  for (const int64_t m : {1, 7, 511, 512, 513, 4099, 65536 + 3}) Run(m, 5);
  Run(4099, 0);  // no ignored rows
  Run(4099, 1);  // every row ignored: loss_sum unchanged, lse still written
  Run(1, 1);
}

TEST_F(CudaCrossEntropyLossTest, IsBitwiseDeterministic) {
  LATAM_REQUIRE_GPU();
  for (const int64_t m : {4099, 65536 + 3, 300000}) {
    SCOPED_TRACE(::testing::Message() << "rows=" << m);
    const LossInputs in = Inputs(m, 5);
    std::vector<double> sums;
    std::vector<std::vector<float>> lses;
    for (int run = 0; run < 3; ++run) {
      DeviceInputs d(in);  // fresh, poisoned lse each run
      Arena loss_sum(Device::kCUDA, sizeof(double));
      SetDeviceDouble(loss_sum, 0.0);
      d.Call(loss_sum);
      CUDA_CHECK(cudaDeviceSynchronize());
      sums.push_back(GetDeviceDouble(loss_sum));
      lses.push_back(d.lse.Read());
    }
    for (int run = 1; run < 3; ++run) {
      EXPECT_TRUE(SameBits(sums[run], sums[0])) << "run " << run << ": " << sums[run] << " vs " << sums[0];
      EXPECT_TRUE(BitwiseEqual(lses[run], lses[0])) << "run " << run;
    }
  }
}

}  // namespace
}  // namespace latam
