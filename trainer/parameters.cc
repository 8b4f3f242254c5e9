#include "trainer/parameters.h"

#include <cmath>

#include "kernels/random.h"

namespace latam {

ModelShape ModelShape::FromConfig(const config::ModelConfig& m) {
  ModelShape s;
  s.vocab = m.vocab_size();
  s.dim = m.dim();
  s.n_layers = m.n_layers();
  s.n_heads = m.n_heads();
  s.n_kv_heads = m.n_kv_heads();
  s.head_dim = m.n_heads() > 0 ? m.dim() / m.n_heads() : 0;
  s.ffn_dim = m.ffn_dim();
  s.tie_embeddings = m.tie_embeddings();
  s.rope_theta = m.rope_theta();
  if (m.has_rope_scaling()) {
    s.rope_scaling.factor = m.rope_scaling().factor();
    s.rope_scaling.low_freq_factor = m.rope_scaling().low_freq_factor();
    s.rope_scaling.high_freq_factor = m.rope_scaling().high_freq_factor();
    s.rope_scaling.original_max_position = m.rope_scaling().original_max_position_embeddings();
  }
  s.norm_eps = m.norm_eps();
  s.max_seq_len = m.max_seq_len();
  s.init_std = m.init_std();
  return s;
}

int64_t ModelShape::ParameterCount() const {
  const int64_t per_layer = 2 * dim               // input and post-attention norms
                            + qkv_dim() * dim     // q, k, v
                            + dim * attn_dim()    // o
                            + 3 * ffn_dim * dim;  // gate, up, down
  return vocab * dim * (tie_embeddings ? 1 : 2) + n_layers * per_layer + dim;
}

std::string LayerParamName(int64_t layer, const char* suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

std::vector<ParamSpec> LlamaParameterSpecs(const ModelShape& s) {
  const double std = s.init_std;
  // Residual output projections: scaled so the residual stream's variance
  // does not grow with depth (GPT-2 / Megatron rule).
  const double out_std = s.init_std / std::sqrt(2.0 * static_cast<double>(s.n_layers));
  std::vector<ParamSpec> specs;
  specs.push_back({"model.embed_tokens.weight", Shape{s.vocab, s.dim}, std, true});
  for (int64_t l = 0; l < s.n_layers; ++l) {
    specs.push_back({LayerParamName(l, "input_layernorm.weight"), Shape{s.dim}, 0.0, false});
    specs.push_back({LayerParamName(l, "self_attn.q_proj.weight"), Shape{s.n_heads * s.head_dim, s.dim}, std, true});
    specs.push_back({LayerParamName(l, "self_attn.k_proj.weight"), Shape{s.n_kv_heads * s.head_dim, s.dim}, std, true});
    specs.push_back({LayerParamName(l, "self_attn.v_proj.weight"), Shape{s.n_kv_heads * s.head_dim, s.dim}, std, true});
    specs.push_back(
        {LayerParamName(l, "self_attn.o_proj.weight"), Shape{s.dim, s.n_heads * s.head_dim}, out_std, true});
    specs.push_back({LayerParamName(l, "post_attention_layernorm.weight"), Shape{s.dim}, 0.0, false});
    specs.push_back({LayerParamName(l, "mlp.gate_proj.weight"), Shape{s.ffn_dim, s.dim}, std, true});
    specs.push_back({LayerParamName(l, "mlp.up_proj.weight"), Shape{s.ffn_dim, s.dim}, std, true});
    specs.push_back({LayerParamName(l, "mlp.down_proj.weight"), Shape{s.dim, s.ffn_dim}, out_std, true});
  }
  specs.push_back({"model.norm.weight", Shape{s.dim}, 0.0, false});
  if (!s.tie_embeddings) specs.push_back({"lm_head.weight", Shape{s.vocab, s.dim}, std, true});
  return specs;
}

ParameterSet::ParameterSet(std::vector<ParamSpec> specs) : specs_(std::move(specs)) {
  for (const ParamSpec& p : specs_) {
    table_.Add(p.name, DType::kF32, p.shape);
    numel_ += p.shape.numel();
  }
  params_ = Arena(Device::kCPU, table_.total_bytes());
  grads_ = Arena(Device::kCPU, table_.total_bytes());
}

Tensor ParameterSet::Fused(const Arena& arena, const std::string& first, size_t count, int64_t cols) const {
  const TensorTable::Entry& e = table_.Find(first);
  size_t index = 0;
  while (table_.entry(index).name != first) ++index;
  int64_t rows = 0;
  size_t expected_offset = e.offset;
  for (size_t i = index; i < index + count; ++i) {
    const TensorTable::Entry& part = table_.entry(i);
    LATAM_CHECK(part.offset == expected_offset && part.shape.cols() == cols,
                part.name << " is not adjacent to " << first << " with " << cols << " columns");
    rows += part.shape.rows();
    expected_offset += static_cast<size_t>(part.shape.numel()) * sizeof(float);
  }
  return arena.View(e.offset, DType::kF32, Shape{rows, cols});
}

Tensor ParameterSet::FusedParam(const std::string& first, size_t count, int64_t cols) const {
  return Fused(params_, first, count, cols);
}

Tensor ParameterSet::FusedGrad(const std::string& first, size_t count, int64_t cols) const {
  return Fused(grads_, first, count, cols);
}

Tensor ParameterSet::flat_params() const { return params_.View(0, DType::kF32, Shape{numel_}); }
Tensor ParameterSet::flat_grads() const { return grads_.View(0, DType::kF32, Shape{numel_}); }

void ParameterSet::InitWeights(uint64_t seed) {
  for (size_t i = 0; i < specs_.size(); ++i) {
    const ParamSpec& p = specs_[i];
    const Tensor t = param(i);
    float* data = t.as<float>();
    if (p.init_std == 0.0) {
      for (int64_t j = 0; j < t.numel(); ++j) data[j] = 1.0f;
    } else {
      FillNormal(data, t.numel(), static_cast<float>(p.init_std), seed, StreamId(p.name), 0);
    }
  }
}

}  // namespace latam
