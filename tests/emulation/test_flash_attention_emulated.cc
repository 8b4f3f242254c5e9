// The tensor-core attention kernels (kernels/cuda/flash_attention_kernels.cuh,
// and the Hopper ones of flash_attention_wgmma*.cuh) run on the CPU under
// kernels/cuda/simt_emulation.h, against the double-precision reference of
// the GPU tests (tests/attention_reference.h), with the same tolerances. The
// emulation executes the kernels' own code lane by lane, with the warp-level
// operations (ldmatrix, mma.sync, wgmma, shuffles) computed from the PTX
// fragment layouts and asynchronous copies and wgmmas completing at their
// waits, so this checks the kernels' indexing, masking, tiling, online
// softmax, barrier protocol and write-back without a GPU; it cannot see
// timing, unordered races or the hardware's accumulation order (tests/cuda
// and compute-sanitizer do, on a GPU).
// Shapes stay small: every CUDA thread is a host thread.
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/flash_attention_kernels.cuh"
#include "kernels/cuda/flash_attention_wgmma.cuh"
#include "kernels/cuda/flash_attention_wgmma_backward.cuh"
#include "tests/attention_reference.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using cuda::flash::kBlockM;
using cuda::flash::kBlockN;
using cuda::flash::kThreads;
using testing::AttentionCase;
using testing::CloseAsBf16;

std::vector<__nv_bfloat16> ToBf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i].bits = simt::RoundToBf16(v[i]);
  return out;
}

std::vector<float> ToFloat(const std::vector<__nv_bfloat16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = simt::Bf16ToFloat(v[i].bits);
  return out;
}

class EmulatedFlashAttentionTest : public testing::RandomTest {
 protected:
  std::vector<float> RoundedNormal(size_t n) { return ToFloat(ToBf16(Normal(n))); }

