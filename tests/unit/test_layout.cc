// Pipeline stages and chunks of ModelLayout: the per-stage layer counts of
// even and uneven splits (StageLayerCounts), and the chunks every pipeline
// rank holds, with and without virtual stages, against counts and layer
// ranges written out by hand (model/layout.h gives the rule).
#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "model/layout.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using Counts = std::vector<int64_t>;

ModelShape Shape(int64_t n_layers, bool tied = false) {
  return testing::SmallShape({.vocab = 16,
                              .n_layers = n_layers,
                              .n_heads = 4,
                              .n_kv_heads = 2,
                              .head_dim = 4,
                              .ffn_dim = 8,
                              .max_seq_len = 8,
                              .init_std = 0.02,
                              .tied = tied});
}

TEST(StageLayerCountsTest, EvenSplits) {
  EXPECT_EQ(StageLayerCounts(8, 1, {}), (Counts{8}));
  EXPECT_EQ(StageLayerCounts(8, 4, {}), (Counts{2, 2, 2, 2}));
  EXPECT_EQ(StageLayerCounts(80, 4, {}), (Counts{20, 20, 20, 20}));
  EXPECT_EQ(StageLayerCounts(80, 8, {}), Counts(8, 10));
}

TEST(StageLayerCountsTest, UnevenSplitsOfEightyLayers) {
  // PP 3: 80 does not divide by 3; a lighter head stage balances it.
  EXPECT_EQ(StageLayerCounts(80, 3, {0, 26}), (Counts{27, 27, 26}));
  EXPECT_EQ(StageLayerCounts(80, 3, {26, 26}), (Counts{26, 28, 26}));
  EXPECT_EQ(StageLayerCounts(80, 3, {28, 0}), (Counts{28, 26, 26}));
  // PP 6: both end stages two layers lighter than the middle ones.
  EXPECT_EQ(StageLayerCounts(80, 6, {12, 12}), (Counts{12, 14, 14, 14, 14, 12}));
  EXPECT_EQ(StageLayerCounts(80, 6, {0, 10}), (Counts{14, 14, 14, 14, 14, 10}));
  // PP 12: 6 + 10 x 7 + 4.
  EXPECT_EQ(StageLayerCounts(80, 12, {6, 4}), (Counts{6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 4}));
  // Two stages: a pinned end leaves the rest to the other.
  EXPECT_EQ(StageLayerCounts(8, 2, {3, 0}), (Counts{3, 5}));
  EXPECT_EQ(StageLayerCounts(8, 2, {0, 3}), (Counts{5, 3}));
  EXPECT_EQ(StageLayerCounts(8, 2, {3, 5}), (Counts{3, 5}));
  // The tiny model of the layout tests: 1, 3, 3, 1.
  EXPECT_EQ(StageLayerCounts(8, 4, {1, 1}), (Counts{1, 3, 3, 1}));
}

// A split that does not add up (rejected by ValidateConfig) shows in the sum.
TEST(StageLayerCountsTest, BadSplitDoesNotAddUp) {
  // 3 + 2 leave 3 layers for 2 middle stages: 1 each, rounded down.
  const Counts c = StageLayerCounts(8, 4, {3, 2});
  EXPECT_EQ(c, (Counts{3, 1, 1, 2}));
  EXPECT_NE(c[0] + c[1] + c[2] + c[3], 8);
}

struct Chunk {
  int64_t begin, end;
  bool first, last;
  int rank;
  bool operator==(const Chunk& o) const {
    return begin == o.begin && end == o.end && first == o.first && last == o.last && rank == o.rank;
  }
};

// Every rank's chunks, by global index; checks that each rank lists its own
// chunks g = v P + p in order of v.
std::map<int, Chunk> AllChunks(const ModelShape& s, int pp, int vs, const StageSplit& split) {
  std::map<int, Chunk> all;
  for (int p = 0; p < pp; ++p) {
    const ModelLayout l = ModelLayout::Make(s, 1, 0, pp, p, vs, split);
    EXPECT_EQ(l.chunks.size(), static_cast<size_t>(vs));
    for (int v = 0; v < static_cast<int>(l.chunks.size()); ++v) {
      const ChunkInfo& c = l.chunks[static_cast<size_t>(v)];
      EXPECT_EQ(c.global_index, v * pp + p);
      all[c.global_index] = Chunk{c.layer_begin, c.layer_end, c.first, c.last, p};
    }
    EXPECT_EQ(l.holds_embedding(), p == 0);
    EXPECT_EQ(l.holds_head(), p == pp - 1);
  }
  return all;
}

// The general rule: the chunks tile [0, n_layers) in global order, chunk g
// on rank g % P holds L_{g % P} / V layers, only chunk 0 is first and only
// chunk P V - 1 is last.
void ExpectChunkRule(int64_t n_layers, int pp, int vs, const StageSplit& split) {
  SCOPED_TRACE(::testing::Message() << n_layers << " layers, PP " << pp << ", V " << vs << ", first "
                                    << split.first_layers << ", last " << split.last_layers);
  const Counts counts = StageLayerCounts(n_layers, pp, split);
  const std::map<int, Chunk> all = AllChunks(Shape(n_layers), pp, vs, split);
  ASSERT_EQ(all.size(), static_cast<size_t>(pp * vs));
  int64_t next = 0;
  for (const auto& [g, c] : all) {
    EXPECT_EQ(c.rank, g % pp);
    EXPECT_EQ(c.begin, next) << "chunk " << g;
    EXPECT_EQ(c.end - c.begin, counts[static_cast<size_t>(g % pp)] / vs) << "chunk " << g;
    EXPECT_EQ(c.first, g == 0);
    EXPECT_EQ(c.last, g == pp * vs - 1);
    next = c.end;
  }
  EXPECT_EQ(next, n_layers);
}

