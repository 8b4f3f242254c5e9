// Gradient buckets: their layout in the parameter arena, and the optimizer
// issuing each bucket's data-parallel collective the moment the backward pass
// completes its last tensor (so it overlaps the rest of the backward pass).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/layout.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "tests/test_util.h"

namespace latam {
namespace {

// Which bucket each tensor of the bucket is in, by name.
std::vector<std::vector<std::string>> BucketNames(const ParameterSet& p) {
  std::vector<std::vector<std::string>> out;
  for (const GradBucket& b : p.buckets()) {
    out.emplace_back();
    for (size_t i = b.first_tensor; i < b.end_tensor; ++i) out.back().push_back(p.spec(i).name);
  }
  return out;
}

TEST(GradBucketTest, LayersGroupUpToTheSizeAndSpecialTensorsStandAlone) {
  const ModelShape s = testing::FourLayerShape();
  const std::vector<ParamSpec> specs = LlamaParameterSpecs(s, ModelLayout::Single(s));
  const int64_t layer_elems = 2 * 16 + 16 * 16 + 2 * 8 * 16 + 16 * 16 + 3 * 24 * 16;

  // 0: one bucket holding everything.
  const ParameterSet one(specs, 1, {}, 0);
  ASSERT_EQ(one.buckets().size(), 1u);
  EXPECT_EQ(one.buckets()[0].end, one.padded_numel());

  // One element: embedding | each layer | head.
  const ParameterSet each(specs, 1, {}, 1);
  const auto names = BucketNames(each);
  ASSERT_EQ(names.size(), 6u);
  EXPECT_EQ(names[0], std::vector<std::string>{"model.embed_tokens.weight"});
  for (int l = 0; l < 4; ++l) {
    ASSERT_EQ(names[static_cast<size_t>(l + 1)].size(), 9u);
    for (const std::string& n : names[static_cast<size_t>(l + 1)]) {
      EXPECT_EQ(n.rfind(LayerParamName(l, ""), 0), 0u) << n << " in the bucket of layer " << l;
    }
  }
  EXPECT_EQ(names[5], (std::vector<std::string>{"model.norm.weight", "lm_head.weight"}));

  // A bucket closes once it holds at least the size: two layers each here.
  const ParameterSet pairs(specs, 1, {}, layer_elems + 1);
  ASSERT_EQ(pairs.buckets().size(), 4u);
  EXPECT_EQ(pairs.buckets()[1].end_tensor - pairs.buckets()[1].first_tensor, 18u);

  // Padding: every bucket a multiple of pad_to, buckets back to back,
  // tensors inside their bucket, bucket_of consistent.
  const ParameterSet padded(specs, 3, {}, 1);
  int64_t at = 0;
  for (size_t b = 0; b < padded.buckets().size(); ++b) {
    const GradBucket& k = padded.buckets()[b];
    EXPECT_EQ(k.begin, at);
    EXPECT_EQ((k.end - k.begin) % 3, 0) << "bucket " << b;
    for (size_t i = k.first_tensor; i < k.end_tensor; ++i) {
      EXPECT_EQ(padded.bucket_of(i), b);
      EXPECT_GE(padded.flat_offset(i), k.begin);
      EXPECT_LE(padded.flat_offset(i) + padded.param(i).numel(), k.end);
    }
    at = k.end;
  }
  EXPECT_EQ(at, padded.padded_numel());
}

// Records the order of all-reduces (by first element) and when they happen.
class RecordingCommunicator : public SelfCommunicator {
 public:
  RecordingCommunicator() : SelfCommunicator("dp") {}
  std::unique_ptr<Request> AllReduce(const Tensor& buf, ReduceOp op) override {
    issued.push_back(buf.data);
    return SelfCommunicator::AllReduce(buf, op);
  }
  std::vector<const void*> issued;
};

TEST(GradBucketTest, EachBucketIsReducedWhenTheBackwardPassCompletesIt) {
  const ModelShape s = testing::FourLayerShape();
  ActivationOptions act;
  act.micro_batch = 1;
  act.seq_len = 8;
  SelfCommunicator tp("tp");
  LlamaModel model(s, ModelLayout::Single(s), act, ModelComms{&tp, nullptr}, 1, 1);
  model.parameters().InitWeights(3);
  RecordingCommunicator dp;
  SelfCommunicator norm("norm");
  config::OptimizerConfig oc;
  AdamWOptimizer opt(&model.parameters(), oc, 0, OptimizerComms{&dp, &norm});
  const ParameterSet& p = model.parameters();

  // The model reports each group as its backward completes it; the
  // optimizer must have issued exactly that group's bucket by then.
  std::vector<size_t> issued_after_report;
  model.OnGradientsFinal([&](const std::vector<size_t>& tensors, bool) {
    opt.GradientsFinal(tensors);
    issued_after_report.push_back(dp.issued.size());
    ASSERT_FALSE(dp.issued.empty());
    EXPECT_EQ(dp.issued.back(), p.padded_grads().as<float>() + p.buckets()[p.bucket_of(tensors[0])].begin);
  });
  opt.BeginGradientReduction();
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8}, targets = {2, 3, 4, 5, 6, 7, 8, 9};
  model.ForwardBackward(ids.data(), targets.data(), 0.125f);
  // Head first, then layers 3, 2, 1, 0, then the embedding: one collective each.
  EXPECT_EQ(issued_after_report, (std::vector<size_t>{1, 2, 3, 4, 5, 6}));
  opt.FinishGradientReduction();
  EXPECT_EQ(dp.issued.size(), 6u);

  // A tensor left out is an error, not a silent skip.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  opt.BeginGradientReduction();
  opt.GradientsFinal({0});
  EXPECT_DEATH(opt.FinishGradientReduction(), "was never declared final");
}

}  // namespace
}  // namespace latam
