// The distributed optimizer (ZeRO-1 and 2, model/optimizer.h) in one process:
//   - the bytes it and the ParameterSet allocate are MemoryPerRank's;
//   - over a one-replica group it trains bitwise like ZeRO-0 (the master
//     shard is then the whole set, and the update is the same arithmetic);
//   - the parameter all-gathers are issued after the update in bucket order
//     and the next forward waits for each bucket only when it reaches it;
//   - with D replicas (simulated: one optimizer per replica over a group
//     that only reports its size and rank) each replica's master shard is
//     its share of every bucket, and the checkpoint written from the shards
//     of all replicas loads into a ZeRO-0 set as exactly the initial weights;
//   - ZeRO-2's gradient pool: two slots, buckets alternating, each slot
//     reduced before it is reused, one reduce-scatter per bucket and
//     micro-batch, and training equal to ZeRO-0/1.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "checkpoint/state.h"
#include "model/layout.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "model/state.h"
#include "tests/test_util.h"

namespace latam {
namespace {

namespace fs = std::filesystem;

// A request that runs `on_wait` once, when waited for.
class CallbackRequest : public Request {
 public:
  explicit CallbackRequest(std::function<void()> on_wait) : on_wait_(std::move(on_wait)) {}
  void Wait() override {
    if (on_wait_) on_wait_();
    on_wait_ = nullptr;
  }

 private:
  std::function<void()> on_wait_;
};

// One replica of a group of `size` that moves no data: collectives complete
// at once and leave the buffers as they are (enough for what a replica
// allocates and owns). All-gathers are logged when issued and when waited.
class ReplicaCommunicator : public SelfCommunicator {
 public:
  ReplicaCommunicator(int size, int rank) : SelfCommunicator("dp"), size_(size), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::unique_ptr<Request> AllReduce(const Tensor&, ReduceOp) override {
    return std::make_unique<CallbackRequest>(nullptr);
  }
  std::unique_ptr<Request> ReduceScatter(const Tensor&, const Tensor&) override {
    return std::make_unique<CallbackRequest>(nullptr);
  }
  std::unique_ptr<Request> AllGather(const Tensor& in, const Tensor& out) override {
    if (size_ == 1) SelfCommunicator::AllGather(in, out)->Wait();
    gathers_issued.push_back(out.data);
    return std::make_unique<CallbackRequest>([this, p = out.data] { gathers_waited.push_back(p); });
  }
  std::vector<const void*> gathers_issued, gathers_waited;

