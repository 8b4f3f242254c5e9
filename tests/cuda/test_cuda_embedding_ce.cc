// CUDA embedding (forward, deterministic backward) and vocab-parallel
// softmax cross-entropy against the CPU kernels on the same inputs: f32 and
// bf16, vocabulary shards (vocab_begin > 0, ids and targets outside the
// shard, negative targets), repeated ids, and row widths with and without
// 16-byte vectors (odd widths, and views 4 bytes off alignment). Outputs are
// filled with NaN bit patterns (0xff bytes) before each kernel, so an
// unwritten element fails the comparison.
// Tolerances (bf16 inputs are converted exactly to f32 for the CPU):
//   embedding forward, backward:  exact (a copy; the backward adds the same
//                                 fp32 values in the same token order as the
//                                 CPU kernel, and two runs are bitwise equal)
//   row max, target logit:        exact
//   row sumexp:                   5e-5 rel (fp32 sums in another order, expf
//                                 against the CPU's polynomial exp)
//   logits gradient:              f32 1e-5 rel; bf16 is rounded once to
//                                 bf16 (relative step 2^-8), so 4e-3 rel;
//                                 both + 1e-7 * grad_scale abs (cancellation
//                                 at the target when its probability is ~1)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels/cross_entropy.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/embedding.h"
#include "kernels/embedding.h"
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

// Offset 4 in ToDeviceAt leaves the data off 16-byte alignment, which
// forces the scalar paths.
using testing::ToDeviceAt;
using testing::ToHostAt;

::testing::AssertionResult Exact(const std::vector<float>& actual, const std::vector<float>& expected) {
  return testing::AllClose(actual, testing::ToDouble(expected), 0.0, 0.0);
}

class CudaEmbeddingTest : public testing::RandomTest {
 protected:
  // m ids over [0, vocab): `repeated` lists (id, count) pairs placed exactly
  // `count` times; the other ids are uniform over the rest of [0, vocab)
  // (vocab - 1 stands in for a draw that hits a listed id). Shuffled.
  std::vector<int32_t> Ids(int64_t m, int64_t vocab, const std::vector<std::pair<int32_t, int64_t>>& repeated) {
    std::vector<int32_t> ids;
    for (const auto& [id, count] : repeated) ids.insert(ids.end(), static_cast<size_t>(count), id);
    while (static_cast<int64_t>(ids.size()) < m) {
      int32_t id = UniformInt(0, static_cast<int>(vocab - 1));
      for (const auto& r : repeated) {
        if (id == r.first) id = static_cast<int32_t>(vocab - 1);
      }
      ids.push_back(id);
    }
    std::shuffle(ids.begin(), ids.end(), rng_);
    return ids;
  }

