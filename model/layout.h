// ModelLayout: which part of the model one rank holds.
//
// Pipeline: the n_layers layers form P x V chunks of n_layers / (P V)
// consecutive layers (V = virtual stages). Global chunk g lives on pipeline
// rank g % P, so rank p holds chunks p, p + P, p + 2P, ... (interleaved
// 1F1B); chunk 0 also holds the embedding, chunk P V - 1 the final norm, the
// LM head and the loss.
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

  // The layout of rank (tp_rank, pp_rank); the shape must be divisible
  // (ValidateConfig checks it).
  static ModelLayout Make(const ModelShape& shape, int tp, int tp_rank, int pp, int pp_rank, int virtual_stages);
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
