// Context parallelism's geometry (parallel/context_parallel.h) against brute
// force, and its config validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <vector>

#include "parallel/context_parallel.h"
#include "trainer/config.h"
#include "trainer/plan.h"

#include <nlohmann/json.hpp>

namespace latam {
namespace {

TEST(ContextSplitTest, RanksHoldChunksRAnd2CMinus1MinusRAndCoverTheSequenceOnce) {
  for (int c : {1, 2, 3, 4}) {
    const int64_t seq = 2 * c * 5;
    std::vector<int> seen(static_cast<size_t>(seq), 0);
    for (int r = 0; r < c; ++r) {
      const ContextSplit split(c, r, seq);
      ASSERT_EQ(split.local_len(), seq / c);
      for (int64_t i = 0; i < split.local_len(); ++i) {
        const int64_t g = split.GlobalPosition(r, i);
        ++seen[static_cast<size_t>(g)];
        if (c > 1) {
          const int64_t chunk = g / split.chunk_len();
          EXPECT_EQ(chunk, i < split.chunk_len() ? r : 2 * c - 1 - r) << "C=" << c << " r=" << r << " i=" << i;
        } else {
          EXPECT_EQ(g, i);
        }
      }
    }
    for (int64_t g = 0; g < seq; ++g) EXPECT_EQ(seen[static_cast<size_t>(g)], 1) << "C=" << c << " position " << g;
  }
}

// The listed blocks are exactly the (query half, key half) pairs with some
// causally visible key, and every rank's ring work is the same.
TEST(ContextSplitTest, BlocksAreThoseWithVisibleKeysAndBalanced) {
  for (int c : {2, 3, 4, 8}) {
    const int64_t l = 3, seq = 2 * c * l;
    int64_t first_work = -1;
    for (int r = 0; r < c; ++r) {
      const ContextSplit split(c, r, seq);
      int64_t work = 0;  // visible (query, key) pairs over the ring
      for (int s = 0; s < c; ++s) {
        std::set<std::pair<int, int>> listed;
        for (const ContextSplit::Block& b : split.Blocks(s)) {
          listed.insert({b.q_half, b.kv_half});
          EXPECT_EQ(b.q_pos0, split.GlobalPosition(r, b.q_half * l));
          EXPECT_EQ(b.kv_pos0, split.GlobalPosition(s, b.kv_half * l));
        }
        for (int qh = 0; qh < 2; ++qh) {
          for (int kh = 0; kh < 2; ++kh) {
            int64_t visible = 0;
            for (int64_t i = 0; i < l; ++i) {
              for (int64_t j = 0; j < l; ++j) {
                visible += split.GlobalPosition(s, kh * l + j) <= split.GlobalPosition(r, qh * l + i) ? 1 : 0;
              }
            }
            EXPECT_EQ(listed.count({qh, kh}) == 1, visible > 0) << "C=" << c << " r=" << r << " s=" << s;
            work += visible;
          }
        }
      }
      if (first_work < 0) first_work = work;
      EXPECT_EQ(work, first_work) << "C=" << c << " rank " << r << " does a different share";
    }
  }
}

TEST(ContextSplitTest, ScatterTakesTheRanksRowsOfEachWindow) {
  const ContextSplit split(2, 1, 8);  // chunks 1 and 2: positions 2, 3, 4, 5
  const std::vector<int32_t> full = {10, 11, 12, 13, 14, 15, 16, 17, 20, 21, 22, 23, 24, 25, 26, 27};
  std::vector<int32_t> local(8);
  split.Scatter(full.data(), 2, local.data());
  EXPECT_EQ(local, (std::vector<int32_t>{12, 13, 14, 15, 22, 23, 24, 25}));
}

Config ContextConfig() {
  Config c;
  auto* m = c.mutable_model();
  m->set_vocab_size(64);
  m->set_dim(32);
  m->set_n_layers(2);
  m->set_n_heads(4);
  m->set_n_kv_heads(2);
  m->set_ffn_dim(64);
  m->set_max_seq_len(64);
  c.mutable_parallel()->set_context(4);
  c.mutable_data()->set_seq_len(64);
  c.mutable_train()->set_steps(1);
  c.mutable_train()->set_global_batch_size(2);
  return c;
}

ValidationOptions World(int n) {
  ValidationOptions o;
  o.world_size = n;
  o.check_files = false;
  return o;
}

TEST(ContextConfigTest, ValidatesSequenceWorldAndDevice) {
  Config c = ContextConfig();
  EXPECT_TRUE(ValidateConfig(c, World(4)).ok());
  EXPECT_TRUE(ValidateConfig(c, World(8)).ok());  // data 2 derived
  EXPECT_EQ(DataParallelSize(c, 8), 2);
  Status s = ValidateConfig(c, World(6));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("world size 6 != tensor (1) x context (4) x pipeline (1)"), std::string::npos)
      << s.message();
  c.mutable_data()->set_seq_len(60);  // not a multiple of 2 x 4
  s = ValidateConfig(c, World(4));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind("data.seq_len: 60 is not divisible by 2 x parallel.context = 8", 0), 0u) << s.message();
  c = ContextConfig();
  c.mutable_parallel()->set_context(0);
  s = ValidateConfig(c, World(1));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind("parallel.context", 0), 0u) << s.message();
  // Sequence parallelism splits each rank's share again over the TP ranks.
  c = ContextConfig();
  c.mutable_parallel()->set_tensor(4);
  c.mutable_parallel()->set_sequence_parallel(true);
  c.mutable_data()->set_seq_len(48);  // 12 rows per rank, 3 per TP shard
  EXPECT_TRUE(ValidateConfig(c, World(16)).ok());
  c.mutable_data()->set_seq_len(40);  // divisible by 2 x 4, but 10 rows per rank do not split over 4 TP ranks
  s = ValidateConfig(c, World(16));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind("data.seq_len: 40 is not divisible by parallel.tensor = 4 x parallel.context = 4", 0),
            0u)
      << s.message();
  c = ContextConfig();
  c.mutable_train()->set_device(config::TrainConfig::cuda);
  c.mutable_train()->set_precision(config::TrainConfig::bf16);
  EXPECT_TRUE(ValidateConfig(c, World(4)).ok());
}