  // Forward: table[v_local, d] in T holds ids [vocab_begin, vocab_begin +
  // v_local); the ids run over [0, vocab_begin + v_local + 20).
  template <typename T>
  void Forward(int64_t m, int64_t v_local, int64_t d, int64_t vocab_begin, size_t offset) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " m=" << m << " v_local=" << v_local
                                      << " d=" << d << " vocab_begin=" << vocab_begin << " offset=" << offset);
    const std::vector<int32_t> ids = Ids(m, vocab_begin + v_local + 20, {});
    std::vector<float> table = RoundTo<T>(Normal(v_local * d));
    std::vector<float> expected(m * d);
    std::vector<int32_t> ids_cpu = ids;
    cpu::EmbeddingForward(Tensor::Of(ids_cpu.data(), {m}), Tensor::Of(table.data(), {v_local, d}), vocab_begin,
                          Tensor::Of(expected.data(), {m, d}));

    Arena ids_d = ToDevice(ids), table_d = ToDeviceAt(FromFloats<T>(table), offset);
    Arena out_d(Device::kCUDA, offset + m * d * sizeof(T));
    Poison(out_d);
    cuda::EmbeddingForward(View<int32_t>(ids_d, {m}), table_d.View(offset, DTypeOf<T>::value, {v_local, d}),
                           vocab_begin, out_d.View(offset, DTypeOf<T>::value, {m, d}), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(Exact(ToFloats(ToHostAt<T>(out_d, offset, m * d)), expected));
  }

  // Backward into dtable[v_local, d] (f32, accumulated) from dout[m, d] in
  // T, twice on the same inputs (workspace poisoned differently each time):
  // both runs must be bitwise equal to each other and to the CPU kernel.
  template <typename T>
  void Backward(int64_t m, int64_t v_local, int64_t d, int64_t vocab_begin, size_t offset,
                const std::vector<std::pair<int32_t, int64_t>>& repeated) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " m=" << m << " v_local=" << v_local
                                      << " d=" << d << " vocab_begin=" << vocab_begin << " offset=" << offset);
    std::vector<int32_t> ids = Ids(m, vocab_begin + v_local + 20, repeated);
    const std::vector<float> dout = RoundTo<T>(Normal(m * d));
    const std::vector<float> dtable0 = Uniform(v_local * d);
    std::vector<float> expected = dtable0, dout_cpu = dout;
    cpu::EmbeddingBackward(Tensor::Of(ids.data(), {m}), Tensor::Of(dout_cpu.data(), {m, d}), vocab_begin,
                           Tensor::Of(expected.data(), {v_local, d}));

    const int64_t ws_elems = cuda::EmbeddingBackwardWorkspaceElems(m);
    Arena ids_d = ToDevice(ids), dout_d = ToDeviceAt(FromFloats<T>(dout), offset);
    Arena ws(Device::kCUDA, ws_elems * sizeof(int32_t));
    std::vector<std::vector<float>> runs;
    for (const int pattern : {0xff, 0x5a}) {
      Arena dtable_d = ToDeviceAt(dtable0, offset);
      CUDA_CHECK(cudaMemset(ws.data(), pattern, ws.size()));
      cuda::EmbeddingBackward(View<int32_t>(ids_d, {m}), dout_d.View(offset, DTypeOf<T>::value, {m, d}), vocab_begin,
                              dtable_d.View(offset, DType::kF32, {v_local, d}), View<int32_t>(ws, {ws_elems}), nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      runs.push_back(ToHostAt<float>(dtable_d, offset, v_local * d));
    }
    EXPECT_TRUE(Exact(runs[0], expected));
    ASSERT_EQ(std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)), 0)
        << "two runs on the same inputs differ";
  }
};

TEST_F(CudaEmbeddingTest, ForwardFloat32MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Forward<float>(37, 50, 64, 0, 0);
  Forward<float>(130, 97, 100, 1000, 0);  // 100 % 4 == 0: vectorised
  Forward<float>(64, 33, 99, 7, 0);       // scalar
  Forward<float>(300, 500, 4096, 250, 0);
  Forward<float>(45, 60, 128, 12, 4);  // misaligned: scalar
}

TEST_F(CudaEmbeddingTest, ForwardBFloat16MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Forward<BF16>(37, 50, 64, 0, 0);
  Forward<BF16>(130, 97, 100, 1000, 0);  // 100 % 8 != 0: scalar
  Forward<BF16>(64, 33, 99, 7, 0);
  Forward<BF16>(300, 500, 4096, 250, 0);
  Forward<BF16>(45, 60, 128, 12, 4);
}

TEST_F(CudaEmbeddingTest, BackwardFloat32IsDeterministicAndMatchesCpu) {
  LATAM_REQUIRE_GPU();
  Backward<float>(1, 10, 64, 0, 0, {});
  Backward<float>(37, 50, 64, 0, 0, {});
  // Many repeats (about 60 per id), more keys than one sort tile (2048).
  Backward<float>(3000, 40, 100, 500, 0, {});
  // Runs much longer than one 32-key chunk, one of exactly 8 chunks; scalar.
  Backward<float>(5000, 1000, 99, 3, 0, {{10, 2000}, {11, 256}, {500, 129}});
  // 16384 keys: global-memory sort stages.
  Backward<float>(9000, 300, 1024, 100, 0, {{150, 700}});
  Backward<float>(700, 64, 128, 16, 4, {{20, 300}});  // misaligned: scalar
}

TEST_F(CudaEmbeddingTest, BackwardBFloat16IsDeterministicAndMatchesCpu) {
  LATAM_REQUIRE_GPU();
  Backward<BF16>(1, 10, 64, 0, 0, {});
  Backward<BF16>(37, 50, 64, 0, 0, {});
  Backward<BF16>(3000, 40, 100, 500, 0, {});  // 100 % 8 != 0: scalar
  Backward<BF16>(5000, 1000, 96, 3, 0, {{10, 2000}, {11, 256}, {500, 129}});
  Backward<BF16>(9000, 300, 1024, 100, 0, {{150, 700}});
  Backward<BF16>(700, 64, 128, 16, 4, {{20, 300}});
}

