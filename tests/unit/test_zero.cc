// The distributed optimizer (ZeRO-1, model/optimizer.h) in one process:
//   - the bytes it and the ParameterSet allocate are MemoryPerRank's;
//   - over a one-replica group it trains bitwise like ZeRO-0 (the master
//     shard is then the whole set, and the update is the same arithmetic);
//   - the parameter all-gathers are issued after the update in bucket order
//     and the next forward waits for each bucket only when it reaches it;
//   - with D replicas (simulated: one optimizer per replica over a group
//     that only reports its size and rank) each replica's master shard is
//     its share of every bucket, and the checkpoint written from the shards
//     of all replicas loads into a ZeRO-0 set as exactly the initial weights.
#include <gtest/gtest.h>

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

ActivationOptions Act(bool fp32_weights) {
  ActivationOptions act;
  act.micro_batch = 1;
  act.seq_len = 8;
  act.fp32_weights = fp32_weights;
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
  for (const Case c : {Case{1, 0, 0}, Case{2, 0, 1}, Case{1, 1, 0}, Case{2, 1, 1}, Case{4, 1, 3000}, Case{3, 1, 1}}) {
    const std::string what = "dp " + std::to_string(c.dp) + " zero " + std::to_string(c.zero);
    LlamaModel model(s, ModelLayout::Single(s), Act(c.zero == 0), ModelComms{&tp, nullptr}, c.zero == 1 ? c.dp : 1,
                     c.bucket_elems);
    ReplicaCommunicator dp(c.dp, c.dp - 1);
    AdamWOptimizer opt(&model.parameters(), oc, c.zero, OptimizerComms{&dp, &norm});
    const ParameterSet& p = model.parameters();
    const OptimizerMemory m = AdamWOptimizer::MemoryPerRank(p.padded_numel(), c.dp, c.zero, DType::kF32);
    EXPECT_EQ(m.weights, static_cast<int64_t>(p.param_bytes() + p.compute_bytes())) << what;
    EXPECT_EQ(m.grads, static_cast<int64_t>(p.grad_bytes() + opt.grad_shard_bytes())) << what;
    EXPECT_EQ(m.master, static_cast<int64_t>(opt.master_bytes())) << what;
    EXPECT_EQ(m.moments, static_cast<int64_t>(opt.moment_bytes())) << what;
    // The formulas per parameter: 16 bytes (ZeRO-0, f32 compute), 8 + 16/D (ZeRO-1).
    const int64_t n = p.padded_numel();
    EXPECT_EQ(m.total(), c.zero == 0 ? 16 * n : 8 * n + 16 * n / c.dp) << what;
  }
  // bf16 compute (sizes only: such a set lives on the GPU, see
  // tests/cuda/test_cuda_zero.cc): 18 bytes per parameter for ZeRO-0,
  // 6 + 16/D for ZeRO-1.
  EXPECT_EQ(AdamWOptimizer::MemoryPerRank(800, 1, 0, DType::kBF16).total(), 18 * 800);
  EXPECT_EQ(AdamWOptimizer::MemoryPerRank(800, 8, 1, DType::kBF16).total(), 6 * 800 + 16 * 100);
  EXPECT_EQ(AdamWOptimizer::MemoryPerRank(800, 8, 1, DType::kBF16).weights, 2 * 800);
}

// Trains `steps` steps of one micro-batch; returns the losses and the final
// f32 weights (the compute copy under ZeRO-1, after its gather).
struct Trained {
  std::vector<double> losses, norms;
  std::vector<float> weights;
};

Trained Train(int zero, int64_t bucket_elems, int steps) {
  const ModelShape s = testing::FourLayerShape();
  SelfCommunicator tp("tp"), dp("dp"), norm("norm");
  LlamaModel model(s, ModelLayout::Single(s), Act(zero == 0), ModelComms{&tp, nullptr}, 1, bucket_elems);
  config::OptimizerConfig oc;
  oc.set_lr(1e-2);
  oc.set_weight_decay(0.1);
  AdamWOptimizer opt(&model.parameters(), oc, zero, OptimizerComms{&dp, &norm});
  opt.InitWeights(5);
  model.OnWeightsNeeded([&](const std::vector<size_t>& t) { opt.WaitForWeights(t); });
  Trained out;
  for (int step = 0; step < steps; ++step) {
    std::vector<int32_t> ids(8), targets(8);
    for (int i = 0; i < 8; ++i) {
      ids[static_cast<size_t>(i)] = (step * 5 + i * 3) % 32;
      targets[static_cast<size_t>(i)] = (step * 7 + i * 11) % 32;
    }
    model.parameters().ZeroGrads();
    out.losses.push_back(model.ForwardBackward(ids.data(), targets.data(), 0.125f));
    opt.ReduceGradients();
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
