// Generation with a KV cache: logits against the training model's forward
// pass (any split of the input, positions past max_seq_len, RoPE scaling),
// greedy decoding and seeds, the nucleus sampler's distribution, and input
// errors.
#include "model/generate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "core/random.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "tests/test_util.h"
#include "model/layout.h"
#include "model/model.h"

namespace latam {
namespace {

ModelShape TinyShape(bool tied, bool scaled) {
  ModelShape s = testing::SmallShape({.vocab = 64,
                                      .n_layers = 3,
                                      .n_heads = 4,
                                      .n_kv_heads = 2,
                                      .head_dim = 8,
                                      .ffn_dim = 48,
                                      .max_seq_len = 16,
                                      .init_std = 0.1,
                                      .tied = tied});
  if (scaled) {
    // A short original context so that the Llama 3.1 rule rescales every
    // frequency of head_dim 8: wavelengths 6.3 (interpolated band), 63, 628
    // and 6283 (divided by the factor).
    s.rope_scaling.factor = 8.0;
    s.rope_scaling.low_freq_factor = 1.0;
    s.rope_scaling.high_freq_factor = 4.0;
    s.rope_scaling.original_max_position = 16.0;
  }
  return s;
}

// A generator's own parameter set: the single-process layout under the
// canonical names, filled by name from `src`.
std::unique_ptr<ParameterSet> CopyParameters(const ModelShape& shape, const ParameterSet& src) {
  auto dst = std::make_unique<ParameterSet>(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
  for (size_t i = 0; i < dst->size(); ++i) {
    const std::string& name = dst->spec(i).name;
    const Tensor from = src.param(name), to = dst->param(i);
    EXPECT_EQ(from.shape, to.shape) << name;
    std::memcpy(to.data, from.data, to.bytes());
  }
  return dst;
}

// -log softmax(row)[target], in double.
double CrossEntropy(const float* row, int64_t vocab, int32_t target) {
  double mx = row[0];
  for (int64_t v = 1; v < vocab; ++v) mx = std::max(mx, static_cast<double>(row[v]));
  double sum = 0.0;
  for (int64_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(row[v]) - mx);
  return mx + std::log(sum) - static_cast<double>(row[target]);
}

// The expected sampling distribution: softmax(logits / T) on the smallest
// set of most likely tokens (ties: lower id first) whose mass reaches top_p,
// renormalised; 0 elsewhere.
std::vector<double> NucleusDistribution(const std::vector<float>& logits, double temperature, double top_p) {
  const size_t v = logits.size();
  double mx = -std::numeric_limits<double>::infinity();
  for (float l : logits) mx = std::max(mx, static_cast<double>(l));
  std::vector<double> p(v);
  double z = 0.0;
  for (size_t i = 0; i < v; ++i) z += p[i] = std::exp((logits[i] - mx) / temperature);
  for (double& x : p) x /= z;
  std::vector<size_t> order(v);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
  std::vector<double> q(v, 0.0);
  double mass = 0.0;
  for (size_t j = 0; j < v && mass < top_p; ++j) mass += q[order[j]] = p[order[j]];
  for (double& x : q) x /= mass;
  return q;
}

class Generate : public testing::RandomTest {
 protected:
  // Random weights, and norm gains 1 + N(0, 0.2) so that they matter too.
  void Randomize(ParameterSet& p) {
    p.InitWeights(seed_);
    for (size_t i = 0; i < p.size(); ++i) {
      if (p.spec(i).init_std != 0.0) continue;
      float* w = p.param(i).as<float>();
      const auto noise = Normal(static_cast<size_t>(p.param(i).numel()), 0.2f);
      for (int64_t j = 0; j < p.param(i).numel(); ++j) w[j] = 1.0f + noise[static_cast<size_t>(j)];
    }
  }
  // A random model on its own; the training model is only needed to draw it.
  std::unique_ptr<ParameterSet> RandomModel(const ModelShape& shape) {
    auto p = std::make_unique<ParameterSet>(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
    Randomize(*p);
    return p;
  }
};

// The training model's loss on `inputs`, per position: target j alone (the
// others are -1, which the loss skips), plus the loss over all targets.
struct ReferenceLosses {
  std::vector<double> per_token;
  double total = 0.0;
};
ReferenceLosses TrainingLosses(LlamaModel& model, const std::vector<int32_t>& inputs,
                               const std::vector<int32_t>& targets) {
  ReferenceLosses r;
  r.total = model.ForwardLoss(inputs.data(), targets.data());
  for (size_t j = 0; j < inputs.size(); ++j) {
    std::vector<int32_t> one(inputs.size(), -1);
    one[j] = targets[j];
    r.per_token.push_back(model.ForwardLoss(inputs.data(), one.data()));
  }
  return r;
}

// Cross-entropies of the generator's logits fed as consecutive pieces of
// `inputs` (sizes `pieces`, summing to inputs.size()), from an empty cache.
// A piece of size 1 goes through Feed (last-token logits only), longer ones
// through FeedAllLogits.
std::vector<double> GeneratorLosses(Generator& gen, const std::vector<int32_t>& inputs,
                                    const std::vector<int32_t>& targets, const std::vector<size_t>& pieces) {
  const int64_t vocab = gen.shape().vocab;
  gen.Reset();
  std::vector<double> ce;
  size_t begin = 0;
  for (size_t len : pieces) {
    const std::vector<int32_t> piece(inputs.begin() + static_cast<std::ptrdiff_t>(begin),
                                     inputs.begin() + static_cast<std::ptrdiff_t>(begin + len));
    auto logits = len == 1 ? gen.Feed(piece) : gen.FeedAllLogits(piece);
    EXPECT_TRUE(logits.ok()) << logits.status().message();
    if (!logits.ok()) return ce;
    EXPECT_EQ(logits->size(), len * static_cast<size_t>(vocab));
    for (size_t i = 0; i < len; ++i) ce.push_back(CrossEntropy(logits->data() + i * vocab, vocab, targets[begin + i]));
    begin += len;
    EXPECT_EQ(gen.position(), static_cast<int64_t>(begin));
  }
  return ce;
}

// Tolerance: both are fp32 forward passes that differ only in GEMM blocking
// (M = 1 versus M = T rows), in summation order and in the softmax's exp
// (std::exp versus the attention kernel's polynomial, ~2e-7 relative).
// Per-token losses (~4.2 = log 64) were measured to agree within 2e-7
// relative; the test allows 1e-5 relative (+1e-6 absolute per token). A
// wrong RoPE position or a stale cache entry moves them by ~1e-2.
constexpr double kRelTol = 1e-5;
constexpr double kAbsTol = 1e-6;

void ExpectLossesMatch(const ReferenceLosses& ref, const std::vector<double>& got, const char* how) {
  SCOPED_TRACE(how);
  ASSERT_EQ(got.size(), ref.per_token.size());
  double sum = 0.0;
  for (size_t j = 0; j < got.size(); ++j) {
    EXPECT_NEAR(got[j], ref.per_token[j], kAbsTol + kRelTol * std::abs(ref.per_token[j])) << "position " << j;
    sum += got[j];
  }
  EXPECT_NEAR(sum, ref.total, kRelTol * std::abs(ref.total));
}

// The KV cache and RoPE positions: the generator's logits, fed all at once,
// one token at a time, or in two uneven pieces, give the training model's
// per-token losses, for tied and untied embeddings, with and without RoPE
// scaling, at positions beyond shape.max_seq_len (16).
TEST_F(Generate, MatchesTrainingModel) {
  constexpr int64_t kT = 24;
  for (bool tied : {false, true}) {
    for (bool scaled : {false, true}) {
      SCOPED_TRACE(std::string(tied ? "tied" : "untied") + (scaled ? ", rope scaling" : ""));
      const ModelShape shape = TinyShape(tied, scaled);
      ActivationOptions act;
      act.micro_batch = 1;
      act.seq_len = kT;
      LlamaModel model(shape, act);
      Randomize(model.parameters());
      const auto inputs = RandomIds(kT, shape.vocab), targets = RandomIds(kT, shape.vocab);
      const ReferenceLosses ref = TrainingLosses(model, inputs, targets);

      const auto params = CopyParameters(shape, model.parameters());
      Generator gen(shape, *params, 32);
      ExpectLossesMatch(ref, GeneratorLosses(gen, inputs, targets, {kT}), "all at once");
      ExpectLossesMatch(ref, GeneratorLosses(gen, inputs, targets, std::vector<size_t>(kT, 1)), "one at a time");
      ExpectLossesMatch(ref, GeneratorLosses(gen, inputs, targets, {7, kT - 7}), "pieces of 7 and 17");
      ExpectLossesMatch(ref, GeneratorLosses(gen, inputs, targets, {1, 20, 3}), "pieces of 1, 20 and 3");
    }
  }
}

// Inputs longer than one pass of the layers (Generator::kMaxChunkRows) run
// in several passes over the same cache.
TEST_F(Generate, LongInputRunsInSeveralPasses) {
  constexpr int64_t kT = Generator::kMaxChunkRows + 37;
  ModelShape shape = TinyShape(false, false);
  shape.n_layers = 2;
  ActivationOptions act;
  act.micro_batch = 1;
  act.seq_len = kT;
  LlamaModel model(shape, act);
  Randomize(model.parameters());
  const auto inputs = RandomIds(kT, shape.vocab), targets = RandomIds(kT, shape.vocab);
  const ReferenceLosses ref = TrainingLosses(model, inputs, targets);
  const auto params = CopyParameters(shape, model.parameters());
  Generator gen(shape, *params, kT + 5);
  ExpectLossesMatch(ref, GeneratorLosses(gen, inputs, targets, {kT}), "all at once");
  ExpectLossesMatch(ref, GeneratorLosses(gen, inputs, targets, {100, kT - 100}), "pieces of 100 and 65");

  // Feed's logits are the last row of FeedAllLogits'.
  gen.Reset();
  auto all = gen.FeedAllLogits(inputs);
  gen.Reset();
  auto last = gen.Feed(inputs);
  ASSERT_TRUE(all.ok() && last.ok());
  for (int64_t v = 0; v < shape.vocab; ++v) {
    // Equal up to the head GEMM's rounding for 1 row versus 37.
    const float want = (*all)[static_cast<size_t>((kT - 1) * shape.vocab + v)];
    EXPECT_NEAR((*last)[static_cast<size_t>(v)], want, 1e-5f + 1e-5f * std::abs(want)) << "logit " << v;
  }
}

// Temperature 0 picks the argmax of Feed's logits at every step.
TEST_F(Generate, GreedyFollowsArgmaxOfFeed) {
  const ModelShape shape = TinyShape(false, true);
  const auto params = RandomModel(shape);
  Generator gen(shape, *params, 32);
  const auto prompt = RandomIds(5, shape.vocab);
  GenerateOptions options;
  options.temperature = 0.0;
  options.max_new_tokens = 20;
  auto out = gen.Generate(prompt, options);
  ASSERT_TRUE(out.ok()) << out.status().message();
  ASSERT_EQ(out->size(), 20u);
  EXPECT_EQ(gen.position(), 5 + 19);

  gen.Reset();
  auto logits = gen.Feed(prompt);
  for (size_t k = 0; k < out->size(); ++k) {
    ASSERT_TRUE(logits.ok());
    const auto best = std::max_element(logits->begin(), logits->end()) - logits->begin();
    EXPECT_EQ((*out)[k], best) << "new token " << k;
    logits = gen.Feed({(*out)[k]});
  }

  // A stop id ends the output after it; no new tokens means none.
  options.stop_ids = {(*out)[3]};
  auto stopped = gen.Generate(prompt, options);
  ASSERT_TRUE(stopped.ok());
  const size_t first_stop = static_cast<size_t>(std::find(out->begin(), out->end(), (*out)[3]) - out->begin());
  EXPECT_EQ(*stopped, std::vector<int32_t>(out->begin(), out->begin() + static_cast<std::ptrdiff_t>(first_stop + 1)));
  // min_new_tokens: the stop id cannot come before then; until its first
  // occurrence the output is the same, and the position where it stopped now
  // holds the best other token.
  options.min_new_tokens = static_cast<int64_t>(first_stop) + 1;
  auto later = gen.Generate(prompt, options);
  ASSERT_TRUE(later.ok());
  ASSERT_GT(later->size(), first_stop + 1);
  for (size_t k = 0; k <= first_stop; ++k) EXPECT_NE((*later)[k], (*out)[3]) << k;
  EXPECT_EQ(std::vector<int32_t>(later->begin(), later->begin() + static_cast<std::ptrdiff_t>(first_stop)),
            std::vector<int32_t>(out->begin(), out->begin() + static_cast<std::ptrdiff_t>(first_stop)));
  options.min_new_tokens = 0;
  options.max_new_tokens = 0;
  auto none = gen.Generate(prompt, options);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

// The same seed gives the same continuation; other seeds give others.
TEST_F(Generate, SeedsAreReproducible) {
  const ModelShape shape = TinyShape(true, false);
  const auto params = RandomModel(shape);
  Generator gen(shape, *params, 32);
  const auto prompt = RandomIds(4, shape.vocab);
  GenerateOptions options;
  options.temperature = 1.0;
  options.top_p = 1.0;
  options.max_new_tokens = 24;
  options.seed = 7;
  auto first = gen.Generate(prompt, options);
  ASSERT_TRUE(first.ok()) << first.status().message();
  ASSERT_EQ(first->size(), 24u);
  Generator other(shape, *params, 28);  // a fresh generator, another cache size
  auto again = other.Generate(prompt, options);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*first, *again);
  int differing = 0;
  for (uint64_t seed = 8; seed < 12; ++seed) {
    options.seed = seed;
    auto out = gen.Generate(prompt, options);
    ASSERT_TRUE(out.ok());
    differing += *out != *first;
  }
  // 24 draws from a near-uniform distribution over 64 tokens: equal
  // continuations from another seed have probability ~64^-24.
  EXPECT_EQ(differing, 4);
}

// The generator's forward pass written out with the CPU kernels directly,
// in the same order of operations as the generator (so their logits must be
// bitwise equal):
//   x = embed(ids); per layer: xn = norm(x); qkv = xn W_qkv^T; rotate Q and K
//   at positions p0 + i; append K, V to the cache; att = attention(q, cache);
//   h = x + att W_o^T; x = h + swiglu(norm(h) W_gu^T) W_down^T;
//   logits = norm(x) W_head^T, for every row or only the last.
// Attention per KV head g: one decoded row stacks the group's query heads
// into one [group, hd] GEMM operand; several rows run one GEMM per query
// head over every cached position, the causal mask setting probabilities
// past row i's position to 0.
class ReferenceDecoder {
 public:
  ReferenceDecoder(const ModelShape& shape, const ParameterSet& params, int64_t max_context)
      : s_(shape),
        p_(params),
        max_context_(max_context),
        rope_(BuildRopeTable(shape.rope_theta, static_cast<int>(shape.head_dim), static_cast<int>(max_context),
                             shape.rope_scaling)),
        k_(static_cast<size_t>(shape.n_layers * shape.n_kv_heads * max_context * shape.head_dim)),
        v_(k_.size()) {}

  // Logits of every row of `ids` ([n, vocab]) or of the last one ([vocab]).
  std::vector<float> Feed(const std::vector<int32_t>& ids, bool all) {
    const int64_t n = static_cast<int64_t>(ids.size()), dim = s_.dim, hd = s_.head_dim;
    const int64_t hq = s_.n_heads, hkv = s_.n_kv_heads, qkv_w = s_.qkv_dim(), ffn = s_.ffn_dim;
    const float eps = static_cast<float>(s_.norm_eps);
    std::vector<int32_t> id = ids;
    std::vector<float> x(static_cast<size_t>(n * dim)), xn(x.size()), h(x.size()), partial(x.size());
    std::vector<float> rstd(static_cast<size_t>(n)), qkv(static_cast<size_t>(n * qkv_w));
    std::vector<float> att(static_cast<size_t>(n * hq * hd)), gu(static_cast<size_t>(n * 2 * ffn));
    std::vector<float> act(static_cast<size_t>(n * ffn));
    auto t = [](std::vector<float>& v, Shape shape) { return Tensor::Of(v.data(), shape); };
    cpu::EmbeddingForward(Tensor::Of(id.data(), Shape{n}), p_.param("model.embed_tokens.weight"), 0,
                          t(x, Shape{n, dim}));
    for (int64_t l = 0; l < s_.n_layers; ++l) {
      auto w = [&](const char* suffix) { return p_.param(LayerParamName(l, suffix)); };
      cpu::RmsNormForward(t(x, Shape{n, dim}), w("input_layernorm.weight"), eps, t(xn, Shape{n, dim}),
                          t(rstd, Shape{n}));
      cpu::LinearForward(t(xn, Shape{n, dim}), p_.FusedParam(LayerParamName(l, "self_attn.q_proj.weight"), 3, dim),
                         t(qkv, Shape{n, qkv_w}), false);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t half = hd / 2, pos = position_ + i;
        for (int64_t head = 0; head < hq + hkv; ++head) {
          float* lo = qkv.data() + i * qkv_w + head * hd;
          for (int64_t j = 0; j < half; ++j) {
            const float c = rope_.cos[static_cast<size_t>(pos * half + j)];
            const float sn = rope_.sin[static_cast<size_t>(pos * half + j)];
            const float a = lo[j], b = lo[j + half];
            lo[j] = a * c - b * sn;
            lo[j + half] = b * c + a * sn;
          }
        }
      }
      Attention(l, n, qkv, att);
      cpu::LinearForward(t(att, Shape{n, hq * hd}), w("self_attn.o_proj.weight"), t(partial, Shape{n, dim}), false);
      cpu::Add(t(x, Shape{n, dim}), t(partial, Shape{n, dim}), t(h, Shape{n, dim}));
      cpu::RmsNormForward(t(h, Shape{n, dim}), w("post_attention_layernorm.weight"), eps, t(xn, Shape{n, dim}),
                          t(rstd, Shape{n}));
      cpu::LinearForward(t(xn, Shape{n, dim}), p_.FusedParam(LayerParamName(l, "mlp.gate_proj.weight"), 2, dim),
                         t(gu, Shape{n, 2 * ffn}), false);
      cpu::SwigluForward(t(gu, Shape{n, 2 * ffn}), t(act, Shape{n, ffn}));
      cpu::LinearForward(t(act, Shape{n, ffn}), w("mlp.down_proj.weight"), t(partial, Shape{n, dim}), false);
      cpu::Add(t(h, Shape{n, dim}), t(partial, Shape{n, dim}), t(x, Shape{n, dim}));
    }
    position_ += n;
    const int64_t first = all ? 0 : n - 1, m = n - first;
    std::vector<float> last(x.begin() + first * dim, x.end()), logits(static_cast<size_t>(m * s_.vocab));
    std::vector<float> normed(last.size());
    cpu::RmsNormForward(t(last, Shape{m, dim}), p_.param("model.norm.weight"), eps, t(normed, Shape{m, dim}),
                        t(rstd, Shape{m}));
    const Tensor head = p_.param(s_.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
    cpu::LinearForward(t(normed, Shape{m, dim}), head, t(logits, Shape{m, s_.vocab}), false);
    return logits;
  }

 private:
  // Appends rows [0, n) of K and V at positions p0 = position_ .. p0 + n - 1
  // of layer l's cache, then for query head h (KV head g = h / group), row i:
  //   att_i = softmax(q_i K_g[0, p0 + i]^T / sqrt(hd)) V_g[0, p0 + i].
  void Attention(int64_t l, int64_t n, const std::vector<float>& qkv, std::vector<float>& att) {
    const int64_t hq = s_.n_heads, hkv = s_.n_kv_heads, hd = s_.head_dim, group = hq / hkv, w = s_.qkv_dim();
    const int64_t p0 = position_, ctx = p0 + n;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    std::vector<float> scores(static_cast<size_t>(std::max(n, group) * ctx));
    for (int64_t g = 0; g < hkv; ++g) {
      float* k = k_.data() + ((l * hkv + g) * max_context_) * hd;
      float* v = v_.data() + ((l * hkv + g) * max_context_) * hd;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t d = 0; d < hd; ++d) {
          k[(p0 + i) * hd + d] = qkv[static_cast<size_t>(i * w + (hq + g) * hd + d)];
          v[(p0 + i) * hd + d] = qkv[static_cast<size_t>(i * w + (hq + hkv + g) * hd + d)];
        }
      }
      // Row r of the scores sees its first `visible(r)` positions.
      auto softmax = [&](int64_t rows, auto visible) {
        for (int64_t r = 0; r < rows; ++r) {
          float* row = scores.data() + r * ctx;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < visible(r); ++j) mx = std::max(mx, row[j]);
          float sum = 0.0f;
          for (int64_t j = 0; j < visible(r); ++j) sum += row[j] = std::exp(row[j] - mx);
          const float inv = 1.0f / sum;
          for (int64_t j = 0; j < visible(r); ++j) row[j] *= inv;
          for (int64_t j = visible(r); j < ctx; ++j) row[j] = 0.0f;
        }
      };
      if (n == 1) {
        cpu::Gemm(false, true, group, ctx, hd, scale, qkv.data() + g * group * hd, hd, k, hd, 0.0f, scores.data(),
                  ctx);
        softmax(group, [ctx](int64_t) { return ctx; });
        cpu::Gemm(false, false, group, hd, ctx, 1.0f, scores.data(), ctx, v, hd, 0.0f, att.data() + g * group * hd,
                  hd);
        continue;
      }
      for (int64_t head = g * group; head < (g + 1) * group; ++head) {
        cpu::Gemm(false, true, n, ctx, hd, scale, qkv.data() + head * hd, w, k, hd, 0.0f, scores.data(), ctx);
        softmax(n, [p0](int64_t r) { return p0 + 1 + r; });
        cpu::Gemm(false, false, n, hd, ctx, 1.0f, scores.data(), ctx, v, hd, 0.0f, att.data() + head * hd, hq * hd);
      }
    }
  }