 private:
  int size_, rank_;
};

ActivationOptions Act(bool fp32_weights, bool pooled_grads = false) {
  ActivationOptions act;
  act.micro_batch = 1;
  act.seq_len = 8;
  act.fp32_weights = fp32_weights;
  act.pooled_grads = pooled_grads;
  return act;
}

TEST(ZeroMemory, MemoryPerRankIsWhatTheArenasHold) {
  const ModelShape s = testing::FourLayerShape();
  SelfCommunicator tp("tp"), norm("norm");
  config::OptimizerConfig oc;
  struct Case {
    int dp, zero;
    int64_t bucket_elems;
  };
  for (const Case c : {Case{1, 0, 0}, Case{2, 0, 1}, Case{1, 1, 0}, Case{2, 1, 1}, Case{4, 1, 3000}, Case{3, 1, 1},
                       Case{1, 2, 1}, Case{4, 2, 1}, Case{3, 2, 1}}) {
    const std::string what = "dp " + std::to_string(c.dp) + " zero " + std::to_string(c.zero);
    const int64_t pad = c.zero >= 1 ? c.dp : 1;
    LlamaModel model(s, ModelLayout::Single(s), Act(c.zero == 0, c.zero == 2), ModelComms{&tp, nullptr}, pad,
                     c.bucket_elems);
    ReplicaCommunicator dp(c.dp, c.dp - 1);
    AdamWOptimizer opt(&model.parameters(), oc, c.zero, OptimizerComms{&dp, &norm});
    const ParameterSet& p = model.parameters();
    // ZeRO-2's pool, from the specs alone (as --plan computes it).
    const int64_t pool =
        ParameterSet::GradArenaElemsFor(LlamaParameterSpecs(s, ModelLayout::Single(s)), pad, c.bucket_elems, true);
    const OptimizerMemory m =
        AdamWOptimizer::MemoryPerRank(p.padded_numel(), c.dp, c.zero, DType::kF32, c.zero == 2 ? pool : -1);
    EXPECT_EQ(m.weights, static_cast<int64_t>(p.param_bytes() + p.compute_bytes())) << what;
    EXPECT_EQ(m.grads, static_cast<int64_t>(p.grad_bytes() + opt.grad_shard_bytes())) << what;
    EXPECT_EQ(m.master, static_cast<int64_t>(opt.master_bytes())) << what;
    EXPECT_EQ(m.moments, static_cast<int64_t>(opt.moment_bytes())) << what;
    // The formulas per parameter: 16 bytes (ZeRO-0, f32 compute), 4 + 12/D
    // (ZeRO-1: the f32 compute copy and gradients, reduced in place), and
    // 4 + 16/D plus the pool (ZeRO-2).
    const int64_t n = p.padded_numel();
    const int64_t expected = c.zero == 0 ? 16 * n : c.zero == 1 ? 8 * n + 12 * n / c.dp : 4 * n + 16 * n / c.dp + 4 * pool;
    EXPECT_EQ(m.total(), expected) << what;
    if (c.zero == 2) {
      // Two slots of the largest bucket (a layer's here), smaller than the
      // whole set's gradients.
      int64_t largest = 0;
      for (const GradBucket& b : p.buckets()) largest = std::max(largest, b.end - b.begin);
      EXPECT_EQ(pool, 2 * largest) << what;
      EXPECT_LT(pool, n) << what;
    }
  }
  // bf16 compute (sizes only: such a set lives on the GPU, see
  // tests/cuda/test_cuda_zero.cc): 18 bytes per parameter for ZeRO-0,
  // 6 + 12/D for ZeRO-1 (Megatron's distributed optimizer), 2 + 16/D plus
  // the pool for ZeRO-2.
  EXPECT_EQ(AdamWOptimizer::MemoryPerRank(800, 1, 0, DType::kBF16).total(), 18 * 800);
  EXPECT_EQ(AdamWOptimizer::MemoryPerRank(800, 8, 1, DType::kBF16).total(), 6 * 800 + 12 * 100);
  EXPECT_EQ(AdamWOptimizer::MemoryPerRank(800, 8, 1, DType::kBF16).weights, 2 * 800);
  EXPECT_EQ(AdamWOptimizer::MemoryPerRank(800, 8, 2, DType::kBF16, 160).total(), 2 * 800 + 16 * 100 + 4 * 160);
}

// Trains `steps` steps of one micro-batch; returns the losses and the final
// f32 weights (the compute copy under ZeRO-1, after its gather).
struct Trained {
  std::vector<double> losses, norms;
  std::vector<float> weights;
};

Trained Train(int zero, int64_t bucket_elems, int steps, int micro_batches = 1) {
  const ModelShape s = testing::FourLayerShape();
  SelfCommunicator tp("tp"), dp("dp"), norm("norm");
  LlamaModel model(s, ModelLayout::Single(s), Act(zero == 0, zero == 2), ModelComms{&tp, nullptr}, 1, bucket_elems);
  config::OptimizerConfig oc;
  oc.set_lr(1e-2);
  oc.set_weight_decay(0.1);
  AdamWOptimizer opt(&model.parameters(), oc, zero, OptimizerComms{&dp, &norm});
  opt.InitWeights(5);
  model.OnWeightsNeeded([&](const std::vector<size_t>& t) { opt.WaitForWeights(t); });
  // As the engine wires them: ZeRO-0/1 reduce on the last micro-batch's
  // reports, ZeRO-2 on every micro-batch's.
  model.OnGradientsNeeded([&](const std::vector<size_t>& t) { opt.GradientsNeeded(t); });
  model.OnGradientsFinal([&](const std::vector<size_t>& t, bool last) { opt.GradientsFinal(t, last); });
  Trained out;
  for (int step = 0; step < steps; ++step) {
    model.parameters().ZeroGrads();
    opt.BeginGradientReduction();
    double loss = 0.0;
    for (int mb = 0; mb < micro_batches; ++mb) {
      std::vector<int32_t> ids(8), targets(8);
      for (int i = 0; i < 8; ++i) {
        ids[static_cast<size_t>(i)] = (step * 5 + i * 3 + mb * 13) % 32;
        targets[static_cast<size_t>(i)] = (step * 7 + i * 11 + mb * 17) % 32;
      }
      const bool last = mb == micro_batches - 1;
      model.Forward(0, 0, ids.data(), targets.data(), 0.125f / static_cast<float>(micro_batches), true, last);
      model.Backward(0, 0, last);
      loss += model.TakeLoss();
    }
    out.losses.push_back(loss);
    opt.FinishGradientReduction();
    out.norms.push_back(opt.GradNorm());
    opt.Step(1e-2f, ClipFactor(out.norms.back(), 1.0));
  }
  opt.FinishParameterGather();
  out.weights = testing::HostCopy(model.parameters().padded_params());
  return out;
}

TEST(ZeroOne, OneReplicaTrainsBitwiseLikeZeroZero) {
  for (int64_t bucket_elems : {int64_t{0}, int64_t{1}, int64_t{3000}}) {
    const Trained a = Train(0, bucket_elems, 4), b = Train(1, bucket_elems, 4);
    EXPECT_EQ(a.losses, b.losses) << "buckets of " << bucket_elems;
    EXPECT_EQ(a.norms, b.norms) << "buckets of " << bucket_elems;
    EXPECT_EQ(a.weights, b.weights) << "buckets of " << bucket_elems;
    EXPECT_NE(a.losses.front(), a.losses.back());  // it did train
  }
}

// ZeRO-2 over one replica: with one micro-batch each reduced share is the
// bucket itself added to zero, so it trains bitwise like ZeRO-1; with
// several, the micro-batches' gradients are summed after each reduction
// instead of in the gradient arena, equal up to rounding.
TEST(ZeroTwo, TrainsLikeZeroOneAndZeroZero) {
  const Trained one = Train(1, 1, 4), two = Train(2, 1, 4);
  EXPECT_EQ(one.losses, two.losses);
  EXPECT_EQ(one.norms, two.norms);
  EXPECT_EQ(one.weights, two.weights);
  const Trained zero = Train(0, 1, 4, 3), accumulated = Train(2, 1, 4, 3);
  ASSERT_EQ(zero.weights.size(), accumulated.weights.size());
  for (size_t k = 0; k < zero.losses.size(); ++k) {
    EXPECT_NEAR(accumulated.losses[k], zero.losses[k], 1e-5 * std::abs(zero.losses[k])) << "step " << k;
    EXPECT_NEAR(accumulated.norms[k], zero.norms[k], 1e-5 * zero.norms[k]) << "step " << k;
  }
  double worst = 0.0;
  for (size_t i = 0; i < zero.weights.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(zero.weights[i] - accumulated.weights[i])));
  }
  EXPECT_LT(worst, 1e-5);
  EXPECT_NE(zero.losses.front(), zero.losses.back());  // it did train
}

