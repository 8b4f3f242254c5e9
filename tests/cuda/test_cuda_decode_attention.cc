// CUDA KV-cache decode attention (kernels/cuda/decode_attention.h) and RoPE
// at positions against the CPU kernels on the same inputs: f32 and bf16,
// one new row and several, at the start of the cache and after earlier
// positions, GQA groups of 1, 2 and 4, contexts shorter and longer than the
// kernel's 8 warps, head dims 8 to 128.
//
// The caches start as random keys and values before p0 and NaN (all bytes
// 0xff) from p0 on, so that the append must write exactly the new positions
// (compared bit for bit: it is a copy) and the attention must never read
// past them; the output starts as NaN.
//
// Tolerances. f32: 2e-5 abs + 2e-5 rel (GPU and CPU differ in summation
// order: an online softmax merged over warps against two GEMMs, and expf
// against std::exp, near 1e-6 on outputs of size ~0.5). bf16: the CPU runs
// on the bf16-rounded inputs, so the only extra error is the GPU's final
// rounding of the output to bf16, half an ulp: 1e-5 abs + 2^-7 rel.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/rope.h"
#include "kernels/decode_attention.h"
#include "kernels/rope.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::FromFloats;
using testing::GuardedBuffer;
using testing::RoundTo;
using testing::ToFloats;

template <typename T>
class CudaDecodeAttention : public testing::RandomTest {};
using DTypes = ::testing::Types<float, BF16>;
TYPED_TEST_SUITE(CudaDecodeAttention, DTypes);

template <typename T>
constexpr double kAtol = std::is_same_v<T, BF16> ? 1e-5 : 2e-5;
template <typename T>
constexpr double kRtol = std::is_same_v<T, BF16> ? 1.0 / 128 : 2e-5;

TYPED_TEST(CudaDecodeAttention, MatchesCpu) {
  LATAM_REQUIRE_GPU();
  using T = TypeParam;
  struct Case {
    int hq, hkv, hd;
    int64_t max_context, p0, n;
  };
  for (const Case& c : {Case{4, 2, 8, 40, 0, 1}, Case{4, 2, 32, 40, 3, 1}, Case{4, 1, 64, 80, 37, 1},
                        Case{8, 2, 128, 96, 0, 21}, Case{4, 4, 16, 48, 11, 9}, Case{6, 3, 24, 70, 50, 5}}) {
    SCOPED_TRACE("Hq " + std::to_string(c.hq) + " Hkv " + std::to_string(c.hkv) + " hd " + std::to_string(c.hd) +
                 " p0 " + std::to_string(c.p0) + " n " + std::to_string(c.n));
    const DecodeAttentionDims d{c.hq, c.hkv, c.hd, c.max_context};
    const int64_t w = (c.hq + 2 * c.hkv) * c.hd, cache_elems = c.hkv * c.max_context * c.hd;
    const int64_t out_elems = c.n * c.hq * c.hd;
    // Inputs as T holds them; the CPU runs on the same values in f32.
    const std::vector<float> qkv = RoundTo<T>(this->Uniform(static_cast<size_t>(c.n * w)));
    std::vector<float> k_cache = RoundTo<T>(this->Uniform(static_cast<size_t>(cache_elems)));
    std::vector<float> v_cache = RoundTo<T>(this->Uniform(static_cast<size_t>(cache_elems)));
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t g = 0; g < c.hkv; ++g) {
      for (int64_t j = c.p0; j < c.max_context; ++j) {
        for (int64_t e = 0; e < c.hd; ++e) {
          k_cache[static_cast<size_t>((g * c.max_context + j) * c.hd + e)] = nan;
          v_cache[static_cast<size_t>((g * c.max_context + j) * c.hd + e)] = nan;
        }
      }
    }
    const Shape cache_shape{c.hkv, c.max_context, c.hd};

    GuardedBuffer<T> qkv_d(FromFloats<T>(qkv), false);
    GuardedBuffer<T> k_d(FromFloats<T>(k_cache), false), v_d(FromFloats<T>(v_cache), false);
    GuardedBuffer<T> out_d(static_cast<size_t>(out_elems), false);
    cuda::KvCacheAppend(qkv_d.View(Shape{c.n, w}), d, c.p0, k_d.View(cache_shape), v_d.View(cache_shape), nullptr);
    cuda::DecodeAttention(qkv_d.View(Shape{c.n, w}), d, c.p0, k_d.View(cache_shape), v_d.View(cache_shape),
                          out_d.View(Shape{c.n, c.hq * c.hd}), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());

    std::vector<float> qkv_cpu = qkv, out(static_cast<size_t>(out_elems), nan);
    const Tensor k_t = Tensor::Of(k_cache.data(), cache_shape), v_t = Tensor::Of(v_cache.data(), cache_shape);
    const Tensor qkv_t = Tensor::Of(qkv_cpu.data(), Shape{c.n, w});
    cpu::KvCacheAppend(qkv_t, d, c.p0, k_t, v_t);
    std::vector<float> workspace(static_cast<size_t>(cpu::DecodeAttentionWorkspaceElems(d, c.n)));
    cpu::DecodeAttention(qkv_t, d, c.p0, k_t, v_t, Tensor::Of(out.data(), Shape{c.n, c.hq * c.hd}),
                         Tensor::Of(workspace.data(), Shape{static_cast<int64_t>(workspace.size())}));

    // The appended caches equal the CPU's bit for bit (NaN past the new rows
    // on both sides).
    const std::vector<float> k_gpu = ToFloats(k_d.Read()), v_gpu = ToFloats(v_d.Read());
    EXPECT_EQ(std::memcmp(k_gpu.data(), k_cache.data(), k_cache.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(v_gpu.data(), v_cache.data(), v_cache.size() * sizeof(float)), 0);
    EXPECT_TRUE(testing::AllClose(ToFloats(out_d.Read()), testing::ToDouble(out), kAtol<T>, kRtol<T>));
    EXPECT_TRUE(out_d.GuardsIntact());
    EXPECT_TRUE(k_d.GuardsIntact());
    EXPECT_TRUE(v_d.GuardsIntact());
  }
}

// RoPE at positions p0 + m on the GPU against the CPU's RopeForwardAt (the
// same formulas; tolerance as the decode's, the GPU fusing the products).
TYPED_TEST(CudaDecodeAttention, RopeAtPositionsMatchesCpu) {
  LATAM_REQUIRE_GPU();
  using T = TypeParam;
  const int hd = 32, n_rot = 6, width = 8 * hd;
  const int64_t p0 = 45, n = 7;
  const RopeTable table = BuildRopeTable(500000.0, hd, 64, RopeScaling{});
  const std::vector<float> x = RoundTo<T>(this->Uniform(static_cast<size_t>(n * width)));
  GuardedBuffer<T> x_d(FromFloats<T>(x), false);
  Arena table_arena(Device::kCUDA, cuda::RopeTableBytes(table));
  const cuda::RopeDeviceTable device_table = cuda::UploadRopeTable(table, table_arena, 0, nullptr);
  cuda::RopeForwardAt(x_d.View(Shape{n, width}), p0, n_rot, device_table, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<float> want = x;
  cpu::RopeForwardAt(Tensor::Of(want.data(), Shape{n, width}), p0, n_rot, table);
  EXPECT_TRUE(testing::AllClose(ToFloats(x_d.Read()), testing::ToDouble(want), kAtol<T>, kRtol<T>));
  EXPECT_TRUE(x_d.GuardsIntact());
}

}  // namespace
}  // namespace latam
