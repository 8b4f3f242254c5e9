#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>

#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "core/random.h"
#include "kernels/rmsnorm.h"
#include "kernels/swiglu.h"

namespace latam {

namespace {

// Softmax rows of at least this many scores in total are normalised in parallel.
constexpr int64_t kParallelSoftmaxElems = 16384;

// Rotates the first n_rot_heads heads of rows [0, n) of x[n, row_width] in
// place; row i is at position first_position + i. Same arithmetic as
// cpu::RopeForward (rotate half, table rounded to float):
//   lo' = lo cos - hi sin,   hi' = hi cos + lo sin
void RotateRows(float* x, int64_t n, int64_t row_width, int64_t first_position, int64_t n_rot_heads,
                const RopeTable& table) {
  const int64_t hd = table.head_dim, half = hd / 2;
  for (int64_t i = 0; i < n; ++i) {
    const float* c = table.cos.data() + (first_position + i) * half;
    const float* s = table.sin.data() + (first_position + i) * half;
    for (int64_t h = 0; h < n_rot_heads; ++h) {
      float* lo = x + i * row_width + h * hd;
      float* hi = lo + half;
      for (int64_t j = 0; j < half; ++j) {
        const float a = lo[j], b = hi[j];
        lo[j] = a * c[j] - b * s[j];
        hi[j] = b * c[j] + a * s[j];
      }
    }
  }
}

// In place over each row i of s[m, ld]: the first visible(i) entries become
// softmax probabilities, the rest of the first `cols` become 0.
//   p_j = exp(s_j - max) / sum_k exp(s_k - max)
void MaskedSoftmaxRows(float* s, int64_t m, int64_t cols, int64_t ld, int64_t first_visible, int64_t visible_step) {
#pragma omp parallel for schedule(static) if (m * cols >= kParallelSoftmaxElems)
  for (int64_t i = 0; i < m; ++i) {
    float* row = s + i * ld;
    const int64_t visible = first_visible + i * visible_step;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < visible; ++j) mx = std::max(mx, row[j]);
    float sum = 0.0f;
    for (int64_t j = 0; j < visible; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < visible; ++j) row[j] *= inv;
    for (int64_t j = visible; j < cols; ++j) row[j] = 0.0f;
  }
}

int32_t Argmax(const std::vector<float>& logits) {
  // Strict > keeps the lowest id among ties; a NaN never beats a number.
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best] || std::isnan(logits[best])) best = i;
  }
  return static_cast<int32_t>(best);
}

}  // namespace

