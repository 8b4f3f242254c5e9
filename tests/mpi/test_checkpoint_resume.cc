// Checkpoints as a user meets them, with latam-train under mpirun:
//   - a run saved as TP2 x PP2 x DP1 resumes as TP1 x PP1 x DP4,
//     TP4 x PP1 x DP2 and TP1 x PP4 x DP2 (two virtual stages, ZeRO-1), and
//     from there back to TP2 x PP2: the losses match the uninterrupted run
//     to fp32 tolerance, the consumed-sample count continues exactly, and the
//     final parameters agree;
//   - an even pipeline split resumes as an uneven one and the other way
//     (parallel.first_stage_layers / last_stage_layers), with the same losses;
//   - ZeRO-0 over DP2 resumes as ZeRO-1 over DP4, and that as ZeRO-0 on
//     one process, following the uninterrupted run;
//   - resuming under the same layout is bitwise identical (losses and every
//     byte of the next checkpoint), ZeRO-1 slices included;
//   - kill -9 of a rank in the middle of a save (seen by a rank file still
//     shorter than in the uninterrupted run) leaves `latest` on the previous
//     complete checkpoint, and resuming from it reproduces the
//     uninterrupted run bitwise;
//   - SIGUSR1 finishes the step, saves and exits 3; --resume auto continues;
//     a signal to one rank (rank 1 of two, or rank 3 of a tensor 2 x
//     pipeline 2 job) stops every rank and rank 0 names it.
#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "checkpoint/store.h"
#include "tests/test_util.h"

namespace latam {
namespace {

namespace fs = std::filesystem;
using testing::BinPath;

class ResumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("latam_resume");
    const auto gen = Run(BinPath("latam-data") + " synthesize --out " + (dir_ / "train.bin").string() +
                         " --vocab 512 --tokens 200000 --seed 5");
    ASSERT_EQ(gen.exit_code, 0) << gen.err;
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  testing::CommandResult Run(const std::string& command) {
    return testing::RunCommand(command, LATAM_SOURCE_DIR, dir_);
  }

  // latam-train on `ranks` processes with layout "T P D VS ZERO" for `steps`
  // steps into run directory `run`, saving every 4 steps.
  std::string TrainCommand(int ranks, const std::string& run, int tp, int pp, int vs, int zero, int steps) const {
    std::string c = std::string(LATAM_MPIRUN) + " -np " + std::to_string(ranks) + " " + BinPath("latam-train") +
                    " --config configs/quickstart.textproto --set data.tokenizer= --set model.vocab_size=512" +
                    " --set model.dim=64 --set model.n_layers=8 --set model.n_heads=4 --set model.n_kv_heads=2" +
                    " --set model.ffn_dim=128 --set data.seq_len=32 --set train.micro_batch_size=2" +
                    " --set train.global_batch_size=16 --set optimizer.warmup_steps=2 --set train.eval_every=0" +
                    " --set train.save_every=4 --set train.keep_checkpoints=10 --set train.log_every=1" +
                    " --set parallel.tensor=" + std::to_string(tp) + " --set parallel.pipeline=" + std::to_string(pp) +
                    " --set parallel.virtual_stages=" + std::to_string(vs) +
                    " --set parallel.zero_stage=" + std::to_string(zero) +
                    " --set train.steps=" + std::to_string(steps) + " --set train.run_dir=" + (dir_ / run).string();
    for (int i = 0; i < 3; ++i) {
      c += " --set data.train[" + std::to_string(i) + "].path=" + (dir_ / "train.bin").string() + " --set data.eval[" +
           std::to_string(i) + "].path=" + (dir_ / "train.bin").string();
    }
    return c;
  }

  // step -> loss from a run's metrics.jsonl.
  std::map<int64_t, double> Losses(const std::string& run) const {
    return testing::TrainingLosses(dir_ / run / "metrics.jsonl");
  }

  ckpt::Checkpoint Manifest(const std::string& step_dir) const {
    auto r = ckpt::CheckpointReader::Open((dir_ / step_dir).string());
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? (*r)->manifest() : ckpt::Checkpoint();
  }

