// The checkpoint tools as a user runs them: latam-ckpt info/verify/
// export-hf/import-hf, latam-generate, continued pretraining from an
// imported model (train.init_from), and every kind of bad checkpoint
// giving exit code 2 with the tensor and file named.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "checkpoint/store.h"
#include "tests/test_util.h"

namespace latam {
namespace {

namespace fs = std::filesystem;
using testing::BinPath;

class CheckpointToolsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::FreshTestDir("latam_ckpt_tools"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }

  testing::CommandResult Run(const std::string& command) {
    return testing::RunCommand(command, LATAM_SOURCE_DIR, dir_);
  }
  std::string Path(const std::string& p) const { return (dir_ / p).string(); }

  // A synthetic shard and a tokenizer trained on a small Spanish text.
  void PrepareData() {
    auto gen =
        Run(BinPath("latam-data") + " synthesize --out " + Path("a.bin") + " --vocab 512 --tokens 100000 --seed 1");
    ASSERT_EQ(gen.exit_code, 0) << gen.err;
    gen = Run(BinPath("latam-data") + " synthesize --out " + Path("b.bin") + " --vocab 512 --tokens 100000 --seed 2");
    ASSERT_EQ(gen.exit_code, 0) << gen.err;
    std::ofstream(dir_ / "corpus.txt") << "La lengua española se habla en América Latina y en España. "
                                          "El portugués se habla en Brasil. El quechua y el guaraní también.\n";
    auto tok = Run(BinPath("latam-data") + " train-tokenizer --vocab-size 300 --out " + Path("tokenizer.json") + " " +
                   Path("corpus.txt"));
    ASSERT_EQ(tok.exit_code, 0) << tok.err;
  }

  // One-process training of a tiny model on shard `data`.
  std::string Train(const std::string& run, int steps, const std::string& data = "a.bin") const {
    std::string c = BinPath("latam-train") +
                    " --config configs/quickstart.textproto --set parallel.tensor=1 --set parallel.pipeline=1" +
                    " --set data.tokenizer=" + Path("tokenizer.json") + " --set model.vocab_size=512" +
                    " --set model.dim=64 --set model.n_layers=2 --set model.n_heads=4 --set model.n_kv_heads=2" +
                    " --set model.ffn_dim=128 --set data.seq_len=32 --set train.micro_batch_size=4" +
                    " --set train.global_batch_size=8 --set train.eval_every=0 --set train.save_every=5" +
                    " --set train.steps=" + std::to_string(steps) + " --set train.run_dir=" + Path(run);
    for (int i = 0; i < 3; ++i) {
      c += " --set data.train[" + std::to_string(i) + "].path=" + Path(data) + " --set data.eval[" +
           std::to_string(i) + "].path=" + Path(data);
    }
    return c;
  }

  std::map<int64_t, double> Losses(const std::string& run) const {
    return testing::TrainingLosses(dir_ / run / "metrics.jsonl");
  }

  // Every parameter tensor (no moments) of a checkpoint, whole.
  static std::map<std::string, std::vector<float>> Weights(const std::string& checkpoint) {
    std::map<std::string, std::vector<float>> out;
    auto r = ckpt::CheckpointReader::Open(checkpoint);
    EXPECT_TRUE(r.ok()) << r.status().message();
    if (!r.ok()) return out;
    for (const ckpt::TensorRecord& t : (*r)->manifest().tensors()) {
      if (t.name().find(".exp_avg") != std::string::npos) continue;
      const Block whole = WholeBlock({t.shape().begin(), t.shape().end()});
      std::vector<float> v(static_cast<size_t>(whole.numel()));
      EXPECT_TRUE((*r)->Read(t.name(), whole, v.data()).ok());
      out[t.name()] = std::move(v);
    }
    return out;
  }

