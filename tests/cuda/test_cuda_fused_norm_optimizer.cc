// CUDA fused residual add + RMSNorm, multi-tensor AdamW and the multi-segment
// gradient sum of squares, against the CPU kernels (cpu::Add, cpu::RmsNorm*,
// cpu::Scale + cpu::AdamWUpdate, cpu::SumOfSquares) on fresh random inputs,
// with outputs poisoned beforehand.
// Tolerances:
//   h: exact (both sides round the same fp32 sum to the dtype).
//   y, dh: f32 1e-5 abs + 1e-4 rel; bf16 is rounded to bf16 (relative step
//     2^-8), so 2e-2 abs + 1e-2 rel. rstd 1e-6 abs + 1e-5 rel (rsqrtf);
//     dw (f32, summed in another order) 1e-3 abs + 1e-3 rel.
//   AdamW: p 1e-6 abs + 1e-5 rel, m 1e-7 + 1e-5, v 1e-9 + 1e-5 (IEEE sqrtf
//     and division; only FMA contraction differs); bf16 copy bit-exact.
//   Sum of squares: 1e-5 relative (see kernels/cuda/optimizer.h).
// dw and the sum of squares must also be bitwise equal across two runs.
#include <gtest/gtest.h>

#include <cstring>

#include "kernels/adamw.h"
#include "kernels/cuda/fused_norm.h"
#include "kernels/cuda/optimizer.h"
#include "kernels/elementwise.h"
#include "kernels/grad_norm.h"
#include "kernels/rmsnorm.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::FromFloats;
using testing::Poison;
using testing::RoundTo;
using testing::ToFloats;
using testing::ToHost;

constexpr float kEps = 1e-5f;

// A device copy of `v` as T, starting `offset` elements into its arena (a
// non-zero offset misaligns the data for 16-byte accesses).
template <typename T>
Arena Upload(const std::vector<float>& v, int64_t offset) {
  return testing::ToDeviceAt(FromFloats<T>(v), static_cast<size_t>(offset) * sizeof(T));
}

template <typename T>
Tensor ViewAt(const Arena& a, int64_t offset, Shape shape) {
  return a.View(static_cast<size_t>(offset) * sizeof(T), DTypeOf<T>::value, shape);
}

template <typename T>
std::vector<float> Download(const Arena& a, int64_t offset, int64_t n) {
  return ToFloats(testing::ToHostAt<T>(a, static_cast<size_t>(offset) * sizeof(T), static_cast<size_t>(n)));
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class CudaAddRmsNormTest : public testing::RandomTest {
 protected:
  struct Case {
    int64_t rows, d;
    int64_t offset = 0;        // elements; 1 forces the scalar path
    bool h_aliases_x = false;  // in-place residual stream
    bool dh_aliases_dh_in = false;
  };

  template <typename T>
  void Run(const Case& c, double atol, double rtol) {
    const int64_t rows = c.rows, d = c.d, n = rows * d, off = c.offset;
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " rows=" << rows << " d=" << d
                                      << " offset=" << off << " h_aliases_x=" << c.h_aliases_x
                                      << " dh_aliases_dh_in=" << c.dh_aliases_dh_in);
    const auto x = RoundTo<T>(Normal(n, 1.5f)), r = RoundTo<T>(Normal(n)), w = RoundTo<T>(Uniform(d, 0.5f, 1.5f));
    const auto dy = RoundTo<T>(Normal(n)), dh_in = RoundTo<T>(Uniform(n)), dw0 = Uniform(d);

    // CPU: h = Add(x, r) stored as T; RmsNorm forward; dh = dh_in + RmsNorm backward.
    std::vector<float> h(n), y(n), rstd(rows), dh = dh_in, dw = dw0;
    std::vector<float> xc = x, rc = r, wc = w, dyc = dy;
    cpu::Add(Tensor::Of(xc.data(), {rows, d}), Tensor::Of(rc.data(), {rows, d}), Tensor::Of(h.data(), {rows, d}));
    h = RoundTo<T>(h);
    cpu::RmsNormForward(Tensor::Of(h.data(), {rows, d}), Tensor::Of(wc.data(), {d}), kEps,
                        Tensor::Of(y.data(), {rows, d}), Tensor::Of(rstd.data(), {rows}));
    cpu::RmsNormBackward(Tensor::Of(dyc.data(), {rows, d}), Tensor::Of(h.data(), {rows, d}), Tensor::Of(wc.data(), {d}),
                         Tensor::Of(rstd.data(), {rows}), Tensor::Of(dh.data(), {rows, d}), true,
                         Tensor::Of(dw.data(), {d}));

    Arena xd = Upload<T>(x, off), rd = Upload<T>(r, off), wd = Upload<T>(w, off), dyd = Upload<T>(dy, off);
    Arena dh_ind = Upload<T>(dh_in, off), dwd = Upload<float>(dw0, 0);
    Arena hd(Device::kCUDA, (n + off) * sizeof(T)), yd(Device::kCUDA, (n + off) * sizeof(T));
    Arena dhd(Device::kCUDA, (n + off) * sizeof(T)), rstdd(Device::kCUDA, rows * sizeof(float));
    const int64_t ws_elems = cuda::AddRmsNormBackwardWorkspaceElems(rows, d);
    Arena ws(Device::kCUDA, ws_elems * sizeof(float));
    for (const Arena* a : {&hd, &yd, &dhd, &rstdd, &ws}) Poison(*a);
    const Arena& h_arena = c.h_aliases_x ? xd : hd;
    const Arena& dh_arena = c.dh_aliases_dh_in ? dh_ind : dhd;
    const Shape shape{rows, d};

    cuda::AddRmsNormForward(ViewAt<T>(xd, off, shape), ViewAt<T>(rd, off, shape), ViewAt<T>(wd, off, {d}), kEps,
                            ViewAt<T>(h_arena, off, shape), ViewAt<T>(yd, off, shape),
                            rstdd.View(0, DType::kF32, {rows}), nullptr);
    cuda::AddRmsNormBackward(ViewAt<T>(dyd, off, shape), ViewAt<T>(h_arena, off, shape), ViewAt<T>(wd, off, {d}),
                             rstdd.View(0, DType::kF32, {rows}), ViewAt<T>(dh_ind, off, shape),
                             ViewAt<T>(dh_arena, off, shape), dwd.View(0, DType::kF32, {d}),
                             ws.View(0, DType::kF32, {ws_elems}), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());

    EXPECT_TRUE(BitwiseEqual(Download<T>(h_arena, off, n), h));
    EXPECT_TRUE(testing::AllClose(Download<T>(yd, off, n), testing::ToDouble(y), atol, rtol));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(rstdd, rows), testing::ToDouble(rstd), 1e-6, 1e-5));
    EXPECT_TRUE(testing::AllClose(Download<T>(dh_arena, off, n), testing::ToDouble(dh), atol, rtol));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(dwd, d), testing::ToDouble(dw), 1e-3, 1e-3));
  }
};

