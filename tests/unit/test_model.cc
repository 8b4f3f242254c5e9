// The whole model: gradients against finite differences, and the equivalence
// of recomputation (full and selective), LM-head chunking and gradient
// accumulation; activation memory and recomputation FLOPs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <utility>

#include "core/random.h"
#include "tests/test_util.h"
#include "model/layout.h"
#include "model/model.h"
#include "model/model_ops.h"

namespace latam {
namespace {

ModelShape TinyShape(bool tied) {
  // A large init makes every path of the network matter to the loss.
  return testing::SmallShape({.vocab = 13,
                              .n_layers = 2,
                              .n_heads = 4,
                              .n_kv_heads = 2,
                              .head_dim = 4,
                              .ffn_dim = 24,
                              .max_seq_len = 16,
                              .init_std = 0.3,
                              .tied = tied});
}

class ModelTest : public testing::RandomTest {
 protected:
  // Randomises the norm gains too (they start at 1).
  void Perturb(ParameterSet& p) {
    for (size_t i = 0; i < p.size(); ++i) {
      if (p.spec(i).init_std != 0.0) continue;
      float* w = p.param(i).as<float>();
      for (int64_t j = 0; j < p.param(i).numel(); ++j) w[j] = 1.0f + 0.2f * Normal(1)[0];
    }
  }
};

// For every parameter tensor and a fresh random unit direction u over it, the
// directional derivative g.u of the mean loss must match the 4-point central
// difference [-L(+2h) + 8L(+h) - 8L(-h) + L(-2h)] / 12h with h = 0.01
// (truncation O(h^4); at h = 0.03 about 1 random draw in 150 of this large
// init exceeded 2% there, at 0.01 none of 300 did; fp32 rounding noise of
// ~1e-6 in L gives at most 18e-6 / 12h = 1.5e-4).
// Tolerance: 2% of |g.u| + 3e-4.
TEST_F(ModelTest, GradientsMatchFiniteDifferences) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied embeddings" : "untied embeddings");
    const ModelShape shape = TinyShape(tied);
    ActivationOptions act;
    act.micro_batch = 2;
    act.seq_len = 7;
    LlamaModel model(shape, act);
    ParameterSet& p = model.parameters();
    p.InitWeights(seed_);
    Perturb(p);
    const int64_t rows = act.micro_batch * act.seq_len;
    const auto inputs = RandomIds(rows, shape.vocab), targets = RandomIds(rows, shape.vocab);
    const float scale = 1.0f / static_cast<float>(rows);

    p.ZeroGrads();
    model.ForwardBackward(inputs.data(), targets.data(), scale);
    for (size_t i = 0; i < p.size(); ++i) {
      const Tensor w = p.param(i), g = p.grad(i);
      const auto d = testing::CheckDirection(w, g, Normal(static_cast<size_t>(w.numel())), 0.01, [&] {
        return model.ForwardLoss(inputs.data(), targets.data()) * scale;
      });
      EXPECT_NEAR(d.analytic, d.numeric, 0.02 * std::abs(d.numeric) + 3e-4) << p.spec(i).name;
    }
  }
}

// Max |g| over a flat gradient (testing::MaxAbs) is the scale for comparing
// two of them: fp32 sums in another order differ by about 1e-6 of the
// largest term.
using testing::MaxAbs;

