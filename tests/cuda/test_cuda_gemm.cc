// cuBLASLt GEMM and Linear helpers (kernels/cuda/gemm.h) against the CPU GEMM
// (kernels/gemm.h) on the same inputs: bf16 inputs are rounded to bf16 first
// and the CPU computes on the rounded values. Inputs are fresh N(0, 1)
// draws; an output that beta = 0 overwrites is first poisoned with 0xff bytes
// (NaN in f32 and bf16), so any read of it shows up.
//
// Tolerances, for sums of K products of N(0, 1) values (|C| ~ sqrt(K)):
//   f32 in, f32 out:   2e-5 sqrt(K) abs + 1e-5 rel (fp32 sums, another order)
//   bf16 in, f32 out:  1e-3 sqrt(K) abs + 1e-3 rel (exact bf16 products,
//                      fp32 sums; the margin allows for the summation order)
//   bf16 in, bf16 out: 1e-2 sqrt(K) abs + 1e-2 rel (one rounding to bf16,
//                      relative step 2^-8)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/gemm.h"
#include "kernels/gemm.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::FromFloats;
using testing::Poison;
using testing::RoundTo;
using testing::ToDevice;
using testing::ToFloats;
using testing::ToHost;
using testing::View;

struct Tolerance {
  double atol, rtol;
};

template <typename In, typename Out>
Tolerance ToleranceFor(int64_t k) {
  const double s = std::sqrt(static_cast<double>(k));
  if constexpr (std::is_same_v<Out, BF16>) {
    return {1e-2 * s, 1e-2};
  } else if constexpr (std::is_same_v<In, BF16>) {
    return {1e-3 * s, 1e-3};
  } else {
    return {2e-5 * s, 1e-5};
  }
}

// Columns [0, n) of m rows with row stride ld.
std::vector<float> Region(const std::vector<float>& v, int64_t m, int64_t n, int64_t ld) {
  std::vector<float> out;
  out.reserve(static_cast<size_t>(m * n));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c) out.push_back(v[static_cast<size_t>(r * ld + c)]);
  }
  return out;
}

// Sets every byte to 0xff: NaN in f32 and in bf16.

