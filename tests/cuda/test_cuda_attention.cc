// CUDA causal GQA attention (f32 and bf16) against the CPU kernel on the same
// inputs (rounded to bf16 first in the bf16 tests). The forward's out and lse
// are compared with the CPU forward; the backward's dqkv with the CPU
// backward run on the GPU's own out and lse, so each pass is checked alone.
// Shapes cover GQA groups (8 query / 2 KV heads) and plain multi-head, head
// dims 64 and 128 (72 and 256 for the other thread layouts), T = 1, 37, 130
// (partial tiles) and batch > 1. Outputs start poisoned (NaN).
// Tolerances: both sides compute in fp32 and differ only in summation order:
// f32 out and lse 2e-5 abs + 1e-5 rel, f32 dqkv 5e-5 abs + 1e-4 rel. bf16
// out and dqkv are rounded to bf16 (relative step 2^-8), so 1e-3 abs + 1e-2
// rel; bf16 lse is f32 computed from identical inputs, so as for f32.
#include <gtest/gtest.h>

#include <omp.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cuda/attention.h"
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

class CudaAttentionTest : public testing::RandomTest {
 protected:
  // Device buffers and views for one shape.
  template <typename T>
  struct DeviceRun {
    DeviceRun(const std::vector<float>& qkv_host, const std::vector<float>& dout_host, const AttentionDims& d)
        : rows(static_cast<int64_t>(d.batch) * d.seq_len),
          width(static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim),
          out_width(static_cast<int64_t>(d.n_heads) * d.head_dim),
          ws_elems(cuda::AttentionBackwardWorkspaceElems(d)),
          qkv_mem(ToDevice(FromFloats<T>(qkv_host))),
          dout_mem(ToDevice(FromFloats<T>(dout_host))),
          out_mem(Device::kCUDA, rows * out_width * sizeof(T)),
          lse_mem(Device::kCUDA, static_cast<size_t>(d.batch) * d.n_heads * d.seq_len * sizeof(float)),
          dqkv_mem(Device::kCUDA, rows * width * sizeof(T)),
          ws_mem(Device::kCUDA, ws_elems * sizeof(float)) {
      Poison(out_mem);
      Poison(lse_mem);
      Poison(dqkv_mem);
      Poison(ws_mem);
    }
    Tensor qkv() const { return View<T>(qkv_mem, {rows, width}); }
    Tensor dout() const { return View<T>(dout_mem, {rows, out_width}); }
    Tensor out() const { return View<T>(out_mem, {rows, out_width}); }
    Tensor lse(const AttentionDims& d) const { return View<float>(lse_mem, {d.batch, d.n_heads, d.seq_len}); }
    Tensor dqkv() const { return View<T>(dqkv_mem, {rows, width}); }
    Tensor workspace() const { return View<float>(ws_mem, {ws_elems}); }

    int64_t rows, width, out_width, ws_elems;
    Arena qkv_mem, dout_mem, out_mem, lse_mem, dqkv_mem, ws_mem;
  };

  static std::vector<float> CpuWorkspace(const AttentionDims& d) {
    return std::vector<float>(cpu::AttentionWorkspaceElems(d, omp_get_max_threads()));
  }

