// The tensor-core attention kernels (kernels/cuda/flash_attention.h) against
// a double-precision reference computed on the host from the same
// bf16-rounded inputs: causal and not, GQA groups and plain multi-head, head
// dims 64 and 128, sequence lengths that are not tile multiples (1, 37, 130,
// 513), batch x heads from 1 to 2048. Outputs start poisoned (NaN), so an
// element a kernel leaves unwritten fails.
//
// Tolerances. Q K^T and the other products are exact in fp32 (bf16 x bf16)
// and summed in fp32, so the scores and lse carry only fp32 summation error:
// lse within 1e-4 abs + 1e-4 rel. The kernels round P and dS to bf16 as MMA
// operands and write out, dq, dk, dv in bf16 (relative step 2^-8), so each
// of out, dq, dk, dv is compared as a whole (relative L2 error below 1e-2)
// and element-wise against the tensor's scale (|err| <= 3e-2 max|ref|).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/flash_attention.h"
#include "tests/attention_reference.h"
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

using testing::AttentionCase;
using testing::CloseAsBf16;
using testing::ReferenceAttention;

class CudaFlashAttentionTest : public testing::RandomTest {
 protected:
  void Check(const AttentionCase& c, cuda::FlashForwardPath path = cuda::FlashForwardPath::kMmaSync,
             cuda::FlashBackwardPath backward = cuda::FlashBackwardPath::kMmaSync) {
    SCOPED_TRACE(::testing::Message() << "B=" << c.batch << " T=" << c.seq << " Hq=" << c.hq << " Hkv=" << c.hkv
                                      << " hd=" << c.hd << (c.causal ? " causal" : " full")
                                      << (path == cuda::FlashForwardPath::kWgmma      ? " wgmma"
                                          : path == cuda::FlashForwardPath::kWgmmaTma ? " wgmma+TMA"
                                                                                      : " mma.sync")
                                      << (backward == cuda::FlashBackwardPath::kWgmma ? ", wgmma backward" : ""));
    const AttentionDims d{c.batch, c.seq, c.hq, c.hkv, c.hd};
    ASSERT_TRUE(cuda::FlashAttentionSupports(d, DType::kBF16));
    const int64_t rows = static_cast<int64_t>(c.batch) * c.seq;
    const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.hd, out_width = static_cast<int64_t>(c.hq) * c.hd;
    const int64_t lse_elems = static_cast<int64_t>(c.batch) * c.hq * c.seq;
    const std::vector<float> qkv = RoundTo<BF16>(Normal(static_cast<size_t>(rows * width)));
    const std::vector<float> dout = RoundTo<BF16>(Normal(static_cast<size_t>(rows * out_width)));

    Arena qkv_mem = ToDevice(FromFloats<BF16>(qkv)), dout_mem = ToDevice(FromFloats<BF16>(dout));
    Arena out_mem(Device::kCUDA, static_cast<size_t>(rows * out_width) * 2);
    Arena lse_mem(Device::kCUDA, static_cast<size_t>(lse_elems) * 4);
    Arena dqkv_mem(Device::kCUDA, static_cast<size_t>(rows * width) * 2);
    const int64_t ws_elems = cuda::FlashAttentionBackwardWorkspaceElems(d);
    Arena ws_mem(Device::kCUDA, static_cast<size_t>(ws_elems) * 4);
    for (Arena* a : {&out_mem, &lse_mem, &dqkv_mem, &ws_mem}) Poison(*a);
    const Tensor qkv_t = View<BF16>(qkv_mem, {rows, width}), out_t = View<BF16>(out_mem, {rows, out_width});
    const Tensor lse_t = View<float>(lse_mem, {c.batch, c.hq, c.seq});

    cuda::FlashAttentionForward(qkv_t, d, c.causal, out_t, lse_t, nullptr, path);
    CUDA_CHECK(cudaDeviceSynchronize());
    const testing::AttentionReference ref = ReferenceAttention(qkv, dout, c);
    const std::vector<float> out = ToFloats(ToHost<BF16>(out_mem, static_cast<size_t>(rows * out_width)));
    const std::vector<float> lse = ToHost<float>(lse_mem, static_cast<size_t>(lse_elems));
    EXPECT_TRUE(CloseAsBf16(out, ref.out, [](size_t) { return true; }, "out"));
    EXPECT_TRUE(testing::AllClose(lse, ref.lse, 1e-4, 1e-4)) << "lse";

    cuda::FlashAttentionBackward(qkv_t, out_t, View<BF16>(dout_mem, {rows, out_width}), lse_t, d, c.causal,
                                 View<BF16>(dqkv_mem, {rows, width}), View<float>(ws_mem, {ws_elems}), nullptr,
                                 backward);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> dqkv = ToFloats(ToHost<BF16>(dqkv_mem, static_cast<size_t>(rows * width)));
    const int64_t q_end = static_cast<int64_t>(c.hq) * c.hd, k_end = q_end + static_cast<int64_t>(c.hkv) * c.hd;
    auto column = [width](size_t i) { return static_cast<int64_t>(i) % width; };
    EXPECT_TRUE(CloseAsBf16(dqkv, ref.dqkv, [&](size_t i) { return column(i) < q_end; }, "dq"));
    EXPECT_TRUE(CloseAsBf16(dqkv, ref.dqkv, [&](size_t i) { return column(i) >= q_end && column(i) < k_end; }, "dk"));
    EXPECT_TRUE(CloseAsBf16(dqkv, ref.dqkv, [&](size_t i) { return column(i) >= k_end; }, "dv"));

    // Deterministic: a second backward over poisoned outputs gives the same bits.
    Poison(dqkv_mem);
    Poison(ws_mem);
    cuda::FlashAttentionBackward(qkv_t, out_t, View<BF16>(dout_mem, {rows, out_width}), lse_t, d, c.causal,
                                 View<BF16>(dqkv_mem, {rows, width}), View<float>(ws_mem, {ws_elems}), nullptr,
                                 backward);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<BF16> again = ToHost<BF16>(dqkv_mem, static_cast<size_t>(rows * width));
    const std::vector<BF16> first = FromFloats<BF16>(dqkv);
    size_t differ = 0;
    for (size_t i = 0; i < again.size(); ++i) differ += again[i].bits != first[i].bits ? 1 : 0;
    EXPECT_EQ(differ, 0u) << "elements differing between two backward runs";
  }
};