// Recomputing activations in the backward changes memory, not results: the
// same kernels run on the same inputs, so gradients are bitwise identical.
TEST_F(ModelTest, RecomputeGivesBitwiseIdenticalGradients) {
  const ModelShape shape = TinyShape(false);
  ActivationOptions base;
  base.micro_batch = 3;
  base.seq_len = 9;
  ActivationOptions recompute = base;
  recompute.recompute = Recompute::kFull;
  LlamaModel a(shape, base), b(shape, recompute);
  EXPECT_LT(ActivationBytes(shape, ModelLayout::Single(shape), recompute),
            ActivationBytes(shape, ModelLayout::Single(shape), base));
  a.parameters().InitWeights(seed_);
  b.parameters().InitWeights(seed_);
  const int64_t rows = base.micro_batch * base.seq_len;
  const auto inputs = RandomIds(rows, shape.vocab), targets = RandomIds(rows, shape.vocab);
  EXPECT_EQ(a.ForwardBackward(inputs.data(), targets.data(), 0.5f),
            b.ForwardBackward(inputs.data(), targets.data(), 0.5f));
  const Tensor ga = a.parameters().padded_grads(), gb = b.parameters().padded_grads();
  ASSERT_EQ(std::memcmp(ga.data, gb.data, ga.bytes()), 0);
}

// data.reset_positions with document masking: a window of packed documents
// computes, document by document, what each document computes alone at the
// start of a window (positions from 0, the rest of the window a filler whose
// targets do not count): losses and parameter gradients, to fp32 rounding
// (1e-5 relative). Under document masking the reset changes only rounding
// (RoPE is relative); without masking it changes the loss.
TEST_F(ModelTest, ResetPositionsEqualEachDocumentAloneAtTheWindowStart) {
  const ModelShape shape = TinyShape(false);
  const int64_t t = 16;
  ActivationOptions reset;
  reset.micro_batch = 1;
  reset.seq_len = t;
  reset.document_mask = true;
  reset.reset_positions = true;
  ActivationOptions no_reset = reset;
  no_reset.reset_positions = false;
  LlamaModel packed(shape, reset), alone(shape, no_reset);
  packed.parameters().InitWeights(seed_);
  alone.parameters().InitWeights(seed_);
  packed.parameters().ZeroGrads();
  alone.parameters().ZeroGrads();
  const std::vector<int> lengths = {5, 1, 7, 3};
  const auto ids = RandomIds(t, shape.vocab), targets = RandomIds(t, shape.vocab);
  std::vector<int32_t> docs(static_cast<size_t>(t));
  for (int64_t i = 0, start = 0, d = 0; i < t; ++i) {
    if (i == start + lengths[static_cast<size_t>(d)]) start += lengths[static_cast<size_t>(d++)];
    docs[static_cast<size_t>(i)] = static_cast<int32_t>(start);
  }
  packed.Forward(0, 0, ids.data(), targets.data(), docs.data(), 1.0f, true, true);
  packed.Backward(0, 0, true);
  const double packed_loss = packed.TakeLoss();

  double sum = 0.0;
  int64_t start = 0;
  for (int len : lengths) {
    // The document at the window's start, then one filler document.
    std::vector<int32_t> win_ids(static_cast<size_t>(t), 0), win_targets(static_cast<size_t>(t), -1);
    std::vector<int32_t> win_docs(static_cast<size_t>(t), len);
    for (int i = 0; i < len; ++i) {
      win_ids[static_cast<size_t>(i)] = ids[static_cast<size_t>(start + i)];
      win_targets[static_cast<size_t>(i)] = targets[static_cast<size_t>(start + i)];
      win_docs[static_cast<size_t>(i)] = 0;
    }
    alone.Forward(0, 0, win_ids.data(), win_targets.data(), win_docs.data(), 1.0f, true, true);
    alone.Backward(0, 0, true);
    sum += alone.TakeLoss();
    start += len;
  }
  EXPECT_NEAR(packed_loss, sum, 1e-5 * std::abs(sum));
  const Tensor ga = packed.parameters().padded_grads(), gb = alone.parameters().padded_grads();
  double scale = 0.0, worst = 0.0;
  for (int64_t i = 0; i < ga.numel(); ++i) {
    scale = std::max(scale, static_cast<double>(std::abs(gb.as<float>()[i])));
    worst = std::max(worst, static_cast<double>(std::abs(ga.as<float>()[i] - gb.as<float>()[i])));
  }
  EXPECT_LE(worst, 1e-5 * scale);

  // RoPE scores depend only on the distance between query and key, so
  // under document masking (no key of another document) restarting the
  // positions changes nothing but rounding...
  LlamaModel shifted(shape, no_reset);
  shifted.parameters().InitWeights(seed_);
  shifted.Forward(0, 0, ids.data(), targets.data(), docs.data(), 0.0f, false, false);
  EXPECT_NEAR(shifted.TakeLoss(), packed_loss, 1e-5 * std::abs(packed_loss));
  // ...while without it, where documents attend to each other, the reset
  // moves the earlier documents' keys relative to the later queries.
  ActivationOptions open_reset = reset, open_plain = reset;
  open_reset.document_mask = false;
  open_plain.document_mask = false;
  open_plain.reset_positions = false;
  LlamaModel a(shape, open_reset), b(shape, open_plain);
  a.parameters().InitWeights(seed_);
  b.parameters().InitWeights(seed_);
  a.Forward(0, 0, ids.data(), targets.data(), docs.data(), 0.0f, false, false);
  b.Forward(0, 0, ids.data(), targets.data(), docs.data(), 0.0f, false, false);
  const double with_reset = a.TakeLoss(), without = b.TakeLoss();
  EXPECT_GT(std::abs(with_reset - without), 1e-3 * std::abs(without));
}

