#include "data/loader.h"

namespace latam::data {

Result<std::unique_ptr<TokenDataset>> TokenDataset::Open(const std::string& path, int seq_len, uint64_t seed,
                                                         int64_t vocab_size) {
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<ShardReader> shard, ShardReader::Open(path));
  if (shard->n_tokens() < static_cast<uint64_t>(seq_len) + 1) {
    return Status::InvalidInput(path + ": " + std::to_string(shard->n_tokens()) +
                                " tokens, fewer than one sample of data.seq_len + 1 = " + std::to_string(seq_len + 1));
  }
  return std::unique_ptr<TokenDataset>(new TokenDataset(std::move(shard), seq_len, seed, vocab_size));
}

Status TokenDataset::Read(uint64_t start, int32_t* inputs, int32_t* targets) const {
  const uint32_t* tokens = shard_->tokens() + start;
  for (int i = 0; i <= seq_len_; ++i) {
    if (tokens[i] >= static_cast<uint64_t>(vocab_)) {
      return Status::InvalidInput(shard_->path() + ": token " + std::to_string(start + static_cast<uint64_t>(i)) +
                                  " has id " + std::to_string(tokens[i]) +
                                  ", outside model.vocab_size = " + std::to_string(vocab_));
    }
  }
  for (int i = 0; i < seq_len_; ++i) {
    inputs[i] = static_cast<int32_t>(tokens[i]);
    targets[i] = static_cast<int32_t>(tokens[i + 1]);
  }
  return Status::Ok();
}

Status TokenDataset::Sample(uint64_t sample_index, int32_t* inputs, int32_t* targets) const {
  return Read(sampler_.WindowStart(sample_index), inputs, targets);
}

Status TokenDataset::Window(uint64_t window, int32_t* inputs, int32_t* targets) const {
  return Read((window % sampler_.num_windows()) * static_cast<uint64_t>(seq_len_), inputs, targets);
}

}  // namespace latam::data