  // Whether two step directories hold byte-identical shard files.
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

void ExpectLossesMatch(const std::map<int64_t, double>& got, const std::map<int64_t, double>& want, int64_t first,
                       int64_t last, double rel_tol) {
  for (int64_t s = first; s <= last; ++s) {
    ASSERT_TRUE(got.count(s) && want.count(s)) << "step " << s;
    EXPECT_NEAR(got.at(s), want.at(s), rel_tol * std::abs(want.at(s))) << "step " << s;
  }
}

TEST_F(ResumeTest, ReshardsAcrossLayoutsAndBack) {
  // The uninterrupted run: TP2 x PP2 x DP1, checkpoints at 4, 8, 12.
  auto a = Run(TrainCommand(4, "a", 2, 2, 1, 0, 12));
  ASSERT_EQ(a.exit_code, 0) << a.out << a.err;
  const auto ref = Losses("a");
  const std::string a4 = "a/checkpoints/step_00000004";
  EXPECT_EQ(Manifest(a4).consumed_samples(), 64u);
  EXPECT_EQ(Manifest(a4).layout().tensor(), 2);

  // Same layout: bitwise.
  auto same = Run(TrainCommand(4, "same", 2, 2, 1, 0, 12) + " --resume " + (dir_ / a4).string());
  ASSERT_EQ(same.exit_code, 0) << same.out << same.err;
  EXPECT_NE(same.out.find("loaded everything from"), std::string::npos) << same.out;
  const auto same_losses = Losses("same");
  EXPECT_EQ(same_losses.begin()->first, 5);
  for (int64_t s = 5; s <= 12; ++s) EXPECT_EQ(same_losses.at(s), ref.at(s)) << "step " << s;
  EXPECT_TRUE(SameShards("a/checkpoints/step_00000012", "same/checkpoints/step_00000012"));

  // Other layouts, from step 4 to the end (train.steps sets the learning-rate
  // schedule, so every run keeps 12).
  struct Target {
    const char* run;
    int ranks, tp, pp, vs, zero;
  };
  for (const Target& t : {Target{"dp4", 4, 1, 1, 1, 0}, Target{"tp4", 8, 4, 1, 1, 1}, Target{"pp4", 8, 1, 4, 2, 1}}) {
    auto r = Run(TrainCommand(t.ranks, t.run, t.tp, t.pp, t.vs, t.zero, 12) + " --resume " + (dir_ / a4).string());
    ASSERT_EQ(r.exit_code, 0) << t.run << "\n" << r.out << r.err;
    ExpectLossesMatch(Losses(t.run), ref, 5, 12, 5e-5);
    const ckpt::Checkpoint m = Manifest(std::string(t.run) + "/checkpoints/step_00000008");
    EXPECT_EQ(m.consumed_samples(), 128u) << t.run;
    EXPECT_EQ(m.layout().tensor(), t.tp);
    EXPECT_EQ(m.layout().zero_stage(), t.zero);
  }

  // And back: the ZeRO-1, virtual-stage checkpoint of TP1 x PP4 x DP2 into
  // TP2 x PP2 x DP1, on to step 12.
  auto back = Run(TrainCommand(4, "back", 2, 2, 1, 0, 12) + " --resume " +
                  (dir_ / "pp4/checkpoints/step_00000008").string());
  ASSERT_EQ(back.exit_code, 0) << back.out << back.err;
  ExpectLossesMatch(Losses("back"), ref, 9, 12, 5e-5);

  // Final parameters and moments against the uninterrupted run.
  auto ra = ckpt::CheckpointReader::Open((dir_ / "a/checkpoints").string());
  auto rb = ckpt::CheckpointReader::Open((dir_ / "back/checkpoints").string());
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ((*rb)->manifest().step(), 12);
  EXPECT_EQ((*rb)->manifest().consumed_samples(), 192u);
  ASSERT_EQ((*ra)->manifest().tensors_size(), (*rb)->manifest().tensors_size());
  for (const ckpt::TensorRecord& t : (*ra)->manifest().tensors()) {
    const Block whole = WholeBlock({t.shape().begin(), t.shape().end()});
    std::vector<float> x(static_cast<size_t>(whole.numel())), y(x.size());
    ASSERT_TRUE((*ra)->Read(t.name(), whole, x.data()).ok());
    ASSERT_TRUE((*rb)->Read(t.name(), whole, y.data()).ok()) << t.name();
    double scale = 0.0, diff = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      scale = std::max(scale, static_cast<double>(std::abs(x[i])));
      diff = std::max(diff, static_cast<double>(std::abs(x[i] - y[i])));
    }
    EXPECT_LE(diff, 1e-3 * scale + 1e-7) << t.name();
  }
}

// Uneven pipeline stages: an even TP1 x PP2 run (4 + 4 layers) resumes at
// step 4 as PP3 with stages of 2, 3, 3 layers; an uneven PP2 run of 3 + 5
// layers (which itself matches the even run from step 1) resumes at step 4
// as the even PP2 layout. Every loss is the uninterrupted even run's, to
// fp32 tolerance.
TEST_F(ResumeTest, ReshardsBetweenEvenAndUnevenStages) {
  const std::string first2 = " --set parallel.first_stage_layers=2";
  const std::string split35 = " --set parallel.first_stage_layers=3 --set parallel.last_stage_layers=5";
  auto even = Run(TrainCommand(2, "even", 1, 2, 1, 0, 8));
  ASSERT_EQ(even.exit_code, 0) << even.out << even.err;
  const auto ref = Losses("even");

  auto to_uneven = Run(TrainCommand(3, "to_uneven", 1, 3, 1, 0, 8) + first2 + " --resume " +
                       (dir_ / "even/checkpoints/step_00000004").string());
  ASSERT_EQ(to_uneven.exit_code, 0) << to_uneven.out << to_uneven.err;
  ExpectLossesMatch(Losses("to_uneven"), ref, 5, 8, 5e-5);
  const ckpt::Checkpoint saved = Manifest("to_uneven/checkpoints/step_00000008");
  EXPECT_EQ(saved.layout().pipeline(), 3);
  EXPECT_EQ(saved.layout().first_stage_layers(), 2);
  EXPECT_EQ(saved.layout().last_stage_layers(), 0);

  auto uneven = Run(TrainCommand(2, "uneven", 1, 2, 1, 0, 8) + split35);
  ASSERT_EQ(uneven.exit_code, 0) << uneven.out << uneven.err;
  ExpectLossesMatch(Losses("uneven"), ref, 1, 8, 5e-5);
  auto to_even = Run(TrainCommand(2, "to_even", 1, 2, 1, 0, 8) + " --resume " +
                     (dir_ / "uneven/checkpoints/step_00000004").string());
  ASSERT_EQ(to_even.exit_code, 0) << to_even.out << to_even.err;
  EXPECT_NE(to_even.out.find("1 virtual stages, stages of 3, 5 layers, ZeRO-0"), std::string::npos) << to_even.out;
  ExpectLossesMatch(Losses("to_even"), ref, 5, 8, 5e-5);
}

// Across ZeRO stages and data-parallel sizes: ZeRO-0 over 2 replicas saves
// (weights from replica 0's full copy), ZeRO-1 over 4 replicas resumes (each
// loads its master shard and moments) and saves (each owner writes its
// shard's pieces), ZeRO-0 on one process resumes from that; ZeRO-2 over 2
// replicas resumes from the ZeRO-0 save and ZeRO-1 over 4 from ZeRO-2's;
// the losses follow the uninterrupted ZeRO-0 run to fp32 tolerance.
TEST_F(ResumeTest, ReshardsAcrossZeroStages) {
  auto a = Run(TrainCommand(2, "z0", 1, 1, 1, 0, 12));
  ASSERT_EQ(a.exit_code, 0) << a.out << a.err;
  const auto ref = Losses("z0");
  EXPECT_EQ(Manifest("z0/checkpoints/step_00000004").layout().data(), 2);

  auto up = Run(TrainCommand(4, "z1", 1, 1, 1, 1, 12) + " --resume " + (dir_ / "z0/checkpoints/step_00000004").string());
  ASSERT_EQ(up.exit_code, 0) << up.out << up.err;
  EXPECT_NE(up.out.find("loaded everything from"), std::string::npos) << up.out;
  ExpectLossesMatch(Losses("z1"), ref, 5, 12, 5e-5);
  const ckpt::Checkpoint m = Manifest("z1/checkpoints/step_00000008");
  EXPECT_EQ(m.layout().zero_stage(), 1);
  EXPECT_EQ(m.layout().data(), 4);

  auto down = Run(TrainCommand(1, "z0b", 1, 1, 1, 0, 12) + " --resume " +
                  (dir_ / "z1/checkpoints/step_00000008").string());
  ASSERT_EQ(down.exit_code, 0) << down.out << down.err;
  ExpectLossesMatch(Losses("z0b"), ref, 9, 12, 5e-5);

  auto two = Run(TrainCommand(2, "z2", 1, 1, 1, 2, 12) + " --resume " + (dir_ / "z0/checkpoints/step_00000004").string());
  ASSERT_EQ(two.exit_code, 0) << two.out << two.err;
  EXPECT_NE(two.out.find("loaded everything from"), std::string::npos) << two.out;
  ExpectLossesMatch(Losses("z2"), ref, 5, 12, 5e-5);
  EXPECT_EQ(Manifest("z2/checkpoints/step_00000008").layout().zero_stage(), 2);

  auto from_two = Run(TrainCommand(4, "z1b", 1, 1, 1, 1, 12) + " --resume " +
                      (dir_ / "z2/checkpoints/step_00000008").string());
  ASSERT_EQ(from_two.exit_code, 0) << from_two.out << from_two.err;
  ExpectLossesMatch(Losses("z1b"), ref, 9, 12, 5e-5);
}

// Context parallelism splits only activations: a CP 1 x DP 2 run with
// document-masked attention and per-document positions saves at step 4; CP 2
// x DP 2 (ZeRO-1 sharded over the 4 replicas) resumes from it and saves at
// step 8; CP 4 (ZeRO-2) resumes from that, and so does one process. The
// losses follow the uninterrupted run to fp32 tolerance.
TEST_F(ResumeTest, ReshardsAcrossContextSizes) {
  const std::string docs = " --set data.document_mask=true --set data.reset_positions=true";
  auto a = Run(TrainCommand(2, "c1", 1, 1, 1, 0, 12) + docs);
  ASSERT_EQ(a.exit_code, 0) << a.out << a.err;
  const auto ref = Losses("c1");

  auto two = Run(TrainCommand(4, "c2", 1, 1, 1, 1, 12) + docs + " --set parallel.context=2 --resume " +
                 (dir_ / "c1/checkpoints/step_00000004").string());
  ASSERT_EQ(two.exit_code, 0) << two.out << two.err;
  EXPECT_NE(two.out.find("loaded everything from"), std::string::npos) << two.out;
  ExpectLossesMatch(Losses("c2"), ref, 5, 12, 5e-5);
  const ckpt::Checkpoint m = Manifest("c2/checkpoints/step_00000008");
  EXPECT_EQ(m.layout().context(), 2);
  EXPECT_EQ(m.layout().data(), 2);

  auto four = Run(TrainCommand(4, "c4", 1, 1, 1, 2, 12) + docs + " --set parallel.context=4 --resume " +
                  (dir_ / "c2/checkpoints/step_00000008").string());
  ASSERT_EQ(four.exit_code, 0) << four.out << four.err;
  ExpectLossesMatch(Losses("c4"), ref, 9, 12, 5e-5);

  // And back to no context parallelism, on one process.
  auto back = Run(TrainCommand(1, "c1b", 1, 1, 1, 0, 12) + docs + " --resume " +
                  (dir_ / "c2/checkpoints/step_00000008").string());
  ASSERT_EQ(back.exit_code, 0) << back.out << back.err;
  ExpectLossesMatch(Losses("c1b"), ref, 9, 12, 5e-5);
}

// ZeRO-1 with virtual stages: each replica's moment slice comes back exactly.
TEST_F(ResumeTest, ZeroOneResumesBitwise) {
  auto full = Run(TrainCommand(4, "full", 1, 2, 2, 1, 8));
  ASSERT_EQ(full.exit_code, 0) << full.out << full.err;
  auto resumed = Run(TrainCommand(4, "resumed", 1, 2, 2, 1, 8) + " --resume " +
                     (dir_ / "full/checkpoints/step_00000004").string());
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
  const auto a = Losses("full"), b = Losses("resumed");
  for (int64_t s = 5; s <= 8; ++s) EXPECT_EQ(a.at(s), b.at(s)) << "step " << s;
  EXPECT_TRUE(SameShards("full/checkpoints/step_00000008", "resumed/checkpoints/step_00000008"));
}

TEST_F(ResumeTest, KillDuringSaveKeepsPreviousCheckpoint) {
  // A model large enough (about 30 MB of shards per rank) that writing a
  // save takes far longer than the 1 ms between two looks at its files.
  const std::string bigger = " --set model.dim=256 --set model.ffn_dim=512";
  auto full = Run(TrainCommand(2, "full", 2, 1, 1, 0, 12) + bigger);
  ASSERT_EQ(full.exit_code, 0) << full.out << full.err;
  std::vector<uint64_t> final_size;
  for (int r = 0; r < 2; ++r) {
    final_size.push_back(fs::file_size(dir_ / "full/checkpoints/step_00000008" / ckpt::RankFileName(r)));
  }

  // The same run again; mpirun's pid goes to a file, its children are the ranks.
  const std::string run = (dir_ / "crash").string();
  const fs::path pid_file = dir_ / "mpirun.pid";
  std::string script = "(";
  script += TrainCommand(2, "crash", 2, 1, 1, 0, 12);
  script += bigger + " & echo $! > " + pid_file.string() + "; wait $!; echo exit=$?)";
  testing::CommandResult crash;
  std::thread job([&] { crash = Run(script); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  auto pause = [] { std::this_thread::sleep_for(std::chrono::microseconds(200)); };
  pid_t mpirun = 0;
  while (mpirun == 0 && std::chrono::steady_clock::now() < deadline) {
    std::ifstream(pid_file) >> mpirun;
    pause();
  }
  std::vector<pid_t> ranks;
  while (mpirun > 0 && ranks.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    // Not Run(): its output files belong to the job.
    ranks.clear();
    std::FILE* children = ::popen(("pgrep -P " + std::to_string(mpirun)).c_str(), "r");
    if (children == nullptr) break;
    for (int pid = 0; std::fscanf(children, "%d", &pid) == 1;) ranks.push_back(pid);
    ::pclose(children);
  }
  // Kill a rank as soon as a rank file of step 8 exists and is shorter than
  // it ends up in the uninterrupted run: the save is then certainly unfinished.
  bool killed_mid_save = false;
  std::string seen;
  const fs::path step8 = fs::path(run) / "checkpoints/step_00000008";
  while (ranks.size() == 2 && !killed_mid_save && std::chrono::steady_clock::now() < deadline &&
         !fs::exists(step8 / ckpt::kManifestFile)) {
    for (int r = 0; r < 2 && !killed_mid_save; ++r) {
      std::error_code ec;
      const uint64_t size = fs::file_size(step8 / ckpt::RankFileName(r), ec);
      if (ec || size >= final_size[static_cast<size_t>(r)]) continue;
      killed_mid_save = ::kill(ranks.back(), SIGKILL) == 0;
      std::ostringstream what;
      what << ckpt::RankFileName(r) << " at " << size << " of " << final_size[static_cast<size_t>(r)] << " bytes";
      seen = what.str();
    }
    pause();
  }
  job.join();
  ASSERT_EQ(ranks.size(), 2u) << "could not find the ranks of mpirun " << mpirun;
  ASSERT_TRUE(killed_mid_save) << "never saw the save of step 8 in progress\n" << crash.out << crash.err;
  std::cout << "[ killed     ] a rank, with " << seen << "\n";
  EXPECT_EQ(crash.out.find("exit=0"), std::string::npos) << seen << "\n" << crash.out << crash.err;
  std::ifstream latest(run + "/checkpoints/latest");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step_00000004") << "killed with " << seen;
  EXPECT_FALSE(fs::exists(step8 / ckpt::kManifestFile)) << "killed with " << seen;

  auto resumed = Run(TrainCommand(2, "crash", 2, 1, 1, 0, 12) + bigger);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
  EXPECT_NE(resumed.out.find("step 4,"), std::string::npos) << resumed.out;
  EXPECT_TRUE(SameShards("full/checkpoints/step_00000012", "crash/checkpoints/step_00000012"));
  EXPECT_TRUE(fs::exists(step8 / ckpt::kManifestFile));
}

TEST_F(ResumeTest, SignalSavesAndExitsThree) {
  const std::string run = (dir_ / "sig").string();
  const std::string script = TrainCommand(2, "sig", 1, 2, 1, 0, 100000) +
                             " & job=$!; for i in $(seq 1200); do grep -q '\"step\":3[,}]' " + run +
                             "/metrics.jsonl 2>/dev/null && break; sleep 0.05; done; "
                             "kill -USR1 $job; wait $job; echo exit=$?";
  auto sig = Run("(" + script + ")");
  ASSERT_NE(sig.out.find("exit=3"), std::string::npos) << sig.out << sig.err;
  EXPECT_NE((sig.out + sig.err).find("latam-train: preempted: stopped by signal 10 after step"), std::string::npos)
      << sig.err;
  auto reader = ckpt::CheckpointReader::Open(run + "/checkpoints");
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  const int64_t saved = (*reader)->manifest().step();
  EXPECT_GE(saved, 3);
  // The pre-emption is on record in metrics.jsonl too, at the step saved.
  EXPECT_NE(testing::ReadFileBytes(run + "/metrics.jsonl")
                .find("{\"step\":" + std::to_string(saved) + ",\"preempted_by_signal\":10"),
            std::string::npos);
  EXPECT_EQ((*reader)->manifest().consumed_samples(), static_cast<uint64_t>(saved) * 16);

  auto resumed = Run(TrainCommand(2, "sig", 1, 2, 1, 0, static_cast<int>(saved) + 2));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
  const auto losses = Losses("sig");
  EXPECT_TRUE(losses.count(saved + 2));
  EXPECT_NE(resumed.out.find("step " + std::to_string(saved) + ","), std::string::npos) << resumed.out;
}

// A signal that reaches one rank only (here rank 1, not rank 0, which
// prints) stops every rank after the same step, and the message names it.
TEST_F(ResumeTest, SignalToOneRankStopsEveryRankAndIsNamed) {
  const std::string run = (dir_ / "sig1").string();
  const std::string script =
      TrainCommand(2, "sig1", 1, 2, 1, 0, 100000) + " & job=$!; for i in $(seq 1200); do grep -q '\"step\":3[,}]' " +
      run +
      "/metrics.jsonl 2>/dev/null && break; sleep 0.05; done; "
      "for p in $(pgrep -P $job); do tr '\\0' '\\n' < /proc/$p/environ | grep -qx OMPI_COMM_WORLD_RANK=1 && "
      "kill -TERM $p && echo signalled=$p; done; wait $job; echo exit=$?";
  auto sig = Run("(" + script + ")");
  ASSERT_NE(sig.out.find("signalled="), std::string::npos) << "found no rank 1 to signal\n" << sig.out << sig.err;
  ASSERT_NE(sig.out.find("exit=3"), std::string::npos) << sig.out << sig.err;
  EXPECT_NE(sig.err.find("latam-train: preempted: stopped by signal 15 after step"), std::string::npos) << sig.err;
  auto reader = ckpt::CheckpointReader::Open(run + "/checkpoints");
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  const int64_t saved = (*reader)->manifest().step();
  EXPECT_GE(saved, 3);
  EXPECT_NE(testing::ReadFileBytes(run + "/metrics.jsonl")
                .find("{\"step\":" + std::to_string(saved) + ",\"preempted_by_signal\":15"),
            std::string::npos);
}

// SIGUSR1 to one rank that is not rank 0 of a tensor 2 x pipeline 2 job
// (rank 3: the last stage's second tensor rank) names signal 10 on rank 0,
// which prints the message and writes metrics.jsonl.
TEST_F(ResumeTest, SigusrToOneNonZeroRankIsNamed) {
  const std::string run = (dir_ / "sig3").string();
  const std::string script =
      TrainCommand(4, "sig3", 2, 2, 1, 0, 100000) + " & job=$!; for i in $(seq 1200); do grep -q '\"step\":3[,}]' " +
      run +
      "/metrics.jsonl 2>/dev/null && break; sleep 0.05; done; "
      "for p in $(pgrep -P $job); do tr '\\0' '\\n' < /proc/$p/environ | grep -qx OMPI_COMM_WORLD_RANK=3 && "
      "kill -USR1 $p && echo signalled=$p; done; wait $job; echo exit=$?";
  auto sig = Run("(" + script + ")");
  ASSERT_NE(sig.out.find("signalled="), std::string::npos) << "found no rank 3 to signal\n" << sig.out << sig.err;
  ASSERT_NE(sig.out.find("exit=3"), std::string::npos) << sig.out << sig.err;
  EXPECT_NE(sig.err.find("latam-train: preempted: stopped by signal 10 after step"), std::string::npos) << sig.err;
  EXPECT_EQ(sig.err.find("stopped by signal 0"), std::string::npos) << sig.err;
  auto reader = ckpt::CheckpointReader::Open(run + "/checkpoints");
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  const int64_t saved = (*reader)->manifest().step();
  EXPECT_NE(testing::ReadFileBytes(run + "/metrics.jsonl")
                .find("{\"step\":" + std::to_string(saved) + ",\"preempted_by_signal\":10"),
            std::string::npos);
}

}  // namespace
}  // namespace latam
