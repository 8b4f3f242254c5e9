// LoRA adapter runs of latam-train under mpirun (TP2 x PP2), from a base
// model's checkpoint (train.init_from):
//   - the adapter trains: over the last 10 of 30 steps its loss is below the
//     base model's on the same batches (a run with lr 1e-9); the frozen
//     base's weights in the adapter run's checkpoint are bitwise the base
//     checkpoint's, and the adapter's B matrices have left zero;
//   - the checkpoint holds the base without moments and the adapter with
//     them, `latam-ckpt verify` accepts it, and a resume from its middle
//     step repeats the uninterrupted losses bitwise, also on another layout
//     (TP1 x PP2 x DP2, to 5e-5);
//   - a resume with another adapter, or without one, is refused with exit 2
//     naming the field.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/store.h"
#include "trainer/load_model.h"
#include "tests/test_util.h"

namespace latam {
namespace {

namespace fs = std::filesystem;
using testing::BinPath;

class AdapterRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("latam_adapter_run");
    const auto gen = Run(BinPath("latam-data") + " synthesize --out " + (dir_ / "train.bin").string() +
                         " --vocab 64 --tokens 50000 --branching 2 --seed 5");
    ASSERT_EQ(gen.exit_code, 0) << gen.err;
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  testing::CommandResult Run(const std::string& command) { return testing::RunCommand(command, LATAM_SOURCE_DIR, dir_); }

