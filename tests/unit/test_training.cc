// Forward, backward and optimizer together: training on a learnable
// synthetic stream drives the loss from log(vocab) down to the stream's
// measured bigram entropy (the best a next-token model can do on it); and
// the engine's bad-step path: a step whose loss is NaN updates nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>

#include "data/synthetic.h"
#include "kernels/grad_norm.h"
#include "tests/test_util.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "parallel/grid.h"
#include "trainer/engine.h"

namespace latam {
namespace {

TEST(TrainingTest, LossFallsToTheStreamsEntropyFloor) {
  data::SyntheticSpec spec;
  spec.vocab = 24;
  spec.n_tokens = 200000;
  spec.branching = 3;
  spec.mean_doc_len = 200;
  spec.seed = testing::TestSeed();
  std::vector<uint32_t> stream;
  for (const auto& doc : data::GenerateSyntheticDocuments(spec)) stream.insert(stream.end(), doc.begin(), doc.end());
  const double floor = data::EmpiricalBigramEntropy(stream, spec.vocab);

  ModelShape shape;
  shape.vocab = spec.vocab;
  shape.dim = 32;
  shape.n_layers = 2;
  shape.n_heads = 4;
  shape.n_kv_heads = 2;
  shape.head_dim = 8;
  shape.ffn_dim = 64;
  shape.rope_theta = 10000.0;
  shape.max_seq_len = 32;
  ActivationOptions act;
  act.micro_batch = 16;
  act.seq_len = 32;
  LlamaModel model(shape, act);
  model.parameters().InitWeights(spec.seed);
  config::OptimizerConfig oc;
  oc.set_lr(1e-2);
  oc.set_min_lr(1e-3);
  oc.set_warmup_steps(10);
  oc.set_weight_decay(0.0);
  AdamWOptimizer opt(&model.parameters(), oc);

  const int64_t rows = act.micro_batch * act.seq_len, steps = 150;
  std::vector<int32_t> inputs(rows), targets(rows);
  double first_loss = 0.0, last_losses = 0.0;
  size_t cursor = 0;
  for (int64_t step = 0; step < steps; ++step) {
    for (int64_t b = 0; b < act.micro_batch; ++b) {
      if (cursor + act.seq_len + 1 > stream.size()) cursor = 0;
      for (int64_t t = 0; t < act.seq_len; ++t) {
        inputs[b * act.seq_len + t] = static_cast<int32_t>(stream[cursor + t]);
        targets[b * act.seq_len + t] = static_cast<int32_t>(stream[cursor + t + 1]);
      }
      cursor += act.seq_len;
    }
    model.parameters().ZeroGrads();
    const double loss = model.ForwardBackward(inputs.data(), targets.data(), 1.0f / static_cast<float>(rows)) / rows;
    const double norm = std::sqrt(cpu::SumOfSquares(model.parameters().padded_grads()));
    opt.Step(static_cast<float>(LearningRate(oc, step, steps)), ClipFactor(norm, 1.0));
    if (step == 0) first_loss = loss;
    if (step >= steps - 10) last_losses += loss / 10.0;
  }
  EXPECT_NEAR(first_loss, std::log(static_cast<double>(spec.vocab)), 0.3);
  EXPECT_LT(last_losses, floor + 0.1) << "floor " << floor << ", first loss " << first_loss;
  EXPECT_GT(last_losses, floor - 0.1) << "a loss far below the entropy floor means targets leak into inputs";
}

// The optimizer state an update would change: the compute copy of the
// weights, the moments and master weights, the bias-correction counter.
struct OptimizerSnapshot {
  std::vector<float> weights, moments;
  int64_t step = 0;
  bool operator==(const OptimizerSnapshot& o) const {
    // Bitwise, NaN included.
    return step == o.step && weights.size() == o.weights.size() && moments.size() == o.moments.size() &&
           std::memcmp(weights.data(), o.weights.data(), weights.size() * sizeof(float)) == 0 &&
           std::memcmp(moments.data(), o.moments.data(), moments.size() * sizeof(float)) == 0;
  }
};

OptimizerSnapshot Snapshot(Engine& engine) {
  OptimizerSnapshot s;
  const Tensor w = engine.model().parameters().padded_compute();
  s.weights.assign(w.as<float>(), w.as<float>() + w.numel());
  for (const auto& m : engine.optimizer().Moments()) {
    const int64_t n = m.end - m.begin;
    s.moments.insert(s.moments.end(), m.exp_avg, m.exp_avg + n);
    s.moments.insert(s.moments.end(), m.exp_avg_sq, m.exp_avg_sq + n);
    if (m.master != nullptr) s.moments.insert(s.moments.end(), m.master, m.master + n);
  }
  s.step = engine.optimizer().step();
  return s;
}

// A NaN in one weight makes the loss NaN: the step is skipped under every
// ZeRO stage (no update, no moment change, no bias-correction step, no
// parameter all-gather left behind), still counts as a step, and once the
// weight is repaired the next step updates normally.
TEST(EngineBadStepTest, NonFiniteLossSkipsTheUpdate) {
  constexpr int kSeq = 16;
  auto sample = [](uint64_t index, int32_t* ids, int32_t* targets, int32_t*) {
    for (int t = 0; t < kSeq; ++t) {
      ids[t] = static_cast<int32_t>((index * 13 + static_cast<uint64_t>(t) * 5) % 64);
      targets[t] = static_cast<int32_t>((ids[t] * 3 + 1) % 64);
    }
    return Status::Ok();
  };
  for (int zero : {0, 1, 2}) {
    SCOPED_TRACE("ZeRO-" + std::to_string(zero));
    Config config;
    *config.mutable_model() = testing::TinyModelConfig(false);
    config.mutable_data()->set_seq_len(kSeq);
    config.mutable_train()->set_steps(4);
    config.mutable_train()->set_micro_batch_size(2);
    config.mutable_train()->set_global_batch_size(4);
    config.mutable_optimizer()->set_lr(1e-2);
    config.mutable_optimizer()->set_warmup_steps(0);
    config.mutable_parallel()->set_zero_stage(zero);
    auto grid = ProcessGrid::Single();
    Engine engine(config, grid.get());

    auto first = engine.Step(0, 0, sample);
    ASSERT_TRUE(first.ok()) << first.status().message();
    EXPECT_EQ(first->verdict, StepVerdict::kUpdate);
    EXPECT_EQ(engine.optimizer().step(), 1);

    float* weights = engine.model().parameters().padded_compute().as<float>();
    const float kept = weights[3];
    weights[3] = std::numeric_limits<float>::quiet_NaN();
    const OptimizerSnapshot before = Snapshot(engine);
    auto bad = engine.Step(1, 4, sample);
    ASSERT_TRUE(bad.ok()) << bad.status().message();
    EXPECT_EQ(bad->verdict, StepVerdict::kNonFiniteLoss);
    EXPECT_TRUE(std::isnan(bad->loss));
    EXPECT_EQ(bad->step, 2);
    EXPECT_TRUE(Snapshot(engine) == before) << "a skipped step changed the optimizer state";
    EXPECT_EQ(engine.health().skipped_in_row(), 1);
    EXPECT_EQ(engine.health().skipped_from_sample(), 4u);

    weights[3] = kept;
    auto next = engine.Step(2, 8, sample);
    ASSERT_TRUE(next.ok()) << next.status().message();
    EXPECT_EQ(next->verdict, StepVerdict::kUpdate);
    EXPECT_TRUE(std::isfinite(next->loss));
    EXPECT_EQ(engine.optimizer().step(), 2);
    EXPECT_EQ(engine.health().skipped_in_row(), 0);
    engine.optimizer().FinishParameterGather();
    EXPECT_NE(std::memcmp(engine.model().parameters().padded_compute().as<float>(), before.weights.data(),
                          before.weights.size() * sizeof(float)),
              0);
  }
}

TEST(LearningRateTest, WarmupThenCosineToMinLr) {
  config::OptimizerConfig oc;
  oc.set_lr(1.0);
  oc.set_min_lr(0.1);
  oc.set_warmup_steps(4);
  EXPECT_DOUBLE_EQ(LearningRate(oc, 0, 20), 0.25);
  EXPECT_DOUBLE_EQ(LearningRate(oc, 3, 20), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(oc, 4, 20), 1.0);
  EXPECT_NEAR(LearningRate(oc, 19, 20), 0.1, 1e-12);
  // Step 11 is 7/15 of the way through the decay (steps 4..19).
  EXPECT_NEAR(LearningRate(oc, 11, 20), 0.1 + 0.45 * (1.0 + std::cos(std::numbers::pi * 7.0 / 15.0)), 1e-12);
  for (int64_t s = 5; s < 20; ++s) EXPECT_LE(LearningRate(oc, s, 20), LearningRate(oc, s - 1, 20));
  EXPECT_FLOAT_EQ(ClipFactor(0.5, 1.0), 1.0f);
  EXPECT_NEAR(ClipFactor(4.0, 1.0), 0.25f, 1e-6);
  EXPECT_FLOAT_EQ(ClipFactor(4.0, 0.0), 1.0f);
}

}  // namespace
}  // namespace latam