Generator::Generator(const ModelShape& shape, const ParameterSet& params, int64_t max_context)
    : shape_(shape), max_context_(max_context), chunk_rows_(std::min(max_context, kMaxChunkRows)) {
  LATAM_CHECK(max_context > 0, "generator max_context must be positive, got " << max_context);
  LATAM_CHECK(shape.n_heads > 0 && shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0,
              "generator: " << shape.n_heads << " query heads and " << shape.n_kv_heads << " KV heads");
  LATAM_CHECK(max_context <= std::numeric_limits<int>::max(), "generator max_context " << max_context << " too large");
  rope_ = BuildRopeTable(shape.rope_theta, static_cast<int>(shape.head_dim), static_cast<int>(max_context),
                         shape.rope_scaling);

  // Weights: the same views the training model takes, checked against the shape.
  const int64_t dim = shape.dim;
  auto get = [&](const std::string& name, const Shape& expected) {
    LATAM_CHECK(params.table().Contains(name), "generator: the parameters have no tensor " << name);
    const Tensor t = params.param(name);
    CheckTensor(t, DType::kF32, expected, Device::kCPU, name.c_str());
    return t;
  };
  for (int64_t l = 0; l < shape.n_layers; ++l) {
    get(LayerParamName(l, "self_attn.q_proj.weight"), Shape{shape.attn_dim(), dim});
    get(LayerParamName(l, "self_attn.k_proj.weight"), Shape{shape.n_kv_heads * shape.head_dim, dim});
    get(LayerParamName(l, "self_attn.v_proj.weight"), Shape{shape.n_kv_heads * shape.head_dim, dim});
    get(LayerParamName(l, "mlp.gate_proj.weight"), Shape{shape.ffn_dim, dim});
    get(LayerParamName(l, "mlp.up_proj.weight"), Shape{shape.ffn_dim, dim});
    LayerWeights w;
    w.attn_norm = get(LayerParamName(l, "input_layernorm.weight"), Shape{dim});
    w.qkv = params.FusedParam(LayerParamName(l, "self_attn.q_proj.weight"), 3, dim);
    w.o = get(LayerParamName(l, "self_attn.o_proj.weight"), Shape{dim, shape.attn_dim()});
    w.mlp_norm = get(LayerParamName(l, "post_attention_layernorm.weight"), Shape{dim});
    w.gate_up = params.FusedParam(LayerParamName(l, "mlp.gate_proj.weight"), 2, dim);
    w.down = get(LayerParamName(l, "mlp.down_proj.weight"), Shape{dim, shape.ffn_dim});
    weights_.push_back(w);
  }
  embed_ = get("model.embed_tokens.weight", Shape{shape.vocab, dim});
  head_ = shape.tie_embeddings ? embed_ : get("lm_head.weight", Shape{shape.vocab, dim});
  final_norm_ = get("model.norm.weight", Shape{dim});

  // One arena: the cache, then the work buffers.
  const int64_t r = chunk_rows_, hkv = shape.n_kv_heads, hd = shape.head_dim;
  const int64_t score_rows = std::max(r, shape.n_heads / hkv);  // decode stacks a GQA group's heads
  auto add = [this](const char* name, DType dtype, Shape s) {
    table_.Align(Arena::kAlignment);
    table_.Add(name, dtype, s);
  };
  add("k_cache", DType::kF32, Shape{shape.n_layers, hkv, max_context, hd});
  add("v_cache", DType::kF32, Shape{shape.n_layers, hkv, max_context, hd});
  add("ids", DType::kI32, Shape{r});
  add("x", DType::kF32, Shape{r, dim});
  add("xn", DType::kF32, Shape{r, dim});
  add("rstd", DType::kF32, Shape{r});
  add("qkv", DType::kF32, Shape{r, shape.qkv_dim()});
  add("att", DType::kF32, Shape{r, shape.attn_dim()});
  add("h", DType::kF32, Shape{r, dim});
  add("partial", DType::kF32, Shape{r, dim});
  add("gu", DType::kF32, Shape{r, 2 * shape.ffn_dim});
  add("act", DType::kF32, Shape{r, shape.ffn_dim});
  add("scores", DType::kF32, Shape{score_rows * max_context});
  arena_ = Arena(Device::kCPU, table_.total_bytes());
  auto view = [this](const char* name) { return table_.Get(arena_, name); };
  k_cache_ = view("k_cache");
  v_cache_ = view("v_cache");
  ids_ = view("ids");
  x_ = view("x");
  xn_ = view("xn");
  rstd_ = view("rstd");
  qkv_ = view("qkv");
  att_ = view("att");
  h_ = view("h");
  partial_ = view("partial");
  gu_ = view("gu");
  act_ = view("act");
  scores_ = view("scores");
  logits_.resize(static_cast<size_t>(shape.vocab));
  probs_.reserve(static_cast<size_t>(shape.vocab));
  order_.reserve(static_cast<size_t>(shape.vocab));
}

Status Generator::CheckTokens(const std::vector<int32_t>& tokens) const {
  if (tokens.empty()) return Status::InvalidInput("generator: no tokens to feed");
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= shape_.vocab) {
      return Status::InvalidInput("generator: token " + std::to_string(i) + " has id " + std::to_string(tokens[i]) +
                                  ", outside the vocabulary [0, " + std::to_string(shape_.vocab) + ")");
    }
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (position_ + n > max_context_) {
    return Status::InvalidInput("generator: " + std::to_string(n) + " tokens after " + std::to_string(position_) +
                                " cached positions exceed the context of " + std::to_string(max_context_));
  }
  return Status::Ok();
}

