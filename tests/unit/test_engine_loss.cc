// The training step's loss and gradient are the mean over the targets that
// count: targets of -1 (a document boundary under
// data.mask_cross_document_loss, padding) add nothing and are not in the
// denominator. Checked against the model run directly on one process with
// the gradient scale 1 / (counted targets), from the same initial weights.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/grad_norm.h"
#include "model/layout.h"
#include "model/model.h"
#include "parallel/grid.h"
#include "tests/test_util.h"
#include "trainer/config.h"
#include "trainer/engine.h"

namespace latam {
namespace {

constexpr int kSeq = 16, kMicro = 2, kBatch = 4;

Config SmallConfig() {
  Config c;
  *c.mutable_model() = testing::TinyModelConfig(false);
  c.mutable_data()->set_seq_len(kSeq);
  auto* t = c.mutable_train();
  t->set_steps(2);
  t->set_micro_batch_size(kMicro);
  t->set_global_batch_size(kBatch);
  t->set_seed(31);
  c.mutable_optimizer()->set_lr(1e-3);
  c.mutable_optimizer()->set_grad_clip(0.0);
  return c;
}

// Sample i: ids and targets from a fixed recurrence; targets at positions
// where (i + t) % 5 == 0 are -1.
Status Sample(uint64_t index, int32_t* ids, int32_t* targets, int32_t* /*doc_start*/) {
  for (int t = 0; t < kSeq; ++t) {
    ids[t] = static_cast<int32_t>((index * 37 + static_cast<uint64_t>(t) * 11) % 64);
    targets[t] = (index + static_cast<uint64_t>(t)) % 5 == 0 ? -1 : static_cast<int32_t>((ids[t] * 7 + 3) % 64);
  }
  return Status::Ok();
}

TEST(EngineLossTest, MeanOverCountedTargets) {
  const Config config = SmallConfig();
  auto grid = ProcessGrid::Single();
  Engine engine(config, grid.get());

  // The reference: the same weights, each micro-batch's backward scaled by
  // 1 / (counted targets of the whole batch).
  const ModelShape shape = ModelShape::FromConfig(config.model());
  ActivationOptions act;
  act.micro_batch = kMicro;
  act.seq_len = kSeq;
  SelfCommunicator tp("tp");
  LlamaModel model(shape, ModelLayout::Single(shape), act, ModelComms{&tp, nullptr});
  model.parameters().InitWeights(config.train().seed());
  std::vector<int32_t> ids(kBatch * kSeq), targets(kBatch * kSeq);
  int counted = 0;
  for (int b = 0; b < kBatch; ++b) {
    ASSERT_TRUE(Sample(static_cast<uint64_t>(b), ids.data() + b * kSeq, targets.data() + b * kSeq, nullptr).ok());
  }
  for (int32_t t : targets) counted += t >= 0 ? 1 : 0;
  ASSERT_LT(counted, kBatch * kSeq);
  model.parameters().ZeroGrads();
  double loss_sum = 0.0;
  for (int m = 0; m < kBatch / kMicro; ++m) {
    loss_sum += model.ForwardBackward(ids.data() + m * kMicro * kSeq, targets.data() + m * kMicro * kSeq,
                                      1.0f / static_cast<float>(counted));
  }
  const double norm = std::sqrt(cpu::SumOfSquares(model.parameters().padded_grads()));

  auto r = engine.Step(0, 0, Sample);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_NEAR(r->loss, loss_sum / counted, 1e-6 * std::abs(r->loss));
  EXPECT_NEAR(r->grad_norm, norm, 1e-5 * norm);
  // Counting every target instead (the mean over all of them) would differ.
  EXPECT_GT(std::abs(r->loss - loss_sum / (kBatch * kSeq)), 1e-3 * r->loss);
}

}  // namespace
}  // namespace latam
