// Config loading, --set overrides and validation messages (each names its
// field), and the --plan numbers for the presets.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"
#include "trainer/config.h"
#include "trainer/plan.h"

namespace latam {
namespace {

using testing::SourcePath;

Config QuickstartAsIs() {
  auto c = LoadConfigFile(SourcePath("configs/quickstart.textproto"));
  EXPECT_TRUE(c.ok()) << c.status().message();
  return c.ok() ? *c : Config();
}

// The quickstart model on one rank (the file itself is laid out for 4).
Config Quickstart() {
  Config c = QuickstartAsIs();
  c.mutable_parallel()->set_tensor(1);
  c.mutable_parallel()->set_pipeline(1);
  return c;
}

ValidationOptions NoFiles(int world = 0) {
  ValidationOptions o;
  o.world_size = world;
  o.check_files = false;
  return o;
}

TEST(ConfigTest, QuickstartLoadsAndValidates) {
  const Config c = QuickstartAsIs();
  EXPECT_EQ(c.model().n_layers(), 4);
  EXPECT_EQ(c.parallel().tensor() * c.parallel().pipeline(), 4);
  EXPECT_TRUE(ValidateConfig(c, NoFiles(4)).ok()) << ValidateConfig(c, NoFiles(4)).message();
  EXPECT_FALSE(ValidateConfig(c, NoFiles(1)).ok());
}

TEST(ConfigTest, ParseErrorsNameFileAndLine) {
  const std::string path = std::filesystem::temp_directory_path() / ("bad_" + std::to_string(getpid()) + ".textproto");
  std::ofstream(path) << "model {\n  dim: 64\n  n_layrs: 2\n}\n";
  auto c = LoadConfigFile(path);
  std::filesystem::remove(path);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().exit_code(), 2);
  EXPECT_NE(c.status().message().find(path), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("line 3"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("n_layrs"), std::string::npos) << c.status().message();
  EXPECT_FALSE(LoadConfigFile("/nonexistent/x.textproto").ok());
}

TEST(ConfigTest, OverridesSetScalarsAndListElements) {
  Config c = Quickstart();
  ASSERT_TRUE(ApplyOverride(&c, "train.steps=7").ok());
  ASSERT_TRUE(ApplyOverride(&c, "parallel.tensor=2").ok());
  ASSERT_TRUE(ApplyOverride(&c, "optimizer.lr=1e-4").ok());
  ASSERT_TRUE(ApplyOverride(&c, "train.device=cuda").ok());
  ASSERT_TRUE(ApplyOverride(&c, "model.tie_embeddings=true").ok());
  ASSERT_TRUE(ApplyOverride(&c, "data.train[0].weight=0.5").ok());
  ASSERT_TRUE(ApplyOverride(&c, "data.train[3].path=/tmp/other.bin").ok());  // appends
  ASSERT_TRUE(ApplyOverride(&c, "model.rope_scaling.factor=8").ok());
  EXPECT_EQ(c.train().steps(), 7);
  EXPECT_EQ(c.parallel().tensor(), 2);
  EXPECT_DOUBLE_EQ(c.optimizer().lr(), 1e-4);
  EXPECT_EQ(c.train().device(), config::TrainConfig::cuda);
  EXPECT_TRUE(c.model().tie_embeddings());
  EXPECT_DOUBLE_EQ(c.data().train(0).weight(), 0.5);
  ASSERT_EQ(c.data().train_size(), 4);
  EXPECT_EQ(c.data().train(3).path(), "/tmp/other.bin");
  EXPECT_DOUBLE_EQ(c.model().rope_scaling().factor(), 8.0);
}

TEST(ConfigTest, BadOverridesAreInputErrors) {
  Config c = Quickstart();
  for (const auto& [assignment, expected] :
       std::vector<std::pair<std::string, std::string>>{{"train.stepz=3", "has no field stepz"},
                                                        {"train.steps=many", "cannot parse 'many'"},
                                                        {"train.steps=5 seed: 7", "cannot parse '5 seed: 7'"},
                                                        {"train.steps", "expected path=value"},
                                                        {"data.train=x", "is a list"},
                                                        {"data.train[5].path=x", "index 5 > size 3"},
                                                        {"model=3", "is a message"},
                                                        {"model.dim.x=3", "has no sub-fields"}}) {
    const Status s = ApplyOverride(&c, assignment);
    ASSERT_FALSE(s.ok()) << assignment;
    EXPECT_EQ(s.exit_code(), 2);
    EXPECT_NE(s.message().find(expected), std::string::npos) << assignment << " -> " << s.message();
  }
}

TEST(ConfigTest, ValidationNamesTheField) {
  for (const auto& [assignment, expected] : std::vector<std::pair<std::string, std::string>>{
           {"model.n_heads=5", "model.dim: 128 is not divisible by model.n_heads = 5"},
           {"model.n_kv_heads=3", "model.n_heads: 4 is not divisible by model.n_kv_heads = 3"},
           {"parallel.tensor=8", "model.n_heads: 4 is not divisible by parallel.tensor = 8"},
           {"parallel.pipeline=3", "model.n_layers: 4 is not divisible by parallel.pipeline x parallel.virtual_stages"},
           {"model.ffn_dim=350", ""},
           {"model.vocab_size=0", "model.vocab_size: must be > 0"},
           {"data.seq_len=1000", "data.seq_len: 1000 exceeds model.max_seq_len = 256"},
           {"train.global_batch_size=10", "train.global_batch_size: 10 is not divisible by train.micro_batch_size"},
           {"optimizer.lr=0", "optimizer.lr: must be > 0"},
           {"optimizer.beta2=1", "optimizer.beta2"},
           {"parallel.zero_stage=3", "parallel.zero_stage: must be 0, 1 or 2"},
           {"parallel.zero_stage=2", ""},
           {"train.precision=bf16", "train.precision: bf16 needs train.device=cuda"}}) {
    Config c = Quickstart();
    ASSERT_TRUE(ApplyOverride(&c, assignment).ok()) << assignment;
    const Status s = ValidateConfig(c, NoFiles(1));
    if (expected.empty()) {  // a valid change
      EXPECT_TRUE(s.ok()) << assignment << " -> " << s.message();
      continue;
    }
    ASSERT_FALSE(s.ok()) << assignment;
    EXPECT_EQ(s.exit_code(), 2);
    EXPECT_NE(s.message().find(expected), std::string::npos) << assignment << " -> " << s.message();
  }
}

// Sequence parallelism splits each sequence over the tensor-parallel ranks:
// it needs more than one, and a sequence length they divide.
TEST(ConfigTest, SequenceParallelNeedsTensorParallelismAndDivisibleSequences) {
  Config c = QuickstartAsIs();  // tensor 2 x pipeline 2
  ASSERT_TRUE(ApplyOverride(&c, "parallel.sequence_parallel=true").ok());
  EXPECT_TRUE(ValidateConfig(c, NoFiles(4)).ok());
  for (const auto& [assignments, expected] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"parallel.tensor=1"}, "parallel.sequence_parallel: needs parallel.tensor > 1"},
           {{"data.seq_len=63"}, "data.seq_len: 63 is not divisible by parallel.tensor = 2"}}) {
    Config bad = c;
    for (const std::string& a : assignments) ASSERT_TRUE(ApplyOverride(&bad, a).ok()) << a;
    const Status s = ValidateConfig(bad, NoFiles(4));
    ASSERT_FALSE(s.ok()) << expected;
    EXPECT_EQ(s.exit_code(), 2);
    EXPECT_NE(s.message().find(expected), std::string::npos) << s.message();
  }
}

