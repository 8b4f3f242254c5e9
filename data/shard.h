// Token shard files (format "LATAMTOK" version 1) and their reader/writer.
//
// Layout, all integers little-endian:
//   offset 0    char[8]  magic "LATAMTOK"
//   offset 8    uint32   version (1)
//   offset 12   uint32   token dtype (1 = uint32)
//   offset 16   uint64   n_tokens
//   offset 24   uint64   n_docs
//   offset 32   uint32   tokens[n_tokens]       documents, each ending in EOS
//   then        uint64   doc_offsets[n_docs+1]  token index where each
//                        document starts; doc_offsets[n_docs] == n_tokens
// The file size must be exactly 32 + 4 n_tokens + 8 (n_docs + 1).
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
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint32_t kShardDTypeU32 = 1;
inline constexpr size_t kShardHeaderBytes = 32;

class ShardWriter {
 public:
  static Result<std::unique_ptr<ShardWriter>> Create(const std::string& path, Env* env = Env::Default());
  // Without a successful Close(), removes the temporary file.
  ~ShardWriter() = default;

  // Appends one document (its tokens should already end with EOS).
  Status AddDocument(std::span<const uint32_t> tokens);
  // Writes the index and header, flushes, fsyncs and renames into place.
  Status Close();

  uint64_t n_tokens() const { return n_tokens_; }
  uint64_t n_docs() const { return doc_offsets_.size() - 1; }

 private:
  ShardWriter(std::string path, std::unique_ptr<AtomicFile> file) : path_(std::move(path)), file_(std::move(file)) {}
  std::string path_;
  std::unique_ptr<AtomicFile> file_;  // null once closed
  uint64_t n_tokens_ = 0;
  std::vector<uint64_t> doc_offsets_{0};
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

 private:
  ShardReader() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const uint32_t* tokens_ = nullptr;
  const unsigned char* index_ = nullptr;
  uint64_t n_tokens_ = 0;
  uint64_t n_docs_ = 0;
};

}  // namespace latam::data
