#include "data/dataset.h"

#include <algorithm>
#include <filesystem>

namespace latam::data {

Result<std::unique_ptr<TokenDataset>> TokenDataset::Open(const std::string& path, int seq_len, int64_t vocab_size,
                                                         bool mask_cross_document) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code entry_ec;
      if (it->is_regular_file(entry_ec) && it->path().extension() == ".bin") files.push_back(it->path().string());
    }
    if (ec) return Status::InvalidInput(path + ": cannot list the directory: " + ec.message());
    std::sort(files.begin(), files.end());
    if (files.empty()) return Status::InvalidInput(path + ": directory has no *.bin token shards");
  } else {
    files.push_back(path);
  }
  std::unique_ptr<TokenDataset> ds(new TokenDataset());
  ds->path_ = path;
  ds->seq_len_ = seq_len;
  ds->vocab_ = vocab_size;
  ds->mask_cross_document_ = mask_cross_document;
  for (const std::string& f : files) {
    LATAM_ASSIGN_OR_RETURN(auto shard, ShardReader::Open(f));
    const uint64_t windows = shard->n_tokens() > 0 ? (shard->n_tokens() - 1) / static_cast<uint64_t>(seq_len) : 0;
    ds->window_starts_.push_back(ds->window_starts_.back() + windows);
    ds->shards_.push_back(std::move(shard));
  }
  if (ds->num_windows() == 0) {
    return Status::InvalidInput(path + ": " + std::to_string(ds->num_tokens()) +
                                " tokens, fewer than one sample of data.seq_len + 1 = " + std::to_string(seq_len + 1) +
                                " in any shard");
  }
  return ds;
}

uint64_t TokenDataset::num_tokens() const {
  uint64_t n = 0;
  for (const auto& s : shards_) n += s->n_tokens();
  return n;
}

Status TokenDataset::ReadWindow(uint64_t window, int32_t* inputs, int32_t* targets, int32_t* doc_start) const {
  LATAM_CHECK(window < num_windows(), "window " << window << " of " << num_windows() << " in " << path_);
  const size_t s = static_cast<size_t>(std::upper_bound(window_starts_.begin(), window_starts_.end(), window) -
                                       window_starts_.begin() - 1);
  const ShardReader& shard = *shards_[s];
  const uint64_t start = (window - window_starts_[s]) * static_cast<uint64_t>(seq_len_);
  const uint32_t* tokens = shard.tokens() + start;
  for (int i = 0; i <= seq_len_; ++i) {
    if (tokens[i] >= static_cast<uint64_t>(vocab_)) {
      return Status::InvalidInput(shard.path() + ": token " + std::to_string(start + static_cast<uint64_t>(i)) +
                                  " has id " + std::to_string(tokens[i]) +
                                  ", outside model.vocab_size = " + std::to_string(vocab_));
    }
  }
  for (int i = 0; i < seq_len_; ++i) {
    inputs[i] = static_cast<int32_t>(tokens[i]);
    targets[i] = static_cast<int32_t>(tokens[i + 1]);
  }
  if (shard.has_loss_mask()) {
    // Target i is token start + i + 1: its mask bit decides.
    for (int i = 0; i < seq_len_; ++i) {
      if (!shard.CountsInLoss(start + static_cast<uint64_t>(i) + 1)) targets[i] = -1;
    }
  }
  // The documents starting inside the window: from the first one after
  // `start`.
  uint64_t lo = 0, hi = shard.n_docs();
  while (lo < hi) {
    const uint64_t mid = lo + (hi - lo) / 2;
    if (shard.DocOffset(mid) <= start) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (doc_start != nullptr) {
    int32_t current = 0;
    uint64_t d = lo;
    for (int i = 0; i < seq_len_; ++i) {
      if (d < shard.n_docs() && shard.DocOffset(d) == start + static_cast<uint64_t>(i)) {
        current = i;
        ++d;
      }
      doc_start[i] = current;
    }
  }
  if (mask_cross_document_) {
    // Targets start + 1 .. start + seq_len: those at a document's start.
    for (uint64_t d = lo; d < shard.n_docs(); ++d) {
      const uint64_t at = shard.DocOffset(d);
      if (at > start + static_cast<uint64_t>(seq_len_)) break;
      targets[at - start - 1] = -1;
    }
  }
  return Status::Ok();
}

}  // namespace latam::data
