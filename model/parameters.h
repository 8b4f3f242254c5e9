// The Llama model's shape and its named parameters.
//
// ModelShape holds the dimensions from config.model. LlamaParameterSpecs
// lists every parameter under its canonical Hugging Face name
// (model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight, ...,
// model.norm.weight, lm_head.weight), with the HF weight layout [out, in].
// ParameterSet places them in one parameter arena and one gradient arena
// with identical offsets. Within a layer q_proj, k_proj, v_proj are adjacent,
// as are gate_proj and up_proj, so each group is one fused GEMM operand:
//   W_qkv = [q_proj; k_proj; v_proj]   [(Hq + 2 Hkv) hd, dim]
//   W_gu  = [gate_proj; up_proj]       [2 ffn, dim]
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/arena.h"
#include "parallel/data_parallel.h"
#include "kernels/rope.h"
#include "model/config.pb.h"

namespace latam {

struct ModelShape {
  int64_t vocab = 0;
  int64_t dim = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t ffn_dim = 0;
  bool tie_embeddings = false;
  double rope_theta = 500000.0;
  RopeScaling rope_scaling;
  double norm_eps = 1e-5;
  int64_t max_seq_len = 0;
  double init_std = 0.02;

  static ModelShape FromConfig(const config::ModelConfig& m);
  int64_t qkv_dim() const { return (n_heads + 2 * n_kv_heads) * head_dim; }
  int64_t attn_dim() const { return n_heads * head_dim; }
  // Total number of parameters.
  int64_t ParameterCount() const;
};

struct ParamSpec {
  std::string name;
  Shape shape;  // this rank's block
  // Normal(0, init_std) initialisation, or all ones when init_std == 0 (norms).
  double init_std = 0.0;
  // Decoupled weight decay applies to matrices, not to norm gains.
  bool weight_decay = false;
  // Where the block sits in the full tensor: split along `shard_dim` (0 rows,
  // 1 columns; -1 = the whole tensor) starting at `shard_offset`.
  Shape global_shape;
  int shard_dim = -1;
  int64_t shard_offset = 0;
  // Whether this copy counts in the global gradient norm (replicas of one
  // tensor count once: the norm gains on tensor-parallel rank 0, a replicated
  // KV head on its first rank, a tied embedding on the first stage).
  bool counted = true;
  // A KV projection replicated over tensor-parallel ranks: its gradient is
  // summed over the replicas.
  bool kv_replica = false;
  // Its gradient accumulates over the whole step before it is reduced (a
  // tied embedding: the LM head and the embedding both add to it, or its two
  // pipeline copies are summed after the pipeline), so with pooled gradient
  // buckets (ParameterPlacement::pooled_grads) its bucket keeps storage of
  // its own.
  bool whole_step_grad = false;
  // Initialised to zero (a LoRA B matrix), whatever init_std says.
  bool zero_init = false;
};

// Canonical per-layer names.
std::string LayerParamName(int64_t layer, const char* suffix);

// Where a ParameterSet lives and what the model computes with.
//   device         kCPU or kCUDA: the parameter (fp32 master weights) and
//                  gradient (fp32) arenas live there;
//   compute_dtype  kF32: the kernels read the master weights themselves;
//                  kBF16 (CUDA): they read a bf16 copy in a third arena,
//                  refreshed by SyncCompute() and by the optimizer;
//   stream         the CUDA compute stream that zeroing and casts are
//                  enqueued on (a cudaStream_t; nullptr = legacy default);
//   fp32_weights   whether the set keeps full fp32 weights. With ZeRO >= 1
//                  the fp32 master weights live sharded in the optimizer
//                  (model/optimizer.h), and the set keeps only what the
//                  kernels read: with an f32 compute dtype the f32 array is
//                  the compute copy (it exists either way), with bf16 only
//                  the bf16 copy exists (false here: no f32 weight arena;
//                  param(), padded_params() etc. are then programmer errors).
//   pooled_grads   ZeRO-2: no gradient arena for the whole set. Each bucket's
//                  gradients live in one of two slots of the largest
//                  bucket's size, alternating in backward order (the last
//                  bucket in slot 0, the one before it in slot 1, ...), so
//                  a bucket can be reduced while the next one fills; a
//                  bucket holding a whole_step_grad tensor keeps storage of
//                  its own in front of the slots. grad() views stay valid,
//                  but buckets sharing a slot share memory: the gradient
//                  reduction (GradientReducer) zeroes a slot before a bucket
//                  fills it and reduces it before the next one does.
struct ParameterPlacement {
  Device device = Device::kCPU;
  DType compute_dtype = DType::kF32;
  Stream stream;
  bool fp32_weights = true;
  bool pooled_grads = false;
};

// Gradient buckets (GradBucket, parallel/data_parallel.h): a layer's
// tensors always share a bucket; the embedding and the head (final norm, LM
// head) each get a bucket of their own; consecutive layers share one until
// it holds at least `bucket_elems` elements (0: the whole set is one
// bucket). The backward pass finishes the layers last to first, so a bucket
// is ready when its first layer is done. Each bucket is padded to a multiple
// of `pad_to` elements, so ZeRO-1 can shard every bucket evenly over the
// data-parallel ranks.

class ParameterSet {
 public:
  // `pad_to` rounds every gradient bucket up to a multiple of that many
  // elements (ZeRO-1 shards each bucket evenly over data-parallel ranks).
  explicit ParameterSet(std::vector<ParamSpec> specs, int64_t pad_to = 1, ParameterPlacement placement = {},
                        int64_t bucket_elems = 0);