TEST_F(CudaFlashAttentionTest, CausalMatchesDoubleReference) {
  LATAM_REQUIRE_GPU();
  Check({1, 1, 1, 1, 64, true});
  Check({2, 37, 4, 2, 64, true});
  Check({1, 130, 8, 2, 128, true});
  Check({1, 513, 2, 1, 128, true});
  Check({2, 64, 4, 4, 64, true});
}

TEST_F(CudaFlashAttentionTest, NonCausalMatchesDoubleReference) {
  LATAM_REQUIRE_GPU();
  Check({1, 200, 4, 4, 128, false});
  Check({3, 37, 2, 1, 64, false});
}

TEST_F(CudaFlashAttentionTest, ManyBatchesAndHeads) {
  LATAM_REQUIRE_GPU();
  Check({64, 16, 32, 8, 64, true});
}

// The Hopper kernels: the cp.async wgmma forward (FlashForwardPath::kWgmma)
// followed by the mma.sync backward, and the TMA forward (kWgmmaTma)
// followed by the wgmma backward (FlashBackwardPath::kWgmma, also checked
// bitwise reproducible); they run on compute capability 9.0 only.
TEST_F(CudaFlashAttentionTest, WgmmaMatchesDoubleReference) {
  LATAM_REQUIRE_GPU();
  if (!cuda::FlashWgmmaForwardAvailable()) GTEST_SKIP() << "the wgmma kernels need a compute capability 9.0 GPU";
  for (const cuda::FlashForwardPath path : {cuda::FlashForwardPath::kWgmma, cuda::FlashForwardPath::kWgmmaTma}) {
    const cuda::FlashBackwardPath backward =
        path == cuda::FlashForwardPath::kWgmma ? cuda::FlashBackwardPath::kMmaSync : cuda::FlashBackwardPath::kWgmma;
    Check({1, 1, 1, 1, 64, true}, path, backward);
    Check({2, 37, 4, 2, 64, true}, path, backward);
    Check({1, 130, 8, 2, 128, true}, path, backward);
    Check({1, 300, 2, 1, 128, true}, path, backward);
    Check({1, 200, 4, 4, 128, false}, path, backward);
    Check({3, 37, 2, 1, 64, false}, path, backward);
  }
}

TEST(CudaFlashAttentionSupport, Bf16WithHeadDims64And128Only) {
  const AttentionDims d64{1, 8, 4, 2, 64}, d128{1, 8, 4, 2, 128}, d32{1, 8, 4, 2, 32};
  EXPECT_TRUE(cuda::FlashAttentionSupports(d64, DType::kBF16));
  EXPECT_TRUE(cuda::FlashAttentionSupports(d128, DType::kBF16));
  EXPECT_FALSE(cuda::FlashAttentionSupports(d32, DType::kBF16));
  EXPECT_FALSE(cuda::FlashAttentionSupports(d64, DType::kF32));
  EXPECT_FALSE(cuda::FlashAttentionSupports(AttentionDims{1, 8, 3, 2, 64}, DType::kBF16));
}

}  // namespace
}  // namespace latam