class CudaGemmTest : public testing::RandomTest {
 protected:
  // One GEMM through `ctx` against cpu::Gemm. Row strides are the row length
  // plus `pad`; every device matrix starts `offset` elements into its arena
  // (offset 1 leaves bf16 pointers 2-byte aligned). With beta = 0 the output
  // is poisoned; padding columns must come back untouched.
  template <typename In, typename Out>
  void CheckGemm(cuda::GemmContext& ctx, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                 float beta, int64_t pad = 0, int64_t offset = 0) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<In>::value) << "->" << DTypeName(DTypeOf<Out>::value) << " "
                                      << (trans_a ? 'T' : 'N') << (trans_b ? 'T' : 'N') << " M=" << m << " N=" << n
                                      << " K=" << k << " alpha=" << alpha << " beta=" << beta << " pad=" << pad
                                      << " offset=" << offset);
    const int64_t lda = (trans_a ? m : k) + pad, ldb = (trans_b ? k : n) + pad, ldc = n + pad;
    const int64_t a_size = (trans_a ? k : m) * lda, b_size = (trans_b ? n : k) * ldb, c_size = m * ldc;
    const auto a = RoundTo<In>(Normal(static_cast<size_t>(a_size)));
    const auto b = RoundTo<In>(Normal(static_cast<size_t>(b_size)));
    const auto c0 = RoundTo<Out>(Uniform(static_cast<size_t>(c_size)));
    std::vector<float> expected = c0;
    cpu::Gemm(trans_a, trans_b, m, n, k, alpha, a.data(), lda, b.data(), ldb, beta, expected.data(), ldc);

    // Device copies behind `offset` leading elements.
    auto with_offset = [offset](const std::vector<float>& v) {
      std::vector<float> out(static_cast<size_t>(offset), 0.0f);
      out.insert(out.end(), v.begin(), v.end());
      return out;
    };
    Arena ad = ToDevice(FromFloats<In>(with_offset(a))), bd = ToDevice(FromFloats<In>(with_offset(b)));
    Arena cd = ToDevice(FromFloats<Out>(with_offset(c0)));
    if (beta == 0.0f) Poison(cd);
    cuda::GemmArgs args;
    args.trans_a = trans_a;
    args.trans_b = trans_b;
    args.m = m;
    args.n = n;
    args.k = k;
    args.alpha = alpha;
    args.a = static_cast<const char*>(ad.data()) + offset * sizeof(In);
    args.lda = lda;
    args.b = static_cast<const char*>(bd.data()) + offset * sizeof(In);
    args.ldb = ldb;
    args.beta = beta;
    args.c = static_cast<char*>(cd.data()) + offset * sizeof(Out);
    args.ldc = ldc;
    args.ab_dtype = DTypeOf<In>::value;
    args.c_dtype = DTypeOf<Out>::value;
    ctx.Gemm(args, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());

    const auto all = ToFloats<Out>(ToHost<Out>(cd, static_cast<size_t>(offset + c_size)));
    const std::vector<float> c(all.begin() + offset, all.end());
    const Tolerance tol = ToleranceFor<In, Out>(k);
    EXPECT_TRUE(
        testing::AllClose(Region(c, m, n, ldc), testing::ToDouble(Region(expected, m, n, ldc)), tol.atol, tol.rtol));
    int64_t padding_changed = 0;
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t col = n; col < ldc; ++col) {
        const size_t i = static_cast<size_t>(r * ldc + col);
        const bool same = beta == 0.0f ? std::isnan(c[i]) : c[i] == c0[i];
        padding_changed += same ? 0 : 1;
      }
    }
    EXPECT_EQ(padding_changed, 0) << "GEMM wrote outside the [M, N] block";
  }

  // LinearForward (with and without bias), LinearBackwardInput and
  // LinearBackwardWeight (into an f32 dW) against the CPU helpers.
  template <typename T>
  void CheckLinear(int64_t tokens, int64_t in, int64_t out, bool accumulate, bool with_bias) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " tokens=" << tokens << " in=" << in
                                      << " out=" << out << " accumulate=" << accumulate << " bias=" << with_bias);
    cuda::GemmContext ctx;
    const auto x = RoundTo<T>(Normal(static_cast<size_t>(tokens * in)));
    const auto w = RoundTo<T>(Normal(static_cast<size_t>(out * in)));
    const auto dy = RoundTo<T>(Normal(static_cast<size_t>(tokens * out)));
    const auto bias = RoundTo<T>(Normal(static_cast<size_t>(out)));
    const auto y0 = RoundTo<T>(Uniform(static_cast<size_t>(tokens * out)));
    const auto dx0 = RoundTo<T>(Uniform(static_cast<size_t>(tokens * in)));
    const auto dw0 = Uniform(static_cast<size_t>(out * in));

    auto cpu_x = x, cpu_w = w, cpu_dy = dy;
    std::vector<float> y = accumulate ? y0 : std::vector<float>(y0.size(), 0.0f);
    std::vector<float> dx = accumulate ? dx0 : std::vector<float>(dx0.size(), 0.0f);
    std::vector<float> dw = dw0;
    cpu::LinearForward(Tensor::Of(cpu_x.data(), {tokens, in}), Tensor::Of(cpu_w.data(), {out, in}),
                       Tensor::Of(y.data(), {tokens, out}), accumulate);
    if (with_bias) {
      for (int64_t r = 0; r < tokens; ++r) {
        for (int64_t c = 0; c < out; ++c) y[static_cast<size_t>(r * out + c)] += bias[static_cast<size_t>(c)];
      }
    }
    cpu::LinearBackwardInput(Tensor::Of(cpu_dy.data(), {tokens, out}), Tensor::Of(cpu_w.data(), {out, in}),
                             Tensor::Of(dx.data(), {tokens, in}), accumulate);
    cpu::LinearBackwardWeight(Tensor::Of(cpu_dy.data(), {tokens, out}), Tensor::Of(cpu_x.data(), {tokens, in}),
                              Tensor::Of(dw.data(), {out, in}));

    Arena xd = ToDevice(FromFloats<T>(x)), wd = ToDevice(FromFloats<T>(w)), dyd = ToDevice(FromFloats<T>(dy));
    Arena biasd = ToDevice(FromFloats<T>(bias));
    Arena yd = ToDevice(FromFloats<T>(y0)), dxd = ToDevice(FromFloats<T>(dx0)), dwd = ToDevice(dw0);
    if (!accumulate) {
      Poison(yd);
      Poison(dxd);
    }
    if (with_bias) {
      cuda::LinearForward(ctx, View<T>(xd, {tokens, in}), View<T>(wd, {out, in}), View<T>(biasd, {out}),
                          View<T>(yd, {tokens, out}), accumulate, nullptr);
    } else {
      cuda::LinearForward(ctx, View<T>(xd, {tokens, in}), View<T>(wd, {out, in}), View<T>(yd, {tokens, out}),
                          accumulate, nullptr);
    }
    cuda::LinearBackwardInput(ctx, View<T>(dyd, {tokens, out}), View<T>(wd, {out, in}), View<T>(dxd, {tokens, in}),
                              accumulate, nullptr);
    cuda::LinearBackwardWeight(ctx, View<T>(dyd, {tokens, out}), View<T>(xd, {tokens, in}), View<float>(dwd, {out, in}),
                               nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());

    const Tolerance ty = ToleranceFor<T, T>(in), tdx = ToleranceFor<T, T>(out), tdw = ToleranceFor<T, float>(tokens);
    EXPECT_TRUE(testing::AllClose(ToFloats<T>(ToHost<T>(yd, y.size())), testing::ToDouble(y), ty.atol, ty.rtol));
    EXPECT_TRUE(testing::AllClose(ToFloats<T>(ToHost<T>(dxd, dx.size())), testing::ToDouble(dx), tdx.atol, tdx.rtol));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(dwd, dw.size()), testing::ToDouble(dw), tdw.atol, tdw.rtol));
  }
};

