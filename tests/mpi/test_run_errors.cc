// Errors as a user meets them, with latam-train under mpirun (TP2 x PP2):
//   - a checksum error that only rank 2 can see (it alone reads the damaged
//     block) reaches the user with the rank, the tensor and the file named,
//     and every rank exits 2;
//   - an I/O error on rank 0 at start-up gives the same exit code on every
//     try, with the operating system's reason in the message;
//   - a refused start (--resume none on a run with checkpoints, or a resume
//     whose --set contradicts the checkpoint) writes nothing into the run
//     directory: config.textproto, metrics.jsonl and the TensorBoard file
//     keep their bytes and no file appears;
//   - a bad token that only a non-zero rank reads mid-run (in a training
//     step or in an evaluation, TP2 x DP2) reaches the user with that rank,
//     the file and the token named, and every rank exits 2.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "tests/test_util.h"

namespace latam {
namespace {

namespace fs = std::filesystem;
using testing::BinPath;

class RunErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("latam_run_errors");
    const auto gen = Run(BinPath("latam-data") + " synthesize --out " + (dir_ / "train.bin").string() +
                         " --vocab 512 --tokens 50000 --seed 3");
    ASSERT_EQ(gen.exit_code, 0) << gen.err;
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  testing::CommandResult Run(const std::string& command) { return testing::RunCommand(command, LATAM_SOURCE_DIR, dir_); }

  // latam-train, 4 ranks, TP2 x PP2, a tiny model; checkpoints every 2 steps.
  std::string TrainCommand(const std::string& run, int steps) const {
    std::string c = std::string(LATAM_MPIRUN) + " -np 4 " + BinPath("latam-train") +
                    " --config configs/quickstart.textproto --set data.tokenizer= --set model.vocab_size=512" +
                    " --set model.dim=32 --set model.n_layers=2 --set model.n_heads=4 --set model.n_kv_heads=2" +
                    " --set model.ffn_dim=64 --set data.seq_len=16 --set train.micro_batch_size=2" +
                    " --set train.global_batch_size=4 --set train.eval_every=0 --set train.save_every=2" +
                    " --set parallel.tensor=2 --set parallel.pipeline=2 --set train.steps=" + std::to_string(steps) +
                    " --set train.run_dir=" + (dir_ / run).string();
    for (int i = 0; i < 3; ++i) {
      c += " --set data.train[" + std::to_string(i) + "].path=" + (dir_ / "train.bin").string() + " --set data.eval[" +
           std::to_string(i) + "].path=" + (dir_ / "train.bin").string();
    }
    return c;
  }

  // A copy of `from` whose token `index` holds `id` (shard layout: a
  // 32-byte header, then uint32 tokens).
  fs::path DamagedCopy(const std::string& from, const std::string& name, uint64_t index, uint32_t id) const {
    std::string bytes = testing::ReadFileBytes(dir_ / from);
    const size_t at = 32 + 4 * index;
    EXPECT_LT(at + 4, bytes.size());
    for (int i = 0; i < 4; ++i) bytes[at + static_cast<size_t>(i)] = static_cast<char>((id >> (8 * i)) & 0xff);
    testing::WriteFileBytes(dir_ / name, bytes);
    return dir_ / name;
  }

  // Every file under `run` with its bytes.
  std::map<std::string, std::string> Snapshot(const std::string& run) const {
    std::map<std::string, std::string> files;
    for (const auto& e : fs::recursive_directory_iterator(dir_ / run)) {
      if (e.is_regular_file()) files[e.path().string()] = testing::ReadFileBytes(e.path());
    }
    return files;
  }

