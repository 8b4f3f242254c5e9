// The generator on the GPU (CUDA ops, cache in the compute dtype) against
// the generator on the CPU, with the same weights (a fixed seed, so that the
// model and hence every margin below is the same on every run): the logits
// of a prompt fed at once, of single tokens fed after it, of a prompt longer
// than one pass (Generator::kMaxChunkRows), and the greedy continuation.
//
// Tolerances. f32 activations: the GPU runs the same formulas in another
// summation order (cuBLASLt without TF32, the decode kernel's online
// softmax, FMA contraction), so each logit agrees to 1e-4 abs + 1e-4 rel
// (logits are O(1)), and the greedy continuation is the CPU's token for
// token; the test first checks that every step's two best CPU logits are at
// least 1e-3 apart, so that no step is a tie at that precision. bf16
// activations, weights and cache: every GEMM operand and every stored
// activation is rounded to 8 mantissa bits (2^-9 relative per rounding, a
// few roundings deep per layer), so the logits agree to a relative L2 error
// of 3e-2 and each within 0.1 abs; the greedy continuations agree token for
// token up to the first step whose two best CPU logits are closer than 0.1,
// and at least 4 steps are compared.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "model/generate.h"
#include "model/layout.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

ModelShape SmallShape() {
  ModelShape s;
  s.vocab = 384;
  s.dim = 128;
  s.n_layers = 2;
  s.n_heads = 4;
  s.n_kv_heads = 2;
  s.head_dim = 32;
  s.ffn_dim = 256;
  s.tie_embeddings = false;
  s.rope_theta = 10000.0;
  s.norm_eps = 1e-5;
  s.max_seq_len = 64;
  s.init_std = 0.08;
  return s;
}

// The two largest values' difference.
float TopTwoMargin(const std::vector<float>& logits) {
  std::vector<float> v = logits;
  std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<float>());
  return v[0] - v[1];
}

double RelativeL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

struct Tolerance {
  double atol, rtol, rel_l2, margin;
};

::testing::AssertionResult LogitsClose(const std::vector<float>& gpu, const std::vector<float>& cpu,
                                       const Tolerance& tol) {
  if (gpu.size() != cpu.size()) return ::testing::AssertionFailure() << gpu.size() << " != " << cpu.size();
  const double l2 = RelativeL2(gpu, cpu);
  if (!(l2 <= tol.rel_l2)) return ::testing::AssertionFailure() << "relative L2 error " << l2;
  return testing::AllClose(gpu, testing::ToDouble(cpu), tol.atol, tol.rtol);
}

void CompareGenerators(DType dtype, const Tolerance& tol, bool whole_continuation) {
  const ModelShape shape = SmallShape();
  ParameterSet cpu_params(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
  cpu_params.InitWeights(77);
  const auto gpu_params = PlaceParameters(cpu_params, ParameterPlacement{Device::kCUDA, dtype, Stream()});
  constexpr int64_t kContext = Generator::kMaxChunkRows + 40;
  Generator cpu(shape, cpu_params, kContext), gpu(shape, *gpu_params, kContext);
  ASSERT_EQ(gpu.device(), Device::kCUDA);

  const std::vector<int32_t> prompt = {5, 17, 250, 3, 99, 120, 7, 311, 42};
  auto cpu_all = cpu.FeedAllLogits(prompt), gpu_all = gpu.FeedAllLogits(prompt);
  ASSERT_TRUE(cpu_all.ok() && gpu_all.ok());
  EXPECT_TRUE(LogitsClose(*gpu_all, *cpu_all, tol)) << "prompt logits";
  for (int32_t token : {8, 200, 31}) {
    auto c = cpu.Feed({token}), g = gpu.Feed({token});
    ASSERT_TRUE(c.ok() && g.ok());
    EXPECT_TRUE(LogitsClose(*g, *c, tol)) << "after token " << token << " at position " << cpu.position() - 1;
  }

  // Longer than one pass: the second pass attends to the first's cache.
  std::vector<int32_t> long_prompt(Generator::kMaxChunkRows + 30);
  for (size_t i = 0; i < long_prompt.size(); ++i) long_prompt[i] = static_cast<int32_t>((i * 37 + 11) % 384);
  cpu.Reset();
  gpu.Reset();
  auto cpu_long = cpu.Feed(long_prompt), gpu_long = gpu.Feed(long_prompt);
  ASSERT_TRUE(cpu_long.ok() && gpu_long.ok());
  EXPECT_TRUE(LogitsClose(*gpu_long, *cpu_long, tol)) << "last logits of a two-pass prompt";

  GenerateOptions options;
  options.temperature = 0.0;
  options.max_new_tokens = 16;
  auto cpu_out = cpu.Generate(prompt, options), gpu_out = gpu.Generate(prompt, options);
  ASSERT_TRUE(cpu_out.ok() && gpu_out.ok());
  ASSERT_EQ(cpu_out->size(), 16u);
  ASSERT_EQ(gpu_out->size(), 16u);
  // The CPU's margins along its own continuation.
  cpu.Reset();
  auto logits = cpu.Feed(prompt);
  size_t compared = 0;
  for (size_t k = 0; k < cpu_out->size(); ++k) {
    ASSERT_TRUE(logits.ok());
    const float margin = TopTwoMargin(*logits);
    if (whole_continuation) {
      ASSERT_GE(margin, tol.margin) << "step " << k << " is a near tie: the test model needs another seed";
    } else if (margin < tol.margin) {
      break;
    }
    EXPECT_EQ((*gpu_out)[k], (*cpu_out)[k]) << "new token " << k;
    ++compared;
    if ((*gpu_out)[k] != (*cpu_out)[k]) break;
    logits = cpu.Feed({(*cpu_out)[k]});
  }
  EXPECT_GE(compared, 4u);
}

TEST(CudaGenerate, F32MatchesCpu) {
  LATAM_REQUIRE_GPU();
  CompareGenerators(DType::kF32, Tolerance{1e-4, 1e-4, 1e-4, 1e-3}, true);
}

TEST(CudaGenerate, Bf16MatchesCpu) {
  LATAM_REQUIRE_GPU();
  CompareGenerators(DType::kBF16, Tolerance{0.1, 0.0, 3e-2, 0.1}, false);
}

}  // namespace
}  // namespace latam
