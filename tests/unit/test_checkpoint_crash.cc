// Checkpoint saves under simulated power cuts (tests/unit/fault_injection_env.h).
//
// A sequence of saves runs through a FaultInjectionEnv once to count the
// operations it makes on the disk (creates, writes, syncs, closes, renames,
// removals, directory syncs). Then, for every one of those operations in
// turn, the sequence runs again from scratch and the process "dies" just
// before it; the disk is reduced to what had been made durable, and:
//   - `latest`, if present, names a checkpoint that CheckpointReader opens,
//     whose every checksum verifies, and which is either the last save that
//     had completed or the one in flight, with exactly that save's values
//     and tokenizer;
//   - `latest` is absent only if the first save was in flight;
//   - a new save over what the crash left succeeds.
// Also: the crash model itself, on plain files.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <map>
#include <optional>

#include "checkpoint/state.h"
#include "checkpoint/store.h"
#include "parallel/communicator.h"
#include "tests/unit/fault_injection_env.h"

namespace latam::ckpt {
namespace {

namespace fs = std::filesystem;
using latam::testing::FaultInjectionEnv;

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("latam_crash_" + std::to_string(getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  std::string Read(const fs::path& p) const {
    auto r = Env::Default()->ReadFile(p.string());
    return r.ok() ? *r : "<missing>";
  }
  fs::path dir_;
};

// --- The crash model on plain files ----------------------------------------

TEST_F(CrashTest, ModelKeepsOnlyWhatWasMadeDurable) {
  const std::string d = dir_.string();
  ASSERT_TRUE(WriteFileAtomically(Env::Default(), d + "/old", "old contents").ok());
  FaultInjectionEnv env;
  ASSERT_TRUE(env.CreateDirs(d + "/sub").ok());
  {
    auto f = env.NewWritableFile(d + "/sub/synced");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*f)->Append("durable").ok());
    ASSERT_TRUE((*f)->Sync().ok());
    ASSERT_TRUE((*f)->Append(" and lost").ok());
    ASSERT_TRUE((*f)->Close().ok());
  }
  ASSERT_TRUE(env.SyncDir(d + "/sub").ok());
  ASSERT_TRUE(env.SyncDir(d).ok());  // sub/ and sub/synced are durable names now
  {
    auto f = env.NewWritableFile(d + "/unsynced_name");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*f)->Append("x").ok());
    ASSERT_TRUE((*f)->Sync().ok());
  }
  {
    auto f = env.NewWritableFile(d + "/new.tmp");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*f)->Append("new contents").ok());
    ASSERT_TRUE((*f)->Sync().ok());
  }
  ASSERT_TRUE(env.RenameFile(d + "/new.tmp", d + "/old").ok());
  EXPECT_EQ(Read(dir_ / "old"), "new contents");
  EXPECT_EQ(Read(dir_ / "sub/synced"), "durable and lost");
  EXPECT_EQ(env.operations(), 15) << ::testing::PrintToString(env.log());

  env.CrashBeforeOperation(env.operations());
  EXPECT_FALSE(env.RemoveFile(d + "/old").ok());
  EXPECT_TRUE(env.crashed());
  EXPECT_TRUE(fs::exists(dir_ / "old"));  // the refused operation did not happen
  ASSERT_TRUE(env.DropUnsyncedData().ok());

  EXPECT_EQ(Read(dir_ / "sub/synced"), "durable");        // truncated to the last Sync
  EXPECT_FALSE(fs::exists(dir_ / "unsynced_name"));       // its directory was never synced
  EXPECT_EQ(Read(dir_ / "old"), "old contents");          // the rename is undone...
  EXPECT_FALSE(fs::exists(dir_ / "new.tmp"));             // ...and so is the temporary's creation
}

TEST_F(CrashTest, AtomicWriteIsOldOrNewAtEveryCrashPoint) {
  const std::string path = (dir_ / "target").string();
  FaultInjectionEnv counter;
  ASSERT_TRUE(WriteFileAtomically(Env::Default(), path, "version 1").ok());
  ASSERT_TRUE(WriteFileAtomically(&counter, path, "version 2").ok());
  const int64_t n = counter.operations();
  ASSERT_GT(n, 0);
  int old_seen = 0, new_seen = 0;
  for (int64_t k = 0; k <= n; ++k) {
    ASSERT_TRUE(WriteFileAtomically(Env::Default(), path, "version 1").ok());
    FaultInjectionEnv env;
    env.CrashBeforeOperation(k);
    const Status s = WriteFileAtomically(&env, path, "version 2");
    EXPECT_EQ(s.ok(), k == n) << "crash point " << k;
    EXPECT_EQ(env.crashed(), k < n);
    ASSERT_TRUE(env.DropUnsyncedData().ok());
    const std::string got = Read(path);
    EXPECT_TRUE(got == "version 1" || got == "version 2") << "crash point " << k << ": " << got;
    (got == "version 1" ? old_seen : new_seen) += 1;
    EXPECT_FALSE(fs::exists(path + ".tmp")) << "crash point " << k;
  }
  // Before the directory sync the old file survives; after it the new one.
  EXPECT_EQ(old_seen, n);
  EXPECT_EQ(new_seen, 1);
}

