// Checkpoint storage and resharding in one process: blocks written by the
// ranks of one layout are read back under every other layout bit for bit;
// moments split as ZeRO-1 flat slices tile their tensors; partial reads
// touch only the chunks they need; corruption, truncation, missing files,
// foreign models and non-checkpoint directories are errors naming the
// tensor and file; the saver writes latest last and keeps
// train.keep_checkpoints checkpoints.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include "checkpoint/state.h"
#include "checkpoint/store.h"
#include "model/layout.h"
#include "model/parameters.h"
#include "model/state.h"
#include "parallel/communicator.h"
#include "tests/test_util.h"

namespace latam::ckpt {
namespace {

namespace fs = std::filesystem;

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::FreshTestDir("latam_ckpt"); }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

using testing::TinyModelConfig;

Checkpoint Header(const config::ModelConfig& model) {
  Checkpoint h;
  h.set_format_version(kFormatVersion);
  h.set_step(7);
  h.set_consumed_samples(112);
  *h.mutable_model() = model;
  return h;
}

struct Layout3 {
  int tp, pp, vs;
};

// Writes the weights of every rank of `saved` (initialised from `seed`) as
// one checkpoint in `step_dir`.
void SaveLayout(const config::ModelConfig& model, Layout3 saved, uint64_t seed, const fs::path& step_dir) {
  const ModelShape shape = ModelShape::FromConfig(model);
  fs::create_directories(step_dir);
  int rank = 0;
  for (int p = 0; p < saved.pp; ++p) {
    for (int t = 0; t < saved.tp; ++t, ++rank) {
      ParameterSet params(LlamaParameterSpecs(shape, ModelLayout::Make(shape, saved.tp, t, saved.pp, p, saved.vs)));
      params.InitWeights(seed);
      ASSERT_TRUE(WriteRankShards(step_dir.string(), rank, StatePieces(params, nullptr, 0)).ok());
    }
  }
  const Status s = WriteManifest(step_dir.string(), rank, Header(model));
  ASSERT_TRUE(s.ok()) << s.message();
}

TEST(CheckpointBlocks, IntersectAndFlatRanges) {
  const Block a{{0, 4}, {10, 8}}, b{{5, 0}, {10, 6}};
  const auto c = Intersect(a, b);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->offset, (std::vector<int64_t>{5, 4}));
  EXPECT_EQ(c->extent, (std::vector<int64_t>{5, 2}));
  EXPECT_FALSE(Intersect(Block{{0}, {4}}, Block{{4}, {4}}).has_value());

  // Every flat range of a 7 x 5 block at (3, 10) splits into row-major
  // rectangles that cover exactly the range, in order.
  const Block origin{{3, 10}, {7, 5}};
  for (int64_t begin = 0; begin <= 35; ++begin) {
    for (int64_t end = begin + 1; end <= 35; ++end) {
      const auto pieces = FlatRangeBlocks(origin, begin, end);
      ASSERT_LE(pieces.size(), 3u);
      int64_t next = begin;
      for (const auto& [blk, first] : pieces) {
        EXPECT_EQ(first, next);
        EXPECT_EQ(first, (blk.offset[0] - 3) * 5 + (blk.offset[1] - 10));
        EXPECT_TRUE(blk.extent[0] == 1 || blk.extent[1] == 5) << blk.ToString();
        next += blk.numel();
      }
      EXPECT_EQ(next, end);
    }
  }
}

