#include "model/layout.h"

#include <cmath>

namespace latam {

std::vector<int64_t> StageLayerCounts(int64_t n_layers, int pp, const StageSplit& split) {
  std::vector<int64_t> counts(static_cast<size_t>(pp), 0);
  const bool pin_first = split.first_layers > 0, pin_last = split.last_layers > 0 && pp > 1;
  int64_t rest = n_layers;
  int unpinned = pp;
  if (pin_first) {
    counts.front() = split.first_layers;
    rest -= split.first_layers;
    --unpinned;
  }
  if (pin_last) {
    counts.back() = split.last_layers;
    rest -= split.last_layers;
    --unpinned;
  }
  for (int p = 0; p < pp; ++p) {
    const bool pinned = (p == 0 && pin_first) || (p == pp - 1 && pin_last);
    if (!pinned) counts[static_cast<size_t>(p)] = rest / unpinned;
  }
  return counts;
}

ModelLayout ModelLayout::Make(const ModelShape& s, int tp, int tp_rank, int pp, int pp_rank, int virtual_stages,
                              const StageSplit& split) {
  ModelLayout l;
  l.tp = tp;
  l.tp_rank = tp_rank;
  l.pp = pp;
  l.pp_rank = pp_rank;
  l.virtual_stages = virtual_stages;
  l.heads = s.n_heads / tp;
  l.head_offset = tp_rank * l.heads;
  if (s.n_kv_heads >= tp) {
    l.kv_heads = s.n_kv_heads / tp;
    l.kv_offset = tp_rank * l.kv_heads;
  } else {
    l.kv_heads = 1;
    l.kv_replicas = tp / static_cast<int>(s.n_kv_heads);
    l.kv_offset = tp_rank / l.kv_replicas;
  }
  l.ffn = s.ffn_dim / tp;
  l.ffn_offset = tp_rank * l.ffn;
  l.vocab = s.vocab / tp;
  l.vocab_offset = tp_rank * l.vocab;
  // Walk the global chunks g = v P + p in order; chunk g starts where chunk
  // g - 1 ended and holds L_p / V layers.
  const int total = pp * virtual_stages;
  const std::vector<int64_t> stage_layers = StageLayerCounts(s.n_layers, pp, split);
  int64_t begin = 0;
  for (int g = 0; g < total; ++g) {
    const int stage = g % pp;
    const int64_t size = stage_layers[static_cast<size_t>(stage)] / virtual_stages;
    if (stage == pp_rank) {
      ChunkInfo c;
      c.global_index = g;
      c.layer_begin = begin;
      c.layer_end = begin + size;
      c.first = g == 0;
      c.last = g == total - 1;
      l.chunks.push_back(c);
    }
    begin += size;
  }
  return l;
}

bool ModelLayout::holds_embedding() const { return chunks.front().first; }
bool ModelLayout::holds_head() const { return chunks.back().last; }

std::vector<ParamSpec> LlamaParameterSpecs(const ModelShape& s, const ModelLayout& l) {
  const double std = s.init_std;
  // Residual output projections: scaled so the residual stream's variance
  // does not grow with depth (GPT-2 / Megatron rule).
  const double out_std = s.init_std / std::sqrt(2.0 * static_cast<double>(s.n_layers));
  const int64_t hd = s.head_dim, dim = s.dim;
  const bool first_tp = l.tp_rank == 0;
  const bool first_kv_replica = l.tp_rank % l.kv_replicas == 0;
  auto replicated = [&](std::string name, Shape shape) {
    ParamSpec p{std::move(name), shape, 0.0, false, shape, -1, 0, first_tp, false};
    return p;
  };
  auto rows = [&](std::string name, int64_t local_rows, int64_t global_rows, int64_t offset, double init) {
    return ParamSpec{
        std::move(name), Shape{local_rows, dim}, init, true, Shape{global_rows, dim}, 0, offset, true, false};
  };
  auto cols = [&](std::string name, int64_t local_cols, int64_t global_cols, int64_t offset, double init) {
    return ParamSpec{
        std::move(name), Shape{dim, local_cols}, init, true, Shape{dim, global_cols}, 1, offset, true, false};
  };
  std::vector<ParamSpec> specs;
  if (l.holds_embedding() || l.holds_tied_copy(s)) {
    ParamSpec e = rows("model.embed_tokens.weight", l.vocab, s.vocab, l.vocab_offset, std);
    e.counted = l.holds_embedding();  // the last stage's tied copy is not counted twice
    // Tied, the LM head and the embedding (or the two stages' copies, summed
    // after the pipeline) add to one gradient over the whole step.
    e.whole_step_grad = s.tie_embeddings;
    specs.push_back(e);
  }
  for (const ChunkInfo& c : l.chunks) {
    for (int64_t layer = c.layer_begin; layer < c.layer_end; ++layer) {
      specs.push_back(replicated(LayerParamName(layer, "input_layernorm.weight"), Shape{dim}));
      specs.push_back(rows(LayerParamName(layer, "self_attn.q_proj.weight"), l.heads * hd, s.n_heads * hd,
                           l.head_offset * hd, std));
      for (const char* kv : {"self_attn.k_proj.weight", "self_attn.v_proj.weight"}) {
        ParamSpec p = rows(LayerParamName(layer, kv), l.kv_heads * hd, s.n_kv_heads * hd, l.kv_offset * hd, std);
        p.kv_replica = l.kv_replicas > 1;
        p.counted = first_kv_replica;
        specs.push_back(p);
      }
      specs.push_back(cols(LayerParamName(layer, "self_attn.o_proj.weight"), l.heads * hd, s.n_heads * hd,
                           l.head_offset * hd, out_std));
      specs.push_back(replicated(LayerParamName(layer, "post_attention_layernorm.weight"), Shape{dim}));
      specs.push_back(rows(LayerParamName(layer, "mlp.gate_proj.weight"), l.ffn, s.ffn_dim, l.ffn_offset, std));
      specs.push_back(rows(LayerParamName(layer, "mlp.up_proj.weight"), l.ffn, s.ffn_dim, l.ffn_offset, std));
      specs.push_back(cols(LayerParamName(layer, "mlp.down_proj.weight"), l.ffn, s.ffn_dim, l.ffn_offset, out_std));
    }
  }
  if (l.holds_head()) {
    specs.push_back(replicated("model.norm.weight", Shape{dim}));
    if (!s.tie_embeddings) specs.push_back(rows("lm_head.weight", l.vocab, s.vocab, l.vocab_offset, std));
  }
  return specs;
}

}  // namespace latam