// Records reduce-scatters (input, output) and completes them on Wait.
class ReduceScatterLog : public ReplicaCommunicator {
 public:
  ReduceScatterLog(int size, int rank) : ReplicaCommunicator(size, rank) {}
  std::unique_ptr<Request> ReduceScatter(const Tensor& in, const Tensor& out) override {
    issued.push_back({in.data, out.data});
    return std::make_unique<CallbackRequest>([this, p = in.data] { waited.push_back(p); });
  }
  std::vector<std::pair<const void*, const void*>> issued;
  std::vector<const void*> waited;
};

TEST(ZeroTwo, BucketsAlternateBetweenTwoSlotsReducedBeforeReuse) {
  const ModelShape s = testing::FourLayerShape();
  SelfCommunicator tp("tp"), norm("norm");
  const int d = 2;
  // One bucket per group: embedding, layers 0-3, head (6 buckets).
  LlamaModel model(s, ModelLayout::Single(s), Act(false, true), ModelComms{&tp, nullptr}, d, 1);
  ReduceScatterLog dp(d, 1);
  config::OptimizerConfig oc;
  AdamWOptimizer opt(&model.parameters(), oc, 2, OptimizerComms{&dp, &norm});
  opt.InitWeights(5);
  const ParameterSet& p = model.parameters();
  ASSERT_EQ(p.buckets().size(), 6u);
  // The last bucket (the head, filled first) in slot 0, then alternating.
  int64_t slot = 0;
  for (const GradBucket& b : p.buckets()) slot = std::max(slot, b.end - b.begin);
  EXPECT_EQ(p.grad_arena().numel(), 2 * slot);
  for (size_t b = 0; b < 6; ++b) EXPECT_EQ(p.grad_at()[b], (5 - b) % 2 == 0 ? 0 : slot) << "bucket " << b;
  const float* arena = p.grad_arena().as<float>();
  std::vector<size_t> needed;
  model.OnGradientsNeeded([&](const std::vector<size_t>& t) {
    opt.GradientsNeeded(t);
    needed.push_back(dp.waited.size());
  });
  model.OnGradientsFinal([&](const std::vector<size_t>& t, bool last) { opt.GradientsFinal(t, last); });
  opt.BeginGradientReduction();
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8}, targets = {2, 3, 4, 5, 6, 7, 8, 9};
  for (bool last : {false, true}) {
    model.Forward(0, 0, ids.data(), targets.data(), 0.0625f, true, last);
    model.Backward(0, 0, last);
  }
  // One in-place reduce-scatter per bucket and micro-batch, in backward
  // order (head, layers 3..0, embedding), each of its slot into this
  // replica's half of it.
  ASSERT_EQ(dp.issued.size(), 12u);
  for (size_t k = 0; k < 12; ++k) {
    const size_t b = 5 - k % 6;
    const float* in = arena + p.grad_at()[b];
    EXPECT_EQ(dp.issued[k].first, in) << k;
    EXPECT_EQ(dp.issued[k].second, in + (p.buckets()[b].end - p.buckets()[b].begin) / d) << k;
  }
  // A slot is reused only after its previous bucket's reduction completed,
  // and no earlier: once the k-th group's slot is ready (k >= 1), the
  // reductions of groups 0 .. k-2 are complete, while group k-1's (in the
  // other slot) still runs.
  ASSERT_EQ(needed.size(), 12u);
  for (size_t k = 1; k < 12; ++k) EXPECT_EQ(needed[k], k - 1) << k;
  opt.FinishGradientReduction();
  EXPECT_EQ(dp.waited.size(), 12u);

  // Writing a bucket without asking for it first is caught.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  opt.BeginGradientReduction();
  EXPECT_DEATH(opt.GradientsFinal({0}, false), "before its bucket was opened");
}

