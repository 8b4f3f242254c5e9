#include "parallel/context_parallel.h"

#include "core/check.h"

namespace latam {

ContextSplit::ContextSplit(int size, int rank, int64_t seq_len) : size_(size), rank_(rank), seq_len_(seq_len) {
  LATAM_CHECK(size >= 1 && rank >= 0 && rank < size, "context rank " << rank << " of a group of " << size);
  LATAM_CHECK(seq_len > 0 && (size == 1 || seq_len % (2 * size) == 0),
              "sequences of " << seq_len << " tokens do not split into 2 x " << size << " context chunks");
}

int64_t ContextSplit::GlobalPosition(int of, int64_t i) const {
  if (size_ == 1) return i;
  const int64_t l = chunk_len();
  const int half = i < l ? 0 : 1;
  return ChunkOf(of, half) * l + (i - half * l);
}

std::vector<ContextSplit::Block> ContextSplit::Blocks(int kv_rank) const {
  std::vector<Block> blocks;
  const int64_t l = size_ == 1 ? seq_len_ : chunk_len();
  const int halves = size_ == 1 ? 1 : 2;
  for (int q = 0; q < halves; ++q) {
    for (int k = 0; k < halves; ++k) {
      const int64_t q0 = ChunkOf(rank_, q) * l, k0 = ChunkOf(kv_rank, k) * l;
      if (k0 <= q0 + l - 1) blocks.push_back({q, k, q0, k0});  // some key at or before the last query
    }
  }
  return blocks;
}

void ContextSplit::Scatter(const int32_t* full, int64_t batch, int32_t* local) const {
  const int64_t n = local_len();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t i = 0; i < n; ++i) local[b * n + i] = full[b * seq_len_ + GlobalPosition(rank_, i)];
  }
}

}  // namespace latam