// parallel.first_stage_layers / last_stage_layers on the 8-layer model: each
// rule of an uneven split names the field it is about; valid splits pass.
TEST(ConfigTest, UnevenStagesAreValidated) {
  using Assignments = std::vector<std::string>;
  for (const auto& [assignments, expected] : std::vector<std::pair<Assignments, std::string>>{
           {{"parallel.pipeline=4", "parallel.first_stage_layers=1", "parallel.last_stage_layers=1"}, ""},
           {{"parallel.pipeline=3", "parallel.first_stage_layers=2"}, ""},
           {{"parallel.pipeline=3", "parallel.last_stage_layers=2"}, ""},
           {{"parallel.pipeline=2", "parallel.first_stage_layers=3", "parallel.last_stage_layers=5"}, ""},
           {{"parallel.pipeline=2", "parallel.virtual_stages=2", "parallel.first_stage_layers=2"}, ""},
           {{"parallel.pipeline=4", "parallel.virtual_stages=2", "parallel.first_stage_layers=2",
             "parallel.last_stage_layers=2"},
            ""},
           {{"parallel.pipeline=2", "parallel.first_stage_layers=-1"},
            "parallel.first_stage_layers: must be >= 0 (got -1)"},
           {{"parallel.pipeline=2", "parallel.last_stage_layers=-2"},
            "parallel.last_stage_layers: must be >= 0 (got -2)"},
           {{"parallel.first_stage_layers=2"}, "parallel.first_stage_layers: needs parallel.pipeline > 1 (got 1)"},
           {{"parallel.last_stage_layers=2"}, "parallel.last_stage_layers: needs parallel.pipeline > 1 (got 1)"},
           {{"parallel.pipeline=4", "parallel.first_stage_layers=3", "parallel.last_stage_layers=2"},
            "parallel.first_stage_layers: 3 + parallel.last_stage_layers 2 leave 3 layers for 2 middle stages "
            "(not divisible)"},
           {{"parallel.pipeline=3", "parallel.first_stage_layers=3"},
            "parallel.first_stage_layers: 3 leaves 5 layers for 2 other stages (not divisible)"},
           {{"parallel.pipeline=3", "parallel.last_stage_layers=3"},
            "parallel.last_stage_layers: 3 leaves 5 layers for 2 other stages (not divisible)"},
           {{"parallel.pipeline=2", "parallel.first_stage_layers=3", "parallel.last_stage_layers=4"},
            "parallel.first_stage_layers: 3 + parallel.last_stage_layers 4 add up to 7, not model.n_layers = 8 "
            "(parallel.pipeline = 2 has no middle stages)"},
           {{"parallel.pipeline=4", "parallel.first_stage_layers=6", "parallel.last_stage_layers=1"},
            "parallel.first_stage_layers: 6 + parallel.last_stage_layers 1 leave 1 layer for 2 middle stages (each "
            "needs at least parallel.virtual_stages = 1, one per chunk)"},
           {{"parallel.pipeline=2", "parallel.first_stage_layers=8"},
            "parallel.first_stage_layers: 8 leaves 0 layers for 1 other stage (each needs at least"},
           {{"parallel.pipeline=3", "parallel.virtual_stages=2", "parallel.last_stage_layers=6"},
            "parallel.last_stage_layers: 6 leaves 2 layers for 2 other stages (each needs at least "
            "parallel.virtual_stages = 2, one per chunk)"},
           {{"parallel.pipeline=2", "parallel.virtual_stages=2", "parallel.first_stage_layers=3"},
            "parallel.first_stage_layers: 3 is not divisible by parallel.virtual_stages = 2"},
           {{"parallel.pipeline=2", "parallel.virtual_stages=2", "parallel.first_stage_layers=4",
             "parallel.last_stage_layers=4", "model.n_layers=8"},
            ""},
           {{"parallel.pipeline=3", "parallel.virtual_stages=2", "parallel.first_stage_layers=2"},
            "parallel.first_stage_layers: 2 leaves 6 layers for 2 other stages, 3 each, not divisible by "
            "parallel.virtual_stages = 2"},
           {{"parallel.pipeline=2", "parallel.virtual_stages=2", "parallel.last_stage_layers=2", "model.n_layers=9"},
            "parallel.last_stage_layers: 2 leaves 7 layers for 1 other stage, 7 each, not divisible by "
            "parallel.virtual_stages = 2"}}) {
    Config c = Quickstart();
    ASSERT_TRUE(ApplyOverride(&c, "model.n_layers=8").ok());
    std::string what;
    for (const std::string& a : assignments) {
      ASSERT_TRUE(ApplyOverride(&c, a).ok()) << a;
      what += a + " ";
    }
    const Status s = ValidateConfig(c, NoFiles(0));
    if (expected.empty()) {
      EXPECT_TRUE(s.ok()) << what << "-> " << s.message();
      continue;
    }
    ASSERT_FALSE(s.ok()) << what;
    EXPECT_EQ(s.exit_code(), 2);
    EXPECT_NE(s.message().find(expected), std::string::npos) << what << "-> " << s.message();
  }
}

