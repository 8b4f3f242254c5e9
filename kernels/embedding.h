// Token embedding lookup, with support for a vocabulary shard.
//
// table[V_local, D] holds the rows of token ids [vocab_begin, vocab_begin +
// V_local). For each row m of ids[M]:
//   out[m, :] = table[ids[m] - vocab_begin, :]   if the id is in the shard
//               0                                 otherwise
// Backward: dtable[ids[m] - vocab_begin, :] += dout[m, :] for ids in the
// shard. The backward is parallel over embedding columns, so every row's
// sum is accumulated in token order: deterministic for any thread count.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace latam::cpu {

// out is overwritten.
void EmbeddingForward(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out);
// dtable is accumulated.
void EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin, const Tensor& dtable);

}  // namespace latam::cpu
