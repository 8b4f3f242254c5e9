// Bad steps and stragglers as a user meets them, with latam-train under
// mpirun on a tiny model. The corpus is a learnable synthetic stream of ids
// below 500 in which the windows of two consecutive steps (7 and 8) are
// replaced by id 511, which the model never sees otherwise: those steps'
// gradient norm is several times the recent ones (about 17 against 1 to 4).
//   - both steps are skipped as gradient-norm spikes (metrics.jsonl says
//     so; a loss spike is judged by the same code, tests/unit/test_health.cc); after
//     the second (train.max_skipped_steps 2) the run rolls back to its step-4
//     checkpoint, redoes steps 5 and 6 bitwise, jumps over the samples of
//     steps 7 and 8, and ends with those samples in DataState.skipped;
//   - resumed from a checkpoint saved after the roll-back, it reproduces the
//     uninterrupted run bitwise (losses and every shard byte);
//   - one rank and TP2 x PP2 take the same decisions, with the same losses
//     to fp32 tolerance;
//   - without a checkpoint the roll-back stops the run (exit 1, saying so),
//     and so does a fourth roll-back to the same checkpoint;
//     with max_skipped_steps 0 the steps are skipped and training goes on;
//   - every straggler_every steps the slowest rank is logged.
// (A NaN loss, which no data can cause, is injected into the engine
// directly: tests/unit/test_training.cc, EngineBadStepTest.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/store.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "data/shard.h"
#include "tests/test_util.h"