// A model saved under one tensor x pipeline (x virtual stage) layout loads
// bit for bit under every other, tied or not (replicated norms, replicated
// KV heads at TP=4, the tied embedding's copy on the last stage).
TEST_F(CheckpointTest, WeightsReshardAcrossLayoutsBitwise) {
  const std::vector<Layout3> layouts = {{1, 1, 1}, {2, 1, 1}, {4, 1, 1}, {1, 2, 1}, {2, 2, 1},
                                        {1, 4, 1}, {4, 2, 1}, {1, 2, 2}, {2, 4, 2}};
  for (bool tied : {false, true}) {
    const config::ModelConfig model = TinyModelConfig(tied);
    const ModelShape shape = ModelShape::FromConfig(model);
    for (const Layout3& saved : {Layout3{2, 2, 1}, Layout3{4, 2, 1}, Layout3{1, 4, 2}}) {
      const fs::path step = dir_ / ("saved_" + std::to_string(saved.tp) + std::to_string(saved.pp) +
                                    std::to_string(saved.vs) + (tied ? "_tied" : ""));
      SaveLayout(model, saved, 99, step);
      auto reader = CheckpointReader::Open(step.string());
      ASSERT_TRUE(reader.ok()) << reader.status().message();
      for (const Layout3& target : layouts) {
        for (int p = 0; p < target.pp; ++p) {
          for (int t = 0; t < target.tp; ++t) {
            const auto specs = LlamaParameterSpecs(shape, ModelLayout::Make(shape, target.tp, t, target.pp, p, target.vs));
            ParameterSet loaded(specs), expected(specs);
            expected.InitWeights(99);
            auto r = LoadState(**reader, model, StatePieces(loaded, nullptr, 0), LoadWhat::kAll);
            ASSERT_TRUE(r.ok()) << r.status().message();
            EXPECT_EQ(r->step, 7);
            EXPECT_EQ(r->consumed_samples, 112u);
            ASSERT_EQ(std::memcmp(loaded.padded_params().data, expected.padded_params().data,
                                  static_cast<size_t>(loaded.numel()) * sizeof(float)),
                      0)
                << "tp " << target.tp << " pp " << target.pp << " vs " << target.vs << " rank " << t << "," << p;
          }
        }
      }
    }
  }
}

constexpr const char* kEmbedding = "model.embed_tokens.weight";

// Writes a checkpoint of a one-layer tied model whose embedding is [rows,
// cols], fresh random values (returned), every tensor one shard of rank 0,
// the embedding first; the other tensors are zeros.
std::vector<float> WriteEmbedding(const fs::path& step, int64_t rows, int64_t cols) {
  config::ModelConfig model = TinyModelConfig(true);
  model.set_vocab_size(static_cast<int32_t>(rows));
  model.set_dim(static_cast<int32_t>(cols));
  model.set_n_layers(1);
  std::mt19937 gen(static_cast<unsigned>(rows * 131 + cols));
  std::normal_distribution<float> normal;
  std::vector<std::vector<float>> values;
  std::vector<StatePiece> pieces;
  for (const TensorSpec& t : ModelTensors(model, false)) {
    values.emplace_back(static_cast<size_t>(WholeBlock(t.shape).numel()));
    if (t.name == kEmbedding) {
      for (float& v : values.back()) v = normal(gen);
    }
    pieces.push_back({t.name, t.shape, WholeBlock(t.shape), values.back().data(), true, false});
  }
  fs::create_directories(step);
  EXPECT_TRUE(WriteRankShards(step.string(), 0, pieces).ok());
  EXPECT_TRUE(WriteManifest(step.string(), 1, Header(model)).ok());
  return values.front();
}

TEST_F(CheckpointTest, PartialReadsTouchOnlyTheirChunks) {
  // 4 MiB in one shard: rows [0, 64) are the first 256 KiB, inside chunk 0.
  const int64_t rows = 1024, cols = 1024;
  const fs::path step = dir_ / "step";
  const std::vector<float> values = WriteEmbedding(step, rows, cols);
  auto reader = CheckpointReader::Open(step.string());
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  std::vector<float> out(64 * 100);
  ASSERT_TRUE((*reader)->Read(kEmbedding, Block{{0, 300}, {64, 100}}, out.data()).ok());
  EXPECT_EQ((*reader)->bytes_read(), kChunkBytes);
  for (int64_t r = 0; r < 64; ++r) {
    for (int64_t c = 0; c < 100; ++c) ASSERT_EQ(out[r * 100 + c], values[r * cols + 300 + c]);
  }
  // A block straddling chunks 1 and 2 reads exactly those two.
  const uint64_t before = (*reader)->bytes_read();
  std::vector<float> mid(300 * cols);
  ASSERT_TRUE((*reader)->Read(kEmbedding, Block{{200, 0}, {300, cols}}, mid.data()).ok());
  EXPECT_EQ((*reader)->bytes_read() - before, 2 * kChunkBytes);
  EXPECT_EQ(std::memcmp(mid.data(), values.data() + 200 * cols, mid.size() * sizeof(float)), 0);
}