TEST_F(CudaAddRmsNormTest, Float32MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Run<float>({37, 64}, 1e-5, 1e-4);
  Run<float>({130, 131}, 1e-5, 1e-4);    // odd width: scalar
  Run<float>({40, 256, 1}, 1e-5, 1e-4);  // misaligned: scalar
  Run<float>({65, 4096, 0, true, true}, 1e-5, 1e-4);
  Run<float>({9, 16384}, 1e-5, 1e-4);  // 64 KB of shared memory for dw
}

TEST_F(CudaAddRmsNormTest, BFloat16MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Run<BF16>({37, 64}, 2e-2, 1e-2);
  Run<BF16>({130, 131}, 2e-2, 1e-2);                 // odd width: scalar
  Run<BF16>({33, 12}, 2e-2, 1e-2);                   // multiple of 4 but not of 8: scalar
  Run<BF16>({40, 256, 1, false, true}, 2e-2, 1e-2);  // misaligned: scalar
  Run<BF16>({65, 8192, 0, true, false}, 2e-2, 1e-2);
}

TEST_F(CudaAddRmsNormTest, BackwardIsDeterministic) {
  LATAM_REQUIRE_GPU();
  const int64_t rows = 300, d = 1024, n = rows * d;
  const Shape shape{rows, d};
  Arena xd = Upload<BF16>(Normal(n), 0), rd = Upload<BF16>(Normal(n), 0), wd = Upload<BF16>(Uniform(d), 0);
  Arena dyd = Upload<BF16>(Normal(n), 0), dh_ind = Upload<BF16>(Normal(n), 0);
  Arena hd(Device::kCUDA, n * sizeof(BF16)), yd(Device::kCUDA, n * sizeof(BF16)), dhd(Device::kCUDA, n * sizeof(BF16));
  Arena rstdd(Device::kCUDA, rows * sizeof(float)), dwd(Device::kCUDA, d * sizeof(float));
  const int64_t ws_elems = cuda::AddRmsNormBackwardWorkspaceElems(rows, d);
  Arena ws(Device::kCUDA, ws_elems * sizeof(float));
  cuda::AddRmsNormForward(ViewAt<BF16>(xd, 0, shape), ViewAt<BF16>(rd, 0, shape), ViewAt<BF16>(wd, 0, {d}), kEps,
                          ViewAt<BF16>(hd, 0, shape), ViewAt<BF16>(yd, 0, shape), rstdd.View(0, DType::kF32, {rows}),
                          nullptr);
  std::vector<float> dw[2], dh[2];
  for (int run = 0; run < 2; ++run) {
    dwd.Zero();
    Poison(dhd);
    Poison(ws);
    cuda::AddRmsNormBackward(ViewAt<BF16>(dyd, 0, shape), ViewAt<BF16>(hd, 0, shape), ViewAt<BF16>(wd, 0, {d}),
                             rstdd.View(0, DType::kF32, {rows}), ViewAt<BF16>(dh_ind, 0, shape),
                             ViewAt<BF16>(dhd, 0, shape), dwd.View(0, DType::kF32, {d}),
                             ws.View(0, DType::kF32, {ws_elems}), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    dw[run] = ToHost<float>(dwd, d);
    dh[run] = Download<BF16>(dhd, 0, n);
  }
  EXPECT_TRUE(BitwiseEqual(dw[0], dw[1]));
  EXPECT_TRUE(BitwiseEqual(dh[0], dh[1]));
}

// Flat f32 buffers holding several segments, with gaps between them (which
// must stay untouched) and, for misaligned segments, a start that is not a
// multiple of 4 elements.
class CudaOptimizerTest : public testing::RandomTest {
 protected:
  struct Layout {
    std::vector<int64_t> offset, numel;
    std::vector<int32_t> weight_decay, counted, bf16_copy;
    int64_t total = 0;
  };

  Layout MakeLayout(const std::vector<int64_t>& sizes, const std::vector<bool>& misaligned) {
    Layout l;
    int64_t at = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      at = (at + 3) / 4 * 4 + 4 + (misaligned[i] ? 1 : 0);  // a gap of at least 4 elements
      l.offset.push_back(at);
      l.numel.push_back(sizes[i]);
      l.weight_decay.push_back(UniformInt(0, 1));
      l.counted.push_back(UniformInt(0, 1));
      l.bf16_copy.push_back(UniformInt(0, 1));
      at += sizes[i];
    }
    l.total = at + 3;
    return l;
  }

  // Descriptors into device buffers laid out as `l`, copied to device memory.
  static Arena Table(const Layout& l, const Arena& p, const Arena& g, const Arena& m, const Arena& v,
                     const Arena& bf16) {
    std::vector<cuda::OptimizerSegment> segs;
    for (size_t i = 0; i < l.offset.size(); ++i) {
      cuda::OptimizerSegment s{};
      s.param = static_cast<float*>(p.data()) + l.offset[i];
      s.grad = static_cast<const float*>(g.data()) + l.offset[i];
      s.exp_avg = static_cast<float*>(m.data()) + l.offset[i];
      s.exp_avg_sq = static_cast<float*>(v.data()) + l.offset[i];
      s.param_bf16 = l.bf16_copy[i] != 0 ? static_cast<BF16*>(bf16.data()) + l.offset[i] : nullptr;
      s.numel = l.numel[i];
      s.weight_decay = l.weight_decay[i];
      s.counted = l.counted[i];
      segs.push_back(s);
    }
    return testing::ToDevice(segs);
  }

  void CheckAdamW(const std::vector<int64_t>& sizes, const std::vector<bool>& misaligned, int steps) {
    const Layout l = MakeLayout(sizes, misaligned);
    const int64_t total = l.total;
    std::vector<float> p = Normal(total), m = Normal(total, 0.01f), v = Uniform(total, 0.0f, 1e-3f);
    const std::vector<float> p0 = p;
    Arena pd = testing::ToDevice(p), md = testing::ToDevice(m), vd = testing::ToDevice(v);
    Arena gd(Device::kCUDA, total * sizeof(float)), bfd(Device::kCUDA, total * sizeof(BF16));
    Poison(bfd);
    const Arena table = Table(l, pd, gd, md, vd, bfd);
    const auto* segments = static_cast<const cuda::OptimizerSegment*>(table.data());
    AdamWHyper h;
    h.lr = 3e-3f;
    const float weight_decay = 0.1f;
    for (int step = 1; step <= steps; ++step) {
      const std::vector<float> g = Normal(total, 0.3f);
      CUDA_CHECK(cudaMemcpy(gd.data(), g.data(), total * sizeof(float), cudaMemcpyHostToDevice));
      const float grad_scale = step == 1 ? 1.0f : 0.37f;
      h.step = step;
      for (size_t i = 0; i < sizes.size(); ++i) {
        const int64_t o = l.offset[i], n = l.numel[i];
        std::vector<float> gi(g.begin() + o, g.begin() + o + n);
        cpu::Scale(Tensor::Of(gi.data(), {n}), grad_scale);
        AdamWHyper hi = h;
        hi.weight_decay = l.weight_decay[i] != 0 ? weight_decay : 0.0f;
        cpu::AdamWUpdate(Tensor::Of(p.data() + o, {n}), Tensor::Of(gi.data(), {n}), Tensor::Of(m.data() + o, {n}),
                         Tensor::Of(v.data() + o, {n}), hi);
      }
      h.weight_decay = weight_decay;
      cuda::MultiTensorAdamW(segments, static_cast<int>(sizes.size()), h, grad_scale, nullptr);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto p_gpu = ToHost<float>(pd, total);
    EXPECT_TRUE(testing::AllClose(p_gpu, testing::ToDouble(p), 1e-6, 1e-5));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(md, total), testing::ToDouble(m), 1e-7, 1e-5));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(vd, total), testing::ToDouble(v), 1e-9, 1e-5));
    // Gaps untouched; the bf16 copy written exactly where asked for.
    std::vector<int> owner(total, -1);
    for (size_t i = 0; i < sizes.size(); ++i) {
      for (int64_t j = 0; j < l.numel[i]; ++j) owner[l.offset[i] + j] = static_cast<int>(i);
    }
    const auto copy = ToHost<BF16>(bfd, total);
    for (int64_t j = 0; j < total; ++j) {
      if (owner[j] < 0) {
        ASSERT_EQ(p_gpu[j], p0[j]) << "gap element " << j << " changed";
        ASSERT_EQ(copy[j].bits, 0xffff) << "gap element " << j << " of the bf16 copy written";
      } else if (l.bf16_copy[owner[j]] != 0) {
        ASSERT_EQ(copy[j].bits, BF16::FromFloat(p_gpu[j]).bits) << "element " << j;
      } else {
        ASSERT_EQ(copy[j].bits, 0xffff) << "segment " << owner[j] << " has no bf16 copy, element " << j;
      }
    }
  }
};

