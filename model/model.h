// The Llama-3 transformer on the CPU with an explicit backward pass, as the
// shard one rank holds (model/layout.h): some pipeline chunks of layers,
// tensor-parallel slices of their weights, and the embedding / head when
// its chunks are the first / last.
//
//   x_0     = embed(tokens)                          (vocab-parallel: all-reduce over TP)
//   for each layer l:
//     h     = x_l + o_proj(attention(rope(qkv_proj(rmsnorm(x_l)))))
//     x_l+1 = h + down_proj(swiglu(gate_up_proj(rmsnorm(h))))
//   logits  = lm_head(rmsnorm(x_L))      (lm_head = embed_tokens when tied)
//   loss    = sum over tokens of cross_entropy(logits, targets)
//
// Tensor parallelism (Megatron; T ranks; the collectives are TensorParallel,
// parallel/tensor_parallel.h):
//   column-parallel  y_t = x W_t^T          (x replicated; Q/K/V, gate/up, head)
//                    backward: dx = sum_t dy_t W_t       -> all-reduce dx
//   row-parallel     y = sum_t x_t W_t^T    (o_proj, down_proj) -> all-reduce y
//                    backward: dx_t = dy W_t             (dy replicated)
//   vocab-parallel   cross-entropy combines per-row max / sum-exp / target
//                    logit over the vocabulary shards (kernels/cross_entropy.h);
//                    the full logits are never gathered.
//
// Sequence parallelism (ActivationOptions::sequence_parallel; Megatron). The
// m = micro_batch x seq_len rows of the residual stream are split over the
// T tensor-parallel ranks, rank t holding rows [t m/T, (t+1) m/T): the
// layer inputs x_l (and so the pipeline's activations and gradients), the
// residual h, and the norms run on row shards. Per layer, forward:
//   xn = all-gather(rmsnorm(x_t))         (saved gathered, for dW_qkv)
//   h_t = x_t + reduce-scatter(o_proj(..))  hn = all-gather(rmsnorm(h_t))
//   x_t' = h_t + reduce-scatter(down(..))
// backward: dy = all-gather(dx_t') before each row-parallel GEMM's input
// gradient, reduce-scatter of each column-parallel input gradient, then the
// norm backward on the shard. The embedding's partial rows are
// reduce-scattered (and its backward all-gathers the gradient); the final
// norm runs on the shard and is all-gathered before the LM head. Every
// all-reduce of [m, dim] is thus replaced by one reduce-scatter plus one
// all-gather, the same bytes on a ring. The norm gains' gradients cover
// each rank's rows only and are summed over the group when final.
//
// Device. The model computes through ModelOps (model/model_ops.h): fp32
// reference kernels on the CPU, or CUDA kernels on one compute stream with
// activations in ActivationOptions::dtype (bf16 or f32); its parameter,
// gradient and activation arenas live on that device. Token ids and targets
// come from host memory. The code below is the same for both devices.
//
// Pipeline interface. A micro-batch runs chunk by chunk: Forward(chunk,
// slot) reads token ids (first chunk) or the activation in Input(chunk,
// slot) and leaves its output in Output(chunk, slot); the last chunk also
// runs the LM head, the loss and, with gradients, their backward, leaving
// dL/dx_L in Grad(chunk, slot). The token losses are summed on the device;
// TakeLoss() returns the sum since its last call (and waits for the device). Backward(chunk, slot) turns the gradient in
// Grad(chunk, slot) (received from the next chunk, or left by the head) into
// the gradient of the chunk's input, left in the same buffer for the
// previous chunk. Each chunk keeps `slots` micro-batches' activations, for
// the micro-batches a pipeline schedule keeps in flight. Backward ADDS into
// the gradient arena, so gradient accumulation is a series of micro-batches
// between ZeroGrads(). On the step's last micro-batch (`last_micro_batch`)
// the model reports each group of tensors whose gradients are then complete
// to the OnGradientsFinal callback (a layer's as soon as its backward is
// done, the head's after the loss backward, the embedding's at the very
// end), after summing a layer's replicated KV-head gradients over their
// replicas; the optimizer starts reducing them over data parallelism there.
// With pooled gradients (ActivationOptions::pooled_grads, ZeRO-2) it does
// so after every micro-batch, telling the callback whether it is the last,
// and calls OnGradientsNeeded before it first writes a group's gradients
// in each micro-batch (before the head's loss backward, each layer's
// backward, the embedding's backward): buckets then live only while they
// are written and reduced. The LM head runs in row chunks whose logits buffer
// is overwritten in place by its gradient.
//
// Activations live in one arena sized at construction (ActivationBytes
// gives the same number without building a model, for --plan). Each slot
// always keeps its layers' inputs x_0 .. x_n [m, dim] (m = micro_batch x
// seq_len rows). Per layer and slot it also keeps, by Recompute:
//   kNone       xn = rmsnorm(x) [m, dim], rstd1 [m] (f32), qkv after RoPE
//               [m, (Hq + 2 Hkv) hd], att [m, Hq hd], lse [B, Hq, S] (f32),
//               h [m, dim], hn = rmsnorm(h) [m, dim], rstd2 [m] (f32),
//               gu = gate_up(hn) [m, 2 ffn], act = swiglu(gu) [m, ffn]
//               (local widths under tensor parallelism);
//   kSelective  the same less xn, hn and act: before a layer's backward they
//               are recomputed from x, h and gu into one scratch set per
//               chunk, shared by its layers and slots (RMSNorm forward and
//               SwiGLU forward again: the kernels and inputs of the forward,
//               so the same values; no communication). qkv is kept after
//               RoPE, so RoPE is never recomputed;
//   kFull       nothing: the layer's whole forward is re-run from x into one
//               scratch set per chunk before its backward (with its
//               tensor-parallel all-reduces).
// Gradients are bitwise identical under all three.
#pragma once