Result<std::vector<float>> Generator::Feed(const std::vector<int32_t>& tokens) {
  LATAM_RETURN_IF_ERROR(CheckTokens(tokens));
  std::vector<float> logits(static_cast<size_t>(shape_.vocab));
  Run(tokens.data(), static_cast<int64_t>(tokens.size()), false, logits.data());
  return logits;
}

Result<std::vector<float>> Generator::FeedAllLogits(const std::vector<int32_t>& tokens) {
  LATAM_RETURN_IF_ERROR(CheckTokens(tokens));
  std::vector<float> logits(tokens.size() * static_cast<size_t>(shape_.vocab));
  Run(tokens.data(), static_cast<int64_t>(tokens.size()), true, logits.data());
  return logits;
}

void Generator::Run(const int32_t* tokens, int64_t n, bool all, float* out) {
  const float eps = static_cast<float>(shape_.norm_eps);
  for (int64_t r0 = 0; r0 < n; r0 += chunk_rows_) {
    const int64_t rows = std::min(chunk_rows_, n - r0);
    std::memcpy(ids_.data, tokens + r0, static_cast<size_t>(rows) * sizeof(int32_t));
    cpu::EmbeddingForward(ids_.Rows(0, rows), embed_, 0, x_.Rows(0, rows));
    LayersForward(rows);
    // Head: logits = rmsnorm(x) W_head^T, for every row or only the input's last.
    const int64_t first = all ? 0 : (r0 + rows == n ? rows - 1 : rows);
    if (first < rows) {
      const int64_t m = rows - first;
      cpu::RmsNormForward(x_.Rows(first, rows), final_norm_, eps, xn_.Rows(0, m), rstd_.Rows(0, m));
      float* dst = all ? out + r0 * shape_.vocab : out;
      cpu::LinearForward(xn_.Rows(0, m), head_, Tensor::Of(dst, Shape{m, shape_.vocab}), false);
    }
    position_ += rows;
  }
}

void Generator::LayersForward(int64_t n) {
  const float eps = static_cast<float>(shape_.norm_eps);
  const Tensor x = x_.Rows(0, n), xn = xn_.Rows(0, n), rstd = rstd_.Rows(0, n), qkv = qkv_.Rows(0, n);
  const Tensor att = att_.Rows(0, n), h = h_.Rows(0, n), partial = partial_.Rows(0, n);
  const Tensor gu = gu_.Rows(0, n), act = act_.Rows(0, n);
  for (int64_t l = 0; l < shape_.n_layers; ++l) {
    const LayerWeights& w = weights_[static_cast<size_t>(l)];
    // Attention block: h = x + o_proj(attn(rope(qkv(norm(x))))).
    cpu::RmsNormForward(x, w.attn_norm, eps, xn, rstd);
    cpu::LinearForward(xn, w.qkv, qkv, false);
    RotateRows(qkv.as<float>(), n, shape_.qkv_dim(), position_, shape_.n_heads + shape_.n_kv_heads, rope_);
    Attention(l, n);
    cpu::LinearForward(att, w.o, partial, false);
    cpu::Add(x, partial, h);
    // MLP block: x = h + down(swiglu(gate_up(norm(h)))).
    cpu::RmsNormForward(h, w.mlp_norm, eps, xn, rstd);
    cpu::LinearForward(xn, w.gate_up, gu, false);
    cpu::SwigluForward(gu, act);
    cpu::LinearForward(act, w.down, partial, false);
    cpu::Add(h, partial, x);
  }
}