namespace latam {
namespace {

namespace fs = std::filesystem;
using testing::BinPath;

constexpr int kSeq = 32, kBatch = 8, kSteps = 16;
constexpr uint32_t kUnseenId = 511;

class BadStepsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("latam_bad_steps");
    const std::string corpus = (dir_ / "train.bin").string();
    const auto gen = Run(BinPath("latam-data") + " synthesize --out " + corpus +
                         " --vocab 500 --tokens 100000 --branching 2 --seed 3");
    ASSERT_EQ(gen.exit_code, 0) << gen.err;
    Poison(7, 8);
  }
  // Overwrites with kUnseenId the windows that the samples of steps
  // [first, last] read (1-based, without roll-backs; the three training
  // datasets of the config are this one file).
  void Poison(int first, int last) {
    const std::string corpus = (dir_ / "train.bin").string();
    auto ds = data::TokenDataset::Open(corpus, kSeq, 512);
    ASSERT_TRUE(ds.ok()) << ds.status().message();
    const uint64_t windows = (*ds)->num_windows();
    const data::MixtureSampler sampler({0.5, 0.3, 0.2}, {windows, windows, windows}, 1234);
    std::fstream f(corpus, std::ios::in | std::ios::out | std::ios::binary);
    for (uint64_t i = static_cast<uint64_t>(first - 1) * kBatch; i < static_cast<uint64_t>(last) * kBatch; ++i) {
      const uint64_t begin = sampler.Sample(i).window * kSeq;
      for (uint64_t t = begin; t <= begin + kSeq; ++t) {
        f.seekp(static_cast<std::streamoff>(data::kShardHeaderBytes + 4 * t));
        f.write(reinterpret_cast<const char*>(&kUnseenId), 4);
      }
    }
    ASSERT_TRUE(f.good());
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  testing::CommandResult Run(const std::string& command) {
    return testing::RunCommand(command, LATAM_SOURCE_DIR, dir_);
  }

  // latam-train on `ranks` processes (tensor x pipeline x data) into run
  // directory `run`, saving every 4 steps.
  std::string TrainCommand(int ranks, const std::string& run, int tp, int pp, const std::string& extra = "") const {
    std::string c = std::string(LATAM_MPIRUN) + " -np " + std::to_string(ranks) + " " + BinPath("latam-train") +
                    " --config configs/quickstart.textproto --set data.tokenizer= --set model.vocab_size=512" +
                    " --set model.dim=64 --set model.n_layers=2 --set model.n_heads=4 --set model.n_kv_heads=2" +
                    " --set model.ffn_dim=128 --set data.seq_len=" + std::to_string(kSeq) +
                    " --set train.micro_batch_size=2 --set train.global_batch_size=" + std::to_string(kBatch) +
                    " --set optimizer.warmup_steps=2 --set optimizer.lr=1e-2 --set train.eval_every=0" +
                    " --set train.save_every=4 --set train.keep_checkpoints=10 --set train.log_every=1" +
                    " --set train.spike_zscore=3 --set train.spike_window=4 --set train.max_skipped_steps=2" +
                    " --set train.straggler_every=4 --set parallel.zero_stage=1" +
                    " --set parallel.tensor=" + std::to_string(tp) + " --set parallel.pipeline=" + std::to_string(pp) +
                    " --set train.steps=" + std::to_string(kSteps) + " --set train.run_dir=" + (dir_ / run).string();
    for (int i = 0; i < 3; ++i) {
      c += " --set data.train[" + std::to_string(i) + "].path=" + (dir_ / "train.bin").string() + " --set data.eval[" +
           std::to_string(i) + "].path=" + (dir_ / "train.bin").string();
    }
    return c + extra;
  }

  // Every line of a run's metrics.jsonl, in order.
  std::vector<nlohmann::json> Metrics(const std::string& run) const {
    std::vector<nlohmann::json> out;
    std::ifstream in(dir_ / run / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
    return out;
  }

  ckpt::Checkpoint Manifest(const std::string& step_dir) const {
    auto r = ckpt::CheckpointReader::Open((dir_ / step_dir).string());
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? (*r)->manifest() : ckpt::Checkpoint();
  }

  bool SameShards(const std::string& a, const std::string& b) const {
    int files = 0;
    for (const auto& e : fs::directory_iterator(dir_ / a)) {
      const std::string name = e.path().filename().string();
      if (name.rfind("rank_", 0) != 0) continue;
      ++files;
      if (testing::ReadFileBytes(e.path()) != testing::ReadFileBytes(dir_ / b / name)) return false;
    }
    return files > 0;
  }

  fs::path dir_;
};

// The training and skipped lines' losses of the final timeline (after the
// roll-back a step's later line wins), and the events.
struct Timeline {
  std::map<int64_t, double> loss;
  std::vector<int64_t> skipped;      // steps, in order
  std::vector<std::string> reasons;  // their skip_reason
  std::vector<nlohmann::json> rollbacks;
  std::vector<double> first_losses_5_6;  // steps 5 and 6 before the roll-back
};

Timeline Read(const std::vector<nlohmann::json>& lines) {
  Timeline t;
  for (const auto& j : lines) {
    const int64_t step = j["step"].get<int64_t>();
    if (j.contains("skipped_step")) {
      t.skipped.push_back(step);
      t.reasons.push_back(j["skip_reason"].get<std::string>());
    }
    if (j.contains("rollback_to_step")) t.rollbacks.push_back(j);
    if (!j.contains("loss")) continue;
    if ((step == 5 || step == 6) && t.rollbacks.empty()) t.first_losses_5_6.push_back(j["loss"].get<double>());
    t.loss[step] = j["loss"].get<double>();
  }
  return t;
}

TEST_F(BadStepsTest, SkipsSpikesRollsBackAndResumesBitwise) {
  auto a = Run(TrainCommand(2, "a", 1, 1));
  ASSERT_EQ(a.exit_code, 0) << a.out << a.err;
  const Timeline ta = Read(Metrics("a"));
  ASSERT_EQ(ta.skipped, (std::vector<int64_t>{7, 8})) << a.out;
  EXPECT_EQ(ta.reasons, (std::vector<std::string>{"grad_norm_spike", "grad_norm_spike"}));
  ASSERT_EQ(ta.rollbacks.size(), 1u) << a.out;
  EXPECT_EQ(ta.rollbacks[0]["step"], 8);
  EXPECT_EQ(ta.rollbacks[0]["rollback_to_step"], 4.0);
  EXPECT_EQ(ta.rollbacks[0]["skipped_samples_begin"], 6.0 * kBatch);
  EXPECT_EQ(ta.rollbacks[0]["skipped_samples_end"], 8.0 * kBatch);
  EXPECT_NE(a.out.find("rolled back to"), std::string::npos) << a.out;
  // Steps 5 and 6 again, from the same checkpoint and samples: bitwise.
  ASSERT_EQ(ta.first_losses_5_6.size(), 2u);
  EXPECT_EQ(ta.loss.at(5), ta.first_losses_5_6[0]);
  EXPECT_EQ(ta.loss.at(6), ta.first_losses_5_6[1]);
  // Steps 7 and 8 took samples [64, 80) instead: ordinary losses now.
  for (int64_t s = 7; s <= kSteps; ++s) EXPECT_LT(ta.loss.at(s), ta.loss.at(2)) << "step " << s;

  const ckpt::Checkpoint last = Manifest("a/checkpoints/step_00000016");
  EXPECT_EQ(last.step(), kSteps);
  EXPECT_EQ(last.optimizer().step(), kSteps);
  EXPECT_EQ(last.consumed_samples(), static_cast<uint64_t>((kSteps + 2) * kBatch));
  ASSERT_EQ(last.data().skipped_size(), 1);
  EXPECT_EQ(last.data().skipped(0).begin(), 6u * kBatch);
  EXPECT_EQ(last.data().skipped(0).end(), 8u * kBatch);
  EXPECT_EQ(last.health().rollbacks(), 1);
  EXPECT_EQ(last.health().recent_loss_size(), 4);

  // Stragglers: the slowest of the two ranks, every 4 steps.
  int straggler_lines = 0;
  for (const auto& j : Metrics("a")) {
    if (!j.contains("straggler/rank")) continue;
    ++straggler_lines;
    EXPECT_EQ(j["step"].get<int64_t>() % 4, 0);
    EXPECT_GE(j["straggler/rank"].get<double>(), 0.0);
    EXPECT_LE(j["straggler/rank"].get<double>(), 1.0);
    EXPECT_GE(j["straggler/ratio"].get<double>(), 1.0);
    EXPECT_GT(j["straggler/median_ms"].get<double>(), 0.0);
  }
  EXPECT_GE(straggler_lines, 4);

  // Resumed after the events: the same run, bitwise.
  auto b = Run(TrainCommand(2, "b", 1, 1, " --resume " + (dir_ / "a/checkpoints/step_00000008").string()));
  ASSERT_EQ(b.exit_code, 0) << b.out << b.err;
  const Timeline tb = Read(Metrics("b"));
  EXPECT_TRUE(tb.skipped.empty());
  for (int64_t s = 9; s <= kSteps; ++s) EXPECT_EQ(tb.loss.at(s), ta.loss.at(s)) << "step " << s;
  EXPECT_TRUE(SameShards("a/checkpoints/step_00000016", "b/checkpoints/step_00000016"));

  // Resumed from step 4, before the events: they happen again, the same way.
  auto c = Run(TrainCommand(2, "c", 1, 1, " --resume " + (dir_ / "a/checkpoints/step_00000004").string()));
  ASSERT_EQ(c.exit_code, 0) << c.out << c.err;
  const Timeline tc = Read(Metrics("c"));
  EXPECT_EQ(tc.skipped, ta.skipped);
  ASSERT_EQ(tc.rollbacks.size(), 1u);
  for (int64_t s = 5; s <= kSteps; ++s) EXPECT_EQ(tc.loss.at(s), ta.loss.at(s)) << "step " << s;
}

TEST_F(BadStepsTest, EveryLayoutTakesTheSameDecisions) {
  auto one = Run(TrainCommand(1, "one", 1, 1));
  ASSERT_EQ(one.exit_code, 0) << one.out << one.err;
  auto grid = Run(TrainCommand(4, "grid", 2, 2));
  ASSERT_EQ(grid.exit_code, 0) << grid.out << grid.err;
  const Timeline t1 = Read(Metrics("one")), t4 = Read(Metrics("grid"));
  EXPECT_EQ(t1.skipped, (std::vector<int64_t>{7, 8})) << one.out;
  EXPECT_EQ(t4.skipped, t1.skipped) << grid.out;
  EXPECT_EQ(t4.rollbacks.size(), t1.rollbacks.size());
  ASSERT_EQ(t4.loss.size(), t1.loss.size());
  for (const auto& [step, loss] : t1.loss) EXPECT_NEAR(t4.loss.at(step), loss, 5e-5 * loss) << "step " << step;
}

TEST_F(BadStepsTest, WithoutCheckpointOrRollBack) {
  // Nothing saved yet when the second bad step comes: the run stops.
  auto none = Run(TrainCommand(1, "none", 1, 1, " --set train.save_every=0"));
  EXPECT_EQ(none.exit_code, 1) << none.out << none.err;
  EXPECT_NE((none.out + none.err).find("no checkpoint to roll back to"), std::string::npos) << none.out << none.err;

  // No roll-back: both steps skipped, their samples spent, training goes on.
  auto skip = Run(TrainCommand(1, "skip", 1, 1, " --set train.max_skipped_steps=0"));
  ASSERT_EQ(skip.exit_code, 0) << skip.out << skip.err;
  const Timeline t = Read(Metrics("skip"));
  EXPECT_EQ(t.skipped, (std::vector<int64_t>{7, 8}));
  EXPECT_TRUE(t.rollbacks.empty());
  const ckpt::Checkpoint last = Manifest("skip/checkpoints/step_00000016");
  EXPECT_EQ(last.consumed_samples(), static_cast<uint64_t>(kSteps * kBatch));
  EXPECT_EQ(last.optimizer().step(), kSteps - 2);
  EXPECT_EQ(last.data().skipped_size(), 0);
}

TEST_F(BadStepsTest, StopsAfterThreeRollBacksToOneCheckpoint) {
  // Steps 7 to 14's samples are all bad: each roll-back to step 4 meets the
  // next two bad steps; the fourth roll-back is refused.
  Poison(9, 14);
  auto r = Run(TrainCommand(1, "loop", 1, 1));
  EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
  EXPECT_NE((r.out + r.err).find("rolled back to step 4 3 times"), std::string::npos) << r.out << r.err;
  const Timeline t = Read(Metrics("loop"));
  ASSERT_EQ(t.rollbacks.size(), 3u);
  EXPECT_EQ(t.skipped.size(), 8u);
  EXPECT_EQ(t.rollbacks.back()["skipped_samples_end"], 12.0 * kBatch);
}

}  // namespace
}  // namespace latam