// --plan: a rank holds 1/C of each sequence's activations; the parameters
// and optimizer state are sharded over data x context replicas under ZeRO.
TEST(ContextConfigTest, PlanSplitsActivationsAndShardsOverReplicas) {
  Config one = ContextConfig();
  one.mutable_parallel()->set_context(1);
  one.mutable_parallel()->set_zero_stage(1);
  one.mutable_train()->set_micro_batch_size(1);
  Config four = one;
  four.mutable_parallel()->set_context(4);
  auto a = PlanJson(one), b = PlanJson(four);
  ASSERT_TRUE(a.ok() && b.ok()) << (a.ok() ? b.status().message() : a.status().message());
  const auto ja = nlohmann::json::parse(*a), jb = nlohmann::json::parse(*b);
  EXPECT_EQ(jb["layout"]["context"], 4);
  EXPECT_EQ(jb["layout"]["world_size"], 4);
  // Adam moments: 8 bytes per parameter over 1 replica, then over 4 (the
  // parameter count padded to a multiple of 4).
  const int64_t params = ja["parameters_per_rank"];
  EXPECT_EQ(ja["memory_breakdown"]["optimizer"], 8 * params);
  EXPECT_EQ(jb["memory_breakdown"]["optimizer"], 8 * ((params + 3) / 4 * 4) / 4);
  // A quarter of every sequence's rows; the ring's buffers and the fixed
  // workspaces keep it above a quarter.
  const double act_a = ja["memory_breakdown"]["activations"], act_b = jb["memory_breakdown"]["activations"];
  EXPECT_LT(act_b, 0.5 * act_a);
  EXPECT_GT(act_b, 0.25 * act_a);
}

}  // namespace
}  // namespace latam