// Appends rows [0, n) of the rotated keys and the values to layer `layer`'s
// cache at positions p0 = position_ .. p0 + n - 1, then for each query head
// h (KV head g = h / group) and row i:
//   S_i   = q_i K_g[0, p0 + i]^T / sqrt(hd)
//   att_i = softmax(S_i) V_g[0, p0 + i]
// with one GEMM for the scores of all rows and one for the outputs. A
// single row (decode) stacks the group's query heads, which all see the
// same keys, into one [group, hd] operand.
void Generator::Attention(int64_t layer, int64_t n) {
  const int64_t hq = shape_.n_heads, hkv = shape_.n_kv_heads, hd = shape_.head_dim, group = hq / hkv;
  const int64_t row_width = shape_.qkv_dim(), out_width = shape_.attn_dim(), p0 = position_, ctx = p0 + n;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  float* qkv = qkv_.as<float>();
  float* att = att_.as<float>();
  float* scores = scores_.as<float>();
  float* k_layer = k_cache_.as<float>() + layer * hkv * max_context_ * hd;
  float* v_layer = v_cache_.as<float>() + layer * hkv * max_context_ * hd;
  for (int64_t g = 0; g < hkv; ++g) {
    float* k = k_layer + g * max_context_ * hd;  // [max_context, hd]
    float* v = v_layer + g * max_context_ * hd;
    for (int64_t i = 0; i < n; ++i) {
      const float* row = qkv + i * row_width;
      std::memcpy(k + (p0 + i) * hd, row + (hq + g) * hd, static_cast<size_t>(hd) * sizeof(float));
      std::memcpy(v + (p0 + i) * hd, row + (hq + hkv + g) * hd, static_cast<size_t>(hd) * sizeof(float));
    }
    if (n == 1) {
      // Q [group, hd] (contiguous in the row), S [group, ctx], out [group, hd].
      const float* q = qkv + g * group * hd;
      cpu::Gemm(false, true, group, ctx, hd, scale, q, hd, k, hd, 0.0f, scores, ctx);
      MaskedSoftmaxRows(scores, group, ctx, ctx, ctx, 0);
      cpu::Gemm(false, false, group, hd, ctx, 1.0f, scores, ctx, v, hd, 0.0f, att + g * group * hd, hd);
      continue;
    }
    for (int64_t hi = 0; hi < group; ++hi) {
      const int64_t head = g * group + hi;
      // Q [n, hd] (row stride row_width), S [n, ctx], out [n, hd] (row stride out_width).
      cpu::Gemm(false, true, n, ctx, hd, scale, qkv + head * hd, row_width, k, hd, 0.0f, scores, ctx);
      MaskedSoftmaxRows(scores, n, ctx, ctx, p0 + 1, 1);
      cpu::Gemm(false, false, n, hd, ctx, 1.0f, scores, ctx, v, hd, 0.0f, att + head * hd, out_width);
    }
  }
}

Result<std::vector<int32_t>> Generator::Generate(const std::vector<int32_t>& prompt, const GenerateOptions& options) {
  if (prompt.empty()) return Status::InvalidInput("generate: the prompt is empty");
  if (options.max_new_tokens < 0) {
    return Status::InvalidInput("generate: max_new_tokens must be >= 0, got " + std::to_string(options.max_new_tokens));
  }
  if (!(options.temperature >= 0.0)) {
    return Status::InvalidInput("generate: temperature must be >= 0, got " + std::to_string(options.temperature));
  }
  if (!(options.top_p > 0.0 && options.top_p <= 1.0)) {
    return Status::InvalidInput("generate: top_p must be in (0, 1], got " + std::to_string(options.top_p));
  }
  // New token k (0-based) is sampled after feeding k tokens past the prompt;
  // the last one is never fed.
  const int64_t needed = static_cast<int64_t>(prompt.size()) + std::max<int64_t>(options.max_new_tokens - 1, 0);
  if (needed > max_context_) {
    return Status::InvalidInput("generate: a prompt of " + std::to_string(prompt.size()) + " tokens and " +
                                std::to_string(options.max_new_tokens) + " new tokens need " + std::to_string(needed) +
                                " positions, more than the context of " + std::to_string(max_context_));
  }
  Reset();
  LATAM_RETURN_IF_ERROR(CheckTokens(prompt));
  std::vector<int32_t> out;
  if (options.max_new_tokens == 0) return out;
  out.reserve(static_cast<size_t>(options.max_new_tokens));
  Run(prompt.data(), static_cast<int64_t>(prompt.size()), false, logits_.data());
  const uint64_t stream = StreamId("generate");
  for (int64_t k = 0; k < options.max_new_tokens; ++k) {
    if (k < options.min_new_tokens) {
      for (int32_t stop : options.stop_ids) {
        if (stop >= 0 && stop < shape_.vocab) logits_[static_cast<size_t>(stop)] = -std::numeric_limits<float>::infinity();
      }
    }
    const double u = UniformAt(options.seed, stream, static_cast<uint64_t>(k));
    const int32_t token = SampleToken(logits_, options.temperature, options.top_p, u, &probs_, &order_);
    out.push_back(token);
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), token) != options.stop_ids.end()) break;
    if (k + 1 < options.max_new_tokens) Run(&token, 1, false, logits_.data());
  }
  return out;
}

