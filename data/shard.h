// Token shard files (format "LATAMTOK" versions 1 and 2) and their
// reader/writer.
//
// Layout, all integers little-endian:
//   offset 0    char[8]  magic "LATAMTOK"
//   offset 8    uint32   version (1, or 2 when the shard has a loss mask)
//   offset 12   uint32   token dtype (1 = uint32)
//   offset 16   uint64   n_tokens
//   offset 24   uint64   n_docs
//   offset 32   uint32   tokens[n_tokens]       documents, each ending in EOS
//   then        uint64   doc_offsets[n_docs+1]  token index where each
//                        document starts; doc_offsets[n_docs] == n_tokens
//   version 2 only:
//   then        uint8    loss_mask[(n_tokens + 7) / 8]
//                        bit i % 8 (least significant first) of byte i / 8
//                        is 1 when token i counts in the loss as a target
//                        (the prediction of token i from tokens before it);
//                        the padding bits after n_tokens are 0
// The file size must be exactly 32 + 4 n_tokens + 8 (n_docs + 1), plus
// (n_tokens + 7) / 8 for version 2. A version 1 shard has no mask: every
// token counts. The writer writes version 2 only when some document was
// added with a mask, so pretraining shards stay version 1, byte for byte.
//
// ShardWriter writes through an AtomicFile (core/env.h): "<path>.tmp", renamed
// onto <path> in Close(), so a crash never leaves a half-written shard under
// the final name. ShardReader
// memory-maps the file read-only and validates the header, the size and the
// document index before handing out any token; a path that is not a regular
// file (a directory, a device) is a bad-input error naming it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/check.h"
#include "core/env.h"
#include "core/status.h"

namespace latam::data {

inline constexpr char kShardMagic[8] = {'L', 'A', 'T', 'A', 'M', 'T', 'O', 'K'};
inline constexpr uint32_t kShardVersion = 1;            // tokens and document index
inline constexpr uint32_t kShardVersionLossMask = 2;    // ... and a loss mask
inline constexpr uint32_t kShardDTypeU32 = 1;
inline constexpr size_t kShardHeaderBytes = 32;

class ShardWriter {
 public:
  static Result<std::unique_ptr<ShardWriter>> Create(const std::string& path, Env* env = Env::Default());
  // Without a successful Close(), removes the temporary file.
  ~ShardWriter() = default;

  // Appends one document (its tokens should already end with EOS); all of
  // its tokens count in the loss.
  Status AddDocument(std::span<const uint32_t> tokens);
  // Appends one document with its loss mask (loss_mask[i] != 0: token i
  // counts as a target; same length as tokens, else kInternal). The shard
  // becomes version 2.
  Status AddDocument(std::span<const uint32_t> tokens, std::span<const uint8_t> loss_mask);
  // Writes the index and header, flushes, fsyncs and renames into place.
  Status Close();

  uint64_t n_tokens() const { return n_tokens_; }
  uint64_t n_docs() const { return doc_offsets_.size() - 1; }
  // Tokens whose mask bit is 1 so far (n_tokens() without masks).
  uint64_t n_loss_tokens() const { return n_loss_tokens_; }

 private:
  ShardWriter(std::string path, std::unique_ptr<AtomicFile> file) : path_(std::move(path)), file_(std::move(file)) {}
  // loss_mask null: every token counts.
  Status Append(std::span<const uint32_t> tokens, const uint8_t* loss_mask);
  std::string path_;
  std::unique_ptr<AtomicFile> file_;  // null once closed
  uint64_t n_tokens_ = 0;
  uint64_t n_loss_tokens_ = 0;
  std::vector<uint64_t> doc_offsets_{0};
  // The loss mask's bits, kept in memory (n_tokens / 8 bytes) from the
  // first document added with a mask on.
  std::vector<uint8_t> mask_bits_;
  bool has_mask_ = false;
};

class ShardReader {
 public:
  static Result<std::unique_ptr<ShardReader>> Open(const std::string& path);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  const std::string& path() const { return path_; }
  uint64_t n_tokens() const { return n_tokens_; }
  uint64_t n_docs() const { return n_docs_; }
  // Token i; i < n_tokens().
  const uint32_t* tokens() const { return tokens_; }
  // Start of document d (d <= n_docs(); d == n_docs() gives n_tokens()).
  uint64_t DocOffset(uint64_t d) const;
  // 1 or 2.
  uint32_t version() const { return version_; }
  bool has_loss_mask() const { return mask_ != nullptr; }
  // Whether token i (< n_tokens()) counts in the loss as a target; always
  // true without a mask.
  bool CountsInLoss(uint64_t i) const { return mask_ == nullptr || ((mask_[i / 8] >> (i % 8)) & 1) != 0; }

 private:
  ShardReader() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint32_t* tokens_ = nullptr;
  const unsigned char* index_ = nullptr;
  const unsigned char* mask_ = nullptr;  // version 2 only
  uint32_t version_ = 0;
  uint64_t n_tokens_ = 0;
  uint64_t n_docs_ = 0;
};

}  // namespace latam::data
