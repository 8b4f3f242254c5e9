// CUDA RMSNorm (f32 and bf16, vectorised and scalar paths, shared memory
// beyond 48 KB) against the CPU kernel on the same inputs.
// Tolerances: f32 1e-5 abs + 1e-4 rel; bf16 outputs are rounded to bf16
// (relative step 2^-8), so 2e-2 abs + 1e-2 rel; dw (always f32) 1e-3 rel.
#include <gtest/gtest.h>

#include "kernels/cuda/rmsnorm.h"
#include "kernels/rmsnorm.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::ToDevice;
using testing::ToHost;
using testing::View;

class CudaRmsNormTest : public testing::RandomTest {
 protected:
  // CPU reference outputs for inputs x (already representable in the test dtype).
  struct Expected {
    std::vector<float> y, rstd, dx, dw;
  };
  Expected Cpu(std::vector<float> x, std::vector<float> w, std::vector<float> dy, int64_t rows, int64_t d,
               const std::vector<float>& dx0, const std::vector<float>& dw0, bool accumulate) {
    Expected e;
    e.y.resize(rows * d);
    e.rstd.resize(rows);
    e.dx = dx0;
    e.dw = dw0;
    cpu::RmsNormForward(Tensor::Of(x.data(), {rows, d}), Tensor::Of(w.data(), {d}), 1e-5f,
                        Tensor::Of(e.y.data(), {rows, d}), Tensor::Of(e.rstd.data(), {rows}));
    cpu::RmsNormBackward(Tensor::Of(dy.data(), {rows, d}), Tensor::Of(x.data(), {rows, d}), Tensor::Of(w.data(), {d}),
                         Tensor::Of(e.rstd.data(), {rows}), Tensor::Of(e.dx.data(), {rows, d}), accumulate,
                         Tensor::Of(e.dw.data(), {d}));
    return e;
  }

  template <typename T>
  void Run(int64_t rows, int64_t d, bool accumulate, double atol, double rtol) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " rows=" << rows << " d=" << d
                                      << " accumulate=" << accumulate);
    auto round = [](std::vector<float> v) {
      if constexpr (std::is_same_v<T, BF16>) v = testing::ToFloat(testing::ToBF16(v));
      return v;
    };
    auto to_t = [](const std::vector<float>& v) {
      if constexpr (std::is_same_v<T, BF16>) {
        return testing::ToBF16(v);
      } else {
        return v;
      }
    };
    auto from_t = [](const std::vector<T>& v) {
      if constexpr (std::is_same_v<T, BF16>) {
        return testing::ToFloat(v);
      } else {
        return v;
      }
    };
    const auto x = round(Normal(rows * d, 2.0f)), w = round(Uniform(d, 0.5f, 1.5f)), dy = round(Normal(rows * d));
    const auto dx0 = round(Uniform(rows * d)), dw0 = Uniform(d);
    const Expected e = Cpu(x, w, dy, rows, d, dx0, dw0, accumulate);

    Arena xd = ToDevice(to_t(x)), wd = ToDevice(to_t(w)), dyd = ToDevice(to_t(dy)), dxd = ToDevice(to_t(dx0));
    Arena yd(Device::kCUDA, rows * d * sizeof(T)), rstdd(Device::kCUDA, rows * sizeof(float));
    Arena dwd = ToDevice(dw0);
    Arena ws(Device::kCUDA, cuda::RmsNormBackwardWorkspaceElems(rows, d) * sizeof(float));
    cuda::RmsNormForward(View<T>(xd, {rows, d}), View<T>(wd, {d}), 1e-5f, View<T>(yd, {rows, d}),
                         View<float>(rstdd, {rows}), nullptr);
    cuda::RmsNormBackward(View<T>(dyd, {rows, d}), View<T>(xd, {rows, d}), View<T>(wd, {d}), View<float>(rstdd, {rows}),
                          View<T>(dxd, {rows, d}), accumulate, View<float>(dwd, {d}),
                          ws.View(0, DType::kF32, Shape{cuda::RmsNormBackwardWorkspaceElems(rows, d)}), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(testing::AllClose(from_t(ToHost<T>(yd, rows * d)), testing::ToDouble(e.y), atol, rtol));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(rstdd, rows), testing::ToDouble(e.rstd), 1e-6, 1e-5));
    EXPECT_TRUE(testing::AllClose(from_t(ToHost<T>(dxd, rows * d)), testing::ToDouble(e.dx), atol, rtol));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(dwd, d), testing::ToDouble(e.dw), 1e-3, 1e-3));
  }
};

TEST_F(CudaRmsNormTest, Float32MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Run<float>(37, 64, false, 1e-5, 1e-4);
  Run<float>(130, 100, true, 1e-5, 1e-4);  // scalar path (100 % 4 != 0)
  Run<float>(65, 4096, false, 1e-5, 1e-4);
  Run<float>(9, 16384, true, 1e-5, 1e-4);  // 64 KB of shared memory for dw
}

TEST_F(CudaRmsNormTest, BFloat16MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Run<BF16>(37, 64, false, 2e-2, 1e-2);
  Run<BF16>(130, 100, true, 2e-2, 1e-2);
  Run<BF16>(65, 8192, false, 2e-2, 1e-2);
}

}  // namespace
}  // namespace latam