class CudaCrossEntropyTest : public testing::RandomTest {
 protected:
  // Per row: ignored (-1 or -100), a target in the shard, or one elsewhere
  // in [0, vocab). Rows 0 and 1 are always in the shard and ignored.
  std::vector<int32_t> Targets(int64_t m, int64_t vocab_begin, int64_t v_local, int64_t vocab) {
    std::vector<int32_t> t(static_cast<size_t>(m));
    for (int64_t r = 0; r < m; ++r) {
      const int kind = r < 2 ? static_cast<int>(r) : UniformInt(0, 3);
      if (kind == 0) {
        t[r] = static_cast<int32_t>(vocab_begin + UniformInt(0, static_cast<int>(v_local - 1)));
      } else if (kind == 1) {
        t[r] = UniformInt(0, 1) == 0 ? -1 : -100;
      } else {
        t[r] = UniformInt(0, static_cast<int>(vocab - 1));
      }
    }
    return t;
  }

  // All three phases on logits[m, v_local] in T, the shard [vocab_begin,
  // vocab_begin + v_local) of a vocabulary of vocab_begin + v_local + rest.
  template <typename T>
  void Run(int64_t m, int64_t v_local, int64_t vocab_begin, int64_t rest, size_t offset, double grad_rtol) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " m=" << m << " v_local=" << v_local
                                      << " vocab_begin=" << vocab_begin << " rest=" << rest << " offset=" << offset);
    const int64_t vocab = vocab_begin + v_local + rest;
    const std::vector<float> logits = RoundTo<T>(Normal(m * v_local, 2.0f));
    std::vector<int32_t> targets = Targets(m, vocab_begin, v_local, vocab);
    const float grad_scale = 1.0f / static_cast<float>(m);

    // CPU reference. The global max is this shard's max, raised on some rows
    // as if another shard held a larger logit.
    std::vector<float> logits_cpu = logits, row_max(m), sumexp(m), tlogit(m);
    const Tensor logits_t = Tensor::Of(logits_cpu.data(), {m, v_local}), targets_t = Tensor::Of(targets.data(), {m});
    cpu::LogitsRowMax(logits_t, Tensor::Of(row_max.data(), {m}));
    std::vector<float> gmax = row_max;
    const std::vector<float> raise = Uniform(m, 0.0f, 3.0f);
    for (int64_t r = 0; r < m; r += 2) gmax[r] += raise[r];
    cpu::LogitsRowSumExp(logits_t, Tensor::Of(gmax.data(), {m}), targets_t, vocab_begin, vocab,
                         Tensor::Of(sumexp.data(), {m}), Tensor::Of(tlogit.data(), {m}));
    std::vector<float> lse(m);
    for (int64_t r = 0; r < m; ++r) {
      // Ignored rows' lse is never read: a NaN there must not leak.
      lse[r] = targets[r] < 0 ? std::numeric_limits<float>::quiet_NaN() : gmax[r] + std::log(sumexp[r]);
    }
    cpu::SoftmaxCrossEntropyBackward(logits_t, targets_t, vocab_begin, Tensor::Of(lse.data(), {m}), grad_scale);

    Arena logits_d = ToDeviceAt(FromFloats<T>(logits), offset), targets_d = ToDevice(targets);
    Arena gmax_d = ToDevice(gmax), lse_d = ToDevice(lse), error_d = ToDevice(std::vector<int32_t>{0});
    Arena max_d(Device::kCUDA, m * sizeof(float)), sumexp_d(Device::kCUDA, m * sizeof(float)),
        tlogit_d(Device::kCUDA, m * sizeof(float));
    Poison(max_d);
    Poison(sumexp_d);
    Poison(tlogit_d);
    const Tensor logits_dt = logits_d.View(offset, DTypeOf<T>::value, {m, v_local});
    const Tensor targets_dt = View<int32_t>(targets_d, {m});
    cuda::LogitsRowMax(logits_dt, View<float>(max_d, {m}), nullptr);
    cuda::LogitsRowSumExp(logits_dt, View<float>(gmax_d, {m}), targets_dt, vocab_begin, vocab,
                          View<float>(sumexp_d, {m}), View<float>(tlogit_d, {m}), View<int32_t>(error_d, {1}), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    EXPECT_TRUE(Exact(ToHost<float>(max_d, m), row_max));
    EXPECT_TRUE(testing::AllClose(ToHost<float>(sumexp_d, m), testing::ToDouble(sumexp), 0.0, 5e-5));
    EXPECT_TRUE(Exact(ToHost<float>(tlogit_d, m), tlogit));
    EXPECT_EQ(ToHost<int32_t>(error_d, 1)[0], 0);

    cuda::SoftmaxCrossEntropyBackward(logits_dt, targets_dt, vocab_begin, View<float>(lse_d, {m}), grad_scale, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> grad = ToFloats(ToHostAt<T>(logits_d, offset, m * v_local));
    EXPECT_TRUE(testing::AllClose(grad, testing::ToDouble(logits_cpu), 1e-7 * grad_scale, grad_rtol));
    for (int64_t r = 0; r < m; ++r) {
      if (targets[r] >= 0) continue;
      for (int64_t j = 0; j < v_local; ++j) ASSERT_EQ(grad[r * v_local + j], 0.0f) << "ignored row " << r;
    }
  }
};