// --- Checkpoint saves ------------------------------------------------------

constexpr int64_t kSteps[] = {1, 2, 3};
constexpr int kKeep = 2;  // the third save removes the first

config::ModelConfig SomeModel() {
  config::ModelConfig m;
  m.set_vocab_size(16);
  m.set_dim(8);
  m.set_n_layers(1);
  m.set_n_heads(2);
  m.set_n_kv_heads(1);
  m.set_ffn_dim(12);
  return m;
}

// The state saved at `step`: every tensor of SomeModel, lm_head.weight in
// two blocks. Every value is a function of (step, tensor, element), exact in
// float.
struct SavedState {
  explicit SavedState(int64_t step) {
    const std::vector<TensorSpec> tensors = ModelTensors(SomeModel(), false);
    for (size_t t = 0; t < tensors.size(); ++t) {
      const auto& [name, shape] = tensors[t];
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      values[name].resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) values[name][static_cast<size_t>(i)] = Value(step, t, i);
      std::vector<Block> blocks = {WholeBlock(shape)};
      if (name == "lm_head.weight") blocks = {Block{{0, 0}, {10, 8}}, Block{{10, 0}, {6, 8}}};
      for (const Block& b : blocks) {
        StatePiece p;
        p.name = name;
        p.global_shape = shape;
        p.block = b;
        p.data = values[name].data() + b.offset[0] * (shape.size() > 1 ? shape[1] : 1);
        p.saved_here = true;
        pieces.push_back(p);
      }
    }
  }
  static float Value(int64_t step, size_t tensor, int64_t i) {
    return static_cast<float>(step * 1000 + static_cast<int64_t>(tensor) * 200 + i) * 0.5f;
  }
  std::map<std::string, std::vector<float>> values;
  std::vector<StatePiece> pieces;
};

Checkpoint HeaderAt(int64_t step) {
  Checkpoint h;
  h.set_format_version(kFormatVersion);
  h.set_step(step);
  h.set_consumed_samples(static_cast<uint64_t>(step) * 16);
  *h.mutable_model() = SomeModel();
  return h;
}

std::string TokenizerText(int64_t step) { return "{\"tokenizer of step\": " + std::to_string(step) + "}"; }

// Runs the saves of kSteps through `env` until one fails; returns the index
// of the save during which `env` first refused an operation (nullopt if it
// never did).
std::optional<size_t> RunSaves(const fs::path& root, FaultInjectionEnv* env) {
  const std::string tokenizer = (root / "tokenizer.json").string();
  SelfCommunicator world("world");
  CheckpointSaver saver((root / "checkpoints").string(), &world, kKeep, tokenizer, env);
  for (size_t s = 0; s < std::size(kSteps); ++s) {
    // The tokenizer changes between saves, so a stale copy would be caught.
    EXPECT_TRUE(WriteFileAtomically(Env::Default(), tokenizer, TokenizerText(kSteps[s])).ok());
    const SavedState state(kSteps[s]);
    const Status started = saver.Start(HeaderAt(kSteps[s]), state.pieces);
    Result<std::optional<SaveStats>> done = started.ok() ? saver.Poll(true) : Result<std::optional<SaveStats>>(started);
    if (env->crashed()) return s;
    EXPECT_TRUE(done.ok()) << done.status().message();
    EXPECT_TRUE(done.ok() && done->has_value());
  }
  return std::nullopt;
}