#include <cstdint>
#include <array>
#include <functional>
#include <initializer_list>
#include <memory>
#include <vector>

#include "core/arena.h"
#include "parallel/communicator.h"
#include "parallel/pipeline.h"
#include "parallel/tensor_parallel.h"
#include "model/layout.h"
#include "model/lora.h"
#include "model/model_ops.h"
#include "model/ring_attention.h"
#include "parallel/context_parallel.h"
#include "model/parameters.h"

namespace latam {

// What the backward pass recomputes instead of keeping (train.recompute):
//   kNone       every layer's activations are kept per micro-batch slot;
//   kSelective  the GEMM and attention outputs are kept, the element-wise
//               ops (the two RMSNorms, SwiGLU) are recomputed;
//   kFull       only each layer's input is kept, the layer's forward is re-run.
enum class Recompute { kNone, kSelective, kFull };

struct ActivationOptions {
  int64_t micro_batch = 1;
  // Rows per sequence this rank holds: the whole sequence, or its share
  // (context.local_len()) under context parallelism.
  int64_t seq_len = 1;
  // Context parallelism (parallel/context_parallel.h): which share of each
  // sequence this rank holds; attention runs as a ring over ModelComms::cp
  // (model/ring_attention.h) and RoPE at the rows' global positions.
  ContextSplit context;
  // RoPE positions restart at every document (data.reset_positions): row t
  // is at position t - doc_start[t] (global positions under context
  // parallelism). Forward then needs the document starts.
  bool reset_positions = false;
  Recompute recompute = Recompute::kNone;
  // Megatron sequence parallelism over the tensor-parallel group (see
  // above); needs micro_batch x seq_len divisible by the group's size.
  bool sequence_parallel = false;
  // Document-masked attention (AttentionDims::doc_start): every chunk's
  // Forward gets the micro-batch's document starts, kept per slot
  // (micro_batch x seq_len int32) for its backward pass. Under context
  // parallelism they are global positions (AttentionBlockDims::doc_start).
  bool document_mask = false;
  // Rows per LM-head chunk; 0 picks as many rows as fit in 2^24 logits.
  int64_t logits_chunk_rows = 0;
  // OpenMP threads the CPU attention workspace is sized for; 0 means
  // omp_get_max_threads() at construction.
  int cpu_threads = 0;
  // Micro-batches in flight per local chunk; empty means one per chunk.
  std::vector<int> slots;
  // Where the model computes: kCPU (f32 only) or kCUDA, with activations and
  // the compute copy of the weights in `dtype` (kBF16 or kF32), on `stream`
  // (a cudaStream_t; nullptr is the legacy default stream), attention by
  // `attention` (model/model_ops.h; the CPU has one attention kernel).
  Device device = Device::kCPU;
  DType dtype = DType::kF32;
  Stream stream;
  AttentionChoice attention = AttentionChoice::kAuto;
  // Whether the parameter set keeps full f32 weights
  // (ParameterPlacement::fp32_weights; false under ZeRO >= 1, where the
  // optimizer holds the f32 master shard).
  bool fp32_weights = true;
  // ZeRO-2: gradient buckets in a two-slot pool
  // (ParameterPlacement::pooled_grads), reported final after every
  // micro-batch (see above).
  bool pooled_grads = false;
  // LoRA (model/lora.h): when enabled, the model also holds the adapter's
  // parameter set (adapter_parameters()); the base weights are frozen: the
  // backward pass computes input gradients through them and the adapter's
  // weight gradients, not the base projections' weight gradients.
  LoraOptions lora;
};

// Bytes of the activation arena and kernel workspaces a LlamaModel with this
// layout allocates.
size_t ActivationBytes(const ModelShape& shape, const ModelLayout& layout, const ActivationOptions& options);

// The forward FLOPs per token that `recompute` adds to one training step on
// the rank of `layout` (its local layers, at their tensor-parallel widths),
// at sequence length `seq_len`; the planner's cost of the memory it saves.
// Per local layer, with dim D, local widths Hq hd (queries), Hkv hd (keys,
// values) and F (FFN):
//   kNone       0;
//   kSelective  the two RMSNorms, 4 D + 4 each (x^2 and its sum: 2 per
//               element; x rstd w: 2 per element; mean, + eps, sqrt and
//               reciprocal: 4 per row), and SwiGLU, 6 F (g sigmoid(g) u with
//               sigmoid(g) = 1 / (1 + exp(-g)), exp counted as one FLOP);
//   kFull       the whole layer forward: its GEMMs, 2 x (local matmul
//               parameters (Hq + 2 Hkv) hd D + Hq hd D + 3 F D), causal
//               attention 2 seq_len Hq hd (QK^T and PV, half the positions
//               masked, as TrainingFlopsPerToken counts it; softmax not
//               counted), and its element-wise ops: kSelective's, RoPE
//               3 (Hq + Hkv) hd (x cos -/+ y sin) and the two residual adds 2 D.
double RecomputeFlopsPerToken(const ModelShape& shape, const ModelLayout& layout, Recompute recompute,
                              int64_t seq_len);

// The groups the model computes with.
struct ModelComms {
  Communicator* tp = nullptr;           // tensor-parallel group (size layout.tp)
  Communicator* kv_replicas = nullptr;  // ranks holding the same KV heads, when layout.kv_replicas > 1
  Communicator* cp = nullptr;           // context-parallel group, when ActivationOptions::context.size() > 1
};

class LlamaModel : public PipelineStages {
 public:
  // The whole model on one process (one chunk, no communication).
  LlamaModel(const ModelShape& shape, const ActivationOptions& options);
  // The shard of `layout`; comms must outlive the model. The parameter and
  // gradient arenas are padded to a multiple of `param_pad_to` elements
  // (ZeRO-1 shards them over data-parallel ranks).
  // grad_bucket_elems sizes the gradient buckets (GradBucket,
  // model/parameters.h; 0: one bucket).
  LlamaModel(const ModelShape& shape, const ModelLayout& layout, const ActivationOptions& options, ModelComms comms,
             int64_t param_pad_to = 1, int64_t grad_bucket_elems = 0);