  size_t size() const { return specs_.size(); }
  const ParamSpec& spec(size_t i) const { return specs_[i]; }
  const TensorTable& table() const { return table_; }
  int64_t numel() const { return numel_; }
  const ParameterPlacement& placement() const { return placement_; }
  const std::vector<GradBucket>& buckets() const { return buckets_; }
  size_t bucket_of(size_t tensor) const { return bucket_of_[tensor]; }
  // First flat element of tensor i.
  int64_t flat_offset(size_t i) const { return static_cast<int64_t>(table_.entry(i).offset / sizeof(float)); }
  Device device() const { return placement_.device; }

  // The f32 weights (see ParameterPlacement::fp32_weights: a programmer
  // error when the set has none) and the f32 gradients.
  Tensor param(const std::string& name) const;
  Tensor grad(const std::string& name) const { return grad(table_.IndexOf(name)); }
  Tensor param(size_t i) const;
  Tensor grad(size_t i) const;
  // Whether the f32 weight arena exists (always unless a bf16 compute copy
  // stands alone: ParameterPlacement::fp32_weights false).
  bool has_fp32_params() const {
    return placement_.fp32_weights || placement_.compute_dtype == DType::kF32;
  }
  // The weights the kernels read: param() itself, or its bf16 copy.
  Tensor compute(const std::string& name) const;

  // Views spanning `count` adjacent tensors starting at `first`, viewed as
  // [rows, cols] (the fused QKV and gate/up operands).
  Tensor FusedParam(const std::string& first, size_t count, int64_t cols) const;
  Tensor FusedGrad(const std::string& first, size_t count, int64_t cols) const;
  Tensor FusedCompute(const std::string& first, size_t count, int64_t cols) const;

  // All parameters / gradients as one flat f32 tensor, padding included
  // (padded_numel() elements; the padding stays zero). Element i of the
  // compute copy (padded_compute()) is element i of the parameters.
  // padded_grads() needs the full gradient arena (not pooled_grads).
  Tensor padded_params() const;
  Tensor padded_grads() const;
  // Where each bucket's gradients live in grad_arena(), in elements: its
  // flat begin, or its pool slot (pooled_grads); and the whole arena.
  const std::vector<int64_t>& grad_at() const { return grad_at_; }
  Tensor grad_arena() const;
  // Whether bucket b's gradients accumulate over the whole step
  // (ParamSpec::whole_step_grad).
  bool whole_step_bucket(size_t b) const { return whole_step_[b]; }
  // The gradient arena's elements for buckets of these (padded) sizes and
  // whole-step flags: their sum, or with pooled gradients the whole-step
  // buckets plus two slots of the largest other bucket.
  static int64_t GradArenaElems(const std::vector<int64_t>& bucket_elems, const std::vector<bool>& whole_step,
                                bool pooled);
  // The same for the set these constructor arguments would build.
  static int64_t GradArenaElemsFor(const std::vector<ParamSpec>& specs, int64_t pad_to, int64_t bucket_elems,
                                   bool pooled);
  Tensor padded_compute() const;
  int64_t padded_numel() const { return padded_numel_; }

  // Enqueued on the placement's stream (immediate on the CPU).
  void ZeroGrads() { grads_.ZeroAsync(placement_.stream); }
  // Rounds the master weights into the bf16 copy (no-op for kF32), enqueued
  // on the placement's stream. Call after writing the parameters other than
  // through the optimizer (initialisation, checkpoint load).
  void SyncCompute();
  // Initialises every parameter from its spec, then SyncCompute(). Element j
  // of the full tensor `name` gets init_std * NormalAt(seed, StreamId(name),
  // j), so every layout and device draws the same weights. Needs the f32
  // arena; without it the optimizer initialises (AdamWOptimizer::InitWeights)
  // from DrawWeights.
  void InitWeights(uint64_t seed);
  // The same initial weights as a host f32 array of padded_numel() elements
  // (padding zero), laid out like padded_params().
  std::vector<float> DrawWeights(uint64_t seed) const;
  // Bytes of the arenas this set allocated: f32 weights (0 without them),
  // f32 gradients (GradArenaElems), the bf16 compute copy (0 for f32
  // compute).
  size_t param_bytes() const { return params_.size(); }
  size_t grad_bytes() const { return grads_.size(); }
  size_t compute_bytes() const { return compute_.size(); }

 private:
  Tensor Fused(const TensorTable& table, const Arena& arena, const std::string& first, size_t count,
               int64_t cols) const;
  // The rows of `count` adjacent tensors from `first` viewed with `cols`
  // columns (checks they are adjacent).
  static int64_t FusedRows(const TensorTable& table, const std::string& first, size_t count, int64_t cols);
  std::vector<ParamSpec> specs_;
  ParameterPlacement placement_;
  TensorTable table_, compute_table_;
  std::vector<GradBucket> buckets_;
  std::vector<size_t> bucket_of_;
  std::vector<int64_t> grad_at_;  // per bucket, elements into grads_
  std::vector<bool> whole_step_;  // per bucket
  Arena params_;
  Arena grads_;
  Arena compute_;  // only with a bf16 compute dtype
  int64_t numel_ = 0;
  int64_t padded_numel_ = 0;
};

}  // namespace latam