int32_t SampleToken(const std::vector<float>& logits, double temperature, double top_p, double u) {
  std::vector<double> probs;
  std::vector<int32_t> order;
  return SampleToken(logits, temperature, top_p, u, &probs, &order);
}

int32_t SampleToken(const std::vector<float>& logits, double temperature, double top_p, double u,
                    std::vector<double>* probs, std::vector<int32_t>* order_scratch) {
  LATAM_CHECK(!logits.empty(), "SampleToken: empty logits");
  if (!(temperature > 0.0)) return Argmax(logits);
  const size_t v = logits.size();
  // p_i = exp((l_i - max) / T) / Z, in double.
  const double mx = static_cast<double>(logits[static_cast<size_t>(Argmax(logits))]);
  probs->resize(v);
  std::vector<double>& p = *probs;
  double z = 0.0;
  for (size_t i = 0; i < v; ++i) {
    const double e = std::exp((static_cast<double>(logits[i]) - mx) / temperature);
    p[i] = std::isnan(e) ? 0.0 : e;
    z += p[i];
  }
  if (!(z > 0.0 && std::isfinite(z))) return Argmax(logits);  // no finite logits
  for (double& x : p) x /= z;
  u = std::clamp(u, 0.0, std::nextafter(1.0, 0.0));

  if (top_p >= 1.0) {
    // Every token: inverse CDF in id order.
    const double target = u;
    double cum = 0.0;
    int32_t last = 0;
    for (size_t i = 0; i < v; ++i) {
      if (p[i] <= 0.0) continue;
      cum += p[i];
      last = static_cast<int32_t>(i);
      if (target < cum) return last;
    }
    return last;  // rounding left u above the total
  }

  // Nucleus: in the order of decreasing probability, ties by increasing id
  // (a strict total order, so the set is unique), the shortest prefix whose
  // mass reaches top_p. Found without sorting by bisection on its length
  // (expected O(V)): with order[0, lo) known to be inside and `need` =
  // top_p - their mass > 0, the prefix ends in (lo, hi]; nth_element puts
  // the range's best mid - lo tokens first, and their mass decides the half.
  std::vector<int32_t>& order = *order_scratch;
  order.resize(v);
  std::iota(order.begin(), order.end(), 0);
  auto before = [&p](int32_t a, int32_t b) {
    const double pa = p[static_cast<size_t>(a)], pb = p[static_cast<size_t>(b)];
    return pa > pb || (pa == pb && a < b);
  };
  size_t lo = 0, hi = v;
  double need = top_p;
  while (hi - lo > 1) {
    const size_t mid = lo + (hi - lo) / 2;
    const auto first = order.begin();
    std::nth_element(first + static_cast<std::ptrdiff_t>(lo), first + static_cast<std::ptrdiff_t>(mid),
                     first + static_cast<std::ptrdiff_t>(hi), before);
    double mass = 0.0;
    for (size_t j = lo; j < mid; ++j) mass += p[static_cast<size_t>(order[j])];
    if (mass >= need) {
      hi = mid;
    } else {
      need -= mass;
      lo = mid;
    }
  }
  // order[0, hi) is the nucleus: zero the rest, then the inverse CDF in id
  // order over the nucleus renormalised by its mass.
  for (size_t j = hi; j < v; ++j) p[static_cast<size_t>(order[j])] = 0.0;
  double mass = 0.0;
  for (double x : p) mass += x;
  const double target = u * mass;
  double cum = 0.0;
  int32_t last = order[0];
  for (size_t i = 0; i < v; ++i) {
    if (p[i] <= 0.0) continue;
    cum += p[i];
    last = static_cast<int32_t>(i);
    if (target < cum) return last;
  }
  return last;  // rounding left the target at the total
}

}  // namespace latam