TEST_F(CudaOptimizerTest, MultiTensorAdamWMatchesCpuPerSegment) {
  LATAM_REQUIRE_GPU();
  CheckAdamW({4096, 1003, 3, 8197, 1, 64, 4099}, {false, false, false, false, false, true, true}, 3);
}

TEST_F(CudaOptimizerTest, MultiTensorAdamWManySegmentsAndChunks) {
  LATAM_REQUIRE_GPU();
  // More segments than are staged at once, and one segment with more chunks
  // than the grid has blocks.
  std::vector<int64_t> sizes;
  std::vector<bool> misaligned;
  for (int i = 0; i < 150; ++i) {
    sizes.push_back(UniformInt(1, 3000));
    misaligned.push_back(UniformInt(0, 3) == 0);
  }
  sizes.push_back(1024 * cuda::kOptimizerChunk + 12345);
  misaligned.push_back(false);
  CheckAdamW(sizes, misaligned, 2);
}

TEST_F(CudaOptimizerTest, GradSumOfSquaresMatchesCpuAndIsDeterministic) {
  LATAM_REQUIRE_GPU();
  std::vector<int64_t> sizes = {4096, 1003, 3, 8197, 1, 64, 4099, 1024 * cuda::kOptimizerChunk + 777};
  std::vector<bool> misaligned = {false, false, false, false, false, true, true, true};
  for (int i = 0; i < 100; ++i) {
    sizes.push_back(UniformInt(1, 5000));
    misaligned.push_back(UniformInt(0, 3) == 0);
  }
  const Layout l = MakeLayout(sizes, misaligned);
  std::vector<float> g = Normal(l.total, 0.05f);
  double expected = 0.0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (l.counted[i] != 0) expected += cpu::SumOfSquares(Tensor::Of(g.data() + l.offset[i], {l.numel[i]}));
  }
  // Only grad and numel are read; the other pointers are never followed.
  Arena gd = testing::ToDevice(g);
  const Arena table = Table(l, gd, gd, gd, gd, gd);
  Arena ws(Device::kCUDA, cuda::GradSumOfSquaresWorkspaceElems() * sizeof(double));
  Arena sum(Device::kCUDA, sizeof(double));
  double got[2];
  for (double& out : got) {
    Poison(ws);
    Poison(sum);
    cuda::GradSumOfSquares(static_cast<const cuda::OptimizerSegment*>(table.data()), static_cast<int>(sizes.size()),
                           static_cast<double*>(ws.data()), static_cast<double*>(sum.data()), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    out = ToHost<double>(sum, 1)[0];
  }
  EXPECT_NEAR(got[0], expected, 1e-5 * expected);
  EXPECT_EQ(std::memcmp(&got[0], &got[1], sizeof(double)), 0) << got[0] << " vs " << got[1];

  // An empty table sums to zero.
  Poison(sum);
  cuda::GradSumOfSquares(nullptr, 0, static_cast<double*>(ws.data()), static_cast<double*>(sum.data()), nullptr);
  EXPECT_EQ(ToHost<double>(sum, 1)[0], 0.0);
}

}  // namespace
}  // namespace latam