  template <typename T>
  void Check(int batch, int seq, int hq, int hkv, int hd, Tolerance fwd, Tolerance lse_tol, Tolerance bwd) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " B=" << batch << " T=" << seq << " Hq=" << hq
                                      << " Hkv=" << hkv << " hd=" << hd);
    const AttentionDims d{batch, seq, hq, hkv, hd};
    const int64_t rows = static_cast<int64_t>(batch) * seq, width = static_cast<int64_t>(hq + 2 * hkv) * hd;
    const int64_t out_width = static_cast<int64_t>(hq) * hd, lse_elems = static_cast<int64_t>(batch) * hq * seq;
    auto qkv = RoundTo<T>(Normal(rows * width));
    auto dout = RoundTo<T>(Normal(rows * out_width));

    DeviceRun<T> gpu(qkv, dout, d);
    cuda::AttentionForward(gpu.qkv(), d, gpu.out(), gpu.lse(d), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto out = ToFloats(ToHost<T>(gpu.out_mem, rows * out_width));
    auto lse = ToHost<float>(gpu.lse_mem, lse_elems);

    std::vector<float> cpu_out(rows * out_width), cpu_lse(lse_elems), cpu_ws = CpuWorkspace(d);
    const Tensor qkv_t = Tensor::Of(qkv.data(), {rows, width});
    const Tensor ws_t = Tensor::Of(cpu_ws.data(), {static_cast<int64_t>(cpu_ws.size())});
    cpu::AttentionForward(qkv_t, d, Tensor::Of(cpu_out.data(), {rows, out_width}),
                          Tensor::Of(cpu_lse.data(), {batch, hq, seq}), ws_t);
    EXPECT_TRUE(testing::AllClose(out, testing::ToDouble(cpu_out), fwd.atol, fwd.rtol)) << "out";
    EXPECT_TRUE(testing::AllClose(lse, testing::ToDouble(cpu_lse), lse_tol.atol, lse_tol.rtol)) << "lse";

    cuda::AttentionBackward(gpu.qkv(), gpu.out(), gpu.dout(), gpu.lse(d), d, gpu.dqkv(), gpu.workspace(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto dqkv = ToFloats(ToHost<T>(gpu.dqkv_mem, rows * width));

    std::vector<float> cpu_dqkv(rows * width);
    cpu::AttentionBackward(qkv_t, Tensor::Of(out.data(), {rows, out_width}), Tensor::Of(dout.data(), {rows, out_width}),
                           Tensor::Of(lse.data(), {batch, hq, seq}), d, Tensor::Of(cpu_dqkv.data(), {rows, width}),
                           ws_t);
    EXPECT_TRUE(testing::AllClose(dqkv, testing::ToDouble(cpu_dqkv), bwd.atol, bwd.rtol)) << "dqkv";
  }

  // Two backward runs on poisoned outputs give the same bits.
  template <typename T>
  void CheckDeterministic(int batch, int seq, int hq, int hkv, int hd) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " B=" << batch << " T=" << seq << " Hq=" << hq
                                      << " Hkv=" << hkv << " hd=" << hd);
    const AttentionDims d{batch, seq, hq, hkv, hd};
    const int64_t rows = static_cast<int64_t>(batch) * seq;
    DeviceRun<T> gpu(RoundTo<T>(Normal(rows * (hq + 2 * hkv) * hd)), RoundTo<T>(Normal(rows * hq * hd)), d);
    cuda::AttentionForward(gpu.qkv(), d, gpu.out(), gpu.lse(d), nullptr);
    std::vector<std::vector<T>> results;
    for (int run = 0; run < 2; ++run) {
      Poison(gpu.dqkv_mem);
      Poison(gpu.ws_mem);
      cuda::AttentionBackward(gpu.qkv(), gpu.out(), gpu.dout(), gpu.lse(d), d, gpu.dqkv(), gpu.workspace(), nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      results.push_back(ToHost<T>(gpu.dqkv_mem, rows * gpu.width));
    }
    EXPECT_EQ(std::memcmp(results[0].data(), results[1].data(), results[0].size() * sizeof(T)), 0);
  }
};

// (batch, seq_len, query heads, KV heads, head_dim)
using AttentionShape = std::tuple<int, int, int, int, int>;
const std::vector<AttentionShape> kShapes = {{2, 37, 8, 2, 64},  {1, 130, 8, 2, 128}, {2, 1, 8, 2, 64},
                                             {2, 130, 8, 2, 64}, {1, 37, 4, 4, 128},  {1, 65, 6, 3, 72},
                                             {1, 40, 4, 1, 256}, {3, 33, 2, 1, 128}};

TEST_F(CudaAttentionTest, Float32MatchesCpu) {
  LATAM_REQUIRE_GPU();
  for (const auto& [b, t, hq, hkv, hd] : kShapes) {
    Check<float>(b, t, hq, hkv, hd, {2e-5, 1e-5}, {2e-5, 1e-5}, {5e-5, 1e-4});
  }
}

TEST_F(CudaAttentionTest, BFloat16MatchesCpu) {
  LATAM_REQUIRE_GPU();
  for (const auto& [b, t, hq, hkv, hd] : kShapes) {
    Check<BF16>(b, t, hq, hkv, hd, {1e-3, 1e-2}, {2e-5, 1e-5}, {1e-3, 1e-2});
  }
}

TEST_F(CudaAttentionTest, BackwardIsBitwiseDeterministic) {
  LATAM_REQUIRE_GPU();
  CheckDeterministic<float>(2, 130, 8, 2, 128);
  CheckDeterministic<BF16>(2, 130, 8, 2, 64);
}

}  // namespace
}  // namespace latam