// Sequence parallelism shrinks exactly the residual-stream activations by
// the tensor-parallel factor T: per slot the layer inputs x_0..x_L and the
// gradient buffer, per layer h (the rstd vectors too; at these sizes they
// round to one 256-byte block either way), and adds two [m/T, dim] shards
// of scratch. dim = 64 fp32 makes every [rows, dim] tensor a whole number
// of 256-byte blocks, so the difference is exact.
TEST_F(ModelTest, SequenceParallelShrinksTheResidualStreamByTensorParallelism) {
  const ModelShape shape = testing::SmallShape(
      {.vocab = 64, .n_layers = 4, .n_heads = 4, .n_kv_heads = 2, .head_dim = 16, .ffn_dim = 128, .max_seq_len = 16});
  for (int tp : {2, 4}) {
    for (int pp_rank : {0, 1}) {  // with the embedding / with the head
      const ModelLayout layout = ModelLayout::Make(shape, tp, 0, 2, pp_rank, 1);
      ActivationOptions base;
      base.micro_batch = 2;
      base.seq_len = 16;
      ActivationOptions sp = base;
      sp.sequence_parallel = true;
      const int64_t m = 32, layers = layout.chunks[0].layer_end - layout.chunks[0].layer_begin;
      const int64_t full = m * shape.dim * 4, shard = full / tp;
      const int64_t expected = (layers + 2) * (full - shard) + layers * (full - shard) - 2 * shard;
      EXPECT_EQ(static_cast<int64_t>(ActivationBytes(shape, layout, base)) -
                    static_cast<int64_t>(ActivationBytes(shape, layout, sp)),
                expected)
          << "tp " << tp << " stage " << pp_rank;
    }
  }
}


// Selective recomputation keeps the GEMM and attention outputs and re-runs
// the norms and SwiGLU on the same inputs with the same kernels: the loss and
// every gradient are bitwise those of the run that kept everything, over two
// micro-batches of gradient accumulation.
TEST_F(ModelTest, SelectiveRecomputeGivesBitwiseIdenticalGradients) {
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied embeddings" : "untied embeddings");
    const ModelShape shape = TinyShape(tied);
    ActivationOptions base;
    base.micro_batch = 3;
    base.seq_len = 9;
    ActivationOptions selective = base;
    selective.recompute = Recompute::kSelective;
    LlamaModel a(shape, base), b(shape, selective);
    a.parameters().InitWeights(seed_);
    b.parameters().InitWeights(seed_);
    Perturb(a.parameters());
    CopyTensor(b.parameters().padded_params(), a.parameters().padded_params());
    const int64_t rows = base.micro_batch * base.seq_len;
    a.parameters().ZeroGrads();
    b.parameters().ZeroGrads();
    for (int micro = 0; micro < 2; ++micro) {
      const auto inputs = RandomIds(rows, shape.vocab), targets = RandomIds(rows, shape.vocab);
      EXPECT_EQ(a.ForwardBackward(inputs.data(), targets.data(), 0.5f),
                b.ForwardBackward(inputs.data(), targets.data(), 0.5f))
          << "micro-batch " << micro;
    }
    for (size_t i = 0; i < a.parameters().size(); ++i) {
      const Tensor ga = a.parameters().grad(i), gb = b.parameters().grad(i);
      EXPECT_EQ(std::memcmp(ga.data, gb.data, ga.bytes()), 0) << a.parameters().spec(i).name;
    }
    const Tensor ga = a.parameters().padded_grads(), gb = b.parameters().padded_grads();
    ASSERT_EQ(std::memcmp(ga.data, gb.data, ga.bytes()), 0);
  }
}

