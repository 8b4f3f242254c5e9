#include "trainer/model.h"

#include <algorithm>
#include <cstring>

#include <omp.h>

#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/swiglu.h"

namespace latam {

namespace {

// The LM head runs over chunks of at most this many logits (64 MB in fp32).
constexpr int64_t kLogitsChunkElems = int64_t{1} << 24;

int64_t LogitsRows(const ModelShape& s, const ActivationOptions& o) {
  const int64_t rows = o.micro_batch * o.seq_len;
  if (o.logits_chunk_rows > 0) return std::min(rows, o.logits_chunk_rows);
  return std::min(rows, std::max<int64_t>(64, kLogitsChunkElems / s.vocab));
}

std::string LayerActName(int64_t layer, bool shared, const char* what) {
  return (shared ? std::string("shared.") : "layer." + std::to_string(layer) + ".") + what;
}

// The activation arena's layout. Every tensor starts on a 256-byte boundary.
TensorTable BuildActivationTable(const ModelShape& s, const ActivationOptions& o) {
  const int64_t m = o.micro_batch * o.seq_len;
  TensorTable t;
  auto add = [&t](const std::string& name, DType dtype, Shape shape) {
    t.Align(Arena::kAlignment);
    t.Add(name, dtype, shape);
  };
  add("ids", DType::kI32, Shape{m});
  add("targets", DType::kI32, Shape{m});
  for (int64_t l = 0; l <= s.n_layers; ++l) add("x." + std::to_string(l), DType::kF32, Shape{m, s.dim});
  const int64_t saved_sets = o.recompute ? 1 : s.n_layers;
  for (int64_t l = 0; l < saved_sets; ++l) {
    add(LayerActName(l, o.recompute, "xn"), DType::kF32, Shape{m, s.dim});
    add(LayerActName(l, o.recompute, "rstd1"), DType::kF32, Shape{m});
    add(LayerActName(l, o.recompute, "qkv"), DType::kF32, Shape{m, s.qkv_dim()});
    add(LayerActName(l, o.recompute, "att"), DType::kF32, Shape{m, s.attn_dim()});
    add(LayerActName(l, o.recompute, "lse"), DType::kF32, Shape{o.micro_batch, s.n_heads, o.seq_len});
    add(LayerActName(l, o.recompute, "h"), DType::kF32, Shape{m, s.dim});
    add(LayerActName(l, o.recompute, "hn"), DType::kF32, Shape{m, s.dim});
    add(LayerActName(l, o.recompute, "rstd2"), DType::kF32, Shape{m});
    add(LayerActName(l, o.recompute, "gu"), DType::kF32, Shape{m, 2 * s.ffn_dim});
    add(LayerActName(l, o.recompute, "act"), DType::kF32, Shape{m, s.ffn_dim});
  }
  add("xf", DType::kF32, Shape{m, s.dim});
  add("rstdf", DType::kF32, Shape{m});
  add("logits", DType::kF32, Shape{LogitsRows(s, o), s.vocab});
  add("losses", DType::kF32, Shape{m});
  // Gradient scratch, shared by all layers.
  add("dres", DType::kF32, Shape{m, s.dim});
  add("dnorm", DType::kF32, Shape{m, s.dim});
  add("dqkv", DType::kF32, Shape{m, s.qkv_dim()});
  add("datt", DType::kF32, Shape{m, s.attn_dim()});
  add("dgu", DType::kF32, Shape{m, 2 * s.ffn_dim});
  add("dact", DType::kF32, Shape{m, s.ffn_dim});
  const cpu::AttentionDims dims{static_cast<int>(o.micro_batch), static_cast<int>(o.seq_len),
                                static_cast<int>(s.n_heads), static_cast<int>(s.n_kv_heads),
                                static_cast<int>(s.head_dim)};
  add("attn_workspace", DType::kF32,
      Shape{cpu::AttentionWorkspaceElems(dims, o.cpu_threads > 0 ? o.cpu_threads : omp_get_max_threads())});
  return t;
}

void Copy(const Tensor& dst, const Tensor& src) {
  LATAM_CHECK(dst.bytes() == src.bytes(), "copy " << src.str() << " -> " << dst.str());
  std::memcpy(dst.data, src.data, src.bytes());
}

}  // namespace

size_t ActivationBytes(const ModelShape& shape, const ActivationOptions& options) {
  return BuildActivationTable(shape, options).total_bytes();
}

LlamaModel::LlamaModel(const ModelShape& shape, const ActivationOptions& options)
    : shape_(shape),
      options_(options),
      rows_(options.micro_batch * options.seq_len),
      logits_rows_(LogitsRows(shape, options)),
      rope_(BuildRopeTable(shape.rope_theta, static_cast<int>(shape.head_dim), static_cast<int>(options.seq_len),
                           shape.rope_scaling)),
      params_(LlamaParameterSpecs(shape)),
      act_table_(BuildActivationTable(shape, options)),
      act_arena_(Device::kCPU, act_table_.total_bytes()) {
  attn_dims_.batch = static_cast<int>(options.micro_batch);
  attn_dims_.seq_len = static_cast<int>(options.seq_len);
  attn_dims_.n_heads = static_cast<int>(shape.n_heads);
  attn_dims_.n_kv_heads = static_cast<int>(shape.n_kv_heads);
  attn_dims_.head_dim = static_cast<int>(shape.head_dim);

  for (int64_t l = 0; l < shape.n_layers; ++l) {
    for (bool grad : {false, true}) {
      auto get = [&](const char* suffix) {
        return grad ? params_.grad(LayerParamName(l, suffix)) : params_.param(LayerParamName(l, suffix));
      };
      auto fused = [&](const char* suffix, size_t count) {
        return grad ? params_.FusedGrad(LayerParamName(l, suffix), count, shape.dim)
                    : params_.FusedParam(LayerParamName(l, suffix), count, shape.dim);
      };
      LayerWeights w;
      w.attn_norm = get("input_layernorm.weight");
      w.qkv = fused("self_attn.q_proj.weight", 3);
      w.o = get("self_attn.o_proj.weight");
      w.mlp_norm = get("post_attention_layernorm.weight");
      w.gate_up = fused("mlp.gate_proj.weight", 2);
      w.down = get("mlp.down_proj.weight");
      (grad ? weight_grads_ : weights_).push_back(w);
    }
  }
  embed_ = params_.param("model.embed_tokens.weight");
  embed_grad_ = params_.grad("model.embed_tokens.weight");
  const char* head_name = shape.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  head_ = params_.param(head_name);
  head_grad_ = params_.grad(head_name);
  final_norm_ = params_.param("model.norm.weight");
  final_norm_grad_ = params_.grad("model.norm.weight");

  auto act = [this](const std::string& name) { return act_table_.Get(act_arena_, name); };
  for (int64_t l = 0; l <= shape.n_layers; ++l) residual_.push_back(act("x." + std::to_string(l)));
  const int64_t saved_sets = options.recompute ? 1 : shape.n_layers;
  for (int64_t l = 0; l < saved_sets; ++l) {
    auto get = [&](const char* what) { return act(LayerActName(l, options.recompute, what)); };
    layer_acts_.push_back(LayerActivations{get("xn"), get("rstd1"), get("qkv"), get("att"), get("lse"), get("h"),
                                           get("hn"), get("rstd2"), get("gu"), get("act")});
  }
  ids_ = act("ids");
  targets_ = act("targets");
  xf_ = act("xf");
  rstdf_ = act("rstdf");
  logits_ = act("logits");
  losses_ = act("losses");
  dres_ = act("dres");
  dnorm_ = act("dnorm");
  dqkv_ = act("dqkv");
  datt_ = act("datt");
  dgu_ = act("dgu");
  dact_ = act("dact");
  attn_workspace_ = act("attn_workspace");
}

const LlamaModel::LayerActivations& LlamaModel::ActivationsFor(int64_t layer) const {
  return layer_acts_[static_cast<size_t>(options_.recompute ? 0 : layer)];
}

void LlamaModel::EmbedForward(const int32_t* inputs) {
  std::memcpy(ids_.data, inputs, ids_.bytes());
  cpu::EmbeddingForward(ids_, embed_, 0, residual_[0]);
}

void LlamaModel::LayerForward(int64_t layer, const LayerActivations& a) {
  const LayerWeights& w = weights_[static_cast<size_t>(layer)];
  const Tensor& x = residual_[static_cast<size_t>(layer)];
  const Tensor& x_next = residual_[static_cast<size_t>(layer + 1)];
  const float eps = static_cast<float>(shape_.norm_eps);
  // Attention block: h = x + o_proj(attn(rope(qkv(norm(x))))).
  cpu::RmsNormForward(x, w.attn_norm, eps, a.xn, a.rstd1);
  cpu::LinearForward(a.xn, w.qkv, a.qkv, false);
  cpu::RopeForward(a.qkv, attn_dims_.seq_len, attn_dims_.n_heads + attn_dims_.n_kv_heads, rope_);
  cpu::AttentionForward(a.qkv, attn_dims_, a.att, a.lse, attn_workspace_);
  Copy(a.h, x);
  cpu::LinearForward(a.att, w.o, a.h, true);
  // MLP block: x_next = h + down(swiglu(gate_up(norm(h)))).
  cpu::RmsNormForward(a.h, w.mlp_norm, eps, a.hn, a.rstd2);
  cpu::LinearForward(a.hn, w.gate_up, a.gu, false);
  cpu::SwigluForward(a.gu, a.act);
  Copy(x_next, a.h);
  cpu::LinearForward(a.act, w.down, x_next, true);
}

// On entry dres_ = dL/dx_{l+1}; on exit dres_ = dL/dx_l.
void LlamaModel::LayerBackward(int64_t layer, const LayerActivations& a) {
  const LayerWeights& w = weights_[static_cast<size_t>(layer)];
  const LayerWeights& g = weight_grads_[static_cast<size_t>(layer)];
  const Tensor& x = residual_[static_cast<size_t>(layer)];
  // MLP block. dres carries dL/dh through the residual connection.
  cpu::LinearBackwardInput(dres_, w.down, dact_, false);
  cpu::LinearBackwardWeight(dres_, a.act, g.down);
  cpu::SwigluBackward(dact_, a.gu, dgu_);
  cpu::LinearBackwardInput(dgu_, w.gate_up, dnorm_, false);
  cpu::LinearBackwardWeight(dgu_, a.hn, g.gate_up);
  cpu::RmsNormBackward(dnorm_, a.h, w.mlp_norm, a.rstd2, dres_, true, g.mlp_norm);
  // Attention block. dres now holds dL/dh.
  cpu::LinearBackwardInput(dres_, w.o, datt_, false);
  cpu::LinearBackwardWeight(dres_, a.att, g.o);
  cpu::AttentionBackward(a.qkv, a.att, datt_, a.lse, attn_dims_, dqkv_, attn_workspace_);
  cpu::RopeBackward(dqkv_, attn_dims_.seq_len, attn_dims_.n_heads + attn_dims_.n_kv_heads, rope_);
  cpu::LinearBackwardInput(dqkv_, w.qkv, dnorm_, false);
  cpu::LinearBackwardWeight(dqkv_, a.xn, g.qkv);
  cpu::RmsNormBackward(dnorm_, x, w.attn_norm, a.rstd1, dres_, true, g.attn_norm);
}

double LlamaModel::HeadAndLoss(const int32_t* targets, float grad_scale, bool with_grads) {
  const Tensor& x_last = residual_.back();
  cpu::RmsNormForward(x_last, final_norm_, static_cast<float>(shape_.norm_eps), xf_, rstdf_);
  std::memcpy(targets_.data, targets, targets_.bytes());
  double loss = 0.0;
  for (int64_t r0 = 0; r0 < rows_; r0 += logits_rows_) {
    const int64_t r1 = std::min(rows_, r0 + logits_rows_);
    const Tensor xf = xf_.Rows(r0, r1);
    const Tensor logits = logits_.Rows(0, r1 - r0);
    const Tensor losses = losses_.Rows(r0, r1);
    cpu::LinearForward(xf, head_, logits, false);
    cpu::CrossEntropyForwardBackward(logits, targets_.Rows(r0, r1), losses, grad_scale, with_grads);
    if (with_grads) {
      // logits now holds dL/dlogits for this chunk.
      cpu::LinearBackwardInput(logits, head_, dnorm_.Rows(r0, r1), false);
      cpu::LinearBackwardWeight(logits, xf, head_grad_);
    }
  }
  const float* l = losses_.as<float>();
  for (int64_t r = 0; r < rows_; ++r) loss += l[r];
  if (with_grads) cpu::RmsNormBackward(dnorm_, x_last, final_norm_, rstdf_, dres_, false, final_norm_grad_);
  return loss;
}

double LlamaModel::ForwardBackward(const int32_t* inputs, const int32_t* targets, float grad_scale) {
  EmbedForward(inputs);
  for (int64_t l = 0; l < shape_.n_layers; ++l) LayerForward(l, ActivationsFor(l));
  const double loss = HeadAndLoss(targets, grad_scale, true);
  for (int64_t l = shape_.n_layers - 1; l >= 0; --l) {
    // The shared activation set still holds the last layer's forward.
    if (options_.recompute && l + 1 < shape_.n_layers) LayerForward(l, ActivationsFor(l));
    LayerBackward(l, ActivationsFor(l));
  }
  cpu::EmbeddingBackward(ids_, dres_, 0, embed_grad_);
  return loss;
}

double LlamaModel::ForwardLoss(const int32_t* inputs, const int32_t* targets) {
  EmbedForward(inputs);
  for (int64_t l = 0; l < shape_.n_layers; ++l) LayerForward(l, ActivationsFor(l));
  return HeadAndLoss(targets, 0.0f, false);
}

}  // namespace latam