  ModelShape s_;
  const ParameterSet& p_;
  int64_t max_context_;
  int64_t position_ = 0;
  RopeTable rope_;
  std::vector<float> k_, v_;
};

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The generator's CPU logits are bitwise those of the reference above, fed
// all at once, one token at a time and in uneven pieces, for tied and untied
// embeddings, with and without RoPE scaling, and GQA groups of 2 and 4 (one
// decoded row stacks the group) and no GQA.
TEST_F(Generate, CpuLogitsBitwiseEqualReference) {
  for (int64_t kv_heads : {2, 1, 4}) {
    for (bool tied : {false, true}) {
      for (bool scaled : {false, true}) {
        SCOPED_TRACE(std::to_string(kv_heads) + " KV heads, " + (tied ? "tied" : "untied") +
                     (scaled ? ", rope scaling" : ""));
        ModelShape shape = TinyShape(tied, scaled);
        shape.n_kv_heads = kv_heads;
        const auto params = RandomModel(shape);
        const auto ids = RandomIds(23, shape.vocab);
        Generator gen(shape, *params, 40);
        for (const std::vector<size_t>& pieces :
             {std::vector<size_t>{23}, std::vector<size_t>(23, 1), std::vector<size_t>{5, 1, 17}}) {
          gen.Reset();
          ReferenceDecoder ref(shape, *params, 40);
          size_t begin = 0;
          for (size_t k = 0; k < pieces.size(); ++k) {
            const std::vector<int32_t> piece(ids.begin() + static_cast<std::ptrdiff_t>(begin),
                                             ids.begin() + static_cast<std::ptrdiff_t>(begin + pieces[k]));
            const bool all = k % 2 == 0;  // FeedAllLogits and Feed in turn
            auto got = all ? gen.FeedAllLogits(piece) : gen.Feed(piece);
            ASSERT_TRUE(got.ok()) << got.status().message();
            EXPECT_TRUE(BitwiseEqual(*got, ref.Feed(piece, all))) << "piece " << k << " at position " << begin;
            begin += pieces[k];
          }
        }
      }
    }
  }
}

// Greedy and sampled continuations of a fixed model (weights drawn from seed
// 2024, unit norm gains) recorded from the generator before it ran through
// ModelOps: any change to the CPU arithmetic that moves a logit enough to
// change a token shows here.
TEST_F(Generate, PinnedContinuations) {
  const ModelShape shape = TinyShape(false, true);
  ParameterSet params(LlamaParameterSpecs(shape, ModelLayout::Single(shape)));
  params.InitWeights(2024);
  Generator gen(shape, params, 48);
  const std::vector<int32_t> prompt = {3, 14, 15, 9, 26, 53, 58};
  GenerateOptions options;
  options.max_new_tokens = 24;
  options.temperature = 0.0;
  auto greedy = gen.Generate(prompt, options);
  ASSERT_TRUE(greedy.ok()) << greedy.status().message();
  options.temperature = 0.9;
  options.top_p = 0.9;
  options.seed = 11;
  auto sampled = gen.Generate(prompt, options);
  ASSERT_TRUE(sampled.ok()) << sampled.status().message();
  EXPECT_EQ(*greedy, (std::vector<int32_t>{15, 26, 37, 34, 3, 1, 11, 3, 1, 23, 34, 3, 1, 23, 34, 3, 1, 23, 34, 3, 1,
                                           23, 34, 3}));
  EXPECT_EQ(*sampled, (std::vector<int32_t>{23, 13, 58, 40, 35, 62, 34, 56, 40, 15, 5, 46, 1, 28, 53, 15, 63, 33, 42,
                                            23, 56, 0, 52, 25}));
}

// Temperature 0 (or below) is the argmax, ties to the lowest id, for any u.
TEST_F(Generate, SampleTokenTemperatureZeroIsArgmax) {
  std::vector<float> logits = Normal(50);
  const auto best = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  for (double u : {0.0, 0.3, 0.999999}) {
    EXPECT_EQ(SampleToken(logits, 0.0, 0.9, u), best);
    EXPECT_EQ(SampleToken(logits, -1.0, 1.0, u), best);
  }
  logits.assign(10, 0.0f);
  logits[7] = logits[3] = 2.0f;
  EXPECT_EQ(SampleToken(logits, 0.0, 1.0, 0.5), 3);
}

// A tiny top_p keeps only the most likely token (ties: the lowest id).
TEST_F(Generate, SampleTokenTinyTopPIsArgmax) {
  const std::vector<float> logits = Normal(100);
  const auto best = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  for (double t : {0.5, 1.0, 3.0}) {
    for (int i = 0; i < 200; ++i) EXPECT_EQ(SampleToken(logits, t, 1e-9, (i + 0.5) / 200), best);
  }
  std::vector<float> tied(10, 0.0f);
  tied[6] = tied[2] = 1.0f;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(SampleToken(tied, 1.0, 1e-6, (i + 0.5) / 50), 2);
}

// With many draws, the frequencies are softmax(logits / T) restricted to the
// nucleus and renormalised, and no token outside the nucleus appears.
//  * Stratified draws u = (i + 1/2) / N cut [0, 1) into N equal cells; the
//    inverse CDF gives each token its cell count, within 1 of N q.
//  * Independent uniform draws: each frequency is within 5 standard
//    deviations sqrt(q (1 - q) / N), and Pearson's chi-square over the
//    nucleus stays below df + 8 sqrt(2 df) (a tail probability < 1e-6).
TEST_F(Generate, SampleTokenMatchesNucleusDistribution) {
  struct Case {
    size_t vocab;
    double temperature, top_p;
    int64_t draws;
  };
  // The last case's nucleus holds hundreds of tokens: the sampler sorts its
  // candidates in several rounds.
  for (const Case& c : {Case{12, 1.0, 0.8, 200000}, Case{12, 1.3, 1.0, 200000}, Case{40, 1.5, 0.7, 200000},
                        Case{600, 2.0, 0.9, 40000}}) {
    SCOPED_TRACE("vocab " + std::to_string(c.vocab) + ", T " + std::to_string(c.temperature) + ", top_p " +
                 std::to_string(c.top_p));
    const std::vector<float> logits = Normal(c.vocab, 1.5f);
    const std::vector<double> q = NucleusDistribution(logits, c.temperature, c.top_p);
    const int64_t kept = std::count_if(q.begin(), q.end(), [](double x) { return x > 0.0; });
    if (c.top_p < 1.0) {
      EXPECT_LT(kept, static_cast<int64_t>(c.vocab));
    }

    const int64_t n = c.draws;
    std::vector<int64_t> strat(c.vocab, 0), random(c.vocab, 0);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    for (int64_t i = 0; i < n; ++i) {
      ++strat[static_cast<size_t>(SampleToken(logits, c.temperature, c.top_p, (i + 0.5) / n))];
      ++random[static_cast<size_t>(SampleToken(logits, c.temperature, c.top_p, uniform(rng_)))];
    }
    // The overload with caller-owned scratch draws the same tokens.
    std::vector<double> probs;
    std::vector<int32_t> order;
    for (int i = 0; i < 100; ++i) {
      const double u = (i + 0.25) / 100;
      EXPECT_EQ(SampleToken(logits, c.temperature, c.top_p, u, &probs, &order),
                SampleToken(logits, c.temperature, c.top_p, u));
    }
    double chi2 = 0.0;
    for (size_t v = 0; v < c.vocab; ++v) {
      if (q[v] == 0.0) {
        EXPECT_EQ(strat[v], 0) << "token " << v << " is outside the nucleus";
        EXPECT_EQ(random[v], 0) << "token " << v << " is outside the nucleus";
        continue;
      }
      const double expected = static_cast<double>(n) * q[v];
      EXPECT_NEAR(static_cast<double>(strat[v]), expected, 1.0 + 1e-6 * expected) << "token " << v;
      EXPECT_NEAR(static_cast<double>(random[v]), expected, 5.0 * std::sqrt(expected * (1.0 - q[v])) + 1.0)
          << "token " << v;
      chi2 += (static_cast<double>(random[v]) - expected) * (static_cast<double>(random[v]) - expected) / expected;
    }
    const double df = static_cast<double>(kept - 1);
    if (kept > 1) {
      EXPECT_LT(chi2, df + 8.0 * std::sqrt(2.0 * df));
    }
  }
}

// Bad ids, an empty input and a full context are errors that leave the
// cache as it was; Generate checks its options and the room it needs.
TEST_F(Generate, InputErrors) {
  const ModelShape shape = TinyShape(false, false);
  const auto params = RandomModel(shape);
  Generator gen(shape, *params, 8);
  ASSERT_TRUE(gen.Feed({1, 2, 3, 4, 5}).ok());
  for (const std::vector<int32_t>& bad : {std::vector<int32_t>{1, -1}, std::vector<int32_t>{64}, {}}) {
    auto r = gen.Feed(bad);
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidInput);
    EXPECT_EQ(gen.position(), 5);
  }
  auto overflow = gen.Feed({1, 2, 3, 4});
  EXPECT_FALSE(overflow.ok());
  EXPECT_NE(overflow.status().message().find("exceed the context of 8"), std::string::npos)
      << overflow.status().message();
  EXPECT_EQ(gen.position(), 5);
  EXPECT_FALSE(gen.FeedAllLogits({1, 2, 3, 4}).ok());
  ASSERT_TRUE(gen.FeedAllLogits({1, 2, 3}).ok());
  EXPECT_EQ(gen.position(), 8);
  EXPECT_FALSE(gen.Feed({0}).ok());
  gen.Reset();
  EXPECT_EQ(gen.position(), 0);
  EXPECT_TRUE(gen.Feed({0}).ok());

  GenerateOptions options;
  options.max_new_tokens = 6;  // 3 + 6 - 1 = 8 positions: fits exactly
  auto fits = gen.Generate({1, 2, 3}, options);
  ASSERT_TRUE(fits.ok()) << fits.status().message();
  EXPECT_EQ(fits->size(), 6u);
  options.max_new_tokens = 7;
  EXPECT_FALSE(gen.Generate({1, 2, 3}, options).ok());
  options.max_new_tokens = 2;
  EXPECT_FALSE(gen.Generate({}, options).ok());
  EXPECT_FALSE(gen.Generate({1, 99}, options).ok());
  GenerateOptions bad = options;
  bad.temperature = -0.5;
  EXPECT_FALSE(gen.Generate({1}, bad).ok());
  bad = options;
  bad.top_p = 0.0;
  EXPECT_FALSE(gen.Generate({1}, bad).ok());
  bad.top_p = 1.5;
  EXPECT_FALSE(gen.Generate({1}, bad).ok());
  bad = options;
  bad.max_new_tokens = -1;
  EXPECT_FALSE(gen.Generate({1}, bad).ok());
}

}  // namespace
}  // namespace latam