  fs::path dir_;
};

TEST_F(CheckpointToolsTest, InfoVerifyExportImportGenerate) {
  PrepareData();
  auto train = Run(Train("run", 10));
  ASSERT_EQ(train.exit_code, 0) << train.out << train.err;

  auto info = Run(BinPath("latam-ckpt") + " info " + Path("run"));
  ASSERT_EQ(info.exit_code, 0) << info.err;
  const auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["step"].get<int64_t>(), 10);
  EXPECT_EQ(j["consumed_samples"].get<int64_t>(), 80);
  EXPECT_EQ(j["layout"]["tensor"].get<int>(), 1);
  EXPECT_EQ(j["model"]["dim"].get<int>(), 64);
  EXPECT_EQ(j["optimizer"]["step"].get<int>(), 10);
  bool has_embedding = false, has_moment = false;
  for (const auto& t : j["tensors"]) {
    has_embedding |= t["name"] == "model.embed_tokens.weight" && t["shape"] == std::vector<int64_t>{512, 64};
    has_moment |= t["name"] == "model.layers.1.mlp.down_proj.weight.exp_avg_sq";
  }
  EXPECT_TRUE(has_embedding && has_moment) << info.out;

  auto verify = Run(BinPath("latam-ckpt") + " verify " + Path("run/checkpoints"));
  ASSERT_EQ(verify.exit_code, 0) << verify.err;
  EXPECT_NE(verify.out.find("every checksum matches"), std::string::npos);

