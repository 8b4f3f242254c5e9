// CUDA NF4 (kernels/cuda/nf4.h) against the CPU reference (kernels/nf4.h),
// on normal weights from a fresh seed (core/random.h) with row scales spread
// over 2^-6..2^6:
//   DequantizeNf4     f32 bit for bit equal to cpu::DequantizeNf4 (the same
//                     fma for the block scale and the same fp32 multiply);
//                     bf16 bit for bit equal to the CPU's bf16 (the f32 value
//                     rounded once, to nearest even). Whole weights and row
//                     ranges, odd cols (rows starting mid-byte), several
//                     scale groups; the output sits between guard bytes and
//                     starts as NaN, so a missed or stray write fails.
//   Nf4Linear*        forward and input gradient, bf16 operands with f32 and
//                     bf16 outputs and f32 operands, one and many scratch
//                     tiles, with and without accumulation, against the CPU
//                     path on the same (bf16-representable) inputs.
//
// Tolerances of the linear layer, per element, with S = sum |a_k b_k| of the
// dot product (dequantised W, in double) and K its length:
//   bf16 operands   2^-8 S + 2^-8 |ref| + (K + 1) 2^-22 (S + |c0|): the
//                   scratch holds W rounded to bf16 (each product off by
//                   <= 2^-9 relative, so the sum by <= 2^-9 S; doubled for
//                   margin), a bf16 output rounds once more (2^-9 |ref|,
//                   doubled), and both sides sum in fp32 in different orders
//                   (<= K 2^-24 (S + |c0|) each, so the last term covers both
//                   with a factor 2). A bf16 dx is also rounded after each
//                   of the T tiles' GEMMs: T 2^-8 (S + |c0|) more.
//   f32 operands    (K + 1) 2^-22 (S + |c0|): the same values summed in
//                   different orders only.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "core/random.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/nf4.h"
#include "kernels/nf4.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::GuardedBuffer;

class CudaNf4Test : public testing::RandomTest {
 protected:
  // rows x cols normal weights, row r scaled by 2^e_r, e_r in [-6, 6].
  Nf4Weight Quantized(int64_t rows, int64_t cols) {
    std::vector<float> w(static_cast<size_t>(rows * cols));
    FillNormal(w.data(), rows * cols, 1.0f, seed_, StreamId("cuda nf4 test weight"), 0);
    for (int64_t r = 0; r < rows; ++r) {
      const int e = UniformInt(-6, 6);
      for (int64_t c = 0; c < cols; ++c) {
        float& v = w[static_cast<size_t>(r * cols + c)];
        v = std::ldexp(v, e);
      }
    }
    Result<Nf4Weight> q = QuantizeNf4(Tensor::Of(w.data(), Shape{rows, cols}));
    LATAM_CHECK(q.ok(), q.status().message());
    return std::move(q).value();
  }

  // n values drawn normal and rounded to bf16, as f32 (exact in both dtypes).
  std::vector<float> Bf16Values(size_t n) { return testing::RoundTo<BF16>(Normal(n)); }
};

template <typename T>
std::vector<T> CpuDequantized(const Nf4Weight& q, int64_t row_begin, int64_t rows) {
  std::vector<T> out(static_cast<size_t>(rows * q.cols));
  cpu::DequantizeNf4(q.View(), row_begin, Tensor::Of(out.data(), Shape{rows, q.cols}));
  return out;
}

