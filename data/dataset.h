// TokenDataset: a dataset of one or more token shards, read as windows of
// seq_len + 1 tokens.
//
// `path` is a shard file or a directory; a directory's dataset is every
// regular file in it ending in ".bin", in name order. Shard s of n_s tokens
// holds (n_s - 1) / seq_len windows; window k of shard s covers tokens
// [k seq_len, k seq_len + seq_len + 1), so windows never cross a shard's
// end. The dataset's windows are numbered shard by shard. Inputs are a
// window's first seq_len tokens, targets its last seq_len; with
// `mask_cross_document` a target that is the first token of a document
// (the one following the previous document's last token, EOS) is -1, which
// the loss ignores. A shard with a loss mask (version 2, data/shard.h) sets
// target i to -1 when token i + 1 of the window has mask bit 0 (for chat
// shards: everything but the assistant's replies). Every id is
// checked against the model's vocabulary as it is read; an out-of-range id
// is a bad-input error naming the file and the token's position.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/shard.h"
#include "core/status.h"

namespace latam::data {

class TokenDataset {
 public:
  // Fails (kInvalidInput) if a shard is unreadable or the dataset has no
  // window of seq_len + 1 tokens.
  static Result<std::unique_ptr<TokenDataset>> Open(const std::string& path, int seq_len, int64_t vocab_size,
                                                    bool mask_cross_document = false);

  uint64_t num_windows() const { return window_starts_.back(); }
  uint64_t num_tokens() const;
  size_t num_shards() const { return shards_.size(); }
  const std::string& path() const { return path_; }

  // Fills inputs[seq_len] and targets[seq_len] from window `window`
  // (< num_windows()), and when doc_start is not null doc_start[seq_len]:
  // for each input position, the position in the window where its document
  // begins (0 for the document the window starts inside), as
  // AttentionDims::doc_start (kernels/attention.h) reads it.
  Status ReadWindow(uint64_t window, int32_t* inputs, int32_t* targets, int32_t* doc_start = nullptr) const;

 private:
  TokenDataset() = default;
  std::string path_;
  int seq_len_ = 0;
  int64_t vocab_ = 0;
  bool mask_cross_document_ = false;
  std::vector<std::unique_ptr<ShardReader>> shards_;
  std::vector<uint64_t> window_starts_{0};  // prefix sums of windows per shard
};

}  // namespace latam::data