TEST(ModelLayoutTest, EvenChunks) {
  // 8 layers, PP 2, V 2: chunks of 2 in order g = 0 (rank 0), 1 (rank 1), 2 (rank 0), 3 (rank 1).
  EXPECT_EQ(AllChunks(Shape(8), 2, 2, {}), (std::map<int, Chunk>{{0, {0, 2, true, false, 0}},
                                                                 {1, {2, 4, false, false, 1}},
                                                                 {2, {4, 6, false, false, 0}},
                                                                 {3, {6, 8, false, true, 1}}}));
  EXPECT_EQ(AllChunks(Shape(8), 4, 1, {}), (std::map<int, Chunk>{{0, {0, 2, true, false, 0}},
                                                                 {1, {2, 4, false, false, 1}},
                                                                 {2, {4, 6, false, false, 2}},
                                                                 {3, {6, 8, false, true, 3}}}));
  ExpectChunkRule(80, 4, 5, {});
  ExpectChunkRule(80, 8, 2, {});
  ExpectChunkRule(8, 1, 1, {});
}

TEST(ModelLayoutTest, UnevenChunksWithoutVirtualStages) {
  EXPECT_EQ(AllChunks(Shape(8), 4, 1, {1, 1}), (std::map<int, Chunk>{{0, {0, 1, true, false, 0}},
                                                                     {1, {1, 4, false, false, 1}},
                                                                     {2, {4, 7, false, false, 2}},
                                                                     {3, {7, 8, false, true, 3}}}));
  EXPECT_EQ(
      AllChunks(Shape(8), 3, 1, {2, 0}),
      (std::map<int, Chunk>{{0, {0, 2, true, false, 0}}, {1, {2, 5, false, false, 1}}, {2, {5, 8, false, true, 2}}}));
  // 80 layers: PP 6 as 12, 14, 14, 14, 14, 12.
  const std::map<int, Chunk> pp6 = AllChunks(Shape(80), 6, 1, {12, 12});
  EXPECT_EQ(pp6.at(0), (Chunk{0, 12, true, false, 0}));
  EXPECT_EQ(pp6.at(1), (Chunk{12, 26, false, false, 1}));
  EXPECT_EQ(pp6.at(4), (Chunk{54, 68, false, false, 4}));
  EXPECT_EQ(pp6.at(5), (Chunk{68, 80, false, true, 5}));
  ExpectChunkRule(80, 3, 1, {0, 26});
  ExpectChunkRule(80, 6, 1, {12, 12});
  ExpectChunkRule(80, 12, 1, {6, 4});
}

TEST(ModelLayoutTest, UnevenChunksWithVirtualStages) {
  // 8 layers, PP 2 as 2 + 6, V 2: rank 0's chunks hold 1 layer, rank 1's 3,
  // in the order 1, 3, 1, 3.
  EXPECT_EQ(AllChunks(Shape(8), 2, 2, {2, 0}), (std::map<int, Chunk>{{0, {0, 1, true, false, 0}},
                                                                     {1, {1, 4, false, false, 1}},
                                                                     {2, {4, 5, false, false, 0}},
                                                                     {3, {5, 8, false, true, 1}}}));
  // 80 layers, PP 4 as 25, 20, 20, 15, V 5: each round of 4 chunks holds
  // 5 + 4 + 4 + 3 = 16 layers; chunk g = 4 v + p starts at 16 v + (0, 5, 9, 13)[p].
  const std::map<int, Chunk> pp4 = AllChunks(Shape(80), 4, 5, {25, 15});
  const int64_t offset[] = {0, 5, 9, 13}, size[] = {5, 4, 4, 3};
  for (int v = 0; v < 5; ++v) {
    for (int p = 0; p < 4; ++p) {
      const int g = 4 * v + p;
      EXPECT_EQ(pp4.at(g), (Chunk{16 * v + offset[p], 16 * v + offset[p] + size[p], g == 0, g == 19, p}))
          << "chunk " << g;
    }
  }
  ExpectChunkRule(80, 6, 2, {12, 12});  // chunks of 6, 7, 7, 7, 7, 6 layers per round
  ExpectChunkRule(80, 3, 2, {26, 26});  // 13, 14, 13 per round
  ExpectChunkRule(80, 4, 5, {0, 5});    // 5, 5, 5, 1 per round
}

// Every layer's parameters sit on exactly one pipeline rank, whatever the
// split; the tied copy of the embedding on the last stage follows the head.
TEST(ModelLayoutTest, ParametersOfUnevenStagesCoverTheModelOnce) {
  const ModelShape s = Shape(8, /*tied=*/true);
  std::map<std::string, int> holders;
  for (int p = 0; p < 3; ++p) {
    const ModelLayout l = ModelLayout::Make(s, 1, 0, 3, p, 1, {2, 0});
    for (const ParamSpec& spec : LlamaParameterSpecs(s, l)) {
      if (spec.counted) ++holders[spec.name];
    }
    EXPECT_EQ(l.holds_tied_copy(s), p == 2);
  }
  EXPECT_EQ(holders.size(), 1 + 8 * 9 + 1u);  // embedding, 9 tensors per layer, final norm
  for (const auto& [name, n] : holders) EXPECT_EQ(n, 1) << name;
}

}  // namespace
}  // namespace latam