  // export-hf -> import-hf gives the same parameter bits.
  auto exp = Run(BinPath("latam-ckpt") + " export-hf " + Path("run") + " " + Path("hf"));
  ASSERT_EQ(exp.exit_code, 0) << exp.err;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"}) {
    EXPECT_TRUE(fs::exists(dir_ / "hf" / f)) << f;
  }
  const auto config = nlohmann::json::parse(testing::ReadFileBytes(dir_ / "hf/config.json"));
  EXPECT_EQ(config["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(config["num_key_value_heads"], 2);
  EXPECT_EQ(config["torch_dtype"], "float32");
  auto imp = Run(BinPath("latam-ckpt") + " import-hf " + Path("hf") + " " + Path("imported"));
  ASSERT_EQ(imp.exit_code, 0) << imp.err;
  const auto original = Weights(Path("run"));
  const auto round_trip = Weights(Path("imported"));
  ASSERT_EQ(original.size(), round_trip.size());
  for (const auto& [name, values] : original) {
    ASSERT_TRUE(round_trip.count(name)) << name;
    EXPECT_EQ(std::memcmp(values.data(), round_trip.at(name).data(), values.size() * sizeof(float)), 0) << name;
  }
  // Sharded bf16 export: an index and several files, loadable again.
  auto sharded = Run(BinPath("latam-ckpt") + " export-hf " + Path("run") + " " + Path("hf16") +
                     " --dtype bfloat16 --max-shard-bytes 100000");
  ASSERT_EQ(sharded.exit_code, 0) << sharded.err;
  EXPECT_TRUE(fs::exists(dir_ / "hf16/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir_ / "hf16/model.safetensors"));
  auto imp16 = Run(BinPath("latam-ckpt") + " import-hf " + Path("hf16") + " " + Path("imported16"));
  ASSERT_EQ(imp16.exit_code, 0) << imp16.err;
  const auto bf16 = Weights(Path("imported16"));
  for (const auto& [name, values] : original) {
    for (size_t i = 0; i < values.size(); ++i) {
      ASSERT_NEAR(bf16.at(name)[i], values[i], std::abs(values[i]) * (1.0 / 256) + 1e-30) << name;
    }
  }
  // Nothing on disk is overwritten.
  auto again = Run(BinPath("latam-ckpt") + " import-hf " + Path("hf") + " " + Path("imported"));
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("not empty"), std::string::npos) << again.err;

  // Generation: greedy is deterministic and the same from the trained
  // checkpoint and from its Hugging Face round trip.
  const std::string gen_args = " --prompt 'La lengua' --max-new-tokens 12 --temperature 0";
  auto g1 = Run(BinPath("latam-generate") + " --checkpoint " + Path("run") + gen_args);
  auto g2 = Run(BinPath("latam-generate") + " --checkpoint " + Path("imported") + gen_args);
  ASSERT_EQ(g1.exit_code, 0) << g1.err;
  ASSERT_EQ(g2.exit_code, 0) << g2.err;
  EXPECT_FALSE(g1.out.empty());
  EXPECT_EQ(g1.out, g2.out);
  auto s1 = Run(BinPath("latam-generate") + " --checkpoint " + Path("run") +
                " --prompt 'El' --max-new-tokens 16 --temperature 1 --top-p 0.9 --seed 7");
  auto s2 = Run(BinPath("latam-generate") + " --checkpoint " + Path("run") +
                " --prompt 'El' --max-new-tokens 16 --temperature 1 --top-p 0.9 --seed 7");
  ASSERT_EQ(s1.exit_code, 0) << s1.err;
  EXPECT_EQ(s1.out, s2.out);
  // --device cpu is the default; --device cuda runs on a GPU, or is bad input
  // (exit 2, naming the flag) where there is none; other devices are bad input.
  auto cpu = Run(BinPath("latam-generate") + " --checkpoint " + Path("run") + gen_args + " --device cpu");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  EXPECT_EQ(cpu.out, g1.out);
  auto gpu = Run(BinPath("latam-generate") + " --checkpoint " + Path("run") + gen_args + " --device cuda");
  if (gpu.exit_code == 0) {
    EXPECT_FALSE(gpu.out.empty());
  } else {
    EXPECT_EQ(gpu.exit_code, 2) << gpu.err;
    EXPECT_NE(gpu.err.find("--device cuda: "), std::string::npos) << gpu.err;
    EXPECT_TRUE(gpu.out.empty()) << gpu.out;
  }
  auto other = Run(BinPath("latam-generate") + " --checkpoint " + Path("run") + gen_args + " --device tpu");
  EXPECT_EQ(other.exit_code, 2);
  EXPECT_NE(other.err.find("--device tpu: expected cpu or cuda"), std::string::npos) << other.err;
}

// Continued pretraining: an imported model starts a new run on a new data
// mixture at step 0 with fresh optimizer state; its first loss is already
// below a fresh model's.
TEST_F(CheckpointToolsTest, ContinuedPretrainingFromImportedModel) {
  PrepareData();
  ASSERT_EQ(Run(Train("base", 20)).exit_code, 0);
  ASSERT_EQ(Run(BinPath("latam-ckpt") + " export-hf " + Path("base") + " " + Path("hf")).exit_code, 0);
  ASSERT_EQ(Run(BinPath("latam-ckpt") + " import-hf " + Path("hf") + " " + Path("imported")).exit_code, 0);

  auto cont = Run(Train("cont", 3) + " --set train.init_from=" + Path("imported"));
  ASSERT_EQ(cont.exit_code, 0) << cont.out << cont.err;
  EXPECT_NE(cont.out.find("loaded weights from"), std::string::npos) << cont.out;
  EXPECT_NE(cont.out.find("fresh optimizer state"), std::string::npos) << cont.out;
  auto fresh = Run(Train("fresh", 3));
  ASSERT_EQ(fresh.exit_code, 0) << fresh.err;
  const auto c = Losses("cont"), f = Losses("fresh");
  ASSERT_TRUE(c.count(1) && f.count(1));
  EXPECT_LT(c.at(1), f.at(1) - 0.5);
  auto info = Run(BinPath("latam-ckpt") + " info " + Path("cont"));
  ASSERT_EQ(info.exit_code, 0) << info.err;
  EXPECT_EQ(nlohmann::json::parse(info.out)["step"].get<int>(), 3);
  EXPECT_EQ(nlohmann::json::parse(info.out)["consumed_samples"].get<int>(), 24);

  // A second start of the same run continues its own checkpoints, not
  // init_from.
  auto again = Run(Train("cont", 5) + " --set train.init_from=" + Path("imported"));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("loaded everything from " + Path("cont/checkpoints/step_00000003")), std::string::npos)
      << again.out;
}

// The sampler continues from the consumed-sample count, so a resumed
// segment may use another global batch.
TEST_F(CheckpointToolsTest, GlobalBatchMayChangeOnResume) {
  PrepareData();
  ASSERT_EQ(Run(Train("run", 5)).exit_code, 0);
  auto resumed = Run(Train("run", 7) + " --set train.global_batch_size=16");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("(step 5, 40 samples consumed"), std::string::npos) << resumed.out;
  auto info = Run(BinPath("latam-ckpt") + " info " + Path("run"));
  ASSERT_EQ(info.exit_code, 0) << info.err;
  const auto j = nlohmann::json::parse(info.out);
  EXPECT_EQ(j["step"].get<int>(), 7);
  EXPECT_EQ(j["consumed_samples"].get<int>(), 40 + 2 * 16);
}

