// CUDA AdamW against the CPU kernel over several steps, on aligned (float4)
// and ragged (scalar tail) sizes, and its bf16 copy of the weights.
// Tolerance: 1e-6 abs + 1e-5 rel (the GPU's sqrtf and division are IEEE).
#include <gtest/gtest.h>

#include "kernels/adamw.h"
#include "kernels/cuda/adamw.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::ToDevice;
using testing::ToHost;
using testing::View;

class CudaAdamWTest : public testing::RandomTest {};

TEST_F(CudaAdamWTest, MatchesCpuAndWritesBf16Copy) {
  LATAM_REQUIRE_GPU();
  for (const int64_t n : {int64_t{4096}, int64_t{1003}, int64_t{3}}) {
    SCOPED_TRACE(::testing::Message() << "n=" << n);
    auto p = Normal(n);
    std::vector<float> m(n, 0.0f), v(n, 0.0f);
    Arena pd = ToDevice(p), md = ToDevice(m), vd = ToDevice(v), gd(Device::kCUDA, n * sizeof(float));
    Arena bf(Device::kCUDA, n * sizeof(BF16));
    AdamWHyper h;
    h.lr = 3e-3f;
    h.weight_decay = 0.1f;
    for (int64_t step = 1; step <= 3; ++step) {
      auto g = Normal(n, 0.1f);
      CUDA_CHECK(cudaMemcpy(gd.data(), g.data(), n * sizeof(float), cudaMemcpyHostToDevice));
      h.step = step;
      cpu::AdamWUpdate(Tensor::Of(p.data(), {n}), Tensor::Of(g.data(), {n}), Tensor::Of(m.data(), {n}),
                       Tensor::Of(v.data(), {n}), h);
      cuda::AdamWUpdate(View<float>(pd, {n}), View<float>(gd, {n}), View<float>(md, {n}), View<float>(vd, {n}), h,
                        View<BF16>(bf, {n}), nullptr);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto p_gpu = ToHost<float>(pd, n);
    EXPECT_TRUE(testing::AllClose(p_gpu, testing::ToDouble(p), 1e-6, 1e-5));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(md, n), testing::ToDouble(m), 1e-7, 1e-5));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(vd, n), testing::ToDouble(v), 1e-9, 1e-5));
    const auto copy = ToHost<BF16>(bf, n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(copy[i].bits, BF16::FromFloat(p_gpu[i]).bits) << i;
  }
}

}  // namespace
}  // namespace latam