TEST_F(CudaCrossEntropyTest, Float32MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Run<float>(37, 64, 0, 0, 0, 1e-5);  // one rank: the whole vocabulary
  Run<float>(130, 1000, 3000, 500, 0, 1e-5);
  Run<float>(17, 1003, 5, 2000, 0, 1e-5);     // scalar
  Run<float>(20, 4100, 4100, 4100, 0, 1e-5);  // 4100 % 4 == 0: vectorised
  Run<float>(9, 32000, 64000, 32000, 0, 1e-5);
  Run<float>(11, 512, 512, 7, 4, 1e-5);  // misaligned: scalar
}

TEST_F(CudaCrossEntropyTest, BFloat16MatchesCpu) {
  LATAM_REQUIRE_GPU();
  Run<BF16>(37, 64, 0, 0, 0, 4e-3);
  Run<BF16>(130, 1000, 3000, 500, 0, 4e-3);
  Run<BF16>(17, 1003, 5, 2000, 0, 4e-3);
  Run<BF16>(20, 4100, 4100, 4100, 0, 4e-3);  // 4100 % 8 != 0: scalar
  Run<BF16>(9, 32000, 64000, 32000, 0, 4e-3);
  Run<BF16>(11, 512, 512, 7, 4, 4e-3);
}

TEST_F(CudaCrossEntropyTest, TargetBeyondVocabularyRaisesErrorFlag) {
  LATAM_REQUIRE_GPU();
  const int64_t m = 8, v_local = 256, vocab_begin = 256, vocab = 1024;
  const std::vector<float> logits = Normal(m * v_local);
  std::vector<int32_t> targets = {300, -1, 1024, 5, 2000, 511, 1030, 0};
  Arena logits_d = ToDevice(logits), targets_d = ToDevice(targets), error_d = ToDevice(std::vector<int32_t>{0});
  Arena gmax_d(Device::kCUDA, m * sizeof(float)), sumexp_d(Device::kCUDA, m * sizeof(float)),
      tlogit_d(Device::kCUDA, m * sizeof(float));
  const Tensor logits_dt = View<float>(logits_d, {m, v_local});
  cuda::LogitsRowMax(logits_dt, View<float>(gmax_d, {m}), nullptr);
  cuda::LogitsRowSumExp(logits_dt, View<float>(gmax_d, {m}), View<int32_t>(targets_d, {m}), vocab_begin, vocab,
                        View<float>(sumexp_d, {m}), View<float>(tlogit_d, {m}), View<int32_t>(error_d, {1}), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(ToHost<int32_t>(error_d, 1)[0], 2000);  // the largest offending target

  // The flag is never cleared: a clean call leaves it raised.
  targets = {300, -1, 1, 5, 20, 511, 103, 0};
  CUDA_CHECK(cudaMemcpy(targets_d.data(), targets.data(), m * sizeof(int32_t), cudaMemcpyHostToDevice));
  cuda::LogitsRowSumExp(logits_dt, View<float>(gmax_d, {m}), View<int32_t>(targets_d, {m}), vocab_begin, vocab,
                        View<float>(sumexp_d, {m}), View<float>(tlogit_d, {m}), View<int32_t>(error_d, {1}), nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(ToHost<int32_t>(error_d, 1)[0], 2000);
  for (const float s : ToHost<float>(sumexp_d, m)) EXPECT_TRUE(std::isfinite(s) && s >= 1.0f);
}

}  // namespace
}  // namespace latam
