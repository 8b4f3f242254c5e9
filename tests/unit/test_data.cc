// Token shards, the stateless sampler and the dataset reader.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "data/corpus.h"
#include "data/dataset.h"
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

// A directory or an over-long name where a file belongs: bad input naming
// the path, never a one-token document or an exception.
TEST_F(DataTest, DirectoriesAndOverlongNamesAreNamedErrors) {
  fs::create_directories(dir_ / "sub");
  const std::string sub = (dir_ / "sub").string();
  auto shard = ShardReader::Open(sub);
  ASSERT_FALSE(shard.ok());
  EXPECT_EQ(shard.status().exit_code(), 2);
  EXPECT_NE(shard.status().message().find(sub + ": is a directory"), std::string::npos) << shard.status().message();

  int documents = 0;
  Status s = ForEachDocument(sub, "text", [&](std::string_view) { return ++documents > 0; });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.exit_code(), 2);
  EXPECT_NE(s.message().find(sub + ": is a directory"), std::string::npos) << s.message();
  EXPECT_EQ(documents, 0);

  const std::string long_name = (dir_ / std::string(300, 'n')).string();
  s = ForEachDocument(long_name, "text", [&](std::string_view) { return ++documents > 0; });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.exit_code(), 2);
  EXPECT_NE(s.message().find("File name too long"), std::string::npos) << s.message();

  auto ds = TokenDataset::Open(sub, 4, 100);
  ASSERT_FALSE(ds.ok());
  EXPECT_NE(ds.status().message().find("directory has no *.bin token shards"), std::string::npos);
  ds = TokenDataset::Open(long_name, 4, 100);
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().exit_code(), 2);
  EXPECT_NE(ds.status().message().find(long_name), std::string::npos) << ds.status().message();
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

TEST_F(DataTest, MixtureBlockCountsAreExactLargestRemainder) {
  const MixtureSampler m({0.5, 0.3, 0.2}, {100, 100, 100}, seed_);
  // 0.3 x 4096 = 1228.8 and 0.2 x 4096 = 819.2: the larger remainder gets the spare slot.
  EXPECT_EQ(m.per_block(), (std::vector<uint64_t>{2048, 1229, 819}));
  // A tiny weight still gets a slot in every block.
  const MixtureSampler tiny({1.0, 1e-9}, {10, 10}, seed_);
  EXPECT_EQ(tiny.per_block(), (std::vector<uint64_t>{4095, 1}));
}

TEST_F(DataTest, MixtureProportionsHoldOverAnyRange) {
  const std::vector<double> weights = {0.55, 0.3, 0.15};
  const MixtureSampler m(weights, {5000, 300, 7}, seed_);
  const uint64_t first = static_cast<uint64_t>(UniformInt(0, 100000)), n = 20000;
  std::vector<double> counts(3, 0.0);
  for (uint64_t i = first; i < first + n; ++i) ++counts[static_cast<size_t>(m.Sample(i).dataset)];
  // Exact per 4096-sample block; a range that is not block-aligned is off by at most one block's share.
  for (size_t d = 0; d < 3; ++d) EXPECT_NEAR(counts[d] / n, weights[d], 0.01) << "dataset " << d;
}

TEST_F(DataTest, EachDatasetVisitsEveryWindowOncePerEpoch) {
  const std::vector<uint64_t> windows = {7, 1000, 50};
  const MixtureSampler m({0.2, 0.5, 0.3}, windows, seed_);
  std::vector<std::vector<uint64_t>> seen(3);
  for (uint64_t i = 0; i < 3 * MixtureSampler::kBlock; ++i) {
    const auto draw = m.Sample(i);
    ASSERT_LT(draw.window, windows[static_cast<size_t>(draw.dataset)]);
    seen[static_cast<size_t>(draw.dataset)].push_back(draw.window);
  }
  for (size_t d = 0; d < 3; ++d) {
    std::vector<uint64_t> per_window(windows[d], 0);
    for (uint64_t w : seen[d]) ++per_window[w];
    const uint64_t full_epochs = seen[d].size() / windows[d];
    for (uint64_t w = 0; w < windows[d]; ++w) {
      // Every window appears once per completed epoch, plus at most once in the partial one.
      EXPECT_GE(per_window[w], full_epochs) << "dataset " << d << " window " << w;
      EXPECT_LE(per_window[w], full_epochs + 1) << "dataset " << d << " window " << w;
    }
  }
}

TEST_F(DataTest, SampleOrderIsStatelessAcrossResumeAndDataParallelSizes) {
  const MixtureSampler m({0.7, 0.3}, {900, 400}, seed_);
  const uint64_t global_batch = 16, steps = 40;
  // The uninterrupted run's order.
  std::vector<std::pair<int, uint64_t>> reference;
  for (uint64_t step = 0; step < steps; ++step) {
    for (uint64_t i : DataParallelSamples(step * global_batch, global_batch, 0, 1)) {
      const auto d = m.Sample(i);
      reference.emplace_back(d.dataset, d.window);
    }
  }
  for (int ranks : {1, 2, 4}) {
    // Resume at step 17 with a fresh sampler; each step's slices over the
    // ranks, concatenated in rank order, must give the reference order.
    const MixtureSampler resumed({0.7, 0.3}, {900, 400}, seed_);
    std::vector<std::pair<int, uint64_t>> got(reference.begin(), reference.begin() + 17 * global_batch);
    for (uint64_t step = 17; step < steps; ++step) {
      for (int r = 0; r < ranks; ++r) {
        const auto slice = DataParallelSamples(step * global_batch, global_batch, r, ranks);
        ASSERT_EQ(slice.size(), global_batch / static_cast<uint64_t>(ranks));
        for (uint64_t i : slice) {
          const auto d = resumed.Sample(i);
          got.emplace_back(d.dataset, d.window);
        }
      }
    }
    EXPECT_EQ(got, reference) << ranks << " data-parallel ranks";
  }
}