// train.device, train.precision and train.attention take their value names
// only; anything else names the field and the values it allows.
TEST(ConfigTest, EnumOverridesTakeValueNames) {
  Config c = Quickstart();
  EXPECT_EQ(c.train().device(), config::TrainConfig::cpu);
  EXPECT_EQ(c.train().precision(), config::TrainConfig::fp32);
  EXPECT_EQ(c.train().attention(), config::TrainConfig::auto_);
  ASSERT_TRUE(ApplyOverride(&c, "train.device=cuda").ok());
  ASSERT_TRUE(ApplyOverride(&c, "train.precision=bf16").ok());
  ASSERT_TRUE(ApplyOverride(&c, "train.attention=wgmma_tma").ok());
  EXPECT_EQ(c.train().device(), config::TrainConfig::cuda);
  EXPECT_EQ(c.train().precision(), config::TrainConfig::bf16);
  EXPECT_EQ(c.train().attention(), config::TrainConfig::wgmma_tma);
  EXPECT_TRUE(ValidateConfig(c, NoFiles(1)).ok()) << ValidateConfig(c, NoFiles(1)).message();
  for (const auto& [assignment, expected] : std::vector<std::pair<std::string, std::string>>{
           {"train.device=tpu", "train.device: 'tpu' is not one of cpu, cuda"},
           {"train.device=CUDA", "train.device: 'CUDA' is not one of cpu, cuda"},
           {"train.device=1", "train.device: '1' is not one of cpu, cuda"},
           {"train.device=", "train.device: '' is not one of cpu, cuda"},
           {"train.precision=fp16", "train.precision: 'fp16' is not one of fp32, bf16"},
           {"train.attention=flash2", "train.attention: 'flash2' is not one of auto, simple, wgmma, wgmma_tma"},
           {"train.attention=wgmma-tma",
            "train.attention: 'wgmma-tma' is not one of auto, simple, wgmma, wgmma_tma"}}) {
    const Status s = ApplyOverride(&c, assignment);
    ASSERT_FALSE(s.ok()) << assignment;
    EXPECT_EQ(s.exit_code(), 2);
    EXPECT_EQ(s.message(), expected) << assignment;
  }
  // A rejected value leaves the field as it was.
  EXPECT_EQ(c.train().device(), config::TrainConfig::cuda);
  EXPECT_EQ(c.train().attention(), config::TrainConfig::wgmma_tma);
}

