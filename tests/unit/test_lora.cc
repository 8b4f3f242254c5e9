// LoRA (model/lora.h) in the whole model: the adapter's gradients against
// finite differences, the exact oracle of the merged base model, a zero B
// reproducing the base model bitwise, frozen base projections, and the
// adapter config's validation.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "model/lora.h"
#include "model/model.h"
#include "tests/test_util.h"

namespace latam {
namespace {

ModelShape TinyShape() {
  return testing::SmallShape({.vocab = 13,
                              .n_layers = 2,
                              .n_heads = 4,
                              .n_kv_heads = 2,
                              .head_dim = 4,
                              .ffn_dim = 24,
                              .max_seq_len = 16,
                              .init_std = 0.3});
}

LoraOptions AllTargets(int64_t rank, double alpha) {
  LoraOptions o;
  o.rank = rank;
  o.alpha = alpha;
  o.targets.fill(true);
  return o;
}

constexpr LoraTarget kTargets[] = {LoraTarget::kQ,    LoraTarget::kK,  LoraTarget::kV,   LoraTarget::kO,
                                   LoraTarget::kGate, LoraTarget::kUp, LoraTarget::kDown};

class LoraTest : public testing::RandomTest {
 protected:
  // Every adapter weight random (B too, so that A's gradient is not zero).
  void RandomizeAdapter(ParameterSet& a, float std) {
    for (size_t i = 0; i < a.size(); ++i) {
      const Tensor w = a.param(i);
      const auto v = Normal(static_cast<size_t>(w.numel()), std);
      std::copy(v.begin(), v.end(), w.as<float>());
    }
  }
};

// As ModelTest.GradientsMatchFiniteDifferences, over the adapter's tensors:
// for a fresh random unit direction u over each adapter tensor, g.u against
// the 4-point central difference with h = 0.01 (truncation O(h^4), fp32
// noise ~1.5e-4). Tolerance: 2% of |g.u| + 3e-4. The base projections'
// weight gradients stay zero: the base is frozen.
TEST_F(LoraTest, GradientsMatchFiniteDifferences) {
  const ModelShape shape = TinyShape();
  ActivationOptions act;
  act.micro_batch = 2;
  act.seq_len = 7;
  act.lora = AllTargets(3, 6.0);
  LlamaModel model(shape, act);
  model.parameters().InitWeights(seed_);
  ParameterSet& a = *model.adapter_parameters();
  a.InitWeights(seed_ + 1);
  // Large enough that every adapter path matters, small enough that the
  // loss stays smooth on the scale of h (with std 0.3, about 1 seed in 20
  // had a 4th derivative that made h = 0.01 miss by 8%; h -> 0 converged).
  RandomizeAdapter(a, 0.1f);
  const int64_t rows = act.micro_batch * act.seq_len;
  const auto inputs = RandomIds(rows, shape.vocab), targets = RandomIds(rows, shape.vocab);
  const float scale = 1.0f / static_cast<float>(rows);

  model.parameters().ZeroGrads();
  a.ZeroGrads();
  model.ForwardBackward(inputs.data(), targets.data(), scale);
  ASSERT_EQ(a.size(), 2u * 7u * 2u);
  for (size_t i = 0; i < a.size(); ++i) {
    const Tensor w = a.param(i), g = a.grad(i);
    const auto d = testing::CheckDirection(w, g, Normal(static_cast<size_t>(w.numel())), 0.01, [&] {
      return model.ForwardLoss(inputs.data(), targets.data()) * scale;
    });
    EXPECT_GT(std::abs(d.analytic), 1e-6) << a.spec(i).name << ": a zero gradient proves nothing";
    EXPECT_NEAR(d.analytic, d.numeric, 0.02 * std::abs(d.numeric) + 3e-4) << a.spec(i).name;
  }
  const ParameterSet& p = model.parameters();
  for (size_t i = 0; i < p.size(); ++i) {
    if (p.spec(i).name.find("_proj.weight") == std::string::npos) continue;
    EXPECT_EQ(testing::MaxAbs(p.grad(i)), 0.0) << p.spec(i).name << " is frozen";
  }
}

// The exact oracle: with W' = W + s B A (the merged base), the adapted model
// and the merged model compute the same function, and, for G = dL/dW' of the
// merged model,
//   dL/dB = s G A^T,   dL/dA = s B^T G
// (chain rule through W' = W + s B A). Checked at rank = dim (a full-rank
// adapter, B free) for every target. Tolerance: the two models sum in other
// orders, fp32: 1e-4 of each gradient's scale, 1e-5 relative on the loss.
TEST_F(LoraTest, GradientsEqualTheMergedBaseGradientProjected) {
  const ModelShape shape = TinyShape();
  ActivationOptions act;
  act.micro_batch = 2;
  act.seq_len = 7;
  ActivationOptions adapted_act = act;
  adapted_act.lora = AllTargets(shape.dim, 8.0);
  LlamaModel adapted(shape, adapted_act), merged(shape, act);
  adapted.parameters().InitWeights(seed_);
  ParameterSet& ad = *adapted.adapter_parameters();
  ad.InitWeights(seed_ + 1);
  RandomizeAdapter(ad, 0.05f);
  const float s = adapted_act.lora.scale();
  // W' = W + s B A, row-major: W'[o][i] += s sum_k B[o][k] A[k][i].
  merged.parameters().InitWeights(seed_);
  for (int64_t layer = 0; layer < shape.n_layers; ++layer) {
    for (LoraTarget t : kTargets) {
      const Tensor a = ad.param(LoraParamName(layer, t, false)), b = ad.param(LoraParamName(layer, t, true));
      const Tensor w = merged.parameters().param(LayerParamName(layer, LoraTargetModule(t)) + ".weight");
      const int64_t out = w.shape.rows(), in = w.shape.cols(), r = a.shape.rows();
      for (int64_t o = 0; o < out; ++o) {
        for (int64_t i = 0; i < in; ++i) {
          double sum = 0.0;
          for (int64_t k = 0; k < r; ++k) sum += static_cast<double>(b.as<float>()[o * r + k]) * a.as<float>()[k * in + i];
          w.as<float>()[o * in + i] += static_cast<float>(s * sum);
        }
      }
    }
  }
  const int64_t rows = act.micro_batch * act.seq_len;
  const auto inputs = RandomIds(rows, shape.vocab), targets = RandomIds(rows, shape.vocab);
  adapted.parameters().ZeroGrads();
  ad.ZeroGrads();
  merged.parameters().ZeroGrads();
  const double la = adapted.ForwardBackward(inputs.data(), targets.data(), 1.0f);
  const double lm = merged.ForwardBackward(inputs.data(), targets.data(), 1.0f);
  EXPECT_NEAR(la, lm, 1e-5 * std::abs(lm));
  for (int64_t layer = 0; layer < shape.n_layers; ++layer) {
    for (LoraTarget t : kTargets) {
      const std::string an = LoraParamName(layer, t, false), bn = LoraParamName(layer, t, true);
      const Tensor a = ad.param(an), b = ad.param(bn), da = ad.grad(an), db = ad.grad(bn);
      const Tensor g = merged.parameters().grad(LayerParamName(layer, LoraTargetModule(t)) + ".weight");
      const int64_t out = g.shape.rows(), in = g.shape.cols(), r = a.shape.rows();
      ASSERT_EQ(r, shape.dim);
      std::vector<float> want_db(static_cast<size_t>(out * r)), want_da(static_cast<size_t>(r * in));
      for (int64_t o = 0; o < out; ++o) {
        for (int64_t k = 0; k < r; ++k) {
          double sum = 0.0;
          for (int64_t i = 0; i < in; ++i) sum += static_cast<double>(g.as<float>()[o * in + i]) * a.as<float>()[k * in + i];
          want_db[static_cast<size_t>(o * r + k)] = static_cast<float>(s * sum);
        }
      }
      for (int64_t k = 0; k < r; ++k) {
        for (int64_t i = 0; i < in; ++i) {
          double sum = 0.0;
          for (int64_t o = 0; o < out; ++o) sum += static_cast<double>(b.as<float>()[o * r + k]) * g.as<float>()[o * in + i];
          want_da[static_cast<size_t>(k * in + i)] = static_cast<float>(s * sum);
        }
      }
      auto compare = [](const Tensor& got, const std::vector<float>& want, const std::string& name) {
        double scale = 0.0, worst = 0.0;
        for (size_t j = 0; j < want.size(); ++j) {
          scale = std::max(scale, std::abs(static_cast<double>(want[j])));
          worst = std::max(worst, std::abs(static_cast<double>(got.as<float>()[j]) - want[j]));
        }
        EXPECT_GT(scale, 0.0) << name;
        EXPECT_LE(worst, 1e-4 * scale) << name;
      };
      compare(db, want_db, bn);
      compare(da, want_da, an);
    }
  }
}

// B starts at zero, so a fresh adapter adds exactly zero: the adapted model's
// loss is the base model's, bitwise.
TEST_F(LoraTest, FreshAdapterIsTheBaseModelBitwise) {
  const ModelShape shape = TinyShape();
  ActivationOptions act;
  act.micro_batch = 2;
  act.seq_len = 7;
  ActivationOptions adapted_act = act;
  adapted_act.lora = AllTargets(4, 16.0);
  LlamaModel adapted(shape, adapted_act), base(shape, act);
  adapted.parameters().InitWeights(seed_);
  adapted.adapter_parameters()->InitWeights(seed_ + 1);
  base.parameters().InitWeights(seed_);
  const ParameterSet& ad = *adapted.adapter_parameters();
  for (size_t i = 0; i < ad.size(); ++i) {
    const bool is_b = ad.spec(i).name.find("lora_B") != std::string::npos;
    EXPECT_EQ(testing::MaxAbs(ad.param(i)) == 0.0, is_b) << ad.spec(i).name;
  }
  const int64_t rows = act.micro_batch * act.seq_len;
  const auto inputs = RandomIds(rows, shape.vocab), targets = RandomIds(rows, shape.vocab);
  EXPECT_EQ(adapted.ForwardLoss(inputs.data(), targets.data()), base.ForwardLoss(inputs.data(), targets.data()));
}

// MergeLora folds the adapter into the base: the merged base model's loss
// equals the adapted model's to fp32 rounding (1e-5 relative: the same sums
// in another order), and an adapter with B = 0 changes no weight.
TEST_F(LoraTest, MergedBaseComputesTheAdaptedModel) {
  const ModelShape shape = TinyShape();
  ActivationOptions act;
  act.micro_batch = 2;
  act.seq_len = 7;
  ActivationOptions adapted_act = act;
  adapted_act.lora = AllTargets(5, 10.0);
  LlamaModel adapted(shape, adapted_act), merged(shape, act);
  adapted.parameters().InitWeights(seed_);
  merged.parameters().InitWeights(seed_);
  ParameterSet& ad = *adapted.adapter_parameters();
  ad.InitWeights(seed_ + 1);
  MergeLora(ad, adapted_act.lora, merged.parameters());
  EXPECT_EQ(testing::MaxAbs(merged.parameters().padded_params()) ,
            testing::MaxAbs(adapted.parameters().padded_params()));
  RandomizeAdapter(ad, 0.1f);
  MergeLora(ad, adapted_act.lora, merged.parameters());
  const int64_t rows = act.micro_batch * act.seq_len;
  const auto inputs = RandomIds(rows, shape.vocab), targets = RandomIds(rows, shape.vocab);
  const double la = adapted.ForwardLoss(inputs.data(), targets.data());
  const double lm = merged.ForwardLoss(inputs.data(), targets.data());
  LlamaModel base(shape, act);
  base.parameters().InitWeights(seed_);
  const double lb = base.ForwardLoss(inputs.data(), targets.data());
  EXPECT_NEAR(lm, la, 1e-5 * std::abs(la));
  EXPECT_GT(std::abs(la - lb), 1e-3) << "the adapter should matter";
}

// Under tensor parallelism each rank's adapter blocks follow the base split
// (model/lora.h): column-parallel targets split B by rows, row-parallel ones
// split A by columns, and the replicated halves count once.
TEST(LoraSpecs, SplitLikeTheBaseLayer) {
  ModelShape shape = TinyShape();
  const LoraOptions lora = AllTargets(3, 6.0);
  const ModelLayout layout = ModelLayout::Make(shape, 2, 1, 1, 0, 1);
  const std::vector<ParamSpec> specs = LoraParameterSpecs(shape, layout, lora);
  ASSERT_EQ(specs.size(), 2u * 7u * 2u);
  for (const ParamSpec& p : specs) {
    const bool b = p.name.find("lora_B") != std::string::npos;
    const bool row = p.name.find("o_proj") != std::string::npos || p.name.find("down_proj") != std::string::npos;
    SCOPED_TRACE(p.name);
    if (row && !b) {
      EXPECT_EQ(p.shard_dim, 1);
      EXPECT_EQ(p.shape.cols() * 2, p.global_shape.cols());
      EXPECT_EQ(p.shard_offset, p.shape.cols());  // rank 1 of 2
    } else if (!row && b) {
      EXPECT_EQ(p.shard_dim, 0);
      EXPECT_EQ(p.shape.rows() * 2, p.global_shape.rows());
      EXPECT_TRUE(p.zero_init);
    } else {
      EXPECT_EQ(p.shard_dim, -1);
      EXPECT_FALSE(p.counted);  // replicated: tensor-parallel rank 0 counts it
    }
    EXPECT_EQ(LoraGradIsTpPartial(p.name), (row && b) || (!row && !b));
  }
}

TEST(LoraConfig, BadAdapterConfigNamesTheField) {
  config::Config c;
  c.mutable_model()->set_dim(64);
  c.mutable_model()->set_ffn_dim(128);
  auto* a = c.mutable_adapter();
  EXPECT_TRUE(ValidateAdapterConfig(c).ok());  // kind NONE
  a->set_kind(config::AdapterConfig::LORA);
  a->add_targets("q_proj");
  a->add_targets("v_proj");
  EXPECT_TRUE(ValidateAdapterConfig(c).ok());
  const LoraOptions o = LoraOptionsFromConfig(c);
  EXPECT_EQ(o.rank, 16);
  EXPECT_TRUE(o.has(LoraTarget::kQ) && o.has(LoraTarget::kV) && !o.has(LoraTarget::kK));
  EXPECT_FLOAT_EQ(o.scale(), 2.0f);

  auto expect_error = [&](const config::Config& bad, const std::string& field) {
    const Status st = ValidateAdapterConfig(bad);
    EXPECT_FALSE(st.ok()) << field;
    EXPECT_NE(st.message().find(field), std::string::npos) << st.message();
  };
  config::Config bad = c;
  bad.mutable_adapter()->add_targets("qkv_proj");
  expect_error(bad, "adapter.targets[2]");
  bad = c;
  bad.mutable_adapter()->add_targets("q_proj");
  expect_error(bad, "adapter.targets[2]");
  bad = c;
  bad.mutable_adapter()->set_rank(65);
  expect_error(bad, "adapter.rank");
  bad = c;
  bad.mutable_adapter()->set_rank(0);
  expect_error(bad, "adapter.rank");
  bad = c;
  bad.mutable_adapter()->set_alpha(std::nan(""));
  expect_error(bad, "adapter.alpha");
  bad = c;
  bad.mutable_adapter()->set_dropout(0.1);
  expect_error(bad, "adapter.dropout");
  bad = c;
  bad.mutable_adapter()->clear_targets();
  expect_error(bad, "adapter.targets");
}

}  // namespace
}  // namespace latam