// Runs micro-batches through a model of two local chunks on one process (a
// pipeline of one stage with two virtual stages) as a pipeline schedule
// would, several in flight per chunk: the forwards of micro-batches 0 .. n-1
// in slots 0 .. n-1, then their backwards in reverse, moving each chunk's
// output to the next chunk's input and the gradient back. Returns the summed
// loss; the gradients accumulate in the model.
double TwoChunkStep(LlamaModel& model, int n, const std::vector<int32_t>& ids, const std::vector<int32_t>& targets,
                    float scale) {
  const size_t rows = static_cast<size_t>(model.tokens_per_micro_batch());
  for (int s = 0; s < n; ++s) {
    const size_t at = static_cast<size_t>(s) * rows;
    model.Forward(0, s, ids.data() + at, nullptr, scale, true, s == n - 1);
    CopyTensor(model.Input(1, s), model.Output(0, s));
    model.Forward(1, s, nullptr, targets.data() + at, scale, true, s == n - 1);
  }
  for (int s = n - 1; s >= 0; --s) {
    model.Backward(1, s, s == 0);
    CopyTensor(model.Grad(0, s), model.Grad(1, s));
    model.Backward(0, s, s == 0);
  }
  return model.TakeLoss();
}

// The same with two chunks of two layers and two slots each, the slots' and
// chunks' saved activations interleaved with the shared scratch: still
// bitwise, over two steps of accumulation.
TEST_F(ModelTest, SelectiveRecomputeWithChunksAndSlotsIsBitwiseIdentical) {
  ModelShape shape = TinyShape(false);
  shape.n_layers = 4;
  const ModelLayout layout = ModelLayout::Make(shape, 1, 0, 1, 0, 2);
  ASSERT_EQ(layout.chunks.size(), 2u);
  ActivationOptions base;
  base.micro_batch = 2;
  base.seq_len = 7;
  base.slots = {2, 2};
  ActivationOptions selective = base;
  selective.recompute = Recompute::kSelective;
  SelfCommunicator tp_a("tp"), tp_b("tp");
  LlamaModel a(shape, layout, base, ModelComms{&tp_a}), b(shape, layout, selective, ModelComms{&tp_b});
  a.parameters().InitWeights(seed_);
  Perturb(a.parameters());
  CopyTensor(b.parameters().padded_params(), a.parameters().padded_params());
  const size_t rows = static_cast<size_t>(base.micro_batch * base.seq_len);
  const float scale = 1.0f / static_cast<float>(4 * rows);
  a.parameters().ZeroGrads();
  b.parameters().ZeroGrads();
  for (int step = 0; step < 2; ++step) {
    const auto ids = RandomIds(2 * rows, shape.vocab), targets = RandomIds(2 * rows, shape.vocab);
    const double la = TwoChunkStep(a, 2, ids, targets, scale);
    EXPECT_GT(la, 0.0);
    EXPECT_EQ(la, TwoChunkStep(b, 2, ids, targets, scale)) << "step " << step;
  }
  for (size_t i = 0; i < a.parameters().size(); ++i) {
    const Tensor ga = a.parameters().grad(i), gb = b.parameters().grad(i);
    EXPECT_EQ(std::memcmp(ga.data, gb.data, ga.bytes()), 0) << a.parameters().spec(i).name;
  }
}