TEST_F(DataTest, DatasetOfShardsReadsWindowsWithinEachShard) {
  // Three shards whose tokens count up from different bases, so a token's
  // value tells which shard and position it came from.
  fs::create_directories(dir_ / "ds");
  const std::vector<uint32_t> sizes = {45, 17, 8};  // 8 tokens: no window of 8+1
  for (size_t s = 0; s < sizes.size(); ++s) {
    std::vector<uint32_t> doc(sizes[s]);
    for (uint32_t k = 0; k < sizes[s]; ++k) doc[k] = static_cast<uint32_t>(1000 * s + k);
    WriteShard("ds/part-" + std::to_string(s) + ".bin", {doc});
  }
  std::ofstream(dir_ / "ds" / "README.txt") << "not a shard";  // ignored: not *.bin
  auto ds = TokenDataset::Open((dir_ / "ds").string(), 8, 5000);
  ASSERT_TRUE(ds.ok()) << ds.status().message();
  EXPECT_EQ((*ds)->num_shards(), 3u);
  EXPECT_EQ((*ds)->num_tokens(), 70u);
  EXPECT_EQ((*ds)->num_windows(), 44u / 8 + 16u / 8);  // 5 + 2 + 0
  std::vector<int32_t> in(8), tg(8);
  for (uint64_t w = 0; w < (*ds)->num_windows(); ++w) {
    ASSERT_TRUE((*ds)->ReadWindow(w, in.data(), tg.data()).ok());
    const int32_t shard = in[0] / 1000;
    const int32_t offset = in[0] % 1000;
    EXPECT_EQ(offset % 8, 0) << "window " << w;
    for (int t = 0; t < 8; ++t) {
      EXPECT_EQ(in[t], in[0] + t);
      EXPECT_EQ(tg[t], in[t] + 1);
    }
    EXPECT_LT(static_cast<uint32_t>(offset + 8), sizes[static_cast<size_t>(shard)]) << "read past shard end";
  }
  // The ids are checked against the vocabulary.
  auto small = TokenDataset::Open((dir_ / "ds").string(), 8, 1000);
  ASSERT_TRUE(small.ok());
  const Status bad = (*small)->ReadWindow(5, in.data(), tg.data());  // first window of part-1
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.exit_code(), 2);
  EXPECT_NE(bad.message().find("part-1.bin: token 0 has id 1000, outside model.vocab_size = 1000"), std::string::npos)
      << bad.message();
  // Errors: too short, empty directory.
  auto short_ds = TokenDataset::Open((dir_ / "ds" / "part-2.bin").string(), 8, 5000);
  ASSERT_FALSE(short_ds.ok());
  EXPECT_NE(short_ds.status().message().find("fewer than one sample"), std::string::npos);
  fs::create_directories(dir_ / "empty");
  auto empty = TokenDataset::Open((dir_ / "empty").string(), 8, 5000);
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("no *.bin token shards"), std::string::npos);
}

// With mask_cross_document, exactly the targets that are a document's first
// token (the one after the previous document's EOS) are -1; everything else
// is the unmasked window. The document starts (for document-masked
// attention) give, per input position, where its document begins in the
// window (0 if before it). Documents of 1 to 11 tokens, one-token ones
// included, over windows of 8.
TEST_F(DataTest, CrossDocumentTargetsAreMasked) {
  const std::vector<size_t> lengths = {5, 1, 7, 3, 11, 1, 1, 9, 2, 6, 4};
  std::vector<std::vector<uint32_t>> docs;
  std::vector<bool> starts_doc;    // per token of the shard
  std::vector<size_t> doc_begin;  // per token: where its document starts
  size_t at = 0;
  for (size_t d = 0; d < lengths.size(); ++d) {
    std::vector<uint32_t> doc;
    for (size_t k = 0; k < lengths[d]; ++k) {
      doc.push_back(static_cast<uint32_t>(100 * d + k));
      starts_doc.push_back(k == 0);
      doc_begin.push_back(at);
    }
    at += lengths[d];
    docs.push_back(doc);
  }
  WriteShard("docs.bin", docs);
  auto plain = TokenDataset::Open((dir_ / "docs.bin").string(), 8, 5000, false);
  auto masked = TokenDataset::Open((dir_ / "docs.bin").string(), 8, 5000, true);
  ASSERT_TRUE(plain.ok() && masked.ok());
  ASSERT_GT((*masked)->num_windows(), 4u);
  int masked_count = 0;
  for (uint64_t w = 0; w < (*masked)->num_windows(); ++w) {
    std::vector<int32_t> in(8), tg(8), in_m(8), tg_m(8), starts(8);
    ASSERT_TRUE((*plain)->ReadWindow(w, in.data(), tg.data()).ok());
    ASSERT_TRUE((*masked)->ReadWindow(w, in_m.data(), tg_m.data(), starts.data()).ok());
    EXPECT_EQ(in, in_m) << "window " << w;
    for (size_t i = 0; i < 8; ++i) {
      const size_t begin = doc_begin[w * 8 + i];
      EXPECT_EQ(starts[i], static_cast<int32_t>(begin < w * 8 ? 0 : begin - w * 8)) << "window " << w << " " << i;
    }
    for (size_t i = 0; i < 8; ++i) {
      const size_t target_at = w * 8 + i + 1;
      if (starts_doc[target_at]) {
        EXPECT_EQ(tg_m[i], -1) << "window " << w << " target " << i;
        ++masked_count;
      } else {
        EXPECT_EQ(tg_m[i], tg[i]) << "window " << w << " target " << i;
      }
    }
  }
  EXPECT_GE(masked_count, 8);
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