TEST_F(CudaNf4Test, DequantizeMatchesTheCpuBitForBit) {
  LATAM_REQUIRE_GPU();
  // 33 x 512: odd cols; 600 x 64: 600 blocks in three scale groups.
  for (const auto& [rows, cols] : {std::pair<int64_t, int64_t>{512, 33}, {600, 64}, {130, 192}}) {
    SCOPED_TRACE(::testing::Message() << "W [" << rows << ", " << cols << "]");
    const Nf4Weight q = Quantized(rows, cols);
    const cuda::Nf4DeviceWeight d = cuda::UploadNf4(q);
    for (const auto& [begin, count] : {std::pair<int64_t, int64_t>{0, rows}, {1, 1}, {3, 7}, {rows - 5, 5}}) {
      SCOPED_TRACE(::testing::Message() << "rows [" << begin << ", " << begin + count << ")");
      const size_t n = static_cast<size_t>(count * cols);
      GuardedBuffer<float> f32(n, false);
      cuda::DequantizeNf4(d.View(), begin, f32.View(Shape{count, cols}), nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> got = f32.Read();
      const std::vector<float> want = CpuDequantized<float>(q, begin, count);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ(testing::BitsOf(got[i]), testing::BitsOf(want[i])) << "f32 element " << i;
      }
      EXPECT_TRUE(f32.GuardsIntact());

      // A bf16 output one element off 16-byte alignment.
      GuardedBuffer<BF16> bf16(n, true);
      cuda::DequantizeNf4(d.View(), begin, bf16.View(Shape{count, cols}), nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<BF16> got_bf16 = bf16.Read();
      const std::vector<BF16> want_bf16 = CpuDequantized<BF16>(q, begin, count);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(got_bf16[i].bits, want_bf16[i].bits) << "bf16 element " << i;
      EXPECT_TRUE(bf16.GuardsIntact());
    }
  }
}

struct LinearCase {
  int64_t m, in, out;
  int64_t tile_rows;  // rows of W per scratch tile
  DType operand_dtype;
  DType output_dtype;
};

// |got - want| <= tol_sum * (S + |c0|) + tol_out * |want| + tol_w * S per element.
::testing::AssertionResult Within(const std::vector<float>& got, const std::vector<float>& want,
                                  const std::vector<double>& s, const std::vector<float>& c0, double tol_sum,
                                  double tol_out, double tol_w) {
  for (size_t i = 0; i < got.size(); ++i) {
    const double allowed =
        tol_sum * (s[i] + std::abs(double{c0[i]})) + tol_out * std::abs(double{want[i]}) + tol_w * s[i];
    if (!(std::abs(double{got[i]} - want[i]) <= allowed)) {
      return ::testing::AssertionFailure()
             << "element " << i << ": " << got[i] << " vs " << want[i] << " (allowed " << allowed << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// A device copy of f32 host values in `dtype` (bf16: rounded, exact here as
// the values are bf16-representable), and back to f32.
Arena Upload(const std::vector<float>& v, DType dtype) {
  if (dtype == DType::kF32) return testing::ToDevice(v);
  return testing::ToDevice(testing::ToBF16(v));
}
std::vector<float> Download(const Arena& a, size_t n, DType dtype) {
  if (dtype == DType::kF32) return testing::ToHost<float>(a, n);
  return testing::ToFloat(testing::ToHost<BF16>(a, n));
}

TEST_F(CudaNf4Test, LinearMatchesTheCpuPath) {
  LATAM_REQUIRE_GPU();
  const LinearCase cases[] = {
      {3, 192, 130, 130, DType::kBF16, DType::kF32},  // one tile
      {3, 192, 130, 7, DType::kBF16, DType::kBF16},   // 19 tiles, the last of 4 rows
      {5, 96, 200, 64, DType::kBF16, DType::kF32},    // 4 tiles, the last of 8 rows
      {4, 64, 33, 5, DType::kF32, DType::kF32},       // f32 operands, 7 tiles
  };
  cuda::GemmContext ctx;
  for (const LinearCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "m " << c.m << " in " << c.in << " out " << c.out << " tile " << c.tile_rows
                                      << " operands " << DTypeName(c.operand_dtype) << " output "
                                      << DTypeName(c.output_dtype));
    const Nf4Weight q = Quantized(c.out, c.in);
    const cuda::Nf4DeviceWeight d = cuda::UploadNf4(q);
    const std::vector<float> wd = CpuDequantized<float>(q, 0, c.out);
    const std::vector<float> x = Bf16Values(static_cast<size_t>(c.m * c.in));
    const std::vector<float> dy = Bf16Values(static_cast<size_t>(c.m * c.out));
    // S for y[i, j] (over in) and dx[i, j] (over out).
    std::vector<double> y_s(static_cast<size_t>(c.m * c.out), 0.0), dx_s(static_cast<size_t>(c.m * c.in), 0.0);
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t r = 0; r < c.out; ++r) {
        for (int64_t k = 0; k < c.in; ++k) {
          const double w = std::abs(double{wd[static_cast<size_t>(r * c.in + k)]});
          y_s[static_cast<size_t>(i * c.out + r)] += std::abs(double{x[static_cast<size_t>(i * c.in + k)]}) * w;
          dx_s[static_cast<size_t>(i * c.in + k)] += std::abs(double{dy[static_cast<size_t>(i * c.out + r)]}) * w;
        }
      }
    }
    const bool bf16_ops = c.operand_dtype == DType::kBF16;
    const bool bf16_out = c.output_dtype == DType::kBF16;
    const double tol_w = bf16_ops ? 0x1p-8 : 0.0;
    const double tol_out = bf16_out ? 0x1p-8 : 0.0;
    const Arena x_d = Upload(x, c.operand_dtype), dy_d = Upload(dy, c.operand_dtype);
    const Arena scratch(Device::kCUDA, static_cast<size_t>(c.tile_rows * c.in) * DTypeSize(c.operand_dtype));
    const Tensor scratch_t = scratch.View(0, c.operand_dtype, Shape{c.tile_rows * c.in});
    std::vector<float> cpu_scratch(static_cast<size_t>(c.in));

    for (const bool accumulate : {false, true}) {
      SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
      // Initial outputs: bf16-representable values when accumulating, NaN
      // when overwriting (beta = 0 must ignore them).
      const std::vector<float> y0 = accumulate ? Bf16Values(static_cast<size_t>(c.m * c.out))
                                               : std::vector<float>(static_cast<size_t>(c.m * c.out), 0.0f);
      const std::vector<float> dx0 = accumulate ? Bf16Values(static_cast<size_t>(c.m * c.in))
                                                : std::vector<float>(static_cast<size_t>(c.m * c.in), 0.0f);
      std::vector<float> y_ref = y0, dx_ref = dx0;
      cpu::Nf4LinearForward(Tensor::Of(const_cast<float*>(x.data()), Shape{c.m, c.in}), q.View(),
                            Tensor::Of(y_ref.data(), Shape{c.m, c.out}), accumulate,
                            Tensor::Of(cpu_scratch.data(), Shape{c.in}));
      cpu::Nf4LinearBackwardInput(Tensor::Of(const_cast<float*>(dy.data()), Shape{c.m, c.out}), q.View(),
                                  Tensor::Of(dx_ref.data(), Shape{c.m, c.in}), accumulate,
                                  Tensor::Of(cpu_scratch.data(), Shape{c.in}));

      const float nan = std::numeric_limits<float>::quiet_NaN();
      const Arena y_d = Upload(accumulate ? y0 : std::vector<float>(y0.size(), nan), c.output_dtype);
      const Arena dx_d = Upload(accumulate ? dx0 : std::vector<float>(dx0.size(), nan), c.output_dtype);
      cuda::Nf4LinearForward(ctx, x_d.View(0, c.operand_dtype, Shape{c.m, c.in}), d.View(),
                             y_d.View(0, c.output_dtype, Shape{c.m, c.out}), accumulate, scratch_t, nullptr);
      cuda::Nf4LinearBackwardInput(ctx, dy_d.View(0, c.operand_dtype, Shape{c.m, c.out}), d.View(),
                                   dx_d.View(0, c.output_dtype, Shape{c.m, c.in}), accumulate, scratch_t, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> y = Download(y_d, y0.size(), c.output_dtype);
      const std::vector<float> dx = Download(dx_d, dx0.size(), c.output_dtype);
      EXPECT_TRUE(Within(y, y_ref, y_s, y0, static_cast<double>(c.in + 1) * 0x1p-22, tol_out, tol_w));
      // A bf16 dx is rounded after every tile's GEMM (see kernels/cuda/nf4.h):
      // each rounding is <= 2^-9 of a partial sum <= S + |c0|, doubled.
      const double tiles = static_cast<double>((c.out + c.tile_rows - 1) / c.tile_rows);
      const double dx_tol_sum = static_cast<double>(c.out + 1) * 0x1p-22 + (bf16_out ? tiles * 0x1p-8 : 0.0);
      EXPECT_TRUE(Within(dx, dx_ref, dx_s, dx0, dx_tol_sum, tol_out, tol_w));
    }
  }
}

}  // namespace
}  // namespace latam
