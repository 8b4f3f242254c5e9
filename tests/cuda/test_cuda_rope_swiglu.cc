// CUDA RoPE and SwiGLU against the CPU kernels on the same inputs: f32 and
// bf16, shapes that take the 16-byte path and shapes that fall back to
// scalar (row widths not a multiple of the pack, pointers off 16-byte
// alignment), odd row counts. RoPE is also run backward over its own forward
// output, which must give back the input, and at explicit per-row positions
// (random positions over a table larger than the sequence, including its
// first and last rows, repeated, decreasing and restarting positions) against
// the CPU kernel at the same positions.
//
// Every device buffer sits between guard bytes, and outputs start as NaN
// (all bytes 0xff, a NaN in f32 and in bf16), so an unwritten element or a
// stray write fails.
//
// Tolerances. f32: 1e-5 abs + 1e-5 rel (the GPU and the CPU differ only in
// fp32 rounding order, FMA contraction and expf against the CPU's polynomial
// exp, all near 1e-7 relative). bf16: the CPU kernel runs on the
// bf16-rounded inputs; the GPU output is rounded to bf16 once, which is
// within half a bf16 ulp (2^-9 to 2^-8 relative), so 1e-5 abs + 2^-7 rel
// (one ulp at most). RoPE round trip: each element of a rotated pair
// (x[i], x[i + half]) within rel * |(x[i], x[i + half])| + 1e-6, rel = 1e-5
// for f32 and 2^-6 for bf16 (the forward's bf16 rounding, about 2^-8 of the
// pair's norm, is spread over the pair by the back rotation; the backward
// rounds once more); the unrotated columns are compared bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cuda/rope.h"
#include "kernels/cuda/swiglu.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::FromFloats;
using testing::GuardedBuffer;
using testing::RoundTo;
using testing::ToFloats;

struct Tolerance {
  double atol, rtol;
};

template <typename T>
constexpr Tolerance kTolerance = std::is_same_v<T, BF16> ? Tolerance{1e-5, 1.0 / 128} : Tolerance{1e-5, 1e-5};

template <typename T>
constexpr double kRoundTripRel = std::is_same_v<T, BF16> ? 1.0 / 64 : 1e-5;