// Checks that `ckpts` holds exactly the save of `step`, checksums and values.
void ExpectCheckpointOf(const std::string& ckpts, int64_t step, const std::string& where) {
  auto reader = CheckpointReader::Open(ckpts);
  ASSERT_TRUE(reader.ok()) << where << ": " << reader.status().message();
  const Status verified = (*reader)->VerifyAll();
  ASSERT_TRUE(verified.ok()) << where << ": " << verified.message();
  EXPECT_EQ((*reader)->manifest().step(), step) << where;
  EXPECT_EQ((*reader)->manifest().consumed_samples(), static_cast<uint64_t>(step) * 16) << where;
  const SavedState want(step);
  for (const auto& [name, values] : want.values) {
    const TensorRecord* t = (*reader)->Find(name);
    ASSERT_NE(t, nullptr) << where << ": " << name;
    std::vector<float> got(values.size());
    ASSERT_TRUE((*reader)->Read(name, WholeBlock({t->shape().begin(), t->shape().end()}), got.data()).ok());
    EXPECT_EQ(got, values) << where << ": " << name;
  }
  auto tok = Env::Default()->ReadFile((*reader)->dir() + "/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << where << ": " << tok.status().message();
  EXPECT_EQ(*tok, TokenizerText(step)) << where;
}

TEST_F(CrashTest, EveryCrashPointOfASaveLeavesLatestOnACompleteCheckpoint) {
  // A clean run counts the operations, and must itself end on the last save.
  int64_t operations = 0;
  {
    const fs::path root = dir_ / "clean";
    fs::create_directories(root);
    FaultInjectionEnv env;
    EXPECT_EQ(RunSaves(root, &env), std::nullopt);
    operations = env.operations();
    ASSERT_TRUE(env.DropUnsyncedData().ok());
    ExpectCheckpointOf((root / "checkpoints").string(), kSteps[2], "after a clean run and a crash");
    EXPECT_FALSE(fs::exists(root / "checkpoints" / StepDirName(kSteps[0])));  // retention
  }
  ASSERT_GT(operations, 0);

  int64_t crash_points = 0, kept_previous = 0, reached_new = 0, no_checkpoint = 0;
  for (int64_t k = 0; k < operations; ++k) {
    const std::string where = "crash before operation " + std::to_string(k) + " of " + std::to_string(operations);
    const fs::path root = dir_ / ("crash_" + std::to_string(k));
    fs::create_directories(root);
    FaultInjectionEnv env;
    env.CrashBeforeOperation(k);
    const std::optional<size_t> in_flight = RunSaves(root, &env);
    ASSERT_TRUE(in_flight.has_value()) << where << ": the crash never happened";
    ASSERT_EQ(env.operations(), k) << where;
    const std::vector<std::string> log = env.log();
    const std::string next_op = ::testing::PrintToString(log.empty() ? "" : log.back());
    ASSERT_TRUE(env.DropUnsyncedData().ok()) << where;
    ++crash_points;

    const std::string ckpts = (root / "checkpoints").string();
    const bool has_latest = fs::exists(fs::path(ckpts) / kLatestFile);
    if (!has_latest) {
      EXPECT_EQ(*in_flight, 0u) << where << " (last done: " << next_op << "): latest is gone";
      ++no_checkpoint;
    } else {
      auto reader = CheckpointReader::Open(ckpts);
      ASSERT_TRUE(reader.ok()) << where << ": " << reader.status().message();
      const int64_t step = (*reader)->manifest().step();
      const int64_t now = kSteps[*in_flight];
      const std::optional<int64_t> before = *in_flight > 0 ? std::optional<int64_t>(kSteps[*in_flight - 1]) : std::nullopt;
      EXPECT_TRUE(step == now || step == before) << where << ": latest is step " << step;
      (step == now ? reached_new : kept_previous) += 1;
      ExpectCheckpointOf(ckpts, step, where);
    }

    // Restarting after the crash: a new save over the leftovers completes.
    SelfCommunicator world("world");
    CheckpointSaver saver(ckpts, &world, kKeep, "");
    const SavedState state(100);
    ASSERT_TRUE(saver.Start(HeaderAt(100), state.pieces).ok()) << where;
    auto done = saver.Poll(true);
    ASSERT_TRUE(done.ok()) << where << ": " << done.status().message();
    auto reader = CheckpointReader::Open(ckpts);
    ASSERT_TRUE(reader.ok()) << where << ": " << reader.status().message();
    EXPECT_EQ((*reader)->manifest().step(), 100) << where;
    EXPECT_TRUE((*reader)->VerifyAll().ok()) << where;
    if (!HasFailure()) fs::remove_all(root);
  }
  EXPECT_EQ(crash_points, operations);
  EXPECT_EQ(kept_previous + reached_new + no_checkpoint, crash_points);
  // Both outcomes happen: the sweep reaches past each save's `latest` rename.
  EXPECT_GT(kept_previous, 0);
  EXPECT_GT(reached_new, 0);
  EXPECT_GT(no_checkpoint, 0);
  std::cout << "[ crash points ] " << crash_points << " (previous checkpoint kept: " << kept_previous
            << ", new one complete: " << reached_new << ", none yet: " << no_checkpoint << ")\n";
}

}  // namespace
}  // namespace latam::ckpt
