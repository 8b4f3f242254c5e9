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

ParameterSet::ParameterSet(std::vector<ParamSpec> specs, int64_t pad_to) : specs_(std::move(specs)) {
  for (const ParamSpec& p : specs_) {
    table_.Add(p.name, DType::kF32, p.shape);
    numel_ += p.shape.numel();
  }
  LATAM_CHECK(pad_to >= 1, "pad_to " << pad_to);
  padded_numel_ = (numel_ + pad_to - 1) / pad_to * pad_to;
  params_ = Arena(Device::kCPU, static_cast<size_t>(padded_numel_) * sizeof(float));
  grads_ = Arena(Device::kCPU, static_cast<size_t>(padded_numel_) * sizeof(float));
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
Tensor ParameterSet::padded_params() const { return params_.View(0, DType::kF32, Shape{padded_numel_}); }
Tensor ParameterSet::padded_grads() const { return grads_.View(0, DType::kF32, Shape{padded_numel_}); }

void ParameterSet::InitWeights(uint64_t seed) {
  for (size_t i = 0; i < specs_.size(); ++i) {
    const ParamSpec& p = specs_[i];
    const Tensor t = param(i);
    float* data = t.as<float>();
    if (p.init_std == 0.0) {
      for (int64_t j = 0; j < t.numel(); ++j) data[j] = 1.0f;
      continue;
    }
    const float std = static_cast<float>(p.init_std);
    const uint64_t stream = StreamId(p.name);
    if (p.shard_dim == 1) {
      // A block of columns: each local row is a contiguous run of the global row.
      const int64_t rows = t.shape.rows(), cols = t.shape.cols(), global_cols = p.global_shape.cols();
      for (int64_t r = 0; r < rows; ++r) {
        FillNormal(data + r * cols, cols, std, seed, stream, static_cast<uint64_t>(r * global_cols + p.shard_offset));
      }
    } else {
      // The whole tensor, or a block of rows: one contiguous run.
      const int64_t first = p.shard_dim == 0 ? p.shard_offset * p.global_shape.cols() : 0;
      FillNormal(data, t.numel(), std, seed, stream, static_cast<uint64_t>(first));
    }
  }
}

}  // namespace latam
