// The training step's loss and gradient are the mean over the targets that
// count: targets of -1 (a document boundary under
// data.mask_cross_document_loss, padding) add nothing and are not in the
// denominator. Checked against the model run directly on one process with
// the gradient scale 1 / (counted targets), from the same initial weights.
// A chat shard (data/chat.h) is the case in practice: only the assistant's
// tokens count.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "data/bpe_trainer.h"
#include "data/chat.h"
#include "data/dataset.h"
#include "data/shard.h"
#include "data/tokenizer.h"

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

// Conversations in a version 2 shard, read through TokenDataset as the
// trainer reads them: the step's loss is the mean over the assistant tokens
// alone, equal to the model run on the same windows with every other target
// set to -1 by hand from the template's mask.
TEST(EngineLossTest, ChatShardLossIsTheMeanOverAssistantTokens) {
  data::BpeTrainerOptions options;
  options.vocab_size = 300;
  auto trainer = data::BpeTrainer::Create(options);
  ASSERT_TRUE(trainer.ok()) << trainer.status().message();
  (*trainer)->AddDocuments(std::vector<std::string>(20, "Hola, ¿qué tal? Bien, gracias. user assistant system"));
  auto json = (*trainer)->Train();
  ASSERT_TRUE(json.ok()) << json.status().message();
  auto tok = data::Tokenizer::FromJson(*json, "tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  auto chat = data::ChatTemplate::Create(tok->get(), "tokenizer.json");
  ASSERT_TRUE(chat.ok()) << chat.status().message();

  const std::filesystem::path dir = testing::FreshTestDir("latam_engine_chat");
  const std::string path = (dir / "chat.bin").string();
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;
  {
    auto writer = data::ShardWriter::Create(path);
    ASSERT_TRUE(writer.ok()) << writer.status().message();
    for (int c = 0; c < 8; ++c) {
      const std::vector<data::ChatMessage> messages = {
          {data::ChatRole::kSystem, "Responde en español."},
          {data::ChatRole::kUser, "Hola " + std::to_string(c) + ", ¿qué tal?"},
          {data::ChatRole::kAssistant, c % 2 == 0 ? "Bien, gracias." : "Bien."}};
      const data::EncodedChat e = chat->Encode(messages);
      ASSERT_TRUE((*writer)->AddDocument(e.tokens, e.loss_mask).ok());
      tokens.insert(tokens.end(), e.tokens.begin(), e.tokens.end());
      mask.insert(mask.end(), e.loss_mask.begin(), e.loss_mask.end());
    }
    ASSERT_TRUE((*writer)->Close().ok());
  }

  Config config = SmallConfig();
  config.mutable_model()->set_vocab_size(320);
  auto dataset = data::TokenDataset::Open(path, kSeq, config.model().vocab_size());
  ASSERT_TRUE(dataset.ok()) << dataset.status().message();
  ASSERT_GE((*dataset)->num_windows(), static_cast<uint64_t>(kBatch));
  auto sample = [&](uint64_t index, int32_t* ids, int32_t* targets, int32_t* doc_start) {
    return (*dataset)->ReadWindow(index, ids, targets, doc_start);
  };

  // The reference: windows cut from the conversations' tokens by hand, the
  // targets the template's mask leaves out set to -1.
  const ModelShape shape = ModelShape::FromConfig(config.model());
  ActivationOptions act;
  act.micro_batch = kMicro;
  act.seq_len = kSeq;
  SelfCommunicator tp("tp");
  LlamaModel model(shape, ModelLayout::Single(shape), act, ModelComms{&tp, nullptr});
  model.parameters().InitWeights(config.train().seed());
  std::vector<int32_t> ids(kBatch * kSeq), targets(kBatch * kSeq);
  int counted = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    // Window b holds tokens [b kSeq, b kSeq + kSeq]; position i of the batch is token i.
    ids[i] = static_cast<int32_t>(tokens[i]);
    targets[i] = mask[i + 1] != 0 ? static_cast<int32_t>(tokens[i + 1]) : -1;
    counted += targets[i] >= 0 ? 1 : 0;
  }
  ASSERT_GT(counted, 4);
  ASSERT_LT(counted, kBatch * kSeq / 2) << "most chat tokens are prompt and headers";
  model.parameters().ZeroGrads();
  double loss_sum = 0.0;
  for (int m = 0; m < kBatch / kMicro; ++m) {
    loss_sum += model.ForwardBackward(ids.data() + m * kMicro * kSeq, targets.data() + m * kMicro * kSeq,
                                      1.0f / static_cast<float>(counted));
  }
  const double norm = std::sqrt(cpu::SumOfSquares(model.parameters().padded_grads()));

  auto grid = ProcessGrid::Single();
  Engine engine(config, grid.get());
  auto r = engine.Step(0, 0, sample);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_NEAR(r->loss, loss_sum / counted, 1e-6 * std::abs(r->loss));
  EXPECT_NEAR(r->grad_norm, norm, 1e-5 * norm);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace latam