  // The forward runs FlashForwardKernel, or one of the Hopper kernels
  // (kernels/cuda/flash_attention_wgmma.cuh); the backward (mma.sync or
  // wgmma, flash_attention_wgmma_backward.cuh) takes its out and lse.
  template <int kHd>
  void Check(const AttentionCase& c, cuda::FlashForwardPath path = cuda::FlashForwardPath::kMmaSync,
             cuda::FlashBackwardPath backward = cuda::FlashBackwardPath::kMmaSync) {
    const bool wgmma = path == cuda::FlashForwardPath::kWgmma, tma = path == cuda::FlashForwardPath::kWgmmaTma;
    const bool wgmma_backward = backward == cuda::FlashBackwardPath::kWgmma;
    SCOPED_TRACE(::testing::Message() << "B=" << c.batch << " T=" << c.seq << " Hq=" << c.hq << " Hkv=" << c.hkv
                                      << " hd=" << c.hd << (c.causal ? " causal" : " full")
                                      << (wgmma ? " wgmma forward" : tma ? " wgmma+TMA forward" : " mma.sync forward")
                                      << (wgmma_backward ? ", wgmma backward" : ", mma.sync backward"));
    ASSERT_EQ(c.hd, kHd);
    const AttentionDims d{c.batch, c.seq, c.hq, c.hkv, c.hd};
    const int64_t rows = static_cast<int64_t>(c.batch) * c.seq;
    const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.hd, out_width = static_cast<int64_t>(c.hq) * c.hd;
    const std::vector<float> qkv = RoundedNormal(static_cast<size_t>(rows * width));
    const std::vector<float> dout = RoundedNormal(static_cast<size_t>(rows * out_width));
    const std::vector<__nv_bfloat16> qkv_bf16 = ToBf16(qkv);
    // Poisoned outputs: all-ones bits are a NaN in bf16 and f32.
    std::vector<__nv_bfloat16> out(static_cast<size_t>(rows * out_width), __nv_bfloat16{0xffff});
    std::vector<float> lse(static_cast<size_t>(c.batch) * c.hq * c.seq, std::nanf(""));

    const cuda::flash::FlashGeometry g = cuda::flash::MakeFlashGeometry(d, c.causal);
    const simt::Dim3 grid{static_cast<unsigned>((c.seq + kBlockM - 1) / kBlockM), static_cast<unsigned>(c.hq),
                          static_cast<unsigned>(c.batch)};
    constexpr int kRows = cuda::flash::kWgBlockM;
    const simt::Dim3 wg_grid{static_cast<unsigned>((c.seq + kRows - 1) / kRows), grid.y, grid.z};
    if (wgmma) {
      simt::Launch(wg_grid, simt::Dim3{cuda::flash::kWgThreads, 1, 1}, cuda::flash::WgmmaForwardSmemBytes<kHd>(),
                   [&] { cuda::flash::FlashForwardWgmmaKernel<kHd>(qkv_bf16.data(), out.data(), lse.data(), g); });
    } else if (tma) {
      // The emulated tensor map FlashAttentionForward would make: qkv as
      // {columns, T, B}, boxes of {64, 128, 1}.
      cuda::tma::TensorMap map;
      map.base = qkv_bf16.data();
      map.dims[0] = static_cast<uint64_t>(width);
      map.dims[1] = static_cast<uint64_t>(c.seq);
      map.dims[2] = static_cast<uint64_t>(c.batch);
      map.strides[0] = static_cast<uint64_t>(width) * 2;
      map.strides[1] = static_cast<uint64_t>(width) * 2 * static_cast<uint64_t>(c.seq);
      map.box[0] = 64;
      map.box[1] = kRows;
      map.box[2] = 1;
      simt::Launch(wg_grid, simt::Dim3{cuda::flash::kWsThreads, 1, 1}, cuda::flash::WgmmaTmaForwardSmemBytes<kHd>(),
                   [&] { cuda::flash::FlashForwardWgmmaTmaKernel<kHd>(map, out.data(), lse.data(), g); });
    } else {
      const size_t shared = static_cast<size_t>(kBlockM + 4 * kBlockN) * kHd * 2;
      simt::Launch(grid, simt::Dim3{kThreads, 1, 1}, shared,
                   [&] { cuda::flash::FlashForwardKernel<kHd>(qkv_bf16.data(), out.data(), lse.data(), g); });
    }

    const testing::AttentionReference ref = testing::ReferenceAttention(qkv, dout, c);
    EXPECT_TRUE(CloseAsBf16(ToFloat(out), ref.out, [](size_t) { return true; }, "out"));
    EXPECT_TRUE(testing::AllClose(lse, ref.lse, 1e-4, 1e-4)) << "lse";

    // The backward's three launches, as FlashAttentionBackward makes them,
    // from the forward's own out and lse.
    const std::vector<__nv_bfloat16> dout_bf16 = ToBf16(dout);
    std::vector<float> dsum(static_cast<size_t>(c.batch) * c.hq * c.seq, std::nanf(""));
    std::vector<__nv_bfloat16> dqkv(static_cast<size_t>(rows * width), __nv_bfloat16{0xffff});
    const int64_t items = rows * c.hq;
    const unsigned dot_blocks = static_cast<unsigned>((items * (kHd / 8) + cuda::flash::kRowDotThreads - 1) /
                                                      cuda::flash::kRowDotThreads);
    simt::Launch(simt::Dim3{dot_blocks, 1, 1}, simt::Dim3{cuda::flash::kRowDotThreads, 1, 1}, 0, [&] {
      cuda::flash::FlashRowDotKernel<kHd>(out.data(), dout_bf16.data(), dsum.data(), items, c.hq, c.seq);
    });
    if (wgmma_backward) {
      constexpr int kBwdRows = cuda::flash::kWgBwdRows;
      const unsigned tiles = static_cast<unsigned>((c.seq + kBwdRows - 1) / kBwdRows);
      const simt::Dim3 block{cuda::flash::kWgBwdThreads, 1, 1};
      simt::Launch(simt::Dim3{tiles, static_cast<unsigned>(c.hkv), grid.z}, block,
                   cuda::flash::WgmmaKeyValueSmemBytes<kHd>(), [&] {
                     cuda::flash::FlashKeyValueWgmmaKernel<kHd>(qkv_bf16.data(), dout_bf16.data(), lse.data(),
                                                                dsum.data(), dqkv.data(), g);
                   });
      simt::Launch(simt::Dim3{tiles, static_cast<unsigned>(c.hq), grid.z}, block,
                   cuda::flash::WgmmaQuerySmemBytes<kHd>(), [&] {
                     cuda::flash::FlashQueryWgmmaKernel<kHd>(qkv_bf16.data(), dout_bf16.data(), lse.data(),
                                                             dsum.data(), dqkv.data(), g);
                   });
    } else {
      const simt::Dim3 kv_grid{grid.x, static_cast<unsigned>(c.hkv), grid.z};
      simt::Launch(kv_grid, simt::Dim3{kThreads, 1, 1}, cuda::flash::KeyValueSmemBytes<kHd>(), [&] {
        cuda::flash::FlashKeyValueKernel<kHd>(qkv_bf16.data(), dout_bf16.data(), lse.data(), dsum.data(),
                                              dqkv.data(), g);
      });
      simt::Launch(grid, simt::Dim3{kThreads, 1, 1}, cuda::flash::QuerySmemBytes<kHd>(), [&] {
        cuda::flash::FlashQueryKernel<kHd>(qkv_bf16.data(), dout_bf16.data(), lse.data(), dsum.data(), dqkv.data(),
                                           g);
      });
    }
    const std::vector<float> grads = ToFloat(dqkv);
    const int64_t q_end = static_cast<int64_t>(c.hq) * c.hd, k_end = q_end + static_cast<int64_t>(c.hkv) * c.hd;
    auto column = [width](size_t i) { return static_cast<int64_t>(i) % width; };
    EXPECT_TRUE(CloseAsBf16(grads, ref.dqkv, [&](size_t i) { return column(i) < q_end; }, "dq"));
    EXPECT_TRUE(CloseAsBf16(grads, ref.dqkv, [&](size_t i) { return column(i) >= q_end && column(i) < k_end; }, "dk"));
    EXPECT_TRUE(CloseAsBf16(grads, ref.dqkv, [&](size_t i) { return column(i) >= k_end; }, "dv"));
  }
};