  const ModelShape& shape() const { return shape_; }
  const ModelLayout& layout() const { return layout_; }
  ParameterSet& parameters() { return *params_; }
  const ParameterSet& parameters() const { return *params_; }
  // The LoRA adapter's parameters (null without one). After the step's last
  // micro-batch their gradients are complete (summed over tensor parallelism
  // and KV replicas; not over data parallelism).
  ParameterSet* adapter_parameters() { return adapter_.get(); }
  // PipelineStages (parallel/pipeline.h).
  int pipeline_stages() const override { return layout_.pp; }
  int pipeline_rank() const override { return layout_.pp_rank; }
  int virtual_stages() const override { return layout_.virtual_stages; }
  PipelineChunk chunk(int c) const override;
  int64_t tokens_per_micro_batch() const override { return rows_; }
  int num_chunks() const override { return static_cast<int>(layout_.chunks.size()); }
  int slots(int chunk) const override {
    return static_cast<int>(chunks_[static_cast<size_t>(chunk)].slots.size());
  }

  Tensor Input(int chunk, int slot) const override;
  Tensor Output(int chunk, int slot) const override;
  Tensor Grad(int chunk, int slot) const override;

  // ids and targets (host, tokens_per_micro_batch() each) are read by the
  // first and the last chunk.
  bool needs_documents() const override { return options_.document_mask || options_.reset_positions; }
  // doc_start (micro_batch x seq_len, host) is read with document_mask or
  // reset_positions.
  void Forward(int chunk, int slot, const int32_t* ids, const int32_t* targets, const int32_t* doc_start,
               float grad_scale, bool with_grads, bool last_micro_batch) override;
  // Without document starts (not with document_mask).
  void Forward(int chunk, int slot, const int32_t* ids, const int32_t* targets, float grad_scale, bool with_grads,
               bool last_micro_batch) {
    Forward(chunk, slot, ids, targets, nullptr, grad_scale, with_grads, last_micro_batch);
  }
  void Backward(int chunk, int slot, bool last_micro_batch) override;
  // Called with parameter indices (ParameterSet order) whose gradients are
  // complete for the step (for the micro-batch, with pooled gradients), and
  // whether this is the step's last micro-batch; see above.
  using GradientsFinalFn = std::function<void(const std::vector<size_t>& tensors, bool last_micro_batch)>;
  void OnGradientsFinal(GradientsFinalFn fn) { gradients_final_ = std::move(fn); }
  // Called with parameter indices whose gradients the model is about to
  // write for the first time in this micro-batch (pooled gradients only).
  using GradientsNeededFn = std::function<void(const std::vector<size_t>& tensors)>;
  void OnGradientsNeeded(GradientsNeededFn fn) { gradients_needed_ = std::move(fn); }
  // Called with parameter indices (ParameterSet order) whose compute copy the
  // forward is about to read: before the embedding, before each layer's
  // forward, before the head. The optimizer's parameter all-gathers (ZeRO >=
  // 1) may still be in flight when a forward starts; this is where it waits
  // for the buckets holding them.
  using WeightsNeededFn = std::function<void(const std::vector<size_t>& tensors)>;
  void OnWeightsNeeded(WeightsNeededFn fn) { weights_needed_ = std::move(fn); }
  // Sum of the token losses of the last chunk's forwards since the last
  // call (0 on other ranks).
  double TakeLoss() override { return ops_->TakeLoss(); }
  ModelOps& ops() { return *ops_; }

