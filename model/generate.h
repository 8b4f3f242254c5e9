// Autoregressive generation on one process with a key/value cache.
//
// Generator runs the forward pass of LlamaModel (model/model.h) through the
// same ModelOps (model/model_ops.h) and the same weight operands (the fused
// QKV and gate/up views of ParameterSet::FusedCompute) over a whole
// single-layout model (ModelLayout::Single), one new token or a batch of new
// tokens at a time, appending each token's rotated keys and its values to a
// per-layer cache so that earlier tokens are never recomputed:
//
//   x      = embed(tokens)                          rows [n, dim], positions p0 .. p0+n-1
//   per layer l (rmsnorm with eps = shape.norm_eps, as in training):
//     q,k,v = qkv_proj(rmsnorm(x)); q,k = rope(q,k)  RoPE angle = position * inv_freq (ModelOps::RopeForwardAt)
//     K_l[p0..p0+n), V_l[p0..p0+n) = k, v            cache [Hkv, max_context, hd] per layer (KvCacheAppend)
//     a_i   = softmax(q_i K_l[0..p0+i]^T / sqrt(hd)) V_l[0..p0+i]   (DecodeAttention, kernels/decode_attention.h;
//                                                    query head h reads KV head h / (Hq/Hkv))
//     h     = x + o_proj(a)
//     x     = h + down_proj(silu(gate) * up),  [gate, up] = gate_up_proj(rmsnorm(h))
//   logits = lm_head(rmsnorm(x))                   lm_head = embed_tokens when tied
//
// Device. The generator runs where its parameters live
// (ParameterSet::placement()): on the CPU in fp32, or on a GPU with the CUDA
// ops on the placement's stream, activations and the cache in its compute
// dtype (bf16 or f32; attention and norms accumulate in fp32) and the logits
// computed in f32 (the head GEMM writes f32 from bf16 operands). Either way
// the logits reach the host before Feed returns and sampling runs on the
// host. On the CPU the arithmetic is that of the generator's first version
// (bitwise: tests/unit/test_generate.cc); on a GPU it agrees to the
// tolerances of tests/cuda/test_cuda_generate.cc.
//
// Memory: the generator borrows the weights (the ParameterSet must outlive
// it) and owns its ops (with their workspaces) and one arena on the device,
// allocated in the constructor, holding the cache (2 n_layers Hkv
// max_context hd elements) and the work buffers for up to kMaxChunkRows
// tokens per pass; longer inputs run in several passes. Feed and Generate
// allocate nothing but the vectors they return.
//
// Sampling (SampleToken): probabilities p = softmax(logits / temperature);
// the nucleus is the smallest set of most likely tokens (ties: lower id
// first) whose probability reaches top_p; the token is drawn from p
// restricted to the nucleus and renormalised, by the inverse CDF (in id
// order) of a uniform u. Finding the nucleus takes expected O(vocab) time
// (a bisection with nth_element, no full sort).
// Generate draws u for new token k as UniformAt(seed, StreamId("generate"),
// k) (core/random.h), so a seed always gives the same continuation.
#pragma once

#include <cstdint>
#include <vector>

#include <memory>

#include "core/arena.h"
#include "core/status.h"
#include "model/model_ops.h"
#include "model/parameters.h"

namespace latam {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.8;  // 0 = greedy (argmax, ties -> lowest id)
  double top_p = 0.95;       // nucleus sampling; 1 = off
  uint64_t seed = 1234;
  std::vector<int32_t> stop_ids;  // generation stops after emitting one of these
  // The first min_new_tokens tokens are never stop ids (their logits are
  // set to -inf), so a prompt that ends a sentence still gets a continuation.
  int64_t min_new_tokens = 0;
};

class Generator {
 public:
  // Tokens run per pass of the layers (bounds the work buffers).
  static constexpr int64_t kMaxChunkRows = 128;

  // `params` holds the whole model under the canonical names with the
  // single-process layout, on the CPU (f32) or a GPU (see "Device"), and
  // must outlive the generator. The cache holds max_context positions (which
  // may exceed shape.max_seq_len: the RoPE table covers every cached
  // position). Aborts if a tensor is missing or has the wrong shape (a
  // programmer error: load and check the checkpoint first). On CUDA,
  // `attention` picks the prompt's attention kernel (train.attention).
  Generator(const ModelShape& shape, const ParameterSet& params, int64_t max_context,
            AttentionChoice attention = AttentionChoice::kAuto);

  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Runs `tokens` at positions position() .. position() + n - 1, after the
  // cached context, and returns the logits [vocab] of the last one. Errors
  // (InvalidInput, nothing changed) on no tokens, an id outside [0, vocab),
  // or a context that would exceed max_context.
  Result<std::vector<float>> Feed(const std::vector<int32_t>& tokens);
  // Like Feed, but returns the logits of every token, [n, vocab] row-major
  // (scoring a text: row i predicts token i + 1).
  Result<std::vector<float>> FeedAllLogits(const std::vector<int32_t>& tokens);

