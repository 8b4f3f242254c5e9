#include "model/parameters.h"

#include <algorithm>
#include <cmath>

#include "core/random.h"

#ifdef LATAM_HAVE_CUDA
#include "kernels/cuda/elementwise.h"
#endif

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

namespace {

// Tensors of one layer share a group; the final norm and the LM head share
// "head"; anything else (the embedding) is its own group. Only layers may
// share a bucket with their neighbours.
std::string BucketGroup(const std::string& name) {
  const std::string layers = "model.layers.";
  if (name.rfind(layers, 0) == 0) return name.substr(0, name.find('.', layers.size()));
  if (name == "model.norm.weight" || name == "lm_head.weight") return "head";
  return name;
}

}  // namespace

ParameterSet::ParameterSet(std::vector<ParamSpec> specs, int64_t pad_to, ParameterPlacement placement,
                           int64_t bucket_elems)
    : specs_(std::move(specs)), placement_(placement) {
  LATAM_CHECK(placement.compute_dtype == DType::kF32 || placement.compute_dtype == DType::kBF16,
              "compute dtype " << DTypeName(placement.compute_dtype));
  LATAM_CHECK(placement.compute_dtype == DType::kF32 || placement.device == Device::kCUDA,
              "a bf16 compute copy needs the CUDA device");
  LATAM_CHECK(pad_to >= 1, "pad_to " << pad_to);
  // Both tables get the same padding at the end of every bucket, so element
  // offsets agree between the f32 arenas and the compute copy.
  auto close_bucket = [&](size_t end_tensor) {
    table_.Align(static_cast<size_t>(pad_to) * sizeof(float));
    compute_table_.Align(static_cast<size_t>(pad_to) * DTypeSize(placement.compute_dtype));
    GradBucket b;
    b.begin = buckets_.empty() ? 0 : buckets_.back().end;
    b.end = static_cast<int64_t>(table_.total_bytes() / sizeof(float));
    b.first_tensor = buckets_.empty() ? 0 : buckets_.back().end_tensor;
    b.end_tensor = end_tensor;
    buckets_.push_back(b);
  };
  std::vector<BucketItem> items;
  for (const ParamSpec& p : specs_) {
    std::string group = BucketGroup(p.name);
    const bool layer = group.rfind("model.layers.", 0) == 0;
    items.push_back({std::move(group), layer, p.shape.numel()});
  }
  const std::vector<size_t> ends = PlanBuckets(items, bucket_elems);
  size_t next_end = 0;
  for (size_t i = 0; i < specs_.size(); ++i) {
    if (i == ends[next_end]) close_bucket(ends[next_end++]);
    const ParamSpec& p = specs_[i];
    table_.Add(p.name, DType::kF32, p.shape);
    compute_table_.Add(p.name, placement.compute_dtype, p.shape);
    numel_ += p.shape.numel();
  }
  close_bucket(specs_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    bucket_of_.insert(bucket_of_.end(), buckets_[b].end_tensor - buckets_[b].first_tensor, b);
  }
  padded_numel_ = static_cast<int64_t>(table_.total_bytes() / sizeof(float));
  if (has_fp32_params()) params_ = Arena(placement.device, static_cast<size_t>(padded_numel_) * sizeof(float));
  // Where each bucket's gradients live (see ParameterPlacement::pooled_grads).
  std::vector<int64_t> sizes;
  for (const GradBucket& b : buckets_) {
    bool whole = false;
    for (size_t i = b.first_tensor; i < b.end_tensor; ++i) whole = whole || specs_[i].whole_step_grad;
    whole_step_.push_back(whole);
    sizes.push_back(b.end - b.begin);
  }
  if (!placement.pooled_grads) {
    for (const GradBucket& b : buckets_) grad_at_.push_back(b.begin);
  } else {
    int64_t at = 0, slot = 0;
    for (size_t b = 0; b < buckets_.size(); ++b) {
      if (whole_step_[b]) grad_at_.push_back(at), at += sizes[b];
      else grad_at_.push_back(-1), slot = std::max(slot, sizes[b]);
    }
    int parity = 0;
    for (size_t b = buckets_.size(); b-- > 0;) {
      if (!whole_step_[b]) grad_at_[b] = at + (parity++ % 2) * slot;
    }
  }
  grads_ = Arena(placement.device,
                 static_cast<size_t>(GradArenaElems(sizes, whole_step_, placement.pooled_grads)) * sizeof(float));
  if (placement.compute_dtype != DType::kF32) {
    compute_ = Arena(placement.device, static_cast<size_t>(padded_numel_) * DTypeSize(placement.compute_dtype));
  }
}