TEST_F(EmulatedFlashAttentionTest, CausalMatchesDoubleReference) {
  Check<64>({1, 1, 1, 1, 64, true});
  Check<64>({2, 37, 4, 2, 64, true});
  Check<128>({1, 130, 2, 1, 128, true});
  Check<64>({1, 150, 4, 1, 64, true});
}

TEST_F(EmulatedFlashAttentionTest, FullMatchesDoubleReference) {
  Check<64>({1, 70, 2, 2, 64, false});
  Check<128>({1, 64, 2, 1, 128, false});
}

// The wgmma kernels: one row, a partial tile, two CTAs of 128 rows with a
// partial second one (T = 130, 257), GQA groups, both head dims. Forwards
// with cp.async loads (kWgmma) and warp-specialised with TMA (kWgmmaTma;
// T = 300 runs three key tiles through two stages, so a stage is refilled),
// each followed by the wgmma backward.
TEST_F(EmulatedFlashAttentionTest, WgmmaCausalMatchesDoubleReference) {
  const cuda::FlashBackwardPath backward = cuda::FlashBackwardPath::kWgmma;
  for (const cuda::FlashForwardPath path : {cuda::FlashForwardPath::kWgmma, cuda::FlashForwardPath::kWgmmaTma}) {
    Check<64>({1, 1, 1, 1, 64, true}, path, backward);
    Check<64>({2, 37, 4, 2, 64, true}, path, backward);
    Check<128>({1, 130, 2, 1, 128, true}, path, backward);
    Check<64>({1, 257, 2, 1, 64, true}, path, backward);
    Check<64>({1, 128, 1, 1, 64, true}, path, backward);   // exactly one tile
    Check<128>({2, 129, 4, 1, 128, true}, path, backward);  // one row past it; a group of 4
  }
}

TEST_F(EmulatedFlashAttentionTest, WgmmaFullMatchesDoubleReference) {
  const cuda::FlashBackwardPath backward = cuda::FlashBackwardPath::kWgmma;
  for (const cuda::FlashForwardPath path : {cuda::FlashForwardPath::kWgmma, cuda::FlashForwardPath::kWgmmaTma}) {
    Check<64>({1, 200, 2, 2, 64, false}, path, backward);
    Check<128>({1, 64, 2, 1, 128, false}, path, backward);
    Check<64>({2, 300, 2, 1, 64, false}, path, backward);
  }
}

}  // namespace
}  // namespace latam