TEST_F(CheckpointTest, CorruptionIsCaughtAndNamed) {
  const fs::path step = dir_ / "step";
  WriteEmbedding(step, 600, 600);  // 1.44 MB: two chunks
  const std::string file = (step / RankFileName(0)).string();
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1200000);
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(1200000);
    f.write(&c, 1);
  }
  auto reader = CheckpointReader::Open(step.string());
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  std::vector<float> out(600 * 600);
  // The first chunk is intact; the second fails its checksum.
  EXPECT_TRUE((*reader)->Read(kEmbedding, Block{{0, 0}, {100, 600}}, out.data()).ok());
  const Status bad = (*reader)->Read(kEmbedding, WholeBlock({600, 600}), out.data());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.exit_code(), 2);
  EXPECT_NE(bad.message().find(kEmbedding), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find(file), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("checksum"), std::string::npos) << bad.message();
  const Status verify = (*reader)->VerifyAll();
  ASSERT_FALSE(verify.ok());
  EXPECT_NE(verify.message().find(kEmbedding), std::string::npos) << verify.message();
}

TEST_F(CheckpointTest, BadCheckpointsAreRejectedAtOpen) {
  const fs::path step = dir_ / "step";
  WriteEmbedding(step, 100, 100);
  const std::string file = (step / RankFileName(0)).string();
  auto expect_error = [&](const std::string& path, const std::string& needle) {
    auto r = CheckpointReader::Open(path);
    ASSERT_FALSE(r.ok()) << needle;
    EXPECT_EQ(r.status().exit_code(), 2);
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().message();
  };
  // Not a checkpoint.
  expect_error(dir_.string(), "not a checkpoint");
  expect_error((dir_ / "nope").string(), "no such directory");
  // Truncated shard file.
  fs::resize_file(file, 30000);
  expect_error(step.string(), "truncated");
  // Missing shard file.
  fs::remove(file);
  expect_error(step.string(), "missing");
  // A manifest that is not one.
  {
    std::ofstream(step / kManifestFile) << "garbage";
  }
  expect_error(step.string(), "not a valid manifest");
}

TEST_F(CheckpointTest, ForeignModelIsRejectedNamingTheField) {
  const fs::path step = dir_ / "step";
  SaveLayout(TinyModelConfig(false), {1, 1, 1}, 5, step);
  auto reader = CheckpointReader::Open(step.string());
  ASSERT_TRUE(reader.ok());
  config::ModelConfig other = TinyModelConfig(false);
  other.set_ffn_dim(64);
  const ModelShape shape = ModelShape::FromConfig(other);
  ParameterSet params(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
  auto r = LoadState(**reader, other, StatePieces(params, nullptr, 0), LoadWhat::kAll);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().exit_code(), 2);
  EXPECT_NE(r.status().message().find("model.ffn_dim is 48 there and 64"), std::string::npos) << r.status().message();
}