TEST_F(CheckpointToolsTest, BadCheckpointsExitTwoNamingTensorAndFile) {
  PrepareData();
  ASSERT_EQ(Run(Train("run", 5)).exit_code, 0);
  const fs::path step = dir_ / "run/checkpoints/step_00000005";
  const std::string shard = (step / ckpt::RankFileName(0)).string();

  auto expect_bad = [&](const std::string& command, const std::vector<std::string>& needles) {
    auto r = Run(command);
    EXPECT_EQ(r.exit_code, 2) << command << "\n" << r.out << r.err;
    for (const std::string& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << command << "\n" << r.err;
  };
  // Not a checkpoint; a missing directory.
  expect_bad(BinPath("latam-ckpt") + " verify " + Path("."), {"not a checkpoint"});
  expect_bad(Train("other", 6) + " --resume " + Path("nope"), {Path("nope"), "no such directory"});
  // --resume none refuses a run directory that has checkpoints.
  expect_bad(Train("run", 6) + " --resume none", {"already has checkpoints"});
  // A different model.
  expect_bad(Train("other", 6) + " --set model.ffn_dim=64 --resume " + step.string(),
             {"model.ffn_dim is 128 there and 64 in the config"});

  // A flipped byte in the first tensor's shard.
  const std::string saved = testing::ReadFileBytes(shard);
  {
    std::string bad = saved;
    bad[100] = static_cast<char>(bad[100] ^ 0x01);
    std::ofstream(shard, std::ios::binary | std::ios::trunc) << bad;
  }
  expect_bad(BinPath("latam-ckpt") + " verify " + step.string(), {"model.embed_tokens.weight", shard, "checksum"});
  expect_bad(Train("other", 6) + " --resume " + step.string(), {"model.embed_tokens.weight", shard, "checksum"});
  expect_bad(BinPath("latam-generate") + " --checkpoint " + step.string() + " --prompt x",
             {"model.embed_tokens.weight", shard});
  // Truncated.
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << saved.substr(0, saved.size() / 2);
  expect_bad(BinPath("latam-ckpt") + " info " + step.string(), {shard, "truncated"});
  // Missing.
  fs::remove(shard);
  expect_bad(Train("other", 6) + " --resume " + step.string(), {shard, "missing"});
  // A manifest from another model's checkpoint, next to these shards.
  ASSERT_EQ(Run(Train("small", 5) + " --set model.n_layers=1").exit_code, 0);
  std::ofstream(shard, std::ios::binary | std::ios::trunc) << saved;
  fs::copy_file(dir_ / "small/checkpoints/step_00000005/manifest.pb", step / "manifest.pb",
                fs::copy_options::overwrite_existing);
  expect_bad(Train("other", 6) + " --resume " + step.string(), {"model.n_layers is 1 there and 2 in the config"});
}

}  // namespace
}  // namespace latam