TEST_F(CudaGemmTest, Float32EveryTransposeMatchesCpu) {
  LATAM_REQUIRE_GPU();
  cuda::GemmContext ctx;
  for (const bool ta : {false, true}) {
    for (const bool tb : {false, true}) {
      CheckGemm<float, float>(ctx, ta, tb, 37, 53, 29, 0.75f, 0.0f);
      CheckGemm<float, float>(ctx, ta, tb, 65, 17, 131, -0.5f, 1.0f, 3);
      CheckGemm<float, float>(ctx, ta, tb, 1, 7, 1, 1.0f, 0.0f);
    }
  }
}

TEST_F(CudaGemmTest, BFloat16EveryTransposeMatchesCpu) {
  LATAM_REQUIRE_GPU();
  cuda::GemmContext ctx;
  for (const bool ta : {false, true}) {
    for (const bool tb : {false, true}) {
      CheckGemm<BF16, BF16>(ctx, ta, tb, 37, 53, 29, 0.75f, 0.0f);
      CheckGemm<BF16, BF16>(ctx, ta, tb, 65, 17, 131, -0.5f, 1.0f, 3);
      CheckGemm<BF16, float>(ctx, ta, tb, 37, 53, 29, 1.0f, 0.0f);
      CheckGemm<BF16, float>(ctx, ta, tb, 65, 17, 131, 1.0f, 1.0f, 5);
    }
  }
}

TEST_F(CudaGemmTest, LargerAndMisalignedShapes) {
  LATAM_REQUIRE_GPU();
  cuda::GemmContext ctx;
  CheckGemm<BF16, BF16>(ctx, false, true, 257, 1031, 515, 1.0f, 0.0f);
  CheckGemm<BF16, float>(ctx, true, false, 515, 301, 1027, 1.0f, 1.0f);
  CheckGemm<float, float>(ctx, false, false, 129, 255, 1000, 1.0f, 0.0f);
  // Pointers 2 (bf16) or 4 (f32) bytes aligned.
  CheckGemm<BF16, BF16>(ctx, false, true, 33, 47, 61, 1.0f, 0.0f, 1, 1);
  CheckGemm<BF16, float>(ctx, true, false, 33, 47, 61, 1.0f, 1.0f, 0, 1);
  CheckGemm<float, float>(ctx, false, false, 33, 47, 61, 1.0f, 1.0f, 2, 1);
  // No workspace at all.
  cuda::GemmContext no_workspace(0);
  CheckGemm<BF16, BF16>(no_workspace, false, true, 257, 1031, 515, 1.0f, 1.0f);
}

