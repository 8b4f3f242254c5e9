#include "model/model.h"

#include <algorithm>

namespace latam {

namespace {

// The LM head runs over chunks of at most this many logits (64 MB in fp32).
constexpr int64_t kLogitsChunkElems = int64_t{1} << 24;

int64_t LogitsRows(const ModelLayout& l, const ActivationOptions& o) {
  const int64_t rows = o.micro_batch * o.seq_len;
  if (o.logits_chunk_rows > 0) return std::min(rows, o.logits_chunk_rows);
  return std::min(rows, std::max<int64_t>(64, kLogitsChunkElems / l.vocab));
}

int SlotsOf(const ActivationOptions& o, size_t chunk) { return o.slots.empty() ? 1 : o.slots.at(chunk); }

// Rows of the residual stream a rank holds: all m, or its 1/T under
// sequence parallelism.
int64_t ShardRows(const ModelLayout& l, const ActivationOptions& o) {
  const int64_t m = o.micro_batch * o.seq_len;
  if (!o.sequence_parallel) return m;
  LATAM_CHECK(m % l.tp == 0, "sequence parallelism needs the " << m << " tokens of a micro-batch to divide over "
                                                               << l.tp << " tensor-parallel ranks");
  return m / l.tp;
}

OpsShape LocalOpsShape(const ModelShape& s, const ModelLayout& l, const ActivationOptions& o) {
  OpsShape shape;
  shape.attention = AttentionDims{static_cast<int>(o.micro_batch), static_cast<int>(o.seq_len),
                                       static_cast<int>(l.heads), static_cast<int>(l.kv_heads),
                                       static_cast<int>(s.head_dim)};
  shape.dim = s.dim;
  shape.max_logits_rows = l.holds_head() ? LogitsRows(l, o) : 0;
  shape.cpu_threads = o.cpu_threads;
  return shape;
}

// "c<chunk>.<rest>" and "c<chunk>.s<slot>.<rest>" (built by appending: GCC 12
// warns spuriously about operator+ chains of std::string at -O3).
std::string Name(size_t chunk, const std::string& rest) {
  std::string name = "c";
  name.append(std::to_string(chunk)).append(".").append(rest);
  return name;
}
std::string SlotName(size_t chunk, int slot, const std::string& rest) {
  std::string inner = "s";
  inner.append(std::to_string(slot)).append(".").append(rest);
  return Name(chunk, inner);
}

// Which of a layer's activations a set in the table holds: all of them (a
// slot's under kNone, the chunk's scratch under kFull); those kSelective
// keeps per slot (all but xn, hn, act); or kSelective's per-chunk scratch
// (xn, hn, act, and the rstd the recomputed norms write).
enum class LayerSet { kAll, kKept, kRecomputed };

bool RecomputedBySelective(const std::string& what) { return what == "xn" || what == "hn" || what == "act"; }

// Adds one set of layer activations under `prefix`.
void AddLayerActivations(TensorTable* t, const std::string& prefix, const ModelShape& s, const ModelLayout& l,
                         const ActivationOptions& o, LayerSet set) {
  const int64_t m = o.micro_batch * o.seq_len, qkv = (l.heads + 2 * l.kv_heads) * s.head_dim;
  const int64_t rows = ShardRows(l, o);  // the residual stream's rows here
  auto add = [&](const std::string& what, DType dtype, Shape shape) {
    const bool recomputed = RecomputedBySelective(what);
    if ((set == LayerSet::kKept && recomputed) || (set == LayerSet::kRecomputed && !recomputed)) return;
    t->Align(Arena::kAlignment);
    t->Add(prefix + what, dtype, shape);
  };
  const DType act = o.dtype;
  add("xn", act, Shape{m, s.dim});
  add("rstd1", DType::kF32, Shape{rows});
  add("qkv", act, Shape{m, qkv});
  add("att", act, Shape{m, l.heads * s.head_dim});
  add("lse", DType::kF32, Shape{o.micro_batch, l.heads, o.seq_len});
  add("h", act, Shape{rows, s.dim});
  add("hn", act, Shape{m, s.dim});
  add("rstd2", DType::kF32, Shape{rows});
  add("gu", act, Shape{m, 2 * l.ffn});
  add("act", act, Shape{m, l.ffn});
  if (set == LayerSet::kRecomputed) {
    t->Align(Arena::kAlignment);
    t->Add(prefix + "rstd", DType::kF32, Shape{rows});
  }
}

// The activation arena's layout. Every tensor starts on a 256-byte boundary.
TensorTable BuildActivationTable(const ModelShape& s, const ModelLayout& l, const ActivationOptions& o) {
  const int64_t m = o.micro_batch * o.seq_len, rows = ShardRows(l, o);
  TensorTable t;
  auto add = [&t](const std::string& name, DType dtype, Shape shape) {
    t.Align(Arena::kAlignment);
    t.Add(name, dtype, shape);
  };
  for (size_t c = 0; c < l.chunks.size(); ++c) {
    const ChunkInfo& info = l.chunks[c];
    const int64_t n = info.layer_end - info.layer_begin;
    for (int slot = 0; slot < SlotsOf(o, c); ++slot) {
      for (int64_t k = 0; k <= n; ++k) add(SlotName(c, slot, "x." + std::to_string(k)), o.dtype, Shape{rows, s.dim});
      if (o.recompute != Recompute::kFull) {
        const LayerSet set = o.recompute == Recompute::kSelective ? LayerSet::kKept : LayerSet::kAll;
        for (int64_t k = 0; k < n; ++k) {
          AddLayerActivations(&t, SlotName(c, slot, "layer." + std::to_string(k) + "."), s, l, o, set);
        }
      }
      if (info.first) add(SlotName(c, slot, "ids"), DType::kI32, Shape{m});
      if (o.document_mask) add(SlotName(c, slot, "docs"), DType::kI32, Shape{m});
      if (o.reset_positions) add(SlotName(c, slot, "pos"), DType::kI32, Shape{m});
      add(SlotName(c, slot, "grad"), o.dtype, Shape{rows, s.dim});
    }
    if (o.recompute == Recompute::kFull) AddLayerActivations(&t, Name(c, "scratch."), s, l, o, LayerSet::kAll);
    if (o.recompute == Recompute::kSelective) {
      AddLayerActivations(&t, Name(c, "scratch."), s, l, o, LayerSet::kRecomputed);
    }
  }
  if (l.holds_head()) {
    const int64_t logits_rows = LogitsRows(l, o);
    add("targets", DType::kI32, Shape{m});
    add("xf", o.dtype, Shape{m, s.dim});
    add("rstdf", DType::kF32, Shape{rows});
    add("logits", o.dtype, Shape{logits_rows, l.vocab});
    add("row_stats", DType::kF32, Shape{3 * logits_rows});
    add("lse", DType::kF32, Shape{logits_rows});
  }
  // Gradient scratch, shared by all layers.
  add("dnorm", o.dtype, Shape{m, s.dim});
  add("dqkv", o.dtype, Shape{m, (l.heads + 2 * l.kv_heads) * s.head_dim});
  add("datt", o.dtype, Shape{m, l.heads * s.head_dim});
  add("dgu", o.dtype, Shape{m, 2 * l.ffn});
  add("dact", o.dtype, Shape{m, l.ffn});
  add("partial", o.dtype, Shape{m, s.dim});
  if (o.lora.enabled()) {
    // LoRA's u = x A^T and its gradient, shared by all adapted projections.
    add("lora_u", o.dtype, Shape{m, o.lora.rank});
    add("lora_du", o.dtype, Shape{m, o.lora.rank});
  }
  if (o.sequence_parallel) {
    add("seq_norm", o.dtype, Shape{rows, s.dim});
    add("seq_sum", o.dtype, Shape{rows, s.dim});
  }
  if (o.context.size() > 1) {
    // Ring attention's two key/value blocks and two gradient blocks, and
    // the rows' global positions (fixed unless reset per document).
    // The gradient blocks are f32: every rank of the ring adds its share.
    for (const char* name : {"ring.kv0", "ring.kv1"}) add(name, o.dtype, Shape{m, 2 * l.kv_heads * s.head_dim});
    for (const char* name : {"ring.dkv0", "ring.dkv1"}) add(name, DType::kF32, Shape{m, 2 * l.kv_heads * s.head_dim});
    if (!o.reset_positions) add("positions", DType::kI32, Shape{m});
  }
  return t;
}

}  // namespace

size_t ActivationBytes(const ModelShape& shape, const ModelLayout& layout, const ActivationOptions& options) {
  return BuildActivationTable(shape, layout, options).total_bytes() +
         OpsWorkspaceBytes(options.device, LocalOpsShape(shape, layout, options));
}

double RecomputeFlopsPerToken(const ModelShape& s, const ModelLayout& l, Recompute recompute, int64_t seq_len) {
  if (recompute == Recompute::kNone) return 0.0;
  const double dim = static_cast<double>(s.dim), hd = static_cast<double>(s.head_dim);
  const double q = static_cast<double>(l.heads) * hd, kv = static_cast<double>(l.kv_heads) * hd;
  const double ffn = static_cast<double>(l.ffn);
  int64_t layers = 0;
  for (const ChunkInfo& c : l.chunks) layers += c.layer_end - c.layer_begin;
  // See model.h for each term.
  const double rmsnorm = 4.0 * dim + 4.0, swiglu = 6.0 * ffn;
  double per_layer = 2.0 * rmsnorm + swiglu;
  if (recompute == Recompute::kFull) {
    const double matmul_params = (q + 2.0 * kv) * dim + q * dim + 3.0 * ffn * dim;
    const double attention = 2.0 * static_cast<double>(seq_len) * q;
    const double rope = 3.0 * (q + kv), residual_adds = 2.0 * dim;
    per_layer += 2.0 * matmul_params + attention + rope + residual_adds;
  }
  return static_cast<double>(layers) * per_layer;
}

LlamaModel::LlamaModel(const ModelShape& shape, const ActivationOptions& options)
    : shape_(shape), layout_(ModelLayout::Single(shape)), self_comm_(std::make_unique<SelfCommunicator>("tp")) {
  comms_.tp = self_comm_.get();
  Build(options, 1, 0);
}

LlamaModel::LlamaModel(const ModelShape& shape, const ModelLayout& layout, const ActivationOptions& options,
                       ModelComms comms, int64_t param_pad_to, int64_t grad_bucket_elems)
    : shape_(shape), layout_(layout), comms_(comms) {
  LATAM_CHECK(comms_.tp != nullptr && comms_.tp->size() == layout.tp, "tensor-parallel group of "
                                                                          << (comms_.tp ? comms_.tp->size() : 0)
                                                                          << " ranks for layout tp=" << layout.tp);
  LATAM_CHECK(
      layout.kv_replicas == 1 || (comms_.kv_replicas != nullptr && comms_.kv_replicas->size() == layout.kv_replicas),
      "replicated KV heads need a group of " << layout.kv_replicas << " ranks");
  Build(options, param_pad_to, grad_bucket_elems);
}

void LlamaModel::Build(const ActivationOptions& options, int64_t param_pad_to, int64_t grad_bucket_elems) {
  tp_ = TensorParallel(comms_.tp);
  options_ = options;
  rows_ = options.micro_batch * options.seq_len;
  sequence_parallel_ = options.sequence_parallel;
  shard_rows_ = ShardRows(layout_, options);
  logits_rows_ = LogitsRows(layout_, options);
  const OpsShape ops_shape = LocalOpsShape(shape_, layout_, options);
  n_rot_heads_ = ops_shape.attention.n_heads + ops_shape.attention.n_kv_heads;
  const bool context_parallel = options.context.size() > 1;
  LATAM_CHECK(!context_parallel || options.context.local_len() == options.seq_len,
              "context parallelism over " << options.context.size() << " ranks holds "
                                          << options.context.local_len() << " rows per sequence, not "
                                          << options.seq_len);
  LATAM_CHECK(!context_parallel || (comms_.cp != nullptr && comms_.cp->size() == options.context.size()),
              "context parallelism needs a group of " << options.context.size() << " ranks");
  // Positions reach the whole sequence's length under context parallelism.
  const int64_t positions = context_parallel ? options.context.seq_len() : options.seq_len;
  const RopeTable rope = BuildRopeTable(shape_.rope_theta, static_cast<int>(shape_.head_dim),
                                        static_cast<int>(positions), shape_.rope_scaling);
  if (options.device == Device::kCPU) {
    LATAM_CHECK(options.dtype == DType::kF32, "CPU activations are f32, not " << DTypeName(options.dtype));
    ops_ = MakeCpuOps(ops_shape, rope);
  } else {
    ops_ = MakeCudaOps(ops_shape, rope, options.dtype, options.stream, options.attention);
  }
  // A frozen base (LoRA) has no optimizer to hold its master weights: it
  // keeps them itself.
  const ParameterPlacement placement{options.device, options.dtype, options.stream,
                                    options.fp32_weights || options.lora.enabled(), options.pooled_grads};
  params_ = std::make_unique<ParameterSet>(LlamaParameterSpecs(shape_, layout_), param_pad_to, placement,
                                           grad_bucket_elems);
  if (options.lora.enabled()) {
    // The adapter's parameters and gradients (small), placed and padded like
    // the base set would be, so that its optimizer can shard it the same way
    // (its gradients are never pooled: ZeRO-2 is refused with an adapter).
    ParameterPlacement adapter_placement = placement;
    adapter_placement.fp32_weights = options.fp32_weights;
    adapter_placement.pooled_grads = false;
    adapter_ = std::make_unique<ParameterSet>(LoraParameterSpecs(shape_, layout_, options.lora), param_pad_to,
                                              adapter_placement, 0);
  }
  act_table_ = BuildActivationTable(shape_, layout_, options);
  act_arena_ = Arena(options.device, act_table_.total_bytes());

  const int64_t dim = shape_.dim;
  for (const ChunkInfo& c : layout_.chunks) {
    for (int64_t layer = c.layer_begin; layer < c.layer_end; ++layer) {
      for (bool grad : {false, true}) {
        // The kernels read the compute copy of the weights and add into
        // the f32 gradients.
        auto get = [&](const char* suffix) {
          return grad ? params_->grad(LayerParamName(layer, suffix)) : params_->compute(LayerParamName(layer, suffix));
        };
        auto fused = [&](const char* suffix, size_t count) {
          return grad ? params_->FusedGrad(LayerParamName(layer, suffix), count, dim)
                      : params_->FusedCompute(LayerParamName(layer, suffix), count, dim);
        };
        LayerWeights w;
        w.attn_norm = get("input_layernorm.weight");
        w.qkv = fused("self_attn.q_proj.weight", 3);
        w.kv = fused("self_attn.k_proj.weight", 2);
        w.o = get("self_attn.o_proj.weight");
        w.mlp_norm = get("post_attention_layernorm.weight");
        w.gate_up = fused("mlp.gate_proj.weight", 2);
        w.down = get("mlp.down_proj.weight");
        (grad ? weight_grads_ : weights_).push_back(w);
      }
      // The adapted projections and where each one's output sits in the
      // (fused) base output: q, k, v in QKV; gate, up in gate/up.
      std::array<LoraSite, kNumLoraTargets> sites{};
      if (adapter_ != nullptr) {
        const int64_t q = layout_.heads * shape_.head_dim, kv = layout_.kv_heads * shape_.head_dim;
        const int64_t offsets[kNumLoraTargets] = {0, q, q + kv, 0, 0, layout_.ffn, 0};
        const int64_t strides[kNumLoraTargets] = {q + 2 * kv, q + 2 * kv, q + 2 * kv, dim, 2 * layout_.ffn,
                                                  2 * layout_.ffn, dim};
        for (int i = 0; i < kNumLoraTargets; ++i) {
          const auto t = static_cast<LoraTarget>(i);
          if (!options.lora.has(t)) continue;
          LoraSite& site = sites[static_cast<size_t>(i)];
          site.a = adapter_->compute(LoraParamName(layer, t, false));
          site.b = adapter_->compute(LoraParamName(layer, t, true));
          site.da = adapter_->grad(LoraParamName(layer, t, false));
          site.db = adapter_->grad(LoraParamName(layer, t, true));
          site.out_offset = offsets[i];
          site.out_stride = strides[i];
        }
      }
      lora_sites_.push_back(sites);
    }
  }
  // Which tensors become final together (see OnGradientsFinal).
  const TensorTable& table = params_->table();
  for (const ChunkInfo& c : layout_.chunks) {
    for (int64_t layer = c.layer_begin; layer < c.layer_end; ++layer) {
      const std::string prefix = LayerParamName(layer, "");
      std::vector<size_t> group;
      for (size_t i = 0; i < params_->size(); ++i) {
        if (params_->spec(i).name.rfind(prefix, 0) == 0) group.push_back(i);
      }
      layer_tensors_.push_back(group);
    }
  }
  if (layout_.holds_head()) {
    head_tensors_.push_back(table.IndexOf("model.norm.weight"));
    // A tied LM head is the embedding: final with it on the first stage, or
    // as the last stage's copy here.
    if (!shape_.tie_embeddings) head_tensors_.push_back(table.IndexOf("lm_head.weight"));
    if (shape_.tie_embeddings && !layout_.holds_embedding()) {
      head_tensors_.push_back(table.IndexOf("model.embed_tokens.weight"));
    }
  }
  if (layout_.holds_head()) {
    head_weight_tensors_ = {table.IndexOf("model.norm.weight"),
                            table.IndexOf(shape_.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight")};
  }
  if (layout_.holds_embedding()) embedding_tensors_.push_back(table.IndexOf("model.embed_tokens.weight"));
  if (params_->table().Contains("model.embed_tokens.weight")) {
    embed_ = params_->compute("model.embed_tokens.weight");
    embed_grad_ = params_->grad("model.embed_tokens.weight");
  }
  if (layout_.holds_head()) {
    const char* head_name = shape_.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    head_ = params_->compute(head_name);
    head_grad_ = params_->grad(head_name);
    final_norm_ = params_->compute("model.norm.weight");
    final_norm_grad_ = params_->grad("model.norm.weight");
  }

  auto act = [this](const std::string& name) { return act_table_.Get(act_arena_, name); };
  auto layer_acts = [&](const std::string& prefix) {
    auto get = [&](const char* what) { return act(prefix + what); };
    return LayerActivations{get("xn"), get("rstd1"), get("qkv"),   get("att"), get("lse"),
                            get("h"),  get("hn"),    get("rstd2"), get("gu"),  get("act")};
  };
  // kSelective: the saved set (all but xn, hn, act) with the chunk's scratch xn, hn, act.
  auto selective_acts = [&](const std::string& prefix, const LayerActivations& scratch) {
    auto get = [&](const char* what) { return act(prefix + what); };
    return LayerActivations{scratch.xn, get("rstd1"), get("qkv"),   get("att"), get("lse"),
                            get("h"),   scratch.hn,   get("rstd2"), get("gu"),  scratch.act};
  };
  int64_t local_layer = 0;
  for (size_t c = 0; c < layout_.chunks.size(); ++c) {
    const ChunkInfo& info = layout_.chunks[c];
    Chunk chunk;
    chunk.first_layer = local_layer;
    chunk.n_layers = info.layer_end - info.layer_begin;
    local_layer += chunk.n_layers;
    if (options.recompute == Recompute::kFull) chunk.scratch = layer_acts(Name(c, "scratch."));
    if (options.recompute == Recompute::kSelective) {
      chunk.scratch.xn = act(Name(c, "scratch.xn"));
      chunk.scratch.hn = act(Name(c, "scratch.hn"));
      chunk.scratch.act = act(Name(c, "scratch.act"));
      chunk.recompute_rstd = act(Name(c, "scratch.rstd"));
    }
    for (int s = 0; s < SlotsOf(options, c); ++s) {
      Slot slot;
      for (int64_t k = 0; k <= chunk.n_layers; ++k) slot.x.push_back(act(SlotName(c, s, "x." + std::to_string(k))));
      for (int64_t k = 0; k < chunk.n_layers && options.recompute != Recompute::kFull; ++k) {
        const std::string prefix = SlotName(c, s, "layer." + std::to_string(k) + ".");
        slot.saved.push_back(options.recompute == Recompute::kSelective ? selective_acts(prefix, chunk.scratch)
                                                                        : layer_acts(prefix));
      }
      if (info.first) slot.ids = act(SlotName(c, s, "ids"));
      if (options.document_mask) slot.docs = act(SlotName(c, s, "docs"));
      if (options.reset_positions) slot.pos = act(SlotName(c, s, "pos"));
      slot.grad = act(SlotName(c, s, "grad"));
      chunk.slots.push_back(std::move(slot));
    }
    chunks_.push_back(std::move(chunk));
  }
  if (layout_.holds_head()) {
    targets_ = act("targets");
    xf_ = act("xf");
    rstdf_ = act("rstdf");
    logits_ = act("logits");
    row_stats_ = act("row_stats");
    lse_ = act("lse");
  }
  dnorm_ = act("dnorm");
  dqkv_ = act("dqkv");
  datt_ = act("datt");
  dgu_ = act("dgu");
  dact_ = act("dact");
  partial_ = act("partial");
  if (adapter_ != nullptr) {
    lora_u_ = act("lora_u");
    lora_du_ = act("lora_du");
  }
  if (sequence_parallel_) {
    seq_norm_ = act("seq_norm");
    seq_sum_ = act("seq_sum");
  }
  if (context_parallel) {
    ring_ = std::make_unique<RingAttention>(
        ops_.get(), comms_.cp, options.context, ops_shape.attention,
        std::array<Tensor, 4>{act("ring.kv0"), act("ring.kv1"), act("ring.dkv0"), act("ring.dkv1")});
    if (!options.reset_positions) {
      positions_ = act("positions");
      std::vector<int32_t> host(static_cast<size_t>(rows_));
      for (int64_t m = 0; m < rows_; ++m) {
        host[static_cast<size_t>(m)] =
            static_cast<int32_t>(options.context.GlobalPosition(options.context.rank(), m % options.seq_len));
      }
      ops_->UploadIds(host.data(), positions_);
    }
  }
  if (options.reset_positions) host_positions_.resize(static_cast<size_t>(rows_));
}

PipelineChunk LlamaModel::chunk(int c) const {
  const ChunkInfo& info = layout_.chunks[static_cast<size_t>(c)];
  return {info.global_index, info.first, info.last};
}

Tensor LlamaModel::Input(int chunk, int slot) const {
  return chunks_[static_cast<size_t>(chunk)].slots[static_cast<size_t>(slot)].x.front();
}
Tensor LlamaModel::Output(int chunk, int slot) const {
  return chunks_[static_cast<size_t>(chunk)].slots[static_cast<size_t>(slot)].x.back();
}
Tensor LlamaModel::Grad(int chunk, int slot) const {
  return chunks_[static_cast<size_t>(chunk)].slots[static_cast<size_t>(slot)].grad;
}

const LlamaModel::LayerActivations& LlamaModel::Saved(const Chunk& c, const Slot& s, int64_t k) const {
  return options_.recompute == Recompute::kFull ? c.scratch : s.saved[static_cast<size_t>(k)];
}

void LlamaModel::NormForward(const Tensor& x, const Tensor& w, const Tensor& full, const Tensor& rstd) {
  const float eps = static_cast<float>(shape_.norm_eps);
  if (!sequence_parallel_) {
    ops_->RmsNormForward(x, w, eps, full, rstd);
    return;
  }
  ops_->RmsNormForward(x, w, eps, seq_norm_, rstd);
  tp_.GatherSequence(seq_norm_, full);
}

Tensor LlamaModel::RowParallelSum() {
  if (!sequence_parallel_) {
    tp_.RowParallelOutput(partial_);
    return partial_;
  }
  tp_.ReduceScatterSequence(partial_, seq_sum_);
  return seq_sum_;
}

Tensor LlamaModel::ColumnParallelSum(const Tensor& partial) {
  if (!sequence_parallel_) {
    tp_.ColumnParallelInputGrad(partial);
    return partial;
  }
  tp_.ReduceScatterSequence(partial, seq_sum_);
  return seq_sum_;
}

Tensor LlamaModel::FullRows(const Tensor& rows) {
  if (!sequence_parallel_) return rows;
  tp_.GatherSequence(rows, partial_);
  return partial_;
}

void LlamaModel::LayerForward(int64_t local_layer, const Tensor& x, const Tensor& x_next, const LayerActivations& a) {
  const LayerWeights& w = weights_[static_cast<size_t>(local_layer)];
  const float eps = static_cast<float>(shape_.norm_eps);
  // Attention block: h = x + o_proj(attn(rope(qkv(norm(x))))); o_proj is
  // row-parallel, so its partial products are summed over tensor parallelism
  // (to the row shard under sequence parallelism, where x and h are shards).
  NormForward(x, w.attn_norm, a.xn, a.rstd1);
  ops_->LinearForward(a.xn, w.qkv, a.qkv, false);
  AdapterForward(local_layer, {LoraTarget::kQ, LoraTarget::kK, LoraTarget::kV}, a.xn, a.qkv);
  ops_->RopeForward(a.qkv, n_rot_heads_, rope_positions_);
  if (ring_ != nullptr) {
    ring_->Forward(a.qkv, a.att, a.lse, attention_docs_);
  } else {
    ops_->AttentionForward(a.qkv, a.att, a.lse, attention_docs_);
  }
  ops_->LinearForward(a.att, w.o, partial_, false);
  AdapterForward(local_layer, {LoraTarget::kO}, a.att, partial_);
  const Tensor attn_out = RowParallelSum();
  // MLP block: x_next = h + down(swiglu(gate_up(norm(h)))); down is row-parallel.
  ops_->AddRmsNormForward(x, attn_out, w.mlp_norm, eps, a.h, sequence_parallel_ ? seq_norm_ : a.hn, a.rstd2);
  if (sequence_parallel_) tp_.GatherSequence(seq_norm_, a.hn);
  ops_->LinearForward(a.hn, w.gate_up, a.gu, false);
  AdapterForward(local_layer, {LoraTarget::kGate, LoraTarget::kUp}, a.hn, a.gu);
  ops_->SwigluForward(a.gu, a.act);
  ops_->LinearForward(a.act, w.down, partial_, false);
  AdapterForward(local_layer, {LoraTarget::kDown}, a.act, partial_);
  ops_->Add(a.h, RowParallelSum(), x_next);
}

// On entry `grad` = dL/dx_{l+1}; on exit `grad` = dL/dx_l (row shards of
// both under sequence parallelism).
void LlamaModel::LayerBackward(int64_t local_layer, const Tensor& x, const Tensor& grad, const LayerActivations& a) {
  const LayerWeights& w = weights_[static_cast<size_t>(local_layer)];
  const LayerWeights& g = weight_grads_[static_cast<size_t>(local_layer)];
  // MLP block; `grad` also carries dL/dh through the residual connection.
  // down_proj is row-parallel: its input gradient needs all rows of dL/dx_{l+1}.
  // The gate/up projection is column-parallel: its input gradient is summed
  // over tensor parallelism before the norm's backward.
  const Tensor dy_mlp = FullRows(grad);
  ops_->LinearBackwardInput(dy_mlp, w.down, dact_, false);
  AdapterBackward(local_layer, {LoraTarget::kDown}, a.act, dy_mlp, dact_);
  if (adapter_ == nullptr) ops_->LinearBackwardWeight(dy_mlp, a.act, g.down);
  ops_->SwigluBackward(dact_, a.gu, dgu_);
  ops_->LinearBackwardInput(dgu_, w.gate_up, dnorm_, false);
  AdapterBackward(local_layer, {LoraTarget::kGate, LoraTarget::kUp}, a.hn, dgu_, dnorm_);
  const Tensor dhn = ColumnParallelSum(dnorm_);
  if (adapter_ == nullptr) ops_->LinearBackwardWeight(dgu_, a.hn, g.gate_up);
  ops_->RmsNormBackward(dhn, a.h, w.mlp_norm, a.rstd2, grad, true, g.mlp_norm);
  // Attention block; `grad` now holds dL/dh.
  const Tensor dy_attn = FullRows(grad);
  ops_->LinearBackwardInput(dy_attn, w.o, datt_, false);
  AdapterBackward(local_layer, {LoraTarget::kO}, a.att, dy_attn, datt_);
  if (adapter_ == nullptr) ops_->LinearBackwardWeight(dy_attn, a.att, g.o);
  if (ring_ != nullptr) {
    ring_->Backward(a.qkv, a.att, datt_, a.lse, dqkv_, attention_docs_);
  } else {
    ops_->AttentionBackward(a.qkv, a.att, datt_, a.lse, dqkv_, attention_docs_);
  }
  ops_->RopeBackward(dqkv_, n_rot_heads_, rope_positions_);
  ops_->LinearBackwardInput(dqkv_, w.qkv, dnorm_, false);
  AdapterBackward(local_layer, {LoraTarget::kQ, LoraTarget::kK, LoraTarget::kV}, a.xn, dqkv_, dnorm_);
  const Tensor dxn = ColumnParallelSum(dnorm_);
  if (adapter_ == nullptr) ops_->LinearBackwardWeight(dqkv_, a.xn, g.qkv);
  ops_->RmsNormBackward(dxn, x, w.attn_norm, a.rstd1, grad, true, g.attn_norm);
}

// kSelective: refills the chunk scratch's xn, hn and act of a layer whose
// input is x and whose kept activations are in `a` (a.xn, a.hn, a.act are the
// scratch), before its backward; the norms' rstd goes to `rstd`, a scratch
// the backward does not read (it reads the saved rstd1 and rstd2).
//   xn  = rmsnorm(x, attn_norm)   the kernel LayerForward ran on the same x;
//   hn  = rmsnorm(h, mlp_norm)    LayerForward's AddRmsNormForward is Add then
//                                 RmsNormForward on the CPU; its CUDA kernel
//                                 normalises the h it rounded and stored, in
//                                 RmsNormForward's per-thread order
//                                 (kernels/cuda/fused_norm.h), so this gives
//                                 its values bit for bit (tested);
//   act = swiglu(gu)              the same kernel on the saved gu.
// qkv is saved after RoPE, so nothing of RoPE is recomputed; the backward
// only needs RopeBackward, which reads no activation. Without sequence
// parallelism nothing here communicates: x and h are whole (replicated) on
// every tensor-parallel rank and gu is the rank's own slice. With it, x and
// h are row shards, and each recomputed norm is all-gathered into xn / hn as
// in the forward (NormForward): two all-gathers per layer, the price of not
// keeping the gathered norm outputs.
void LlamaModel::RecomputeElementwise(int64_t local_layer, const Tensor& x, const LayerActivations& a,
                                      const Tensor& rstd) {
  const LayerWeights& w = weights_[static_cast<size_t>(local_layer)];
  NormForward(x, w.attn_norm, a.xn, rstd);
  NormForward(a.h, w.mlp_norm, a.hn, rstd);
  ops_->SwigluForward(a.gu, a.act);
}

void LlamaModel::HeadForward(const Tensor& x_last, const int32_t* targets, float grad_scale, bool with_grads,
                               const Tensor& grad_out) {
  NormForward(x_last, final_norm_, xf_, rstdf_);
  ops_->UploadIds(targets, targets_);
  for (int64_t r0 = 0; r0 < rows_; r0 += logits_rows_) {
    const int64_t r1 = std::min(rows_, r0 + logits_rows_), n = r1 - r0;
    const Tensor xf = xf_.Rows(r0, r1);
    const Tensor logits = logits_.Rows(0, n);
    const Tensor tgt = targets_.Rows(r0, r1);
    const Tensor row_max = row_stats_.Rows(0, n);
    const Tensor sum_and_target = row_stats_.Rows(logits_rows_, logits_rows_ + 2 * n);
    const Tensor sumexp = row_stats_.Rows(logits_rows_, logits_rows_ + n);
    const Tensor target_logit = row_stats_.Rows(logits_rows_ + n, logits_rows_ + 2 * n);
    const Tensor lse = lse_.Rows(0, n);
    // Vocab-parallel cross-entropy: per-row statistics combined over shards.
    ops_->LinearForward(xf, head_, logits, false);
    ops_->LogitsRowMax(logits, row_max);
    tp_.VocabParallelMax(row_max);
    ops_->LogitsRowSumExp(logits, row_max, tgt, layout_.vocab_offset, shape_.vocab, sumexp, target_logit);
    tp_.VocabParallelSum(sum_and_target);
    ops_->CrossEntropyLoss(row_max, sumexp, target_logit, tgt, lse);
    if (with_grads) {
      // logits now becomes dL/dlogits for this chunk; the head is
      // column-parallel, so dxf is summed over tensor parallelism below.
      ops_->SoftmaxCrossEntropyBackward(logits, tgt, layout_.vocab_offset, lse, grad_scale);
      ops_->LinearBackwardInput(logits, head_, dnorm_.Rows(r0, r1), false);
      ops_->LinearBackwardWeight(logits, xf, head_grad_);
    }
  }
  if (with_grads) {
    const Tensor dxf = ColumnParallelSum(dnorm_);
    ops_->RmsNormBackward(dxf, x_last, final_norm_, rstdf_, grad_out, false, final_norm_grad_);
  }
}

void LlamaModel::Forward(int chunk, int slot, const int32_t* ids, const int32_t* targets, const int32_t* doc_start,
                         float grad_scale, bool with_grads, bool last_micro_batch) {
  const ChunkInfo& info = layout_.chunks[static_cast<size_t>(chunk)];
  Chunk& c = chunks_[static_cast<size_t>(chunk)];
  Slot& s = c.slots[static_cast<size_t>(slot)];
  attention_docs_ = nullptr;
  if (options_.document_mask) {
    LATAM_CHECK(doc_start != nullptr, "document-masked attention without the micro-batch's document starts");
    ops_->UploadIds(doc_start, s.docs);
    attention_docs_ = s.docs.as<int32_t>();
  }
  rope_positions_ = positions_.data != nullptr ? positions_.as<int32_t>() : nullptr;
  if (options_.reset_positions) {
    // Row m of sequence b sits at global position g; its document began at
    // doc_start[m] (global), so its RoPE position is g - doc_start[m].
    LATAM_CHECK(doc_start != nullptr, "data.reset_positions without the micro-batch's document starts");
    const int64_t n = options_.seq_len;
    for (int64_t m = 0; m < rows_; ++m) {
      const int64_t g = options_.context.size() > 1 ? options_.context.GlobalPosition(options_.context.rank(), m % n)
                                                    : m % n;
      host_positions_[static_cast<size_t>(m)] = static_cast<int32_t>(g - doc_start[m]);
    }
    ops_->UploadIds(host_positions_.data(), s.pos);
    rope_positions_ = s.pos.as<int32_t>();
  }
  if (info.first) {
    NeedWeights(embedding_tensors_);
    // Vocab-parallel embedding: each rank fills the rows of its ids, zeros elsewhere.
    ops_->UploadIds(ids, s.ids);
    if (sequence_parallel_) {
      ops_->EmbeddingForward(s.ids, embed_, layout_.vocab_offset, partial_);
      tp_.ReduceScatterSequence(partial_, s.x.front());
    } else {
      ops_->EmbeddingForward(s.ids, embed_, layout_.vocab_offset, s.x.front());
      tp_.VocabParallelEmbedding(s.x.front());
    }
  }
  for (int64_t k = 0; k < c.n_layers; ++k) {
    NeedWeights(layer_tensors_[static_cast<size_t>(c.first_layer + k)]);
    LayerForward(c.first_layer + k, s.x[static_cast<size_t>(k)], s.x[static_cast<size_t>(k + 1)], Saved(c, s, k));
  }
  if (!info.last) return;
  NeedWeights(head_weight_tensors_);
  if (with_grads) NeedGrads(head_tensors_);
  HeadForward(s.x.back(), targets, grad_scale, with_grads, s.grad);
  if (with_grads && (last_micro_batch || options_.pooled_grads)) {
    if (sequence_parallel_) tp_.SumReplicatedGrad(final_norm_grad_);
    ReportFinal(head_tensors_, last_micro_batch);
  }
}

void LlamaModel::NeedWeights(const std::vector<size_t>& tensors) const {
  if (weights_needed_ && !tensors.empty()) weights_needed_(tensors);
}

void LlamaModel::ReportFinal(const std::vector<size_t>& tensors, bool last_micro_batch) const {
  if (gradients_final_ && !tensors.empty()) gradients_final_(tensors, last_micro_batch);
}

void LlamaModel::NeedGrads(const std::vector<size_t>& tensors) const {
  if (gradients_needed_ && !tensors.empty()) gradients_needed_(tensors);
}

void LlamaModel::Backward(int chunk, int slot, bool last_micro_batch) {
  const ChunkInfo& info = layout_.chunks[static_cast<size_t>(chunk)];
  Chunk& c = chunks_[static_cast<size_t>(chunk)];
  Slot& s = c.slots[static_cast<size_t>(slot)];
  attention_docs_ = options_.document_mask ? s.docs.as<int32_t>() : nullptr;
  rope_positions_ = options_.reset_positions        ? s.pos.as<int32_t>()
                    : positions_.data != nullptr ? positions_.as<int32_t>()
                                                 : nullptr;
  for (int64_t k = c.n_layers - 1; k >= 0; --k) {
    const Tensor& x = s.x[static_cast<size_t>(k)];
    // The recompute scratch may hold another layer or micro-batch: re-run
    // this layer's forward (kFull), or its element-wise ops (kSelective),
    // from what the slot kept first.
    if (options_.recompute == Recompute::kFull) LayerForward(c.first_layer + k, x, s.x[static_cast<size_t>(k + 1)], c.scratch);
    if (options_.recompute == Recompute::kSelective) {
      RecomputeElementwise(c.first_layer + k, x, Saved(c, s, k), c.recompute_rstd);
    }
    const size_t layer = static_cast<size_t>(c.first_layer + k);
    NeedGrads(layer_tensors_[layer]);
    LayerBackward(c.first_layer + k, x, s.grad, Saved(c, s, k));
    if (last_micro_batch || options_.pooled_grads) {
      // The layer's gradients are complete; replicated KV heads first sum
      // theirs over the replicas (every replica runs the same schedule).
      if (layout_.kv_replicas > 1) comms_.kv_replicas->AllReduceSync(weight_grads_[layer].kv, ReduceOp::kSum);
      if (sequence_parallel_) {
        tp_.SumReplicatedGrad(weight_grads_[layer].attn_norm);
        tp_.SumReplicatedGrad(weight_grads_[layer].mlp_norm);
      }
      ReportFinal(layer_tensors_[layer], last_micro_batch);
    }
    if (last_micro_batch && adapter_ != nullptr) FinishAdapterGrads(layer);
  }
  if (info.first) {
    NeedGrads(embedding_tensors_);
    ops_->EmbeddingBackward(s.ids, FullRows(s.grad), layout_.vocab_offset, embed_grad_);
    if (last_micro_batch || options_.pooled_grads) ReportFinal(embedding_tensors_, last_micro_batch);
  }
}

void LlamaModel::AdapterForward(int64_t local_layer, std::initializer_list<LoraTarget> targets, const Tensor& x,
                                const Tensor& y) {
  if (adapter_ == nullptr) return;
  for (LoraTarget t : targets) {
    const LoraSite& site = lora_sites_[static_cast<size_t>(local_layer)][static_cast<size_t>(t)];
    if (site.a.data != nullptr) LoraForward(*ops_, site, options_.lora.scale(), x, lora_u_, y);
  }
}

void LlamaModel::AdapterBackward(int64_t local_layer, std::initializer_list<LoraTarget> targets, const Tensor& x,
                                 const Tensor& dy, const Tensor& dx) {
  if (adapter_ == nullptr) return;
  for (LoraTarget t : targets) {
    const LoraSite& site = lora_sites_[static_cast<size_t>(local_layer)][static_cast<size_t>(t)];
    if (site.a.data != nullptr) LoraBackward(*ops_, site, options_.lora.scale(), x, dy, dx, lora_u_, lora_du_);
  }
}

void LlamaModel::FinishAdapterGrads(size_t local_layer) {
  // See model/lora.h: a column-parallel target's dA and a row-parallel
  // target's dB are partial sums over tensor parallelism; the k and v rows
  // of B replicated over KV replicas sum over them like the base weights.
  for (int i = 0; i < kNumLoraTargets; ++i) {
    const LoraSite& site = lora_sites_[local_layer][static_cast<size_t>(i)];
    if (site.a.data == nullptr) continue;
    const auto t = static_cast<LoraTarget>(i);
    if (layout_.tp > 1) tp_.SumReplicatedGrad(IsRowParallel(t) ? site.db : site.da);
    if (layout_.kv_replicas > 1 && (t == LoraTarget::kK || t == LoraTarget::kV)) {
      comms_.kv_replicas->AllReduceSync(site.db, ReduceOp::kSum);
    }
  }
}

double LlamaModel::ForwardBackward(const int32_t* inputs, const int32_t* targets, float grad_scale) {
  LATAM_CHECK(num_chunks() == 1 && layout_.chunks[0].first && layout_.chunks[0].last,
              "ForwardBackward needs the whole model in one chunk");
  Forward(0, 0, inputs, targets, grad_scale, true, true);
  Backward(0, 0, true);
  return TakeLoss();
}

double LlamaModel::ForwardLoss(const int32_t* inputs, const int32_t* targets) {
  LATAM_CHECK(num_chunks() == 1 && layout_.chunks[0].first && layout_.chunks[0].last,
              "ForwardLoss needs the whole model in one chunk");
  Forward(0, 0, inputs, targets, 0.0f, false, false);
  return TakeLoss();
}

}  // namespace latam
