// Errors as a user meets them, with latam-train under mpirun (TP2 x PP2):
//   - a checksum error that only rank 2 can see (it alone reads the damaged
//     block) reaches the user with the rank, the tensor and the file named,
//     and every rank exits 2;
//   - an I/O error on rank 0 at start-up gives the same exit code on every
//     try, with the operating system's reason in the message;
//   - a refused start (--resume none on a run with checkpoints, or a resume
//     whose --set contradicts the checkpoint) writes nothing into the run
//     directory: config.textproto, metrics.jsonl and the TensorBoard file
//     keep their bytes and no file appears.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
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

}  // namespace
}  // namespace latam
