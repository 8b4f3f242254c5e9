// The Llama-3 transformer on the CPU with an explicit backward pass.
//
//   x_0     = embed(tokens)
//   for each layer l:
//     h     = x_l + o_proj(attention(rope(qkv_proj(rmsnorm(x_l)))))
//     x_l+1 = h + down_proj(swiglu(gate_up_proj(rmsnorm(h))))
//   logits  = lm_head(rmsnorm(x_L))      (lm_head = embed_tokens when tied)
//   loss    = sum over tokens of cross_entropy(logits, targets)
//
// ForwardBackward runs one micro-batch of [micro_batch, seq_len] tokens and
// ADDS grad_scale * d(loss)/d(theta) into the gradient arena (so gradient
// accumulation over micro-batches is a sequence of calls between
// ZeroGrads()). The LM head and the loss run in row chunks; each chunk's
// logits buffer is overwritten in place by its gradient, and the head's
// backward for that chunk runs immediately, so the full [tokens, vocab]
// logits never exist at once.
//
// Activations live in one arena sized at construction (ActivationBytes gives
// the same number without building a model, for --plan). With recompute,
// only each layer's input is kept and the layer's forward is re-run before
// its backward.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/arena.h"
#include "kernels/attention.h"
#include "kernels/rope.h"
#include "trainer/parameters.h"

namespace latam {

struct ActivationOptions {
  int64_t micro_batch = 1;
  int64_t seq_len = 1;
  bool recompute = false;
  // Rows per LM-head chunk; 0 picks as many rows as fit in 2^24 logits.
  int64_t logits_chunk_rows = 0;
  // OpenMP threads the CPU attention workspace is sized for; 0 means
  // omp_get_max_threads() at construction.
  int cpu_threads = 0;
};

// Bytes of the activation arena LlamaModel allocates for these options.
size_t ActivationBytes(const ModelShape& shape, const ActivationOptions& options);

class LlamaModel {
 public:
  LlamaModel(const ModelShape& shape, const ActivationOptions& options);

  const ModelShape& shape() const { return shape_; }
  ParameterSet& parameters() { return params_; }
  const ParameterSet& parameters() const { return params_; }
  int64_t tokens_per_micro_batch() const { return rows_; }

  // inputs and targets hold micro_batch * seq_len ids each (targets < 0 are
  // ignored). Returns the sum of the token losses in this micro-batch.
  double ForwardBackward(const int32_t* inputs, const int32_t* targets, float grad_scale);
  // Loss only: no gradients are touched.
  double ForwardLoss(const int32_t* inputs, const int32_t* targets);

 private:
  struct LayerWeights {
    Tensor attn_norm, qkv, o, mlp_norm, gate_up, down;
  };
  // Per-layer saved activations (or one shared set when recomputing).
  struct LayerActivations {
    Tensor xn, rstd1, qkv, att, lse, h, hn, rstd2, gu, act;
  };

  void EmbedForward(const int32_t* inputs);
  void LayerForward(int64_t layer, const LayerActivations& a);
  void LayerBackward(int64_t layer, const LayerActivations& a);
  // Final norm, head and loss; with grads, also the head's backward and the
  // final norm's backward into dres_.
  double HeadAndLoss(const int32_t* targets, float grad_scale, bool with_grads);
  const LayerActivations& ActivationsFor(int64_t layer) const;

  ModelShape shape_;
  ActivationOptions options_;
  int64_t rows_;         // tokens per micro-batch
  int64_t logits_rows_;  // rows per LM-head chunk
  cpu::AttentionDims attn_dims_;
  RopeTable rope_;
  ParameterSet params_;
  std::vector<LayerWeights> weights_, weight_grads_;
  Tensor embed_, embed_grad_, head_, head_grad_, final_norm_, final_norm_grad_;

  TensorTable act_table_;
  Arena act_arena_;
  std::vector<Tensor> residual_;  // x_0 .. x_L, each [rows, dim]
  std::vector<LayerActivations> layer_acts_;
  Tensor ids_, targets_, xf_, rstdf_, logits_, losses_;
  Tensor dres_, dnorm_, dqkv_, datt_, dgu_, dact_, attn_workspace_;
};

}  // namespace latam
