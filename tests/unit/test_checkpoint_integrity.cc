// Checkpoint integrity: the manifest's own checksum (the 5-byte trailer,
// format 2, format 1 read with a warning), checksummed files (tokenizer,
// rank indexes), the model's tensor set checked on every open, verify and
// load refusing the same damage, `latest` falling back to the newest
// complete step, `latam-ckpt info` on bytes that are not UTF-8, import-hf
// refusing absurd config.json values before allocating, and a bit-flip
// campaign over every file of a step directory.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "checkpoint/convert.h"
#include "checkpoint/hf_config.h"
#include "checkpoint/state.h"
#include "checkpoint/store.h"
#include "core/crc32c.h"
#include "model/layout.h"
#include "model/parameters.h"
#include "model/state.h"
#include "parallel/communicator.h"
#include "tests/test_util.h"

namespace latam::ckpt {
namespace {

namespace fs = std::filesystem;
using testing::ReadFileBytes;
using testing::WriteFileBytes;

class IntegrityTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::FreshTestDir("latam_ckpt_integrity"); }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  fs::path dir_;
};

config::ModelConfig Model() {
  config::ModelConfig m = testing::TinyModelConfig(false);
  m.set_n_layers(1);
  return m;
}

constexpr const char* kTokenizerText = R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}})";

// A step directory as a tensor 2 x pipeline 1 job saves it: two ranks'
// shards and indexes, weights and Adam moments (distinct values), the
// tokenizer, step 7.
void SaveTiny(const fs::path& step_dir, int64_t step = 7) {
  const config::ModelConfig model = Model();
  const ModelShape shape = ModelShape::FromConfig(model);
  fs::create_directories(step_dir);
  config::OptimizerConfig oc;
  for (int t = 0; t < 2; ++t) {
    ParameterSet params(LlamaParameterSpecs(shape, ModelLayout::Make(shape, 2, t, 1, 0, 1)));
    params.InitWeights(11);
    AdamWOptimizer opt(&params, oc);
    for (const auto& m : opt.Moments()) {
      for (int64_t i = 0; i < m.end - m.begin; ++i) {
        m.exp_avg[i] = 0.25f * static_cast<float>((i + m.begin) % 13);
        m.exp_avg_sq[i] = 0.5f * static_cast<float>((i + m.begin) % 17);
      }
    }
    ASSERT_TRUE(WriteRankShards(step_dir.string(), t, StatePieces(params, &opt, 0)).ok());
  }
  ASSERT_TRUE(WriteFileBytes(step_dir / "tokenizer.json", kTokenizerText));
  Checkpoint h;
  h.set_step(step);
  h.set_consumed_samples(static_cast<uint64_t>(step) * 8);
  *h.mutable_model() = model;
  h.mutable_optimizer()->set_step(step);
  h.mutable_optimizer()->set_has_moments(true);
  h.set_tokenizer_file("tokenizer.json");
  const Status s = WriteManifest(step_dir.string(), 2, h);
  ASSERT_TRUE(s.ok()) << s.message();
}

// What `latam-ckpt verify` runs.
Status VerifyPath(const std::string& path) {
  auto reader = CheckpointReader::Open(path);
  if (!reader.ok()) return reader.status();
  return (*reader)->VerifyAll();
}

// What a resume runs: everything, weights and moments, into one process
// (the model is built once).
class Loader {
 public:
  Loader()
      : shape_(ModelShape::FromConfig(Model())),
        params_(LlamaParameterSpecs(shape_, ModelLayout::Single(shape_))),
        opt_(&params_, config::OptimizerConfig()),
        pieces_(StatePieces(params_, &opt_, 0)) {}
  Status Load(const std::string& path) {
    auto reader = CheckpointReader::Open(path);
    if (!reader.ok()) return reader.status();
    auto r = LoadState(**reader, Model(), pieces_, LoadWhat::kAll);
    return r.ok() ? Status::Ok() : r.status();
  }

 private:
  ModelShape shape_;
  ParameterSet params_;
  AdamWOptimizer opt_;
  std::vector<StatePiece> pieces_;
};

Status LoadPath(const std::string& path) { return Loader().Load(path); }