// The saver in one process: latest is written after the manifest, older
// checkpoints beyond keep are removed, a stale incomplete directory is
// cleared, and the moments and step counter come back on load.
TEST_F(CheckpointTest, SaverKeepsLatestAndRetention) {
  const config::ModelConfig model = TinyModelConfig(false);
  const ModelShape shape = ModelShape::FromConfig(model);
  ParameterSet params(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
  params.InitWeights(3);
  config::OptimizerConfig oc;
  AdamWOptimizer opt(&params, oc);
  SelfCommunicator world("world");
  const fs::path ckpts = dir_ / "checkpoints";
  fs::create_directories(ckpts / "step_00000001");  // an interrupted save
  CheckpointSaver saver(ckpts.string(), &world, 2, "");
  for (int64_t step : {2, 4, 6}) {
    // Moments and parameters change between saves.
    for (const auto& m : opt.Moments()) {
      for (int64_t i = 0; i < m.end - m.begin; ++i) {
        m.exp_avg[i] = static_cast<float>(step) + 0.5f * static_cast<float>(i % 7);
        m.exp_avg_sq[i] = static_cast<float>(step * i % 11);
      }
    }
    params.padded_params().as<float>()[0] = static_cast<float>(step);
    opt.set_step(step);
    Checkpoint h = Header(model);
    h.set_step(step);
    h.mutable_optimizer()->set_step(step);
    h.mutable_optimizer()->set_has_moments(true);
    ASSERT_TRUE(saver.Start(h, StatePieces(params, &opt, 0)).ok());
    // The snapshot is taken: changing the live state does not change the save.
    params.padded_params().as<float>()[0] = -1.0f;
    auto done = saver.Poll(true);
    ASSERT_TRUE(done.ok()) << done.status().message();
    ASSERT_TRUE(done->has_value());
    EXPECT_GT((*done)->bytes, 0u);
  }
  std::ifstream latest(ckpts / kLatestFile);
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step_00000006");
  EXPECT_FALSE(fs::exists(ckpts / "step_00000001"));
  EXPECT_FALSE(fs::exists(ckpts / "step_00000002"));
  EXPECT_TRUE(fs::exists(ckpts / "step_00000004" / kManifestFile));
  EXPECT_TRUE(fs::exists(ckpts / "step_00000006" / kManifestFile));

  ParameterSet fresh(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
  AdamWOptimizer fresh_opt(&fresh, oc);
  auto reader = CheckpointReader::Open(ckpts.string());
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  auto r = LoadState(**reader, model, StatePieces(fresh, &fresh_opt, 0), LoadWhat::kAll);
  ASSERT_TRUE(r.ok()) << r.status().message();
  FinishOptimizerLoad(fresh_opt, r->moments_loaded, r->optimizer_step);
  EXPECT_TRUE(r->moments_loaded);
  EXPECT_EQ(fresh_opt.step(), 6);
  EXPECT_EQ(fresh.padded_params().as<float>()[0], 6.0f);
  params.padded_params().as<float>()[0] = 6.0f;
  EXPECT_EQ(std::memcmp(fresh.padded_params().data, params.padded_params().data,
                        static_cast<size_t>(params.numel()) * sizeof(float)),
            0);
  const auto a = opt.Moments(), b = fresh_opt.Moments();
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    const size_t n = static_cast<size_t>(a[k].end - a[k].begin) * sizeof(float);
    ASSERT_EQ(std::memcmp(a[k].exp_avg, b[k].exp_avg, n), 0);
    ASSERT_EQ(std::memcmp(a[k].exp_avg_sq, b[k].exp_avg_sq, n), 0);
  }
  // Weights only: fresh moments, step 0.
  auto w = LoadState(**reader, model, StatePieces(fresh, &fresh_opt, 0), LoadWhat::kWeights);
  ASSERT_TRUE(w.ok());
  FinishOptimizerLoad(fresh_opt, w->moments_loaded, w->optimizer_step);
  EXPECT_FALSE(w->moments_loaded);
  EXPECT_EQ(w->step, 0);
  EXPECT_EQ(fresh_opt.step(), 0);
  EXPECT_EQ(fresh_opt.Moments()[0].exp_avg[1], 0.0f);
}

}  // namespace
}  // namespace latam::ckpt
