// TokenDataset: one token shard plus its sample order, producing the
// (inputs, targets) pairs of a sample index.
//
// Sample i reads the seq_len + 1 tokens of window WindowStart(i) (sampler.h):
// inputs are the first seq_len, targets the last seq_len. Every id is checked
// against the model's vocabulary; an out-of-range id is a bad-input error
// naming the file and the token's position.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "data/sampler.h"
#include "data/shard.h"
#include "kernels/status.h"

namespace latam::data {

class TokenDataset {
 public:
  // Fails (kInvalidInput) if the shard is unreadable or shorter than one
  // window of seq_len + 1 tokens.
  static Result<std::unique_ptr<TokenDataset>> Open(const std::string& path, int seq_len, uint64_t seed,
                                                    int64_t vocab_size);

  // Fills inputs[seq_len] and targets[seq_len] for sample `sample_index` of
  // the shuffled order.
  Status Sample(uint64_t sample_index, int32_t* inputs, int32_t* targets) const;
  // Same, for window `window` taken in file order (evaluation).
  Status Window(uint64_t window, int32_t* inputs, int32_t* targets) const;

  uint64_t num_windows() const { return sampler_.num_windows(); }
  const ShardReader& shard() const { return *shard_; }

 private:
  TokenDataset(std::unique_ptr<ShardReader> shard, int seq_len, uint64_t seed, int64_t vocab)
      : shard_(std::move(shard)), sampler_(shard_->n_tokens(), seq_len, seed), seq_len_(seq_len), vocab_(vocab) {}
  Status Read(uint64_t start, int32_t* inputs, int32_t* targets) const;
  std::unique_ptr<ShardReader> shard_;
  WindowSampler sampler_;
  int seq_len_;
  int64_t vocab_;
};

}  // namespace latam::data