// Activation memory: kSelective drops xn [m, dim], hn [m, dim] and act
// [m, ffn] from every layer of every slot and adds one scratch set per
// chunk (xn, hn, act and an f32 rstd [m]); each tensor starts on a 256-byte
// boundary. kFull keeps less still.
TEST(ModelMemoryTest, SelectiveSavesTheDroppedTensors) {
  ModelShape shape = TinyShape(false);
  shape.n_layers = 4;
  auto aligned = [](int64_t bytes) { return (bytes + 255) / 256 * 256; };
  for (const int vs : {1, 2}) {
    SCOPED_TRACE("virtual stages " + std::to_string(vs));
    const ModelLayout layout = ModelLayout::Make(shape, 1, 0, 1, 0, vs);
    ActivationOptions none;
    none.micro_batch = 3;
    none.seq_len = 9;
    none.cpu_threads = 1;
    none.slots = std::vector<int>(layout.chunks.size(), 3);
    ActivationOptions selective = none, full = none;
    selective.recompute = Recompute::kSelective;
    full.recompute = Recompute::kFull;
    const size_t bytes_none = ActivationBytes(shape, layout, none);
    const size_t bytes_selective = ActivationBytes(shape, layout, selective);
    const size_t bytes_full = ActivationBytes(shape, layout, full);
    EXPECT_LT(bytes_full, bytes_selective);
    EXPECT_LT(bytes_selective, bytes_none);
    const int64_t m = 27, f32 = 4;
    const int64_t dropped = 2 * aligned(m * shape.dim * f32) + aligned(m * shape.ffn_dim * f32);
    const int64_t scratch = dropped + aligned(m * f32);
    int64_t saved = 0;
    for (const ChunkInfo& c : layout.chunks) saved += 3 * (c.layer_end - c.layer_begin) * dropped - scratch;
    EXPECT_EQ(static_cast<int64_t>(bytes_none - bytes_selective), saved);
    // With 4 layers and 3 slots: 12 layer sets dropped, one (vs=1) or two
    // (vs=2) scratch sets added.
    EXPECT_EQ(saved, 12 * dropped - vs * scratch);
  }
}

// RecomputeFlopsPerToken against a hand count for TinyShape (dim 16, 4 query
// and 2 KV heads of 4, ffn 24, 2 layers) at seq_len 9. Per layer:
//   SELECTIVE  two RMSNorms 2 (4 x 16 + 4) = 136, SwiGLU 6 x 24 = 144: 280.
//   FULL       GEMMs 2 (QKV (16 + 2 x 8) x 16 + o 16 x 16 + gate/up and
//              down 3 x 24 x 16) = 2 (512 + 256 + 1152) = 3840, attention
//              2 x 9 x 16 = 288, RoPE 3 x (16 + 8) = 72, residual adds
//              2 x 16 = 32, and the 280 above: 4512.
// Under tp=2 (rank 0: 2 query heads, 1 KV head, ffn 12) per layer:
//   SELECTIVE  136 + 6 x 12 = 208.
//   FULL       2 ((8 + 2 x 4) x 16 + 8 x 16 + 3 x 12 x 16) = 2 (256 + 128 +
//              576) = 1920, + 2 x 9 x 8 = 144, + 3 x (8 + 4) = 36, + 32,
//              + 208: 2340.
TEST(ModelMemoryTest, RecomputeFlopsPerTokenMatchesAHandCount) {
  const ModelShape shape = TinyShape(false);
  const ModelLayout single = ModelLayout::Single(shape);
  EXPECT_EQ(RecomputeFlopsPerToken(shape, single, Recompute::kNone, 9), 0.0);
  EXPECT_EQ(RecomputeFlopsPerToken(shape, single, Recompute::kSelective, 9), 2 * 280.0);
  EXPECT_EQ(RecomputeFlopsPerToken(shape, single, Recompute::kFull, 9), 2 * 4512.0);
  const ModelLayout tp2 = ModelLayout::Make(shape, 2, 0, 1, 0, 1);
  EXPECT_EQ(RecomputeFlopsPerToken(shape, tp2, Recompute::kSelective, 9), 2 * 208.0);
  EXPECT_EQ(RecomputeFlopsPerToken(shape, tp2, Recompute::kFull, 9), 2 * 2340.0);
  // A pipeline stage counts its own layers only: one of the two.
  const ModelLayout stage = ModelLayout::Make(shape, 1, 0, 2, 1, 1);
  EXPECT_EQ(RecomputeFlopsPerToken(shape, stage, Recompute::kSelective, 9), 280.0);
  EXPECT_EQ(RecomputeFlopsPerToken(shape, stage, Recompute::kFull, 9), 4512.0);
}