Checkpoint ReadManifest(const fs::path& step_dir) {
  std::string warning;
  auto m = ParseManifest(ReadFileBytes(step_dir / kManifestFile), "manifest.pb", &warning);
  EXPECT_TRUE(m.ok()) << m.status().message();
  EXPECT_TRUE(warning.empty()) << warning;
  return m.ok() ? *m : Checkpoint();
}

// Flips bit `bit` of byte `byte` of `file` in place.
void FlipBit(const fs::path& file, size_t byte, int bit) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << file;
  char c = 0;
  f.seekg(static_cast<std::streamoff>(byte));
  f.read(&c, 1);
  c = static_cast<char>(c ^ (1 << bit));
  f.seekp(static_cast<std::streamoff>(byte));
  f.write(&c, 1);
  ASSERT_TRUE(f.good()) << file;
}

::testing::AssertionResult RefusedNaming(const Status& s, const std::string& needle) {
  if (s.ok()) return ::testing::AssertionFailure() << "accepted; expected an error naming " << needle;
  if (s.exit_code() != 2) return ::testing::AssertionFailure() << "exit code " << s.exit_code() << ": " << s.message();
  if (s.message().find(needle) == std::string::npos) {
    return ::testing::AssertionFailure() << "'" << s.message() << "' does not name " << needle;
  }
  return ::testing::AssertionSuccess();
}

TEST_F(IntegrityTest, ManifestEndsWithItsChecksum) {
  const fs::path step = dir_ / "step";
  SaveTiny(step);
  const std::string bytes = ReadFileBytes(step / kManifestFile);
  ASSERT_GT(bytes.size(), 5u);
  const size_t n = bytes.size();
  EXPECT_EQ(static_cast<uint8_t>(bytes[n - 5]), 0x7d);
  uint32_t stored = 0;
  for (int i = 0; i < 4; ++i) stored |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[n - 4 + i])) << (8 * i);
  EXPECT_EQ(stored, Crc32c(bytes.data(), n - 5));
  const Checkpoint m = ReadManifest(step);
  EXPECT_EQ(m.format_version(), kFormatVersion);
  EXPECT_EQ(m.manifest_crc32c(), stored);
  EXPECT_TRUE(VerifyPath(step.string()).ok());
  EXPECT_TRUE(LoadPath(step.string()).ok());

  // Every file besides the shards has its record: the tokenizer and both
  // rank indexes, which stay in the step directory.
  std::set<std::string> recorded;
  for (const FileRecord& f : m.files()) {
    recorded.insert(f.name());
    const std::string content = ReadFileBytes(step / f.name());
    EXPECT_EQ(f.bytes(), content.size()) << f.name();
    EXPECT_EQ(f.crc32c(), Crc32c(content.data(), content.size())) << f.name();
  }
  EXPECT_EQ(recorded, (std::set<std::string>{"tokenizer.json", RankIndexName(0), RankIndexName(1)}));

  // A flipped trailer tag, or a trailer cut off: format 2 requires it.
  for (const std::string& damaged : {bytes.substr(0, n - 5) + static_cast<char>(0x7c) + bytes.substr(n - 4),
                                     bytes.substr(0, n - 5)}) {
    std::string warning;
    auto r = ParseManifest(damaged, "m.pb", &warning);
    EXPECT_TRUE(RefusedNaming(r.status(), "checkpoint m.pb: "));
  }
}