Tensor ParameterSet::param(const std::string& name) const {
  LATAM_CHECK(has_fp32_params(), "no f32 weights here (bf16 compute under ZeRO >= 1): read " << name
                                     << " from the optimizer's master shard");
  return table_.Get(params_, name);
}

Tensor ParameterSet::param(size_t i) const {
  LATAM_CHECK(has_fp32_params(), "no f32 weights here (bf16 compute under ZeRO >= 1): read "
                                     << specs_[i].name << " from the optimizer's master shard");
  return table_.Get(params_, i);
}

Tensor ParameterSet::compute(const std::string& name) const {
  return placement_.compute_dtype == DType::kF32 ? param(name) : compute_table_.Get(compute_, name);
}

Tensor ParameterSet::Fused(const TensorTable& table, const Arena& arena, const std::string& first, size_t count,
                           int64_t cols) const {
  const TensorTable::Entry& e = table.Find(first);
  return arena.View(e.offset, e.dtype, Shape{FusedRows(table, first, count, cols), cols});
}

int64_t ParameterSet::FusedRows(const TensorTable& table, const std::string& first, size_t count, int64_t cols) {
  const TensorTable::Entry& e = table.Find(first);
  size_t index = 0;
  while (table.entry(index).name != first) ++index;
  int64_t rows = 0;
  size_t expected_offset = e.offset;
  for (size_t i = index; i < index + count; ++i) {
    const TensorTable::Entry& part = table.entry(i);
    LATAM_CHECK(part.offset == expected_offset && part.shape.cols() == cols,
                part.name << " is not adjacent to " << first << " with " << cols << " columns");
    rows += part.shape.rows();
    expected_offset += static_cast<size_t>(part.shape.numel()) * DTypeSize(e.dtype);
  }
  return rows;
}

Tensor ParameterSet::FusedParam(const std::string& first, size_t count, int64_t cols) const {
  LATAM_CHECK(has_fp32_params(), "no f32 weights here (bf16 compute under ZeRO >= 1)");
  return Fused(table_, params_, first, count, cols);
}

Tensor ParameterSet::FusedGrad(const std::string& first, size_t count, int64_t cols) const {
  // The tensors of one fused operand share a bucket, so their gradients are
  // adjacent wherever the bucket lives.
  const Tensor head = grad(table_.IndexOf(first));
  return Tensor(head.data, DType::kF32, Shape{FusedRows(table_, first, count, cols), cols}, head.device);
}

Tensor ParameterSet::FusedCompute(const std::string& first, size_t count, int64_t cols) const {
  return placement_.compute_dtype == DType::kF32 ? FusedParam(first, count, cols)
                                                 : Fused(compute_table_, compute_, first, count, cols);
}

Tensor ParameterSet::padded_params() const {
  LATAM_CHECK(has_fp32_params(), "no f32 weights here (bf16 compute under ZeRO >= 1)");
  return params_.View(0, DType::kF32, Shape{padded_numel_});
}
Tensor ParameterSet::padded_grads() const {
  LATAM_CHECK(!placement_.pooled_grads, "pooled gradients (ZeRO-2) have no flat gradient array");
  return grads_.View(0, DType::kF32, Shape{padded_numel_});
}

Tensor ParameterSet::grad_arena() const {
  return grads_.View(0, DType::kF32, Shape{static_cast<int64_t>(grads_.size() / sizeof(float))});
}