// Running the LM head in row chunks only reorders fp32 sums.
// Tolerance: 2e-5 x max|g| + 1e-4 relative.
TEST_F(ModelTest, HeadChunkingMatchesOneChunk) {
  const ModelShape shape = TinyShape(false);
  ActivationOptions base;
  base.micro_batch = 3;
  base.seq_len = 9;
  ActivationOptions chunked = base;
  chunked.logits_chunk_rows = 4;  // 27 rows in chunks of 4, 4, ..., 3
  LlamaModel a(shape, base), b(shape, chunked);
  a.parameters().InitWeights(seed_);
  b.parameters().InitWeights(seed_);
  const int64_t rows = base.micro_batch * base.seq_len;
  const auto inputs = RandomIds(rows, shape.vocab), targets = RandomIds(rows, shape.vocab);
  const double la = a.ForwardBackward(inputs.data(), targets.data(), 0.5f);
  const double lb = b.ForwardBackward(inputs.data(), targets.data(), 0.5f);
  EXPECT_NEAR(la, lb, 1e-5 * std::abs(la));
  const Tensor ga = a.parameters().padded_grads(), gb = b.parameters().padded_grads();
  const double atol = 2e-5 * MaxAbs(ga);
  for (int64_t j = 0; j < ga.numel(); ++j) {
    ASSERT_NEAR(ga.as<float>()[j], gb.as<float>()[j], atol + 1e-4 * std::abs(ga.as<float>()[j])) << j;
  }
}

// Two micro-batches of B accumulate the same gradient as one of 2B.
// Tolerance: 2e-5 x max|g| + 1e-4 relative.
TEST_F(ModelTest, GradientAccumulationMatchesOneLargeBatch) {
  const ModelShape shape = TinyShape(false);
  ActivationOptions small, large;
  small.micro_batch = 2;
  small.seq_len = 8;
  large = small;
  large.micro_batch = 4;
  LlamaModel a(shape, small), b(shape, large);
  a.parameters().InitWeights(seed_);
  b.parameters().InitWeights(seed_);
  const int64_t rows = large.micro_batch * large.seq_len, half = rows / 2;
  const auto inputs = RandomIds(rows, shape.vocab), targets = RandomIds(rows, shape.vocab);
  const float scale = 1.0f / static_cast<float>(rows);
  a.parameters().ZeroGrads();
  b.parameters().ZeroGrads();
  const double la = a.ForwardBackward(inputs.data(), targets.data(), scale) +
                    a.ForwardBackward(inputs.data() + half, targets.data() + half, scale);
  const double lb = b.ForwardBackward(inputs.data(), targets.data(), scale);
  EXPECT_NEAR(la, lb, 1e-5 * std::abs(lb));
  const Tensor ga = a.parameters().padded_grads(), gb = b.parameters().padded_grads();
  const double atol = 2e-5 * MaxAbs(gb);
  for (int64_t j = 0; j < ga.numel(); ++j) {
    ASSERT_NEAR(ga.as<float>()[j], gb.as<float>()[j], atol + 1e-4 * std::abs(gb.as<float>()[j])) << j;
  }
}

