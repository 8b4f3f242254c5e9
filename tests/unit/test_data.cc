// Token shards, the stateless sampler and the dataset reader.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "data/loader.h"
#include "data/sampler.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "tests/test_util.h"

namespace latam::data {
namespace {

namespace fs = std::filesystem;

class DataTest : public latam::testing::RandomTest {
 protected:
  void SetUp() override {
    RandomTest::SetUp();
    dir_ = fs::temp_directory_path() / ("latam_data_test_" + std::to_string(getpid()) + "_" + std::to_string(seed_));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    fs::remove_all(dir_);
    RandomTest::TearDown();
  }
  std::string WriteShard(const std::string& name, const std::vector<std::vector<uint32_t>>& docs) {
    const std::string path = (dir_ / name).string();
    auto w = ShardWriter::Create(path);
    EXPECT_TRUE(w.ok()) << w.status().message();
    for (const auto& d : docs) EXPECT_TRUE((*w)->AddDocument(d).ok());
    EXPECT_TRUE((*w)->Close().ok());
    return path;
  }
  fs::path dir_;
};

TEST_F(DataTest, ShardRoundTrip) {
  std::vector<std::vector<uint32_t>> docs;
  std::vector<uint32_t> all;
  for (int d = 0; d < 20; ++d) {
    std::vector<uint32_t> doc(static_cast<size_t>(UniformInt(1, 50)));
    for (auto& t : doc) t = static_cast<uint32_t>(UniformInt(0, 1 << 20));
    all.insert(all.end(), doc.begin(), doc.end());
    docs.push_back(doc);
  }
  const std::string path = WriteShard("a.bin", docs);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  auto r = ShardReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_EQ((*r)->n_tokens(), all.size());
  ASSERT_EQ((*r)->n_docs(), 20u);
  for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ((*r)->tokens()[i], all[i]);
  uint64_t offset = 0;
  for (uint64_t d = 0; d < 20; ++d) {
    EXPECT_EQ((*r)->DocOffset(d), offset);
    offset += docs[d].size();
  }
  EXPECT_EQ((*r)->DocOffset(20), all.size());
}

TEST_F(DataTest, TruncatedForeignAndMissingFilesAreClearErrors) {
  const std::string path = WriteShard("b.bin", {{1, 2, 3, 4}, {5, 6}});
  const auto size = fs::file_size(path);
  fs::copy_file(path, dir_ / "trunc.bin");
  fs::resize_file(dir_ / "trunc.bin", size - 3);
  auto r = ShardReader::Open((dir_ / "trunc.bin").string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().exit_code(), 2);
  EXPECT_NE(r.status().message().find("trunc.bin"), std::string::npos) << r.status().message();
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status().message();

  std::ofstream(dir_ / "foreign.bin") << "this is a text file, not a shard at all";
  r = ShardReader::Open((dir_ / "foreign.bin").string());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bad magic"), std::string::npos) << r.status().message();

  std::ofstream(dir_ / "tiny.bin") << "LATAM";
  r = ShardReader::Open((dir_ / "tiny.bin").string());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("shorter than the 32-byte header"), std::string::npos);

  r = ShardReader::Open((dir_ / "missing.bin").string());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().exit_code(), 2);
  EXPECT_NE(r.status().message().find("missing.bin"), std::string::npos);
}

TEST_F(DataTest, AbandonedWriterLeavesNothing) {
  const std::string path = (dir_ / "abandoned.bin").string();
  {
    auto w = ShardWriter::Create(path);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->AddDocument(std::vector<uint32_t>{1, 2, 3}).ok());
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(DataTest, PermutationIsABijection) {
  for (const uint64_t n : {uint64_t{1}, uint64_t{2}, uint64_t{7}, uint64_t{1000}, uint64_t{4097}}) {
    const Permutation p(n, seed_);
    std::set<uint64_t> seen;
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t v = p(i);
      ASSERT_LT(v, n);
      seen.insert(v);
    }
    EXPECT_EQ(seen.size(), n);
  }
  // Different keys give different orders.
  const Permutation a(1000, 1), b(1000, 2);
  int same = 0;
  for (uint64_t i = 0; i < 1000; ++i) same += a(i) == b(i);
  EXPECT_LT(same, 20);
}