  fs::path dir_;
};

TEST_F(RunErrorsTest, ChecksumErrorOfANonZeroRankReachesTheUser) {
  auto a = Run(TrainCommand("a", 2));
  ASSERT_EQ(a.exit_code, 0) << a.out << a.err;
  // Damage one byte in the middle of rank 2's shard file: under the same
  // layout only rank 2 reads that block.
  const fs::path shard = dir_ / "a/checkpoints/step_00000002/rank_00002.bin";
  std::string bytes = testing::ReadFileBytes(shard);
  ASSERT_GT(bytes.size(), 100u);
  bytes[bytes.size() / 2] = static_cast<char>(bytes[bytes.size() / 2] ^ 0x10);
  testing::WriteFileBytes(shard, bytes);

  auto r = Run(TrainCommand("a", 4));
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("latam-train: error: rank 2: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rank_00002.bin"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("checksum"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("another rank"), std::string::npos) << r.err;
}

TEST_F(RunErrorsTest, StartUpIoErrorHasOneExitCodeAndItsReason) {
  // config.textproto's temporary file cannot be created: a directory holds its name.
  fs::create_directories(dir_ / "b/config.textproto.tmp");
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto r = Run(TrainCommand("b", 2));
    EXPECT_EQ(r.exit_code, 1) << "attempt " << attempt << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find("config.textproto.tmp: Is a directory"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("rank 0: "), std::string::npos) << r.err;
  }
  EXPECT_FALSE(fs::exists(dir_ / "b/metrics.jsonl"));
}

TEST_F(RunErrorsTest, RefusedStartWritesNothing) {
  auto a = Run(TrainCommand("a", 2));
  ASSERT_EQ(a.exit_code, 0) << a.out << a.err;
  const auto before = Snapshot("a");
  ASSERT_TRUE(before.count((dir_ / "a/config.textproto").string()));

  auto none = Run(TrainCommand("a", 4) + " --resume none");
  EXPECT_EQ(none.exit_code, 2) << none.out << none.err;
  EXPECT_NE(none.err.find("already has checkpoints"), std::string::npos) << none.err;
  EXPECT_EQ(Snapshot("a"), before);

  auto other = Run(TrainCommand("a", 4) + " --resume auto --set model.dim=64 --set model.ffn_dim=128");
  EXPECT_EQ(other.exit_code, 2) << other.out << other.err;
  EXPECT_EQ(Snapshot("a"), before);
}

TEST_F(RunErrorsTest, MidRunDataErrorOfANonZeroRankReachesTheUser) {
  // TP2 x DP2: data-parallel rank 1 is global ranks 2 and 3. The evaluation
  // reads windows in file order, window k on data-parallel rank k % 2, so
  // window 1 (tokens 16..32 at seq_len 16) is read by ranks 2 and 3 only.
  // Token 20 lies in window 1 alone. The first evaluation is at step 2.
  const fs::path eval = DamagedCopy("train.bin", "eval_bad.bin", 20, 100000);
  const std::string dp2 =
      " --set parallel.pipeline=1 --set train.eval_every=2 --set train.eval_samples=4 --set train.log_every=1";
  std::string command = TrainCommand("c", 4) + dp2;
  for (int i = 0; i < 3; ++i) command += " --set data.eval[" + std::to_string(i) + "].path=" + eval.string();
  auto r = Run(command);
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.out.find("step      2/4"), std::string::npos) << "the error should come mid-run\n" << r.out;
  EXPECT_NE(r.err.find("latam-train: error: rank 2: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("eval_bad.bin: token 20 has id 100000"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("another rank"), std::string::npos) << r.err;

  // A training step: each step draws 4 windows, 2 per data-parallel rank,
  // from a dataset of 12 windows. Damaging one window at a time, some window
  // is read first by data-parallel rank 1, and its message must name rank 2,
  // never "another rank".
  const auto gen = Run(BinPath("latam-data") + " synthesize --out " + (dir_ / "small.bin").string() +
                       " --vocab 512 --tokens 200 --seed 4");
  ASSERT_EQ(gen.exit_code, 0) << gen.err;
  std::set<std::string> reporters;
  for (uint64_t window = 0; window < 12 && !reporters.count("2"); ++window) {
    const fs::path train = DamagedCopy("small.bin", "train_bad.bin", window * 16 + 4, 100000);
    std::string c = TrainCommand(std::string("d").append(std::to_string(window)), 4) + dp2 + " --set train.eval_every=0";
    for (int i = 0; i < 3; ++i) c += " --set data.train[" + std::to_string(i) + "].path=" + train.string();
    auto t = Run(c);
    if (t.exit_code == 0) continue;  // no step of the run drew this window
    EXPECT_EQ(t.exit_code, 2) << t.out << t.err;
    EXPECT_NE(t.err.find("train_bad.bin: token " + std::to_string(window * 16 + 4) + " has id 100000"),
              std::string::npos)
        << t.err;
    EXPECT_EQ(t.err.find("another rank"), std::string::npos) << t.err;
    const size_t at = t.err.find("latam-train: error: rank ");
    ASSERT_NE(at, std::string::npos) << t.err;
    reporters.insert(t.err.substr(at + 25, 1));
  }
  EXPECT_TRUE(reporters.count("2")) << "no damaged window was found by data-parallel rank 1 first";
}

}  // namespace
}  // namespace latam