// backward(forward(x)) against x, with the pair-wise bound described at the
// top of the file for rotated columns and bit equality for the others.
::testing::AssertionResult RoundTripClose(const std::vector<float>& actual, const std::vector<float>& x,
                                          int64_t row_width, int n_rot_heads, int head_dim, double rel) {
  const int half = head_dim / 2;
  const int64_t rotated = static_cast<int64_t>(n_rot_heads) * head_dim;
  size_t bad = 0, first = 0;
  for (size_t k = 0; k < x.size(); ++k) {
    const int64_t col = static_cast<int64_t>(k) % row_width;
    bool ok;
    if (col < rotated) {
      const size_t partner = col % head_dim < half ? k + half : k - half;
      const double norm = std::hypot(static_cast<double>(x[k]), static_cast<double>(x[partner]));
      ok = std::abs(static_cast<double>(actual[k]) - x[k]) <= rel * norm + 1e-6;  // false for NaN
    } else {
      ok = std::memcmp(&actual[k], &x[k], sizeof(float)) == 0;
    }
    if (!ok) {
      if (bad == 0) first = k;
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << x.size() << " elements differ; first at " << first
                                       << " (column " << static_cast<int64_t>(first) % row_width << "): actual "
                                       << actual[first] << " expected " << x[first];
}

class CudaRopeTest : public testing::RandomTest {
 protected:
  // One position per row in [0, max_positions), random but for a few runs
  // that the callers of explicit positions produce: the table's first and
  // last rows, a repeated position, a decreasing run, and positions
  // restarting at 0 (documents of a packed window).
  std::vector<int32_t> Positions(int64_t rows, int max_positions) {
    std::vector<int32_t> positions(static_cast<size_t>(rows));
    for (auto& p : positions) p = UniformInt(0, max_positions - 1);
    const auto set = [&](int64_t m, int p) {
      if (m < rows) positions[static_cast<size_t>(m)] = p;
    };
    set(0, max_positions - 1);
    set(1, 0);
    set(2, max_positions / 2);
    set(3, max_positions / 2);
    for (int k = 0; k < 4; ++k) set(4 + k, max_positions - 2 - k);
    for (int k = 0; k < 6; ++k) set(8 + k, k % 3);
    return positions;
  }

  // x is the fused QKV activation [batch * seq_len, (n_heads + 2 n_kv_heads)
  // head_dim + extra_cols]; Q and K heads are rotated. explicit_positions:
  // rows at Positions() over a table of batch * seq_len + 9 positions (as a
  // context-parallel rank's global positions exceed its local seq_len), on
  // the device and on the CPU; else at m % seq_len.
  template <typename T>
  void Run(int64_t batch, int seq_len, int n_heads, int n_kv_heads, int head_dim, int64_t extra_cols, bool misalign,
           bool explicit_positions = false) {
    const int64_t rows = batch * seq_len;
    const int64_t row_width = static_cast<int64_t>(n_heads + 2 * n_kv_heads) * head_dim + extra_cols;
    const int n_rot_heads = n_heads + n_kv_heads;
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " rows=" << rows << " seq_len=" << seq_len
                                      << " row_width=" << row_width << " head_dim=" << head_dim
                                      << " n_rot_heads=" << n_rot_heads << " misalign=" << misalign
                                      << " explicit_positions=" << explicit_positions);
    RopeScaling scaling;
    scaling.factor = 8.0;
    const int max_positions = explicit_positions ? static_cast<int>(rows) + 9 : seq_len + 5;
    const RopeTable table = BuildRopeTable(500000.0, head_dim, max_positions, scaling);
    const auto x = RoundTo<T>(Normal(rows * row_width)), dy = RoundTo<T>(Normal(rows * row_width));
    const std::vector<int32_t> positions = explicit_positions ? Positions(rows, max_positions) : std::vector<int32_t>{};
    const int32_t* host_positions = explicit_positions ? positions.data() : nullptr;
    const Arena positions_mem = testing::ToDevice(explicit_positions ? positions : std::vector<int32_t>{0});
    const int32_t* device_positions = explicit_positions ? static_cast<const int32_t*>(positions_mem.data()) : nullptr;

    auto y_expected = x, dx_expected = dy;
    cpu::RopeForward(Tensor::Of(y_expected.data(), {rows, row_width}), seq_len, n_rot_heads, table, host_positions);
    cpu::RopeBackward(Tensor::Of(dx_expected.data(), {rows, row_width}), seq_len, n_rot_heads, table, host_positions);

    const size_t table_offset = misalign ? sizeof(float) : 0;
    Arena table_arena(Device::kCUDA, table_offset + cuda::RopeTableBytes(table));
    const cuda::RopeDeviceTable device_table = cuda::UploadRopeTable(table, table_arena, table_offset, nullptr);
    GuardedBuffer<T> xd(FromFloats<T>(x), misalign), dyd(FromFloats<T>(dy), misalign);
    const Tensor xt = xd.View({rows, row_width}), dyt = dyd.View({rows, row_width});

    cuda::RopeForward(xt, seq_len, n_rot_heads, device_table, nullptr, device_positions);
    cuda::RopeBackward(dyt, seq_len, n_rot_heads, device_table, nullptr, device_positions);
    CUDA_CHECK(cudaDeviceSynchronize());
    const Tolerance tol = kTolerance<T>;
    EXPECT_TRUE(testing::AllClose(ToFloats<T>(xd.Read()), testing::ToDouble(y_expected), tol.atol, tol.rtol))
        << "forward";
    EXPECT_TRUE(testing::AllClose(ToFloats<T>(dyd.Read()), testing::ToDouble(dx_expected), tol.atol, tol.rtol))
        << "backward";

    cuda::RopeBackward(xt, seq_len, n_rot_heads, device_table, nullptr, device_positions);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(RoundTripClose(ToFloats<T>(xd.Read()), x, row_width, n_rot_heads, head_dim, kRoundTripRel<T>))
        << "round trip";
    EXPECT_TRUE(xd.GuardsIntact());
    EXPECT_TRUE(dyd.GuardsIntact());
  }
};

TEST_F(CudaRopeTest, Float32MatchesCpuAndRoundTrips) {
  LATAM_REQUIRE_GPU();
  Run<float>(3, 7, 4, 2, 64, 0, false);    // 21 rows, float4 path
  Run<float>(1, 33, 8, 2, 128, 0, false);  // Llama 3 head_dim
  Run<float>(5, 3, 3, 1, 6, 0, false);     // half = 3: scalar
  Run<float>(3, 7, 4, 2, 64, 3, false);    // row width 515: scalar
  Run<float>(3, 7, 4, 2, 64, 0, true);     // misaligned x and table: scalar
}

TEST_F(CudaRopeTest, BFloat16MatchesCpuAndRoundTrips) {
  LATAM_REQUIRE_GPU();
  Run<BF16>(3, 7, 4, 2, 64, 0, false);    // 21 rows, 8 x bf16 path
  Run<BF16>(1, 33, 8, 2, 128, 0, false);  // Llama 3 head_dim
  Run<BF16>(5, 3, 3, 1, 8, 0, false);     // half = 4: scalar for bf16
  Run<BF16>(3, 7, 4, 2, 64, 4, false);    // row width 516: scalar
  Run<BF16>(3, 7, 4, 2, 64, 0, true);     // misaligned x and table: scalar
}

TEST_F(CudaRopeTest, Float32AtPositionsMatchesCpuAndRoundTrips) {
  LATAM_REQUIRE_GPU();
  Run<float>(3, 7, 4, 2, 64, 0, false, true);    // float4 path
  Run<float>(1, 33, 8, 2, 128, 0, false, true);  // Llama 3 head_dim
  Run<float>(5, 3, 3, 1, 6, 0, false, true);     // half = 3: scalar
  Run<float>(3, 7, 4, 2, 64, 3, false, true);    // row width 515: scalar
  Run<float>(3, 7, 4, 2, 64, 0, true, true);     // misaligned x and table: scalar
}

TEST_F(CudaRopeTest, BFloat16AtPositionsMatchesCpuAndRoundTrips) {
  LATAM_REQUIRE_GPU();
  Run<BF16>(3, 7, 4, 2, 64, 0, false, true);    // 8 x bf16 path
  Run<BF16>(1, 33, 8, 2, 128, 0, false, true);  // Llama 3 head_dim
  Run<BF16>(5, 3, 3, 1, 8, 0, false, true);     // half = 4: scalar for bf16
  Run<BF16>(3, 7, 4, 2, 64, 4, false, true);    // row width 516: scalar
  Run<BF16>(3, 7, 4, 2, 64, 0, true, true);     // misaligned x and table: scalar
}

// A position outside the table stops the kernel before it reads the table:
// a trap on a GPU (the synchronisation after it fails), a fatal error naming
// the row in the emulation. The death tests run in a fresh process
// (threadsafe style), so the parent's CUDA context is never used by a fork.
TEST_F(CudaRopeTest, PositionOutsideTheTableStopsTheKernel) {
  LATAM_REQUIRE_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const int64_t rows = 8, head_dim = 8, row_width = 3 * head_dim;
  const RopeTable table = BuildRopeTable(10000.0, head_dim, 16, RopeScaling{});
  Arena table_mem(Device::kCUDA, cuda::RopeTableBytes(table));
  const cuda::RopeDeviceTable device_table = cuda::UploadRopeTable(table, table_mem, 0, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  const Arena x_mem = testing::ToDevice(Normal(rows * row_width));
  const Tensor x = testing::View<float>(x_mem, {rows, row_width});
  std::vector<int32_t> positions(static_cast<size_t>(rows), 3);
  positions[5] = 16;  // one past the table
  const Arena past_end = testing::ToDevice(positions);
  positions[5] = -1;
  const Arena negative = testing::ToDevice(positions);
  const auto rotate = [&](const Arena& p, bool forward) {
    const auto* device_positions = static_cast<const int32_t*>(p.data());
    if (forward) {
      cuda::RopeForward(x, 4, 2, device_table, nullptr, device_positions);
    } else {
      cuda::RopeBackward(x, 4, 2, device_table, nullptr, device_positions);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
  };
#ifdef LATAM_CUDA_EMULATION
  EXPECT_DEATH(rotate(past_end, true), "cuda rope row 5 is at position 16, outside the RoPE table \\[0, 16\\)");
  EXPECT_DEATH(rotate(negative, false), "cuda rope row 5 is at position -1, outside the RoPE table");
#else
  EXPECT_DEATH(rotate(past_end, true), "cudaDeviceSynchronize");
  EXPECT_DEATH(rotate(negative, false), "cudaDeviceSynchronize");
#endif
}

class CudaSwigluTest : public testing::RandomTest {
 protected:
  template <typename T>
  void Run(int64_t rows, int64_t f, bool misalign) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " rows=" << rows << " f=" << f
                                      << " misalign=" << misalign);
    // Gate spread wide enough to reach sigmoid's saturated tails.
    auto gu = Normal(rows * 2 * f);
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t j = 0; j < f; ++j) gu[m * 2 * f + j] *= 4.0f;
    }
    gu = RoundTo<T>(gu);
    auto dout = RoundTo<T>(Normal(rows * f));

    std::vector<float> out_expected(rows * f), dgu_expected(rows * 2 * f);
    cpu::SwigluForward(Tensor::Of(gu.data(), {rows, 2 * f}), Tensor::Of(out_expected.data(), {rows, f}));
    cpu::SwigluBackward(Tensor::Of(dout.data(), {rows, f}), Tensor::Of(gu.data(), {rows, 2 * f}),
                        Tensor::Of(dgu_expected.data(), {rows, 2 * f}));

    GuardedBuffer<T> gud(FromFloats<T>(gu), misalign), doutd(FromFloats<T>(dout), misalign);
    GuardedBuffer<T> outd(rows * f, misalign), dgud(rows * 2 * f, misalign);
    cuda::SwigluForward(gud.View({rows, 2 * f}), outd.View({rows, f}), nullptr);
    cuda::SwigluBackward(doutd.View({rows, f}), gud.View({rows, 2 * f}), dgud.View({rows, 2 * f}), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const Tolerance tol = kTolerance<T>;
    EXPECT_TRUE(testing::AllClose(ToFloats<T>(outd.Read()), testing::ToDouble(out_expected), tol.atol, tol.rtol))
        << "out";
    EXPECT_TRUE(testing::AllClose(ToFloats<T>(dgud.Read()), testing::ToDouble(dgu_expected), tol.atol, tol.rtol))
        << "dgu";
    EXPECT_TRUE(gud.GuardsIntact());
    EXPECT_TRUE(doutd.GuardsIntact());
    EXPECT_TRUE(outd.GuardsIntact());
    EXPECT_TRUE(dgud.GuardsIntact());
  }
};

TEST_F(CudaSwigluTest, Float32MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Run<float>(37, 64, false);   // float4 path
  Run<float>(21, 100, false);  // float4 path, F not a multiple of 8
  Run<float>(21, 99, false);   // scalar
  Run<float>(5, 1, false);     // scalar, one column
  Run<float>(9, 256, true);    // misaligned: scalar
  Run<float>(3, 4096, false);  // wide rows
}

TEST_F(CudaSwigluTest, BFloat16MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Run<BF16>(37, 64, false);   // 8 x bf16 path
  Run<BF16>(15, 8, false);    // one pack per row
  Run<BF16>(21, 100, false);  // scalar (100 % 8 != 0)
  Run<BF16>(5, 1, false);     // scalar, one column
  Run<BF16>(9, 256, true);    // misaligned: scalar
  Run<BF16>(3, 4096, false);  // wide rows
}

}  // namespace
}  // namespace latam