TEST_F(DataTest, SamplerVisitsEveryWindowOncePerEpochAndIsStateless) {
  const uint64_t n_tokens = 10 * 16 + 5;  // 10 windows of 16+1 tokens
  const WindowSampler s(n_tokens, 16, seed_);
  ASSERT_EQ(s.num_windows(), 10u);
  for (uint64_t epoch = 0; epoch < 3; ++epoch) {
    std::set<uint64_t> starts;
    for (uint64_t i = epoch * 10; i < (epoch + 1) * 10; ++i) {
      const uint64_t start = s.WindowStart(i);
      EXPECT_EQ(start % 16, 0u);
      EXPECT_LE(start + 17, n_tokens) << "a window must never read past the stream's end";
      starts.insert(start);
    }
    EXPECT_EQ(starts.size(), 10u) << "epoch " << epoch;
  }
  // A second sampler with the same seed agrees at any index, in any order.
  const WindowSampler again(n_tokens, 16, seed_);
  for (uint64_t i : {uint64_t{29}, uint64_t{0}, uint64_t{17}}) EXPECT_EQ(s.WindowStart(i), again.WindowStart(i));
}

TEST_F(DataTest, DatasetSamplesAreShiftedWindowsAndIdsAreChecked) {
  std::vector<uint32_t> doc(100);
  for (size_t i = 0; i < doc.size(); ++i) doc[i] = static_cast<uint32_t>(i % 50);
  const std::string path = WriteShard("c.bin", {doc});
  auto ds = TokenDataset::Open(path, 8, seed_, 50);
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  std::vector<int32_t> in(8), tg(8);
  for (uint64_t i = 0; i < 30; ++i) {
    ASSERT_TRUE((*ds)->Sample(i, in.data(), tg.data()).ok());
    for (int t = 0; t < 8; ++t) {
      EXPECT_EQ(tg[t], (in[t] + 1) % 50);
      if (t > 0) {
        EXPECT_EQ(in[t], tg[t - 1]);
      }
    }
  }
  // A vocabulary smaller than the data's ids is a bad-input error.
  auto small = TokenDataset::Open(path, 8, seed_, 10);
  ASSERT_TRUE(small.ok());
  Status bad = Status::Ok();
  for (uint64_t i = 0; i < 12 && bad.ok(); ++i) bad = (*small)->Window(i, in.data(), tg.data());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.exit_code(), 2);
  EXPECT_NE(bad.message().find("outside model.vocab_size = 10"), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("c.bin"), std::string::npos);
  // Too short for one window.
  auto short_ds = TokenDataset::Open(path, 100, seed_, 50);
  ASSERT_FALSE(short_ds.ok());
  EXPECT_NE(short_ds.status().message().find("fewer than one sample"), std::string::npos);
}

TEST_F(DataTest, SyntheticStreamHasTheDesignedEntropy) {
  SyntheticSpec spec;
  spec.vocab = 64;
  spec.n_tokens = 300000;
  spec.branching = 4;
  spec.mean_doc_len = 100000;  // effectively one document: the chain alone
  spec.seed = seed_;
  std::vector<uint32_t> all;
  for (const auto& d : GenerateSyntheticDocuments(spec)) all.insert(all.end(), d.begin(), d.end());
  EXPECT_GE(all.size(), 300000u);
  for (uint32_t t : all) ASSERT_LT(t, 64u);
  // Successor probabilities 1/2, 1/4, 1/8, 1/8 have entropy 1.75 ln 2; colliding
  // successors can only lower it.
  const double h = EmpiricalBigramEntropy(all, 64);
  EXPECT_LT(h, 1.75 * std::log(2.0) + 0.01);
  EXPECT_GT(h, 0.8);
}

}  // namespace
}  // namespace latam::data