TEST(ModelShapeTest, ParameterNamesAndCountsFollowHuggingFace) {
  const ModelShape s = TinyShape(false);
  const auto specs = LlamaParameterSpecs(s, ModelLayout::Single(s));
  ASSERT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs[2].name, "model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(specs[2].shape, (Shape{16, 16}));
  EXPECT_EQ(specs[3].name, "model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(specs[3].shape, (Shape{8, 16}));
  EXPECT_EQ(specs[9].name, "model.layers.0.mlp.down_proj.weight");
  EXPECT_EQ(specs[9].shape, (Shape{16, 24}));
  EXPECT_EQ(specs.back().name, "lm_head.weight");
  int64_t total = 0;
  for (const auto& p : specs) total += p.shape.numel();
  EXPECT_EQ(total, s.ParameterCount());
  ModelShape tied = s;
  tied.tie_embeddings = true;
  EXPECT_EQ(LlamaParameterSpecs(tied, ModelLayout::Single(tied)).back().name, "model.norm.weight");
  EXPECT_EQ(tied.ParameterCount(), s.ParameterCount() - s.vocab * s.dim);
}

TEST(ModelInitTest, InitIsAFunctionOfSeedAndNameOnly) {
  const ModelShape s = TinyShape(false);
  ParameterSet a(LlamaParameterSpecs(s, ModelLayout::Single(s))), b(LlamaParameterSpecs(s, ModelLayout::Single(s)));
  a.InitWeights(42);
  b.InitWeights(42);
  const Tensor fa = a.padded_params(), fb = b.padded_params();
  for (int64_t j = 0; j < fa.numel(); ++j) ASSERT_EQ(fa.as<float>()[j], fb.as<float>()[j]);
  // Element j of a tensor is init_std * NormalAt(seed, StreamId(name), j).
  const Tensor q = a.param("model.layers.1.self_attn.q_proj.weight");
  const uint64_t stream = StreamId("model.layers.1.self_attn.q_proj.weight");
  EXPECT_FLOAT_EQ(q.as<float>()[5], static_cast<float>(0.3 * NormalAt(42, stream, 5)));
  // Residual output projections use init_std / sqrt(2 n_layers); norms are 1.
  const Tensor o = a.param("model.layers.0.self_attn.o_proj.weight");
  EXPECT_FLOAT_EQ(o.as<float>()[0],
                  static_cast<float>(0.3 / 2.0 * NormalAt(42, StreamId("model.layers.0.self_attn.o_proj.weight"), 0)));
  EXPECT_EQ(a.param("model.norm.weight").as<float>()[3], 1.0f);
}

// Each attention choice has the name train.attention spells it with.
TEST(AttentionChoiceTest, NamesAndKernels) {
  EXPECT_STREQ(AttentionChoiceName(AttentionChoice::kAuto), "auto");
  EXPECT_STREQ(AttentionChoiceName(AttentionChoice::kSimple), "simple");
  EXPECT_STREQ(AttentionChoiceName(AttentionChoice::kWgmma), "wgmma");
  EXPECT_STREQ(AttentionChoiceName(AttentionChoice::kWgmmaTma), "wgmma_tma");
  // What the trainer logs: the simple kernel wherever the tensor-core ones do not apply.
  EXPECT_EQ(AttentionKernelsName(AttentionChoice::kAuto, true), "tensor-core, mma.sync forward and backward");
  EXPECT_EQ(AttentionKernelsName(AttentionChoice::kWgmmaTma, true), "tensor-core, wgmma+TMA forward, wgmma backward");
  EXPECT_EQ(AttentionKernelsName(AttentionChoice::kWgmma, false), "simple");
  EXPECT_EQ(AttentionKernelsName(AttentionChoice::kSimple, true), "simple");
}

}  // namespace
}  // namespace latam