  // latam-train, 4 ranks, a tiny model, `layout` as --set flags.
  std::string TrainCommand(const std::string& run, int steps, const std::string& layout) const {
    std::string c = std::string(LATAM_MPIRUN) + " -np 4 " + BinPath("latam-train") +
                    " --config configs/quickstart.textproto --set data.tokenizer= --set model.vocab_size=64" +
                    " --set model.dim=32 --set model.n_layers=2 --set model.n_heads=4 --set model.n_kv_heads=2" +
                    " --set model.ffn_dim=64 --set data.seq_len=16 --set train.micro_batch_size=2" +
                    " --set train.global_batch_size=8 --set train.eval_every=0 --set train.log_every=1" +
                    " --set optimizer.warmup_steps=0 --set optimizer.min_lr=0 --set train.steps=" +
                    std::to_string(steps) + " --set train.run_dir=" + (dir_ / run).string() + layout;
    for (int i = 0; i < 3; ++i) {
      c += " --set data.train[" + std::to_string(i) + "].path=" + (dir_ / "train.bin").string() + " --set data.eval[" +
           std::to_string(i) + "].path=" + (dir_ / "train.bin").string();
    }
    return c;
  }
  static std::string Adapter(int rank) {
    std::string a = " --set adapter.kind=LORA --set adapter.rank=" + std::to_string(rank) + " --set adapter.alpha=16";
    const char* targets[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    for (int i = 0; i < 7; ++i) a += " --set adapter.targets[" + std::to_string(i) + "]=" + targets[i];
    return a;
  }

  std::map<int64_t, double> Losses(const std::string& run) const {
    return testing::TrainingLosses(dir_ / run / "metrics.jsonl");
  }

  // Tensor `name` of checkpoint `dir`, whole.
  static std::vector<float> ReadTensor(const fs::path& dir, const std::string& name) {
    auto reader = ckpt::CheckpointReader::Open(dir.string());
    EXPECT_TRUE(reader.ok()) << reader.status().message();
    if (!reader.ok()) return {};
    const ckpt::TensorRecord* t = (*reader)->Find(name);
    EXPECT_NE(t, nullptr) << name;
    if (t == nullptr) return {};
    const std::vector<int64_t> shape(t->shape().begin(), t->shape().end());
    const Block block = WholeBlock(shape);
    std::vector<float> out(static_cast<size_t>(block.numel()));
    const Status st = (*reader)->Read(name, block, out.data());
    EXPECT_TRUE(st.ok()) << st.message();
    return out;
  }

  fs::path dir_;
};

constexpr const char* kTp2Pp2 = " --set parallel.tensor=2 --set parallel.pipeline=2";

TEST_F(AdapterRunTest, TrainsFromABaseCheckpointAndResumes) {
  auto base = Run(TrainCommand("base", 4, kTp2Pp2) + " --set train.save_every=4 --set optimizer.lr=0.01");
  ASSERT_EQ(base.exit_code, 0) << base.out << base.err;
  const fs::path base_ckpt = dir_ / "base/checkpoints/step_00000004";
  const std::string from = " --set train.init_from=" + (dir_ / "base/checkpoints").string();

  // Adapter run: 30 steps, checkpoints at 15 and 30; and the base model on
  // the same batches (an adapter that barely moves: lr 1e-9). Measured: the
  // last 10 steps' mean loss 3.53 against the base's 3.63.
  const std::string lr = " --set optimizer.lr=0.01";
  auto lora = Run(TrainCommand("lora", 30, kTp2Pp2) + " --set train.save_every=15" + lr + from + Adapter(8));
  ASSERT_EQ(lora.exit_code, 0) << lora.out << lora.err;
  EXPECT_NE(lora.out.find("loaded weights"), std::string::npos) << lora.out;
  auto still = Run(TrainCommand("still", 30, kTp2Pp2) + " --set train.save_every=0 --set optimizer.lr=1e-9" + from +
                   Adapter(8));
  ASSERT_EQ(still.exit_code, 0) << still.out << still.err;
  const auto losses = Losses("lora"), base_losses = Losses("still");
  ASSERT_EQ(losses.size(), 30u);
  ASSERT_EQ(base_losses.size(), 30u);
  EXPECT_EQ(losses.at(1), base_losses.at(1)) << "a fresh adapter (B = 0) is the base model";
  double adapted = 0.0, frozen = 0.0;
  for (int64_t s = 21; s <= 30; ++s) adapted += losses.at(s) / 10, frozen += base_losses.at(s) / 10;
  EXPECT_LT(adapted, frozen - 0.05) << "the adapter did not train: " << adapted << " vs the base's " << frozen;

  const fs::path lora_ckpt = dir_ / "lora/checkpoints/step_00000030";
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
                           "model.layers.0.mlp.down_proj.weight", "model.norm.weight"}) {
    EXPECT_EQ(ReadTensor(lora_ckpt, name), ReadTensor(base_ckpt, name)) << name << " is frozen";
  }
  double b_norm = 0.0;
  for (float v : ReadTensor(lora_ckpt, "model.layers.0.mlp.up_proj.lora_B.weight")) b_norm += std::abs(v);
  EXPECT_GT(b_norm, 0.0);
  EXPECT_FALSE(ReadTensor(lora_ckpt, "model.layers.1.self_attn.o_proj.lora_A.weight.exp_avg").empty());
  {
    auto reader = ckpt::CheckpointReader::Open(lora_ckpt.string());
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    EXPECT_EQ((*reader)->Find("model.layers.0.self_attn.q_proj.weight.exp_avg"), nullptr) << "a frozen base has no moments";
    EXPECT_EQ((*reader)->manifest().adapter().rank(), 8);
  }
  auto verify = Run(BinPath("latam-ckpt") + " verify " + lora_ckpt.string());
  EXPECT_EQ(verify.exit_code, 0) << verify.out << verify.err;
  // Loading it for generation or evaluation (LoadModel) folds the adapter
  // in: W + (alpha / rank) B A, to fp32 rounding of the product (1e-5 of the
  // weight's scale).
  {
    auto loaded = LoadModel(lora_ckpt.string());
    ASSERT_TRUE(loaded.ok()) << loaded.status().message();
    EXPECT_TRUE(loaded->adapter_merged);
    const std::string q = "model.layers.1.self_attn.q_proj";
    const std::vector<float> w = ReadTensor(base_ckpt, q + ".weight");
    const std::vector<float> a = ReadTensor(lora_ckpt, q + ".lora_A.weight");
    const std::vector<float> b = ReadTensor(lora_ckpt, q + ".lora_B.weight");
    const Tensor merged = loaded->params->param(q + ".weight");
    const int64_t in = merged.shape.cols(), out = merged.shape.rows(), r = 8;
    ASSERT_EQ(static_cast<int64_t>(w.size()), out * in);
    double worst = 0.0, scale = 0.0, moved = 0.0;
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t i = 0; i < in; ++i) {
        double want = w[static_cast<size_t>(o * in + i)];
        for (int64_t k = 0; k < r; ++k) want += 2.0 * b[static_cast<size_t>(o * r + k)] * a[static_cast<size_t>(k * in + i)];
        const double got = merged.as<float>()[o * in + i];
        worst = std::max(worst, std::abs(got - want));
        scale = std::max(scale, std::abs(want));
        moved = std::max(moved, std::abs(want - w[static_cast<size_t>(o * in + i)]));
      }
    }
    EXPECT_LE(worst, 1e-5 * scale);
    EXPECT_GT(moved, 1e-4) << "the adapter should change the weight";
  }
  auto info = Run(BinPath("latam-ckpt") + " info " + lora_ckpt.string());
  EXPECT_EQ(info.exit_code, 0) << info.err;
  EXPECT_NE(info.out.find("\"adapter\""), std::string::npos) << info.out;


  // Resume from step 15, same layout (bitwise) and another one.
  fs::copy(dir_ / "lora", dir_ / "again", fs::copy_options::recursive);
  fs::remove_all(dir_ / "again/checkpoints/step_00000030");
  testing::WriteFileBytes(dir_ / "again/checkpoints/latest", "step_00000015\n");
  fs::copy(dir_ / "again", dir_ / "other", fs::copy_options::recursive);
  auto again = Run(TrainCommand("again", 30, kTp2Pp2) + " --set train.save_every=15" + lr + Adapter(8));
  ASSERT_EQ(again.exit_code, 0) << again.out << again.err;
  const auto resumed = Losses("again");
  for (int64_t s = 16; s <= 30; ++s) {
    ASSERT_TRUE(resumed.count(s)) << s;
    EXPECT_EQ(resumed.at(s), losses.at(s)) << "step " << s;
  }
  auto other = Run(TrainCommand("other", 30, " --set parallel.tensor=1 --set parallel.pipeline=2") +
                   " --set train.save_every=15" + lr + Adapter(8));
  ASSERT_EQ(other.exit_code, 0) << other.out << other.err;
  const auto resharded = Losses("other");
  for (int64_t s = 16; s <= 30; ++s) {
    ASSERT_TRUE(resharded.count(s)) << s;
    EXPECT_NEAR(resharded.at(s), losses.at(s), 5e-5 * losses.at(s)) << "step " << s;
  }

  // Another adapter, or none, cannot resume it.
  auto rank4 = Run(TrainCommand("lora", 32, kTp2Pp2) + lr + Adapter(4));
  EXPECT_EQ(rank4.exit_code, 2) << rank4.out << rank4.err;
  EXPECT_NE(rank4.err.find("adapter.rank"), std::string::npos) << rank4.err;
  auto none = Run(TrainCommand("lora", 32, kTp2Pp2) + lr);
  EXPECT_EQ(none.exit_code, 2) << none.out << none.err;
  EXPECT_NE(none.err.find("holds a LoRA adapter"), std::string::npos) << none.err;
}

}  // namespace
}  // namespace latam
