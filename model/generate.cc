#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>

#include "core/random.h"

namespace latam {

namespace {

// Head rows per GEMM on a GPU: the f32 logits buffer holds at most this many
// logits (64 MB), and at least one row.
constexpr int64_t kLogitsBufferElems = int64_t{1} << 24;

int32_t Argmax(const std::vector<float>& logits) {
  // Strict > keeps the lowest id among ties; a NaN never beats a number.
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best] || std::isnan(logits[best])) best = i;
  }
  return static_cast<int32_t>(best);
}

}  // namespace

Generator::Generator(const ModelShape& shape, const ParameterSet& params, int64_t max_context,
                     AttentionChoice attention)
    : shape_(shape), max_context_(max_context), chunk_rows_(std::min(max_context, kMaxChunkRows)) {
  LATAM_CHECK(max_context > 0, "generator max_context must be positive, got " << max_context);
  LATAM_CHECK(shape.n_heads > 0 && shape.n_kv_heads > 0 && shape.n_heads % shape.n_kv_heads == 0,
              "generator: " << shape.n_heads << " query heads and " << shape.n_kv_heads << " KV heads");
  LATAM_CHECK(max_context <= std::numeric_limits<int>::max(), "generator max_context " << max_context << " too large");
  const ParameterPlacement& placement = params.placement();
  const Device device = placement.device;
  const DType dtype = placement.compute_dtype;
  n_rot_heads_ = static_cast<int>(shape.n_heads + shape.n_kv_heads);
  logits_rows_ = std::clamp<int64_t>(kLogitsBufferElems / std::max<int64_t>(shape.vocab, 1), 1, chunk_rows_);

  // The ops: training attention dimensions for one pass of chunk_rows_ rows
  // (unused here, but they size the ops' workspaces), decode attention over
  // the cache, and a RoPE table covering every cached position.
  OpsShape ops_shape;
  ops_shape.attention = AttentionDims{1, static_cast<int>(chunk_rows_), static_cast<int>(shape.n_heads),
                                           static_cast<int>(shape.n_kv_heads), static_cast<int>(shape.head_dim)};
  ops_shape.dim = shape.dim;
  ops_shape.decode_rows = chunk_rows_;
  ops_shape.decode = DecodeAttentionDims{static_cast<int>(shape.n_heads), static_cast<int>(shape.n_kv_heads),
                                         static_cast<int>(shape.head_dim), max_context};
  const RopeTable rope = BuildRopeTable(shape.rope_theta, static_cast<int>(shape.head_dim),
                                        static_cast<int>(max_context), shape.rope_scaling);
  if (device == Device::kCPU) {
    LATAM_CHECK(dtype == DType::kF32, "generator: CPU parameters compute in f32, not " << DTypeName(dtype));
    ops_ = MakeCpuOps(ops_shape, rope);
  } else {
    ops_ = MakeCudaOps(ops_shape, rope, dtype, placement.stream, attention);
  }

  // Weights: the operands the training model reads (model/model.cc), checked
  // against the shape.
  const int64_t dim = shape.dim;
  auto get = [&](const std::string& name, const Shape& expected) {
    LATAM_CHECK(params.table().Contains(name), "generator: the parameters have no tensor " << name);
    const Tensor t = params.compute(name);
    CheckTensor(t, dtype, expected, device, name.c_str());
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
    w.qkv = params.FusedCompute(LayerParamName(l, "self_attn.q_proj.weight"), 3, dim);
    w.o = get(LayerParamName(l, "self_attn.o_proj.weight"), Shape{dim, shape.attn_dim()});
    w.mlp_norm = get(LayerParamName(l, "post_attention_layernorm.weight"), Shape{dim});
    w.gate_up = params.FusedCompute(LayerParamName(l, "mlp.gate_proj.weight"), 2, dim);
    w.down = get(LayerParamName(l, "mlp.down_proj.weight"), Shape{dim, shape.ffn_dim});
    weights_.push_back(w);
  }
  embed_ = get("model.embed_tokens.weight", Shape{shape.vocab, dim});
  head_ = shape.tie_embeddings ? embed_ : get("lm_head.weight", Shape{shape.vocab, dim});
  final_norm_ = get("model.norm.weight", Shape{dim});

  // One arena on the device: the cache, then the work buffers. Activations
  // and the cache in the compute dtype; rstd and the GPU's logits in f32.
  const int64_t r = chunk_rows_, hkv = shape.n_kv_heads, hd = shape.head_dim;
  auto add = [this](const char* name, DType t, Shape s) {
    table_.Align(Arena::kAlignment);
    table_.Add(name, t, s);
  };
  add("k_cache", dtype, Shape{shape.n_layers, hkv, max_context, hd});
  add("v_cache", dtype, Shape{shape.n_layers, hkv, max_context, hd});
  add("ids", DType::kI32, Shape{r});
  add("x", dtype, Shape{r, dim});
  add("xn", dtype, Shape{r, dim});
  add("rstd", DType::kF32, Shape{r});
  add("qkv", dtype, Shape{r, shape.qkv_dim()});
  add("att", dtype, Shape{r, shape.attn_dim()});
  add("h", dtype, Shape{r, dim});
  add("partial", dtype, Shape{r, dim});
  add("gu", dtype, Shape{r, 2 * shape.ffn_dim});
  add("act", dtype, Shape{r, shape.ffn_dim});
  // The CPU head writes straight into the caller's logits.
  if (device != Device::kCPU) add("logits", DType::kF32, Shape{logits_rows_, shape.vocab});
  arena_ = Arena(device, table_.total_bytes());
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
  if (device != Device::kCPU) device_logits_ = view("logits");
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

Tensor Generator::LayerCache(const Tensor& cache, int64_t layer) const {
  return cache.Rows(layer, layer + 1).Reshaped(Shape{shape_.n_kv_heads, max_context_, shape_.head_dim});
}

void Generator::Run(const int32_t* tokens, int64_t n, bool all, float* out) {
  for (int64_t r0 = 0; r0 < n; r0 += chunk_rows_) {
    const int64_t rows = std::min(chunk_rows_, n - r0);
    ops_->UploadIds(tokens + r0, ids_.Rows(0, rows));
    ops_->EmbeddingForward(ids_.Rows(0, rows), embed_, 0, x_.Rows(0, rows));
    LayersForward(rows);
    // The logits of every row, or only of the input's last.
    const int64_t first = all ? 0 : (r0 + rows == n ? rows - 1 : rows);
    if (first < rows) Head(first, rows, all ? out + r0 * shape_.vocab : out);
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
    const Tensor k_cache = LayerCache(k_cache_, l), v_cache = LayerCache(v_cache_, l);
    // Attention block: h = x + o_proj(attn(rope(qkv(norm(x))))), the rotated
    // keys and the values of rows [0, n) stored at positions position_ + i
    // before the rows attend to every cached position up to their own.
    ops_->RmsNormForward(x, w.attn_norm, eps, xn, rstd);
    ops_->LinearForward(xn, w.qkv, qkv, false);
    ops_->RopeForwardAt(qkv, position_, n_rot_heads_);
    ops_->KvCacheAppend(qkv, position_, k_cache, v_cache);
    ops_->DecodeAttention(qkv, position_, k_cache, v_cache, att);
    ops_->LinearForward(att, w.o, partial, false);
    // MLP block: x = h + down(swiglu(gate_up(norm(h)))).
    ops_->AddRmsNormForward(x, partial, w.mlp_norm, eps, h, xn, rstd);
    ops_->LinearForward(xn, w.gate_up, gu, false);
    ops_->SwigluForward(gu, act);
    ops_->LinearForward(act, w.down, partial, false);
    ops_->Add(h, partial, x);
  }
}

void Generator::Head(int64_t first, int64_t rows, float* out) {
  const float eps = static_cast<float>(shape_.norm_eps);
  const int64_t m = rows - first, vocab = shape_.vocab;
  ops_->RmsNormForward(x_.Rows(first, rows), final_norm_, eps, xn_.Rows(0, m), rstd_.Rows(0, m));
  if (ops_->device() == Device::kCPU) {
    ops_->LinearForward(xn_.Rows(0, m), head_, Tensor::Of(out, Shape{m, vocab}), false);
    return;
  }
  for (int64_t r = 0; r < m; r += logits_rows_) {
    const int64_t k = std::min(logits_rows_, m - r);
    const Tensor logits = device_logits_.Rows(0, k);
    ops_->LinearForward(xn_.Rows(r, r + k), head_, logits, false);
    ops_->Download(logits, out + r * vocab);
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

std::unique_ptr<ParameterSet> PlaceParameters(const ParameterSet& src, const ParameterPlacement& placement) {
  std::vector<ParamSpec> specs;
  for (size_t i = 0; i < src.size(); ++i) specs.push_back(src.spec(i));
  auto dst = std::make_unique<ParameterSet>(std::move(specs), 1, placement);
  LATAM_CHECK(dst->padded_numel() == src.padded_numel(),
              "PlaceParameters: the source was laid out with padding (" << src.padded_numel() << " elements, not "
                                                                         << dst->padded_numel() << ")");
  CopyTensor(dst->padded_params(), src.padded_params());
  dst->SyncCompute();
  return dst;
}

}  // namespace latam