// Each config value maps to one C++ enum value.
TEST(ConfigTest, ComputeSettingsFollowTheConfig) {
  Config c = Quickstart();
  ComputeSettings s = ComputeSettingsOf(c);
  EXPECT_EQ(s.device, Device::kCPU);
  EXPECT_EQ(s.dtype, DType::kF32);
  EXPECT_EQ(s.attention, AttentionChoice::kAuto);
  ASSERT_TRUE(ApplyOverride(&c, "train.device=cuda").ok());
  ASSERT_TRUE(ApplyOverride(&c, "train.precision=bf16").ok());
  s = ComputeSettingsOf(c);
  EXPECT_EQ(s.device, Device::kCUDA);
  EXPECT_EQ(s.dtype, DType::kBF16);
  for (const auto& [value, choice] :
       std::vector<std::pair<std::string, AttentionChoice>>{{"auto", AttentionChoice::kAuto},
                                                            {"simple", AttentionChoice::kSimple},
                                                            {"wgmma", AttentionChoice::kWgmma},
                                                            {"wgmma_tma", AttentionChoice::kWgmmaTma}}) {
    ASSERT_TRUE(ApplyOverride(&c, "train.attention=" + value).ok()) << value;
    EXPECT_EQ(ComputeSettingsOf(c).attention, choice) << value;
    EXPECT_EQ(AttentionChoiceName(choice), value);
  }
}

// In a file, enum values are bare words; an unknown one, or one in quotes,
// names the file, the line, the field and the values it allows.
TEST(ConfigTest, EnumValuesInFiles) {
  const std::string path = std::filesystem::temp_directory_path() / ("enum_" + std::to_string(getpid()) + ".textproto");
  auto load = [&](const std::string& text) {
    std::ofstream(path) << text;
    auto c = LoadConfigFile(path);
    std::filesystem::remove(path);
    return c;
  };
  auto good = load("train {\n  device: cuda\n  precision: bf16\n  attention: simple\n}\n");
  ASSERT_TRUE(good.ok()) << good.status().message();
  EXPECT_EQ(good->train().device(), config::TrainConfig::cuda);
  EXPECT_EQ(good->train().precision(), config::TrainConfig::bf16);
  EXPECT_EQ(good->train().attention(), config::TrainConfig::simple);

  auto unknown = load("train {\n  steps: 3\n  device: tpu\n}\n");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().exit_code(), 2);
  EXPECT_EQ(unknown.status().message(), path + ": line 3, column 11: train.device: 'tpu' is not one of cpu, cuda");

  auto quoted = load("train {\n  precision: \"bf16\"\n}\n");
  ASSERT_FALSE(quoted.ok());
  EXPECT_EQ(quoted.status().exit_code(), 2);
  EXPECT_NE(quoted.status().message().find(path + ": line 2"), std::string::npos) << quoted.status().message();
  EXPECT_NE(quoted.status().message().find("train.precision: enum values are written without quotes: precision: bf16"),
            std::string::npos)
      << quoted.status().message();
  auto quoted_unknown = load("train {\n  attention: \"fastest\"\n}\n");
  ASSERT_FALSE(quoted_unknown.ok());
  EXPECT_NE(quoted_unknown.status().message().find(
                "train.attention: 'fastest' is not one of auto, simple, wgmma, wgmma_tma (written without quotes)"),
            std::string::npos)
      << quoted_unknown.status().message();
}