TEST_F(CudaGemmTest, LinearHelpersMatchCpu) {
  LATAM_REQUIRE_GPU();
  for (const bool accumulate : {false, true}) {
    CheckLinear<float>(37, 50, 45, accumulate, false);
    CheckLinear<BF16>(37, 50, 45, accumulate, false);
    CheckLinear<BF16>(130, 256, 96, accumulate, false);
  }
}

TEST_F(CudaGemmTest, BiasEpilogueMatchesCpu) {
  LATAM_REQUIRE_GPU();
  for (const bool accumulate : {false, true}) {
    CheckLinear<float>(37, 50, 45, accumulate, true);
    CheckLinear<BF16>(37, 50, 45, accumulate, true);
  }
}

TEST_F(CudaGemmTest, HeuristicRunsOncePerKey) {
  LATAM_REQUIRE_GPU();
  cuda::GemmContext ctx;
  EXPECT_EQ(ctx.heuristic_calls(), 0);
  CheckGemm<BF16, BF16>(ctx, false, true, 37, 53, 29, 1.0f, 0.0f);
  EXPECT_EQ(ctx.heuristic_calls(), 1);
  // New data, alpha and beta with the same key: the cached plan, still right.
  CheckGemm<BF16, BF16>(ctx, false, true, 37, 53, 29, 1.0f, 0.0f);
  CheckGemm<BF16, BF16>(ctx, false, true, 37, 53, 29, -2.0f, 1.0f);
  EXPECT_EQ(ctx.heuristic_calls(), 1);
  EXPECT_EQ(ctx.cached_plans(), 1u);
  // Each of shape, transposes, output dtype and alignment is a new key.
  CheckGemm<BF16, BF16>(ctx, false, true, 38, 53, 29, 1.0f, 0.0f);
  CheckGemm<BF16, BF16>(ctx, true, true, 37, 53, 29, 1.0f, 0.0f);
  CheckGemm<BF16, float>(ctx, false, true, 37, 53, 29, 1.0f, 0.0f);
  CheckGemm<BF16, BF16>(ctx, false, true, 37, 53, 29, 1.0f, 0.0f, 0, 1);
  EXPECT_EQ(ctx.heuristic_calls(), 5);
  EXPECT_EQ(ctx.cached_plans(), 5u);
  CheckGemm<BF16, BF16>(ctx, false, true, 37, 53, 29, 1.0f, 0.0f, 0, 1);
  EXPECT_EQ(ctx.heuristic_calls(), 5);
}

TEST_F(CudaGemmTest, EmptySizesAreNoOps) {
  LATAM_REQUIRE_GPU();
  cuda::GemmContext ctx;
  const auto c0 = Uniform(12);
  Arena cd = ToDevice(c0);
  cuda::GemmArgs args;
  args.ab_dtype = DType::kF32;
  args.c_dtype = DType::kF32;
  args.c = cd.data();
  // M = 0: nothing to compute, operands may be null.
  args.n = 4;
  args.k = 3;
  args.lda = 3;
  args.ldb = 4;
  args.ldc = 4;
  ctx.Gemm(args, nullptr);
  // K = 0 with beta = 1 (a weight gradient over zero tokens): C unchanged.
  args.m = 3;
  args.k = 0;
  args.beta = 1.0f;
  ctx.Gemm(args, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(ctx.heuristic_calls(), 0);
  const auto c = ToHost<float>(cd, c0.size());
  EXPECT_EQ(std::memcmp(c.data(), c0.data(), c0.size() * sizeof(float)), 0);
}

}  // namespace
}  // namespace latam