Tensor ParameterSet::grad(size_t i) const {
  const size_t b = bucket_of_[i];
  const int64_t at = grad_at_[b] + flat_offset(i) - buckets_[b].begin;
  return grads_.View(static_cast<size_t>(at) * sizeof(float), DType::kF32, specs_[i].shape);
}

int64_t ParameterSet::GradArenaElemsFor(const std::vector<ParamSpec>& specs, int64_t pad_to, int64_t bucket_elems,
                                        bool pooled) {
  // The constructor's buckets without allocating: every bucket starts
  // aligned, so it spans its tensors rounded up to pad_to.
  std::vector<BucketItem> items;
  for (const ParamSpec& p : specs) {
    std::string group = BucketGroup(p.name);
    const bool layer = group.rfind("model.layers.", 0) == 0;
    items.push_back({std::move(group), layer, p.shape.numel()});
  }
  std::vector<int64_t> sizes;
  std::vector<bool> whole;
  size_t first = 0;
  for (size_t end : PlanBuckets(items, bucket_elems)) {
    int64_t n = 0;
    bool w = false;
    for (size_t i = first; i < end; ++i) n += specs[i].shape.numel(), w = w || specs[i].whole_step_grad;
    sizes.push_back((n + pad_to - 1) / pad_to * pad_to);
    whole.push_back(w);
    first = end;
  }
  return GradArenaElems(sizes, whole, pooled);
}

int64_t ParameterSet::GradArenaElems(const std::vector<int64_t>& bucket_elems, const std::vector<bool>& whole_step,
                                     bool pooled) {
  int64_t total = 0, whole = 0, slot = 0;
  for (size_t b = 0; b < bucket_elems.size(); ++b) {
    total += bucket_elems[b];
    if (whole_step[b]) whole += bucket_elems[b];
    else slot = std::max(slot, bucket_elems[b]);
  }
  return pooled ? whole + 2 * slot : total;
}
Tensor ParameterSet::padded_compute() const {
  return placement_.compute_dtype == DType::kF32
             ? padded_params()
             : compute_.View(0, placement_.compute_dtype, Shape{padded_numel_});
}

void ParameterSet::SyncCompute() {
  if (placement_.compute_dtype == DType::kF32) return;
  LATAM_CHECK(has_fp32_params(), "SyncCompute without f32 weights: the optimizer refreshes the compute copy");
#ifdef LATAM_HAVE_CUDA
  cuda::Cast(padded_params(), padded_compute(), placement_.stream.cuda());
#endif
}

std::vector<float> ParameterSet::DrawWeights(uint64_t seed) const {
  std::vector<float> host(static_cast<size_t>(padded_numel_), 0.0f);
  for (size_t i = 0; i < specs_.size(); ++i) {
    const ParamSpec& p = specs_[i];
    float* data = host.data() + flat_offset(i);
    const int64_t n = p.shape.numel();
    if (p.zero_init) continue;  // the host array starts at zero
    if (p.init_std == 0.0) {
      for (int64_t j = 0; j < n; ++j) data[j] = 1.0f;
      continue;
    }
    const float std = static_cast<float>(p.init_std);
    const uint64_t stream = StreamId(p.name);
    if (p.shard_dim == 1) {
      // A block of columns: each local row is a contiguous run of the global row.
      const int64_t rows = p.shape.rows(), cols = p.shape.cols(), global_cols = p.global_shape.cols();
      for (int64_t r = 0; r < rows; ++r) {
        FillNormal(data + r * cols, cols, std, seed, stream, static_cast<uint64_t>(r * global_cols + p.shard_offset));
      }
    } else {
      // The whole tensor, or a block of rows: one contiguous run.
      const int64_t first = p.shard_dim == 0 ? p.shard_offset * p.global_shape.cols() : 0;
      FillNormal(data, n, std, seed, stream, static_cast<uint64_t>(first));
    }
  }
  return host;
}

void ParameterSet::InitWeights(uint64_t seed) {
  std::vector<float> host = DrawWeights(seed);
  CopyTensor(padded_params(), Tensor::Of(host.data(), Shape{padded_numel_}));
  SyncCompute();
}

}  // namespace latam