// The resolved config (the run directory's config.textproto) writes the
// value names, and reads back as the same config.
TEST(ConfigTest, EnumValuesRoundTripThroughText) {
  Config c = Quickstart();
  ASSERT_TRUE(ApplyOverride(&c, "train.device=cuda").ok());
  ASSERT_TRUE(ApplyOverride(&c, "train.precision=bf16").ok());
  ASSERT_TRUE(ApplyOverride(&c, "train.attention=wgmma").ok());
  const std::string text = ConfigToText(c);
  EXPECT_NE(text.find("device: cuda"), std::string::npos) << text;
  EXPECT_NE(text.find("precision: bf16"), std::string::npos) << text;
  EXPECT_NE(text.find("attention: wgmma"), std::string::npos) << text;
  const std::string path =
      std::filesystem::temp_directory_path() / ("resolved_" + std::to_string(getpid()) + ".textproto");
  std::ofstream(path) << text;
  auto back = LoadConfigFile(path);
  std::filesystem::remove(path);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->SerializeAsString(), c.SerializeAsString());
}

TEST(ConfigTest, WorldSizeMustBeTensorTimesPipelineTimesData) {
  Config c = Quickstart();
  ASSERT_TRUE(ApplyOverride(&c, "parallel.tensor=2").ok());
  EXPECT_TRUE(ValidateConfig(c, NoFiles(4)).ok());  // data derived as 2
  EXPECT_EQ(DataParallelSize(c, 4), 2);
  const Status s = ValidateConfig(c, NoFiles(3));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("world size 3 != tensor (2) x pipeline (1) x data (derived)"), std::string::npos)
      << s.message();
  ASSERT_TRUE(ApplyOverride(&c, "parallel.data=4").ok());
  EXPECT_FALSE(ValidateConfig(c, NoFiles(4)).ok());
  // 8 samples cannot split into micro-batches of 4 over 4 data-parallel ranks.
  ASSERT_TRUE(ApplyOverride(&c, "train.global_batch_size=8").ok());
  const Status batch = ValidateConfig(c, NoFiles(8));
  ASSERT_FALSE(batch.ok());
  EXPECT_NE(batch.message().find("train.global_batch_size"), std::string::npos) << batch.message();
  ASSERT_TRUE(ApplyOverride(&c, "train.global_batch_size=32").ok());
  EXPECT_TRUE(ValidateConfig(c, NoFiles(8)).ok());
}

TEST(ConfigTest, MissingDataFilesAreNamed) {
  Config c = Quickstart();
  ASSERT_TRUE(ApplyOverride(&c, "data.train[0].path=/nonexistent/train.bin").ok());
  ValidationOptions o;
  o.world_size = 1;
  o.check_files = true;
  const Status s = ValidateConfig(c, o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("data.train[0].path: no such file: /nonexistent/train.bin"), std::string::npos)
      << s.message();
}

// Path fields are looked up without exceptions: an over-long component, a
// directory where a file belongs or a file where a directory belongs names
// the field.
TEST(ConfigTest, BadPathsNameTheField) {
  const std::string long_dir = "/tmp/" + std::string(300, 'n');
  const std::string tmp = std::filesystem::temp_directory_path().string();
  const std::string file = SourcePath("configs/quickstart.textproto");
  for (const auto& [assignment, expected] : std::vector<std::pair<std::string, std::string>>{
           {"data.tokenizer=" + long_dir + "/t.json", "data.tokenizer: cannot use "},
           {"data.train[0].path=" + long_dir, "data.train[0].path: cannot use "},
           {"data.eval[1].path=" + long_dir + "/e.bin", "data.eval[1].path: cannot use "},
           {"train.run_dir=" + long_dir, "train.run_dir: cannot use "},
           {"train.init_from=" + long_dir, "train.init_from: cannot use "},
           {"data.tokenizer=" + tmp, "data.tokenizer: " + tmp + " is a directory, not a file"},
           {"train.run_dir=" + file, "train.run_dir: " + file + " exists and is not a directory"},
           {"train.init_from=" + file, "train.init_from: " + file + " is not a directory"},
           {"train.init_from=" + tmp + "/no-such-checkpoint", "train.init_from: no such directory"}}) {
    Config c = Quickstart();
    for (int i = 0; i < c.data().train_size(); ++i) c.mutable_data()->mutable_train(i)->set_path(file);
    for (int i = 0; i < c.data().eval_size(); ++i) c.mutable_data()->mutable_eval(i)->set_path(file);
    c.mutable_data()->set_tokenizer(file);
    ASSERT_TRUE(ValidateConfig(c, ValidationOptions{1, true}).ok());
    ASSERT_TRUE(ApplyOverride(&c, assignment).ok()) << assignment;
    const Status s = ValidateConfig(c, ValidationOptions{1, true});
    ASSERT_FALSE(s.ok()) << assignment;
    EXPECT_EQ(s.exit_code(), 2);
    EXPECT_EQ(s.message().rfind(expected, 0), 0u) << assignment << " -> " << s.message();
  }
  const auto missing = LoadConfigFile(long_dir + ".textproto");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("File name too long"), std::string::npos);
  const auto directory = LoadConfigFile(tmp);
  ASSERT_FALSE(directory.ok());
  EXPECT_NE(directory.status().message().find(tmp + ": is a directory"), std::string::npos);
}