TEST(ZeroOne, ForwardWaitsForEachBucketWhenItReachesIt) {
  const ModelShape s = testing::FourLayerShape();
  SelfCommunicator tp("tp"), norm("norm");
  // One bucket per group: embedding, layers 0-3, head.
  LlamaModel model(s, ModelLayout::Single(s), Act(false), ModelComms{&tp, nullptr}, 1, 1);
  ReplicaCommunicator dp(1, 0);
  config::OptimizerConfig oc;
  AdamWOptimizer opt(&model.parameters(), oc, 1, OptimizerComms{&dp, &norm});
  opt.InitWeights(5);  // gathers and waits
  const ParameterSet& p = model.parameters();
  ASSERT_EQ(p.buckets().size(), 6u);
  dp.gathers_issued.clear();
  dp.gathers_waited.clear();
  std::vector<size_t> waited_before;
  model.OnWeightsNeeded([&](const std::vector<size_t>& t) {
    waited_before.push_back(dp.gathers_waited.size());
    opt.WaitForWeights(t);
  });
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8}, targets = {2, 3, 4, 5, 6, 7, 8, 9};
  model.ForwardBackward(ids.data(), targets.data(), 0.125f);
  opt.ReduceGradients();
  opt.Step(1e-3f, 1.0f);
  // Issued after the update, one per bucket, in forward order; none waited.
  std::vector<const void*> expected;
  for (const GradBucket& b : p.buckets()) expected.push_back(p.padded_compute().as<float>() + b.begin);
  EXPECT_EQ(dp.gathers_issued, expected);
  EXPECT_TRUE(dp.gathers_waited.empty());
  // The forward waits for bucket k just before the group that needs it:
  // embedding, layers 0..3, head.
  waited_before.clear();
  model.ForwardLoss(ids.data(), targets.data());
  EXPECT_EQ(waited_before, (std::vector<size_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(dp.gathers_waited, expected);
  // Nothing left in flight; waiting again is a no-op.
  opt.FinishParameterGather();
  EXPECT_EQ(dp.gathers_waited.size(), 6u);
}

// The reducer's gathers on their own: one per bucket over the owned range
// into the bucket (any dtype: here i32 as a stand-in for a non-f32 copy),
// waited once each; a new StartGather first completes the old ones.
TEST(ZeroOne, ReducerGathersEveryBucketOnceAndWaitsOnDemand) {
  ReplicaCommunicator dp(2, 1);
  std::vector<GradBucket> buckets = {{0, 4, 0, 1}, {4, 10, 1, 3}};
  GradientReducer reducer(buckets, {"a", "b", "c"}, &dp, 1);
  std::vector<int32_t> copy(10, 0);
  const Tensor t = Tensor::Of(copy.data(), Shape{10});
  EXPECT_EQ(reducer.owned(0), (std::pair<int64_t, int64_t>{2, 4}));
  EXPECT_EQ(reducer.owned(1), (std::pair<int64_t, int64_t>{7, 10}));
  reducer.StartGather(t);
  EXPECT_EQ(dp.gathers_issued, (std::vector<const void*>{copy.data(), copy.data() + 4}));
  EXPECT_TRUE(reducer.gathering(0) && reducer.gathering(1));
  reducer.WaitGather(1);
  EXPECT_EQ(dp.gathers_waited, (std::vector<const void*>{copy.data() + 4}));
  EXPECT_FALSE(reducer.gathering(1));
  reducer.WaitGather(1);  // no-op
  EXPECT_EQ(dp.gathers_waited.size(), 1u);
  reducer.StartGather(t);  // completes bucket 0's first
  EXPECT_EQ(dp.gathers_waited, (std::vector<const void*>{copy.data() + 4, copy.data()}));
  EXPECT_EQ(dp.gathers_issued.size(), 4u);
  reducer.FinishGather();
  EXPECT_EQ(dp.gathers_waited.size(), 4u);
  EXPECT_FALSE(reducer.gathering(0) || reducer.gathering(1));
}

// D replicas, each with its own optimizer over a group that moves no data:
// the master shard is the replica's share of every bucket of the initial
// weights, and the checkpoint the replicas write together (each its master
// and moment pieces) loads into a single ZeRO-0 set as those weights.
TEST(ZeroOne, ShardsOfAllReplicasMakeTheCheckpointOfTheWholeSet) {
  const fs::path dir = testing::FreshTestDir("latam_zero_shards");
  const config::ModelConfig model_config = testing::TinyModelConfig(false);
  const ModelShape s = ModelShape::FromConfig(model_config);
  SelfCommunicator tp("tp"), norm("norm");
  config::OptimizerConfig oc;
  const int d = 3;
  const fs::path step_dir = dir / "step_00000001";
  fs::create_directories(step_dir);
  std::vector<float> drawn;
  for (int r = 0; r < d; ++r) {
    LlamaModel model(s, ModelLayout::Single(s), Act(false), ModelComms{&tp, nullptr}, d, 5000);
    ReplicaCommunicator dp(d, r);
    AdamWOptimizer opt(&model.parameters(), oc, 1, OptimizerComms{&dp, &norm});
    opt.InitWeights(9);
    const ParameterSet& p = model.parameters();
    drawn = p.DrawWeights(9);
    int64_t covered = 0;
    for (const AdamWOptimizer::MomentSlice& m : opt.Moments()) {
      ASSERT_NE(m.master, nullptr);
      for (int64_t i = m.begin; i < m.end; ++i) {
        ASSERT_EQ(m.master[i - m.begin], drawn[static_cast<size_t>(i)]) << "replica " << r << " element " << i;
      }
      covered += m.end - m.begin;
    }
    EXPECT_GT(covered, 0);
    EXPECT_EQ(opt.owned_size(), p.padded_numel() / d);
    const std::vector<StatePiece> pieces = StatePieces(p, &opt, r);
    for (const StatePiece& piece : pieces) EXPECT_TRUE(piece.saved_here) << piece.name;
    ASSERT_TRUE(ckpt::WriteRankShards(step_dir.string(), r, pieces).ok());
  }
  ckpt::Checkpoint h;
  h.set_format_version(ckpt::kFormatVersion);
  h.set_step(1);
  *h.mutable_model() = model_config;
  h.mutable_optimizer()->set_has_moments(true);
  ASSERT_TRUE(ckpt::WriteManifest(step_dir.string(), d, h).ok());

  auto reader = ckpt::CheckpointReader::Open(step_dir.string());
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  ParameterSet whole(LlamaParameterSpecs(s, ModelLayout::Single(s)));
  AdamWOptimizer whole_opt(&whole, oc);
  auto r = ckpt::LoadState(**reader, model_config, StatePieces(whole, &whole_opt, 0), ckpt::LoadWhat::kAll);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->moments_loaded);
  const std::vector<float> loaded = testing::HostCopy(whole.padded_params());
  // The single set has no padding between buckets: compare tensor by tensor.
  ParameterSet padded(LlamaParameterSpecs(s, ModelLayout::Single(s)), d, {}, 5000);
  for (size_t i = 0; i < whole.size(); ++i) {
    const int64_t n = whole.param(i).numel();
    for (int64_t j = 0; j < n; ++j) {
      ASSERT_EQ(loaded[static_cast<size_t>(whole.flat_offset(i) + j)],
                drawn[static_cast<size_t>(padded.flat_offset(i) + j)])
          << whole.spec(i).name << " element " << j;
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace latam