  // Whole-model conveniences for a single chunk that is both first and last;
  // they return the summed token loss.
  double ForwardBackward(const int32_t* inputs, const int32_t* targets, float grad_scale);
  double ForwardLoss(const int32_t* inputs, const int32_t* targets);

 private:
  struct LayerWeights {
    Tensor attn_norm, qkv, o, mlp_norm, gate_up, down, kv;
  };
  struct LayerActivations {
    Tensor xn, rstd1, qkv, att, lse, h, hn, rstd2, gu, act;
  };
  // Sequence parallelism: the norm of the row shard x into `full` (gathered
  // over TP), or straight into `full` without it.
  void NormForward(const Tensor& x, const Tensor& w, const Tensor& full, const Tensor& rstd);
  // The summed output of a row-parallel GEMM (in partial_), in the residual
  // stream's rows: all-reduced in place, or reduce-scattered to the shard.
  Tensor RowParallelSum();
  // A column-parallel input gradient (in `partial`), summed the same way.
  Tensor ColumnParallelSum(const Tensor& partial);
  // The full-rows copy of a residual-stream gradient (itself without
  // sequence parallelism; gathered into partial_ with it).
  Tensor FullRows(const Tensor& rows);
  struct Slot {
    std::vector<Tensor> x;  // x_0 .. x_n of the chunk's n layers
    // Per layer, except with kFull; with kSelective xn, hn and act are the
    // chunk's scratch ones.
    std::vector<LayerActivations> saved;
    Tensor ids;   // first chunk: the micro-batch's ids
    Tensor docs;  // document_mask: the micro-batch's document starts
    Tensor pos;   // reset_positions: the rows' RoPE positions
    Tensor grad;  // gradient at the chunk's output, then input
  };
  struct Chunk {
    int64_t first_layer = 0;  // local layer index of its first layer
    int64_t n_layers = 0;
    std::vector<Slot> slots;
    // kFull: a whole layer's activations; kSelective: xn, hn and act only.
    LayerActivations scratch;
    // kSelective: the rstd the recomputed norms write (the saved rstd1 and
    // rstd2 are left as the forward wrote them).
    Tensor recompute_rstd;
  };