// Sizes beyond ConfigLimits are refused by name before anything is sized
// by them (--plan would build per-layer and per-micro-batch tables), and
// the limits themselves are accepted.
TEST(ConfigTest, SizesAreBounded) {
  for (const auto& [assignments, expected] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"model.n_layers=2147483647"}, "model.n_layers: 2147483647 exceeds the limit of 1024"},
           {{"model.n_layers=1024"}, ""},
           {{"model.dim=2147483646"}, "model.dim: 2147483646 exceeds the limit of 131072"},
           {{"model.ffn_dim=1048576"}, "model.ffn_dim: 1048576 exceeds the limit of 524288"},
           {{"model.n_heads=2048", "model.dim=4096"}, "model.n_heads: 2048 exceeds the limit of 1024"},
           {{"model.vocab_size=16777217"}, "model.vocab_size: 16777217 exceeds the limit of 16777216"},
           {{"model.max_seq_len=2147483647"}, "model.max_seq_len: 2147483647 exceeds the limit of 2097152"},
           {{"model.n_layers=256", "parallel.pipeline=256"}, "parallel.pipeline: 256 exceeds the limit of 128"},
           {{"parallel.data=2147483647"}, "parallel: tensor x context x pipeline x data = 2147483647 exceeds"},
           {{"train.micro_batch_size=1000000", "train.global_batch_size=1000000"},
            "train.micro_batch_size: 1000000 x data.seq_len 128 tokens per micro-batch exceed the limit"},
           {{"train.global_batch_size=100000000"}, "train.global_batch_size: gives 25000000 micro-batches"},
           {{"train.global_batch_size=262144"}, ""},  // 65536 micro-batches of 4
           {{"model.n_layers=128", "parallel.pipeline=128", "train.global_batch_size=262144"},
            "x parallel.pipeline 128 x parallel.virtual_stages 1 = 8388608 pipeline schedule entries"},
           {{"train.spike_window=2000000"}, "train.spike_window: 2000000 exceeds the limit"},
           {{"optimizer.lr=inf"}, "optimizer.lr: must be a finite number"},
           {{"model.rope_theta=inf"}, "model.rope_theta: must be a finite number"},
           {{"parallel.grad_bucket_mb=inf"}, "parallel.grad_bucket_mb: must be a finite number"}}) {
    Config c = Quickstart();
    for (const std::string& a : assignments) ASSERT_TRUE(ApplyOverride(&c, a).ok()) << a;
    const Status s = ValidateConfig(c, NoFiles());
    if (expected.empty()) {
      EXPECT_TRUE(s.ok()) << assignments[0] << " -> " << s.message();
      continue;
    }
    ASSERT_FALSE(s.ok()) << assignments[0];
    EXPECT_EQ(s.exit_code(), 2);
    EXPECT_NE(s.message().find(expected), std::string::npos) << assignments[0] << " -> " << s.message();
    EXPECT_FALSE(PlanJson(c).ok());
  }
}