TEST_F(IntegrityTest, FormatOneManifestsLoadWithAWarning) {
  const fs::path step = dir_ / "step";
  SaveTiny(step);
  // As an earlier version wrote it: no trailer, no file records.
  Checkpoint m = ReadManifest(step);
  m.set_format_version(1);
  m.clear_files();
  m.clear_manifest_crc32c();
  ASSERT_TRUE(WriteFileBytes(step / kManifestFile, m.SerializeAsString()));
  ::testing::internal::CaptureStderr();
  const Status loaded = LoadPath(step.string());
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(loaded.ok()) << loaded.message();
  EXPECT_NE(err.find("format version 1 carries no manifest checksum"), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_TRUE(VerifyPath(step.string()).ok());
  // Claiming version 2 without the trailer is refused.
  m.set_format_version(2);
  ASSERT_TRUE(WriteFileBytes(step / kManifestFile, m.SerializeAsString()));
  EXPECT_TRUE(RefusedNaming(VerifyPath(step.string()), "manifest checksum mismatch"));
  EXPECT_TRUE(RefusedNaming(LoadPath(step.string()), "manifest checksum mismatch"));
}

// Damage that keeps the manifest's checksum valid (rewritten after the
// change) is still refused, by verify exactly as by a load.
TEST_F(IntegrityTest, VerifyAndLoadRefuseTheSameManifests) {
  const fs::path step = dir_ / "step";
  SaveTiny(step);
  const Checkpoint good = ReadManifest(step);
  auto expect_both_refuse = [&](const Checkpoint& bad, const std::string& needle) {
    ASSERT_TRUE(WriteFileBytes(step / kManifestFile, SerializeManifest(bad)));
    const Status v = VerifyPath(step.string()), l = LoadPath(step.string());
    EXPECT_TRUE(RefusedNaming(v, needle));
    EXPECT_TRUE(RefusedNaming(l, needle));
    EXPECT_EQ(v.message(), l.message());
  };
  Checkpoint bad = good;
  for (TensorRecord& t : *bad.mutable_tensors()) {
    if (t.name() == "model.layers.0.mlp.up_proj.weight.exp_avg_sq") t.set_name("model.layers.0.mlp.up_proj.veight.exp_avg_sq");
  }
  expect_both_refuse(bad, "tensor 'model.layers.0.mlp.up_proj.veight.exp_avg_sq' is not one of the parameters and Adam moments");
  bad = good;
  bad.mutable_tensors(3)->mutable_shards(0)->set_chunk_bytes(16);
  expect_both_refuse(bad, "inconsistent shard record");
  bad = good;
  bad.mutable_tensors(2)->set_shape(0, bad.tensors(2).shape(0) * 2);
  expect_both_refuse(bad, "has shape");
  bad = good;
  bad.mutable_tensors()->RemoveLast();
  expect_both_refuse(bad, "lists 35 tensors, the parameters and Adam moments of its model (n_layers 1) are 36");
  bad = good;
  bad.mutable_model()->set_n_layers(2147483647);  // counted, never built
  expect_both_refuse(bad, "lists 36 tensors, the parameters and Adam moments of its model (n_layers 2147483647) are");
  bad = good;
  bad.mutable_model()->set_n_heads(0);
  expect_both_refuse(bad, "model.n_heads is 0");
  bad = good;
  bad.mutable_files(0)->set_name("../escape");
  expect_both_refuse(bad, "is not a valid record");
  bad = good;
  bad.set_tokenizer_file("other.json");
  expect_both_refuse(bad, "the tokenizer other.json has no checksum record");
  bad = good;
  bad.mutable_files(2)->set_crc32c(bad.files(2).crc32c() ^ 1);
  const std::string file = bad.files(2).name();
  expect_both_refuse(bad, file + ": checksum mismatch");
}

TEST_F(IntegrityTest, FileRecordsAreChecked) {
  const fs::path step = dir_ / "step";
  SaveTiny(step);
  // The tokenizer, which latam-generate uses: refused at open.
  FlipBit(step / "tokenizer.json", 5, 2);
  auto open = CheckpointReader::Open(step.string());
  EXPECT_TRUE(RefusedNaming(open.status(), (step / "tokenizer.json").string() + ": checksum mismatch"));
  FlipBit(step / "tokenizer.json", 5, 2);
  // A rank index: opening works (info), loading and verifying do not.
  FlipBit(step / RankIndexName(1), 20, 0);
  EXPECT_TRUE(CheckpointReader::Open(step.string()).ok());
  EXPECT_TRUE(RefusedNaming(LoadPath(step.string()), (step / RankIndexName(1)).string() + ": checksum mismatch"));
  EXPECT_TRUE(RefusedNaming(VerifyPath(step.string()), (step / RankIndexName(1)).string() + ": checksum mismatch"));
  fs::remove(step / RankIndexName(1));
  EXPECT_TRUE(RefusedNaming(VerifyPath(step.string()), RankIndexName(1) + " is missing"));
}

// ModelTensors lists what the model saves (model/state.h): every piece name
// and shape, tied or not, with or without moments; nothing else.
TEST(ModelTensorsTest, MatchTheModelsStatePieces) {
  for (bool tied : {false, true}) {
    const config::ModelConfig model = testing::TinyModelConfig(tied);
    const ModelShape shape = ModelShape::FromConfig(model);
    ParameterSet params(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
    AdamWOptimizer opt(&params, config::OptimizerConfig());
    for (bool moments : {false, true}) {
      std::set<std::pair<std::string, std::vector<int64_t>>> pieces, listed;
      for (const StatePiece& p : StatePieces(params, moments ? &opt : nullptr, 0)) {
        pieces.insert({p.name, p.global_shape});
      }
      const std::vector<TensorSpec> specs = ModelTensors(model, moments);
      for (const TensorSpec& t : specs) listed.insert({t.name, t.shape});
      EXPECT_EQ(listed.size(), specs.size());
      EXPECT_EQ(static_cast<int64_t>(specs.size()), ModelTensorCount(model, moments));
      EXPECT_EQ(pieces, listed) << "tied " << tied << " moments " << moments;
    }
  }
}

TEST_F(IntegrityTest, LatestFallsBackToTheNewestCompleteStep) {
  const fs::path ckpts = dir_ / "checkpoints";
  SaveTiny(ckpts / "step_00000002", 2);
  SaveTiny(ckpts / "step_00000004", 4);
  SaveTiny(ckpts / "step_00000009", 9);
  fs::remove(ckpts / "step_00000009" / kManifestFile);  // a half-written save
  auto expect_step = [&](const std::string& latest, int64_t step, const std::string& warning) {
    ASSERT_TRUE(WriteFileBytes(ckpts / kLatestFile, latest));
    ::testing::internal::CaptureStderr();
    auto reader = CheckpointReader::Open(ckpts.string());
    const std::string err = ::testing::internal::GetCapturedStderr();
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    EXPECT_EQ((*reader)->manifest().step(), step) << latest;
    if (warning.empty()) {
      EXPECT_EQ(err, "");
    } else {
      EXPECT_NE(err.find(warning), std::string::npos) << err;
    }
    EXPECT_TRUE(LoadPath(dir_.string()).ok());  // the run directory resolves the same
  };
  expect_step("step_00000004\n", 4, "");
  expect_step("step_00000007\n", 4, "says 'step_00000007' (checkpoint " + (ckpts / "step_00000007").string() +
                                        ": has no manifest.pb); using step_00000004, the newest complete checkpoint");
  expect_step("step_00000009\n", 4, "says 'step_00000009'");
  // A NUL and an escape sequence are shown, not obeyed or cut.
  expect_step(std::string("step_0\0\x1b[2J", 11), 4, "says 'step_0\\x00\\x1b[2J' (not a step directory name)");
  expect_step("../../etc", 4, "says '../../etc' (not a step directory name)");
  // A manifest failing its checksum is not complete either.
  FlipBit(ckpts / "step_00000004" / kManifestFile, 10, 3);
  expect_step("step_00000004\n", 2, "manifest checksum mismatch");

  // A save of the step latest names, which is damaged, replaces it.
  ASSERT_TRUE(WriteFileBytes(ckpts / kLatestFile, "step_00000004\n"));
  {
    const config::ModelConfig model = Model();
    const ModelShape shape = ModelShape::FromConfig(model);
    ParameterSet params(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
    SelfCommunicator world("world");
    CheckpointSaver saver(ckpts.string(), &world, 0, "");
    Checkpoint h;
    h.set_step(4);
    *h.mutable_model() = model;
    ASSERT_TRUE(saver.Start(h, StatePieces(params, nullptr, 0)).ok());
    auto done = saver.Poll(true);
    ASSERT_TRUE(done.ok()) << done.status().message();
  }
  expect_step("step_00000004\n", 4, "");

  // Nothing complete: bad input naming what latest says.
  for (const char* step : {"step_00000002", "step_00000004"}) fs::remove(ckpts / step / kManifestFile);
  ASSERT_TRUE(WriteFileBytes(ckpts / kLatestFile, "step_00000004\n"));
  auto none = CheckpointReader::Open(ckpts.string());
  EXPECT_TRUE(RefusedNaming(none.status(), "says 'step_00000004'"));
  EXPECT_TRUE(RefusedNaming(none.status(), "no step directory of " + ckpts.string() + " holds a complete checkpoint"));
}

// Flips one bit at a time across every file of a step directory: every
// byte of the manifest, the indexes and the tokenizer, and a stride over
// the shards. Verify and load must both refuse every flip.
TEST_F(IntegrityTest, BitFlipCampaign) {
  const fs::path step = dir_ / "step";
  SaveTiny(step);
  ASSERT_TRUE(VerifyPath(step.string()).ok());
  ASSERT_TRUE(LoadPath(step.string()).ok());
  std::map<std::string, size_t> stride = {{kManifestFile, 1}, {"tokenizer.json", 1}};
  for (int r = 0; r < 2; ++r) {
    stride[RankIndexName(r)] = 1;
    stride[RankFileName(r)] = 509;  // prime: the flips walk through every offset within a chunk and a float
  }
  std::vector<std::string> present;
  for (const auto& entry : fs::directory_iterator(step)) present.push_back(entry.path().filename().string());
  EXPECT_EQ(present.size(), stride.size()) << "files of the step directory: " << ::testing::PrintToString(present);

  const auto begin = std::chrono::steady_clock::now();
  Loader loader;
  int64_t tried = 0, refused_by_verify = 0, refused_by_load = 0;
  for (const auto& [name, every] : stride) {
    const fs::path file = step / name;
    const std::string original = ReadFileBytes(file);
    ASSERT_FALSE(original.empty()) << name;
    int64_t flips = 0;
    for (size_t byte = 0; byte < original.size(); byte += every) {
      const int bit = static_cast<int>((byte / every) % 8);
      FlipBit(file, byte, bit);
      ++tried;
      ++flips;
      const Status v = VerifyPath(step.string()), l = loader.Load(step.string());
      refused_by_verify += !v.ok() && v.exit_code() == 2;
      refused_by_load += !l.ok() && l.exit_code() == 2;
      EXPECT_FALSE(v.ok()) << "verify accepted a flip of bit " << bit << " of byte " << byte << " of " << name;
      EXPECT_FALSE(l.ok()) << "load accepted a flip of bit " << bit << " of byte " << byte << " of " << name;
      FlipBit(file, byte, bit);
    }
    ASSERT_EQ(ReadFileBytes(file), original) << name;
    std::cout << "[ bit flips ] " << name << ": " << original.size() << " bytes, " << flips << " flips\n";
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  EXPECT_TRUE(VerifyPath(step.string()).ok());
  EXPECT_EQ(refused_by_verify, tried);
  EXPECT_EQ(refused_by_load, tried);
  std::cout << "[ bit flips ] " << tried << " tried, " << refused_by_verify << " refused by verify, "
            << refused_by_load << " refused by load (" << seconds << " s)\n";
}

// latam-ckpt info prints bytes that are not UTF-8 as U+FFFD, and a manifest
// holding such a tensor name is refused with the bytes escaped; neither aborts.
TEST_F(IntegrityTest, InfoNeverThrowsOnInvalidUtf8) {
  const fs::path step = dir_ / "run\xff\xfe" / "step";
  SaveTiny(step);
  auto run = [&](const std::string& args) {
    return testing::RunCommand(testing::BinPath("latam-ckpt") + " " + args, LATAM_SOURCE_DIR, dir_);
  };
  auto info = run("info '" + step.string() + "'");
  ASSERT_EQ(info.exit_code, 0) << info.err;
  const auto j = nlohmann::json::parse(info.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << info.out;
  EXPECT_NE(j["dir"].get<std::string>().find("run\xef\xbf\xbd\xef\xbf\xbd"), std::string::npos) << info.out;

  Checkpoint m = ReadManifest(step);
  m.mutable_tensors(0)->set_name("model.embed\xff\xc3_tokens.weight");
  ASSERT_TRUE(WriteFileBytes(step / kManifestFile, SerializeManifest(m)));
  for (const char* command : {"info", "verify"}) {
    auto bad = run(std::string(command) + " '" + step.string() + "'");
    EXPECT_EQ(bad.exit_code, 2) << command << ": " << bad.err;
    EXPECT_NE(bad.err.find("tensor 'model.embed\\xff\\xc3_tokens.weight' is not one of"), std::string::npos)
        << command << ": " << bad.err;
  }
}

// import-hf: every size in config.json is checked against the safetensors
// before anything is allocated from it; each absurd value is bad input
// naming config.json and the key, at once.
TEST_F(IntegrityTest, ImportHfRefusesAbsurdConfigValues) {
  const config::ModelConfig model = Model();
  const fs::path hf = dir_ / "hf";
  std::vector<HfTensorSpec> specs;
  for (const TensorSpec& t : ModelTensors(model, false)) specs.push_back({t.name, t.shape});
  auto zeros = [&](const std::string& name, std::vector<float>* data) {
    for (const HfTensorSpec& s : specs) {
      if (s.name == name) data->assign(static_cast<size_t>(WholeBlock(s.shape).numel()), 0.0f);
    }
    return Status::Ok();
  };
  ASSERT_TRUE(WriteHfWeights(hf.string(), specs, StDType::kF32, zeros).ok());
  nlohmann::json good = nlohmann::json::parse(HfConfigJson(model, "float32", -1, -1));
  good.erase("head_dim");  // optional; its own case below
  ASSERT_TRUE(WriteFileBytes(hf / "config.json", good.dump()));
  ASSERT_TRUE(ImportHf(hf.string(), (dir_ / "ok").string()).ok());

  struct Case {
    std::string key;
    nlohmann::json value;
    std::string named;  // the key the error names
  };
  const std::vector<Case> cases = {
      {"num_hidden_layers", 2147483647, "num_hidden_layers"}, {"num_hidden_layers", 0, "num_hidden_layers"},
      {"num_hidden_layers", -1, "num_hidden_layers"},         {"num_hidden_layers", 2, "num_hidden_layers"},
      {"vocab_size", 2147483647, "vocab_size"},               {"vocab_size", 63, "vocab_size"},
      {"hidden_size", 64, "hidden_size"},                     {"hidden_size", 33, "hidden_size"},
      {"num_attention_heads", 5, "hidden_size"},              {"num_key_value_heads", 3, "num_key_value_heads"},
      {"num_key_value_heads", 4, "num_key_value_heads"},      {"intermediate_size", 1 << 30, "intermediate_size"},
      {"rms_norm_eps", 0, "rms_norm_eps"},                    {"rms_norm_eps", 1e308, "rms_norm_eps"},
      {"rope_theta", -1.0, "rope_theta"},                     {"initializer_range", -0.5, "initializer_range"},
      {"max_position_embeddings", 0, "max_position_embeddings"}, {"head_dim", 7, "head_dim"}};
  int k = 0;
  for (const Case& c : cases) {
    nlohmann::json bad = good;
    bad[c.key] = c.value;
    ASSERT_TRUE(WriteFileBytes(hf / "config.json", bad.dump()));
    const auto start = std::chrono::steady_clock::now();
    const Status s = ImportHf(hf.string(), (dir_ / ("out" + std::to_string(k++))).string());
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_TRUE(RefusedNaming(s, (hf / "config.json").string() + ": " + c.named + ":")) << c.key << " = " << c.value;
    EXPECT_LT(seconds, 0.5) << c.key << " = " << c.value;
  }
  // The command line: exit 2 at once.
  nlohmann::json huge = good;
  huge["num_hidden_layers"] = 2147483647;
  ASSERT_TRUE(WriteFileBytes(hf / "config.json", huge.dump()));
  const auto start = std::chrono::steady_clock::now();
  auto r = testing::RunCommand(testing::BinPath("latam-ckpt") + " import-hf " + hf.string() + " " +
                                   (dir_ / "cli").string(),
                               LATAM_SOURCE_DIR, dir_);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("config.json: num_hidden_layers: 2147483647, but the safetensors hold 1 layers numbered up to 0"),
            std::string::npos)
      << r.err;
  EXPECT_LT(seconds, 2.0);
}

}  // namespace
}  // namespace latam::ckpt