  void Build(const ActivationOptions& options, int64_t param_pad_to, int64_t grad_bucket_elems);
  const LayerActivations& Saved(const Chunk& c, const Slot& s, int64_t k) const;
  void LayerForward(int64_t local_layer, const Tensor& x, const Tensor& x_next, const LayerActivations& a);
  void LayerBackward(int64_t local_layer, const Tensor& x, const Tensor& grad, const LayerActivations& a);
  void RecomputeElementwise(int64_t local_layer, const Tensor& x, const LayerActivations& a, const Tensor& rstd);
  // LoRA on the targets of one base GEMM: y += s (x A^T) B^T; and its backward,
  // adding to dx and to the adapter's gradients (no-ops without an adapter).
  void AdapterForward(int64_t local_layer, std::initializer_list<LoraTarget> targets, const Tensor& x,
                      const Tensor& y);
  void AdapterBackward(int64_t local_layer, std::initializer_list<LoraTarget> targets, const Tensor& x,
                       const Tensor& dy, const Tensor& dx);
  void FinishAdapterGrads(size_t local_layer);
  void HeadForward(const Tensor& x_last, const int32_t* targets, float grad_scale, bool with_grads,
                     const Tensor& grad_out);

  ModelShape shape_;
  ModelLayout layout_;
  ActivationOptions options_;
  std::unique_ptr<SelfCommunicator> self_comm_;  // for the single-process constructor
  ModelComms comms_;
  TensorParallel tp_{nullptr};  // over comms_.tp, set by Build()
  int64_t rows_;         // tokens per micro-batch
  int64_t logits_rows_;  // rows per LM-head chunk
  int n_rot_heads_;  // query and key heads of the local fused QKV rows
  std::unique_ptr<ModelOps> ops_;
  std::unique_ptr<ParameterSet> params_;
  std::vector<LayerWeights> weights_, weight_grads_;  // per local layer
  std::unique_ptr<ParameterSet> adapter_;
  std::vector<std::array<LoraSite, kNumLoraTargets>> lora_sites_;  // per local layer; a.data null: not adapted
  Tensor lora_u_, lora_du_;
  Tensor embed_, embed_grad_, head_, head_grad_, final_norm_, final_norm_grad_;

  TensorTable act_table_;
  Arena act_arena_;
  std::vector<Chunk> chunks_;
  Tensor targets_, xf_, rstdf_, logits_, row_stats_, lse_;
  Tensor dnorm_, dqkv_, datt_, dgu_, dact_, partial_;
  Tensor seq_norm_, seq_sum_;  // sequence parallelism: [m/T, dim] shards
  bool sequence_parallel_ = false;
  int64_t shard_rows_ = 0;  // rows of the residual stream this rank holds
  // Parameter indices reported final together: per local layer, the head's,
  // the embedding's.
  std::vector<std::vector<size_t>> layer_tensors_;
  std::vector<size_t> head_tensors_, embedding_tensors_;
  std::vector<size_t> head_weight_tensors_;  // the weights the head's forward reads
  GradientsFinalFn gradients_final_;
  // The document starts of the micro-batch whose layers run now (null
  // without document_mask), in the ops' memory.
  const int32_t* attention_docs_ = nullptr;
  // The RoPE positions of the rows that run now (ops' memory), or null for
  // row m % seq_len: positions_ (context parallelism, fixed) or a slot's pos
  // (reset_positions, per micro-batch).
  const int32_t* rope_positions_ = nullptr;
  Tensor positions_;
  std::vector<int32_t> host_positions_;  // reset_positions: staging for a slot's pos
  std::unique_ptr<RingAttention> ring_;  // context parallelism
  GradientsNeededFn gradients_needed_;
  WeightsNeededFn weights_needed_;
  void NeedWeights(const std::vector<size_t>& tensors) const;
  void ReportFinal(const std::vector<size_t>& tensors, bool last_micro_batch) const;
  void NeedGrads(const std::vector<size_t>& tensors) const;
};

}  // namespace latam
