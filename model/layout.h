// ModelLayout: which part of the model one rank holds.
//
// Pipeline stages: stage p (pipeline rank p of P) holds L_p layers,
// sum_p L_p = n_layers (StageLayerCounts):
//   even split       L_p = n_layers / P
//   uneven split     L_0 = first_layers when > 0, L_{P-1} = last_layers when
//                    > 0 (either or both), and every other stage the same
//                    share of the rest, (n_layers - pinned layers) /
//                    (P - pinned stages); e.g. 80 layers over P = 6 with
//                    first = last = 12: 12, 14, 14, 14, 14, 12
// (Megatron's decoder_first/last_pipeline_num_layers: a lighter first or last
// stage balances the embedding's or the LM head's cost.)
//
// Virtual stages (interleaved 1F1B, V chunks per stage): stage p's L_p layers
// are split evenly over its V chunks, L_p / V each. Global chunk g = v P + p
// (v in [0, V)) lives on pipeline rank p, and the model's layers run in
// global-chunk order: chunk g holds the layers that follow those of chunks
// 0..g-1, so
//   layer_begin(g = v P + p) = v n_layers / V + sum_{q < p} L_q / V.
// With an uneven split the chunks differ in size. Chunk 0 also holds the
// embedding, chunk P V - 1 the final norm, the LM head and the loss.
// ValidateConfig guarantees every L_p is a positive multiple of V.
//
// Tensor parallelism (Megatron): with T ranks, rank t holds
//   query heads   [t Hq/T, (t+1) Hq/T)                  (column-parallel Q)
//   KV heads      [t Hkv/T, (t+1) Hkv/T) when Hkv >= T   (column-parallel K, V)
//                 head t Hkv / T, replicated on T/Hkv ranks, when Hkv < T
//   FFN columns   [t F/T, (t+1) F/T)                     (column-parallel gate/up,
//                                                         row-parallel down)
//   vocabulary    [t V/T, (t+1) V/T)                     (vocab-parallel embedding
//                                                         and LM head)
// and a full copy of the norm gains. The o_proj and down_proj weights are
// split along their input dimension (row-parallel).
#pragma once

#include <cstdint>
#include <vector>

#include "model/parameters.h"

namespace latam {

// The layers pinned on the end stages (parallel.first_stage_layers /
// last_stage_layers); 0 = that stage takes the even share like the others.
struct StageSplit {
  int64_t first_layers = 0;
  int64_t last_layers = 0;
  bool uneven() const { return first_layers != 0 || last_layers != 0; }
  static StageSplit FromConfig(const config::ParallelConfig& p) {
    return {p.first_stage_layers(), p.last_stage_layers()};
  }
};

// L_p for p in [0, pp): the layers of each pipeline stage under `split` (the
// one place the per-stage counts are computed: layout, validation, planner).
// The unpinned stages get (n_layers - pinned) / unpinned, rounded down; a
// split whose counts do not add up to n_layers is rejected by ValidateConfig,
// which compares their sum with n_layers.
std::vector<int64_t> StageLayerCounts(int64_t n_layers, int pp, const StageSplit& split);

struct ChunkInfo {
  int global_index = 0;     // g in [0, P V)
  int64_t layer_begin = 0;  // global layer ids [begin, end)
  int64_t layer_end = 0;
  bool first = false;  // holds the embedding
  bool last = false;   // holds the final norm, the head and the loss
};

struct ModelLayout {
  int tp = 1, tp_rank = 0;
  int pp = 1, pp_rank = 0;
  int virtual_stages = 1;

  int64_t heads = 0;        // local query heads
  int64_t head_offset = 0;  // first local query head
  int64_t kv_heads = 0;     // local KV heads
  int64_t kv_offset = 0;    // first local KV head
  int kv_replicas = 1;      // ranks holding the same KV heads (T / Hkv when Hkv < T)
  int64_t ffn = 0, ffn_offset = 0;
  int64_t vocab = 0, vocab_offset = 0;
  std::vector<ChunkInfo> chunks;  // this rank's chunks, in pipeline order

  // The layout of rank (tp_rank, pp_rank) with stages split as `split`; the
  // shape must be divisible (ValidateConfig checks it).
  static ModelLayout Make(const ModelShape& shape, int tp, int tp_rank, int pp, int pp_rank, int virtual_stages,
                          const StageSplit& split = {});
  static ModelLayout Single(const ModelShape& shape) { return Make(shape, 1, 0, 1, 0, 1); }

  int total_chunks() const { return pp * virtual_stages; }
  bool holds_embedding() const;
  bool holds_head() const;
  // With tied embeddings and more than one stage, the last stage keeps a copy
  // of the embedding table as its LM head; the copies' gradients are summed.
  bool holds_tied_copy(const ModelShape& shape) const { return shape.tie_embeddings && pp > 1 && holds_head(); }
};

// This rank's parameters: local shapes, where each sits in the global tensor,
// and which rank's copy of a replicated tensor counts in the gradient norm.
std::vector<ParamSpec> LlamaParameterSpecs(const ModelShape& shape, const ModelLayout& layout);

}  // namespace latam