  // Forgets the cached context (position() becomes 0).
  void Reset() { position_ = 0; }
  int64_t position() const { return position_; }
  int64_t max_context() const { return max_context_; }
  const ModelShape& shape() const { return shape_; }
  Device device() const { return ops_->device(); }

  // Starts from an empty context (Reset), feeds the prompt and returns the
  // new tokens, not including the prompt: at most max_new_tokens, fewer when
  // a stop id is emitted (it is included). Deterministic for a given seed.
  // Errors on an empty prompt, bad ids, negative max_new_tokens or
  // temperature, top_p outside (0, 1], or prompt + max_new_tokens - 1 >
  // max_context (the positions the run needs).
  Result<std::vector<int32_t>> Generate(const std::vector<int32_t>& prompt, const GenerateOptions& options);

 private:
  struct LayerWeights {
    Tensor attn_norm, qkv, o, mlp_norm, gate_up, down;
  };

  Status CheckTokens(const std::vector<int32_t>& tokens) const;
  // Runs tokens[0, n) and writes the logits of every token (all = true,
  // out is [n, vocab]) or of the last one (out is [vocab]), on the host.
  void Run(const int32_t* tokens, int64_t n, bool all, float* out);
  // One pass of every layer over rows [0, n) of the work buffers, at
  // positions position_ .. position_ + n - 1.
  void LayersForward(int64_t n);
  // logits = rmsnorm(x) W_head^T for rows [first, rows) of the pass, to the host.
  void Head(int64_t first, int64_t rows, float* out);
  // Layer l's part of the caches, [Hkv, max_context, hd].
  Tensor LayerCache(const Tensor& cache, int64_t layer) const;

  ModelShape shape_;
  int64_t max_context_;
  int64_t chunk_rows_;   // min(max_context, kMaxChunkRows)
  int64_t logits_rows_;  // head rows per GEMM on a GPU (the f32 logits buffer)
  int64_t position_ = 0;
  int n_rot_heads_;      // query and key heads of a fused QKV row
  std::unique_ptr<ModelOps> ops_;

  std::vector<LayerWeights> weights_;
  Tensor embed_, head_, final_norm_;

  TensorTable table_;
  Arena arena_;
  // Cache: k_cache_ and v_cache_ are [n_layers, Hkv, max_context, hd].
  Tensor k_cache_, v_cache_;
  // Work buffers for up to chunk_rows_ tokens.
  Tensor ids_, x_, xn_, rstd_, qkv_, att_, h_, partial_, gu_, act_;
  Tensor device_logits_;       // GPU only: f32 [logits_rows_, vocab]
  std::vector<float> logits_;  // [vocab], Generate's next-token logits
  std::vector<double> probs_;  // SampleToken's scratch
  std::vector<int32_t> order_;
};

// Picks the next token from `logits` with uniform draw u in [0, 1): argmax
// (ties -> lowest id) when temperature <= 0; otherwise nucleus sampling as
// described above (top_p >= 1 keeps every token; a tiny top_p keeps only the
// most likely one). Probabilities are computed in double.
int32_t SampleToken(const std::vector<float>& logits, double temperature, double top_p, double u);
// The same, with caller-owned scratch (resized to the vocabulary), so that
// a generation loop allocates nothing per token.
int32_t SampleToken(const std::vector<float>& logits, double temperature, double top_p, double u,
                    std::vector<double>* probs, std::vector<int32_t>* order);

// A copy of the parameters `src` (same tensors, same layout) placed as
// `placement` says, for instance on a GPU with a bf16 compute copy: the
// parameters a Generator on that device reads. The weights are copied before
// it returns; the compute copy is refreshed on the placement's stream
// (ParameterSet::SyncCompute), before anything enqueued there later.
std::unique_ptr<ParameterSet> PlaceParameters(const ParameterSet& src, const ParameterPlacement& placement);

}  // namespace latam