// --plan reports the published parameter counts of the presets.
TEST(PlanTest, PresetsHavePublishedParameterCounts) {
  for (const auto& [file, params] : std::vector<std::pair<std::string, int64_t>>{
           {"configs/llama3-1b.textproto", 1235814400},          // Llama 3.2 1B (tied embeddings)
           {"configs/llama3-8b.textproto", 8030261248},          // Llama 3.1 8B
           {"configs/latam-gpt-70b.textproto", 70553706496}}) {  // Llama 3.1 70B
    auto c = LoadConfigFile(SourcePath(file));
    ASSERT_TRUE(c.ok()) << c.status().message();
    auto plan = PlanJson(*c);
    ASSERT_TRUE(plan.ok()) << file << ": " << plan.status().message();
    const auto j = nlohmann::json::parse(*plan);
    EXPECT_EQ(j["parameters"].get<int64_t>(), params) << file;
    const auto& layout = j["layout"];
    const int64_t model_parallel = layout["tensor"].get<int64_t>() * layout["pipeline"].get<int64_t>();
    // The largest rank holds at least an even share, and at most 1.2x of it
    // (the embedding/head stage carries an extra vocabulary shard).
    const double share = static_cast<double>(params) / static_cast<double>(model_parallel);
    EXPECT_GE(static_cast<double>(j["parameters_per_rank"].get<int64_t>()), share * 0.99) << file;
    EXPECT_LE(static_cast<double>(j["parameters_per_rank"].get<int64_t>()), share * 1.2) << file;
    EXPECT_GT(j["memory_bytes_per_rank"].get<int64_t>(), j["parameters_per_rank"].get<int64_t>() * 4) << file;
    // 6N dominates the FLOPs per token; attention adds a few percent.
    EXPECT_GT(j["flops_per_token"].get<double>(), 6.0 * static_cast<double>(params) * 0.9) << file;
    EXPECT_LT(j["flops_per_token"].get<double>(), 6.0 * static_cast<double>(params) * 1.5) << file;
  }
}

TEST(PlanTest, ExactNumbersForTheQuickstart) {
  Config c = Quickstart();
  auto plan = PlanJson(c);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  const auto j = nlohmann::json::parse(*plan);
  // 2 x 4096 x 128 embeddings/head + 4 x (2x128 norms + (4+2+2)x32x128 qkv +
  // 128x128 o + 3x352x128 mlp) + 128 final norm.
  const int64_t layer = 256 + 8 * 32 * 128 + 128 * 128 + 3 * 352 * 128;
  EXPECT_EQ(j["parameters"].get<int64_t>(), 2 * 4096 * 128 + 4 * layer + 128);
  EXPECT_EQ(j["parameters_per_rank"].get<int64_t>(), j["parameters"].get<int64_t>());
  const int64_t p = j["parameters"].get<int64_t>();
  // fp32: weights 4 + gradients 4 + Adam moments 8 bytes per parameter.
  EXPECT_EQ(j["memory_breakdown"]["weights"].get<int64_t>(), 4 * p);
  EXPECT_EQ(j["memory_breakdown"]["gradients"].get<int64_t>(), 4 * p);
  EXPECT_EQ(j["memory_breakdown"]["optimizer"].get<int64_t>(), 8 * p);
  const double matmul = 4.0 * (8 * 32 * 128 + 128 * 128 + 3 * 352 * 128) + 4096.0 * 128;
  EXPECT_DOUBLE_EQ(j["flops_per_token"].get<double>(), 6.0 * matmul + 6.0 * 4 * 128 * 128);
  EXPECT_EQ(j["layout"]["world_size"].get<int64_t>(), 1);
}

// bf16 on CUDA: fp32 master weights plus their bf16 copy (6 bytes), fp32
// gradients and moments; bf16 activations take less than fp32 ones.
TEST(PlanTest, Bf16OnCudaCountsTheMasterWeightsAndTheCopy) {
  Config c = Quickstart();
  ASSERT_TRUE(ApplyOverride(&c, "train.device=cuda").ok());
  const auto f32 = nlohmann::json::parse(*PlanJson(c));
  ASSERT_TRUE(ApplyOverride(&c, "train.precision=bf16").ok());
  const auto bf16 = nlohmann::json::parse(*PlanJson(c));
  const int64_t p = bf16["parameters_per_rank"].get<int64_t>();
  EXPECT_EQ(bf16["memory_breakdown"]["weights"].get<int64_t>(), 6 * p);
  EXPECT_EQ(bf16["memory_breakdown"]["gradients"].get<int64_t>(), 4 * p);
  EXPECT_EQ(bf16["memory_breakdown"]["optimizer"].get<int64_t>(), 8 * p);
  EXPECT_EQ(f32["memory_breakdown"]["weights"].get<int64_t>(), 4 * p);
  EXPECT_LT(bf16["memory_breakdown"]["activations"].get<int64_t>(),
            f32["memory_breakdown"]["activations"].get<int64_t>());
  EXPECT_EQ(bf16["precision"].get<std::string>(), "bf16");
}

TEST(PlanTest, ZeroOneShardsOptimizerStateAcrossDataParallelRanks) {
  Config c = Quickstart();
  ASSERT_TRUE(ApplyOverride(&c, "parallel.data=4").ok());
  ASSERT_TRUE(ApplyOverride(&c, "train.global_batch_size=32").ok());
  const auto z0 = nlohmann::json::parse(*PlanJson(c));
  ASSERT_TRUE(ApplyOverride(&c, "parallel.zero_stage=1").ok());
  const auto z1 = nlohmann::json::parse(*PlanJson(c));
  EXPECT_EQ(z0["memory_breakdown"]["optimizer"].get<int64_t>(), 4 * z1["memory_breakdown"]["optimizer"].get<int64_t>());
  EXPECT_EQ(z1["layout"]["data"].get<int64_t>(), 4);
}

// ZeRO-1 reduce-scatters in place: the gradients are 4 bytes per parameter.
// ZeRO-2 keeps two slots of the largest bucket (the quickstart's head: final
// norm 128 + LM head 4096 x 128) plus the owned fp32 shard, 4 / D bytes.
TEST(PlanTest, ZeroTwoPlansTheBucketPoolAndTheOwnedShard) {
  Config c = Quickstart();
  ASSERT_TRUE(ApplyOverride(&c, "parallel.data=4").ok());
  ASSERT_TRUE(ApplyOverride(&c, "train.global_batch_size=32").ok());
  ASSERT_TRUE(ApplyOverride(&c, "parallel.zero_stage=1").ok());
  const auto z1 = nlohmann::json::parse(*PlanJson(c));
  ASSERT_TRUE(ApplyOverride(&c, "parallel.zero_stage=2").ok());
  const auto z2 = nlohmann::json::parse(*PlanJson(c));
  const int64_t p = z1["parameters_per_rank"].get<int64_t>();  // every bucket already a multiple of 4
  EXPECT_EQ(z1["memory_breakdown"]["gradients"].get<int64_t>(), 4 * p);
  const int64_t slot = 128 + 4096 * 128;
  EXPECT_EQ(z2["memory_breakdown"]["gradients"].get<int64_t>(), 4 * 2 * slot + 4 * p / 4);
  EXPECT_EQ(z2["memory_breakdown"]["optimizer"], z1["memory_breakdown"]["optimizer"]);
  EXPECT_EQ(z2["memory_breakdown"]["master_weights"], z1["memory_breakdown"]["master_weights"]);
  EXPECT_EQ(z2["layout"]["zero_stage"].get<int>(), 2);
}

// Llama 3.1 70B's 80 layers over 6 stages as 12, 14, 14, 14, 14, 12: the
// largest rank is a middle stage's (14 layers), not an end stage's (12 layers
// plus the embedding or the head), and --plan reports it.
TEST(PlanTest, UnevenStagesReportTheLargestStage) {
  auto c = LoadConfigFile(SourcePath("configs/latam-gpt-70b.textproto"));
  ASSERT_TRUE(c.ok()) << c.status().message();
  for (const char* a : {"parallel.tensor=8", "parallel.pipeline=6", "parallel.virtual_stages=1",
                        "parallel.first_stage_layers=12", "parallel.last_stage_layers=12"}) {
    ASSERT_TRUE(ApplyOverride(&*c, a).ok()) << a;
  }
  auto plan = PlanJson(*c);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  const auto j = nlohmann::json::parse(*plan);
  // One layer on a TP-8 rank: the two norm gains whole, an eighth of the
  // q, k, v, o and MLP matrices (dim 8192, 8 KV heads of 128, ffn 28672).
  const int64_t dim = 8192, tp = 8;
  const int64_t layer = 2 * dim + (dim * dim + 2 * 1024 * dim + dim * dim + 3 * 28672 * dim) / tp;
  const int64_t vocab_shard = 128256 / tp * dim;
  EXPECT_EQ(j["parameters_per_rank"].get<int64_t>(), 14 * layer);
  EXPECT_GT(14 * layer, 12 * layer + vocab_shard + dim);  // the middle stage is indeed the largest
  // With the head stage lightened alone (14 x 5 + 10), the first stage's 14
  // layers and the embedding are the largest.
  ASSERT_TRUE(ApplyOverride(&*c, "parallel.first_stage_layers=0").ok());
  ASSERT_TRUE(ApplyOverride(&*c, "parallel.last_stage_layers=10").ok());
  const auto k = nlohmann::json::parse(*PlanJson(*c));
  EXPECT_EQ(k["parameters_per_rank"].get<int64_t>(), 14 * layer + vocab_shard);
}

}  // namespace
}  // namespace latam
