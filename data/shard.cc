#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>

namespace latam::data {

namespace {

std::string Errno() { return std::strerror(errno); }

void PutU32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
void PutU64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
uint32_t GetU32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t GetU64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

static_assert(std::endian::native == std::endian::little,
              "token shards are little-endian and are read in place; big-endian hosts are not supported");

}  // namespace

Result<std::unique_ptr<ShardWriter>> ShardWriter::Create(const std::string& path, Env* env) {
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFile> file, AtomicFile::Create(env, path));
  const char header[kShardHeaderBytes] = {};  // filled in by Close()
  LATAM_RETURN_IF_ERROR(file->file().Append(std::string_view(header, sizeof(header))));
  return std::unique_ptr<ShardWriter>(new ShardWriter(path, std::move(file)));
}

Status ShardWriter::AddDocument(std::span<const uint32_t> tokens) { return Append(tokens, nullptr); }

Status ShardWriter::AddDocument(std::span<const uint32_t> tokens, std::span<const uint8_t> loss_mask) {
  if (loss_mask.size() != tokens.size()) {
    return Status::Internal(std::string(path_)
                                .append(": a document of ")
                                .append(std::to_string(tokens.size()))
                                .append(" tokens with a loss mask of ")
                                .append(std::to_string(loss_mask.size())));
  }
  if (!has_mask_) {
    // Every token before the first masked document counts.
    has_mask_ = true;
    mask_bits_.assign(static_cast<size_t>((n_tokens_ + 7) / 8), 0xff);
    if (n_tokens_ % 8 != 0) mask_bits_.back() = static_cast<uint8_t>((1u << (n_tokens_ % 8)) - 1);
  }
  return Append(tokens, loss_mask.data());
}

Status ShardWriter::Append(std::span<const uint32_t> tokens, const uint8_t* loss_mask) {
  if (file_ == nullptr) return Status::Internal(path_ + ": AddDocument after Close");
  LATAM_RETURN_IF_ERROR(file_->file().Append(
      std::string_view(reinterpret_cast<const char*>(tokens.data()), tokens.size() * sizeof(uint32_t))));
  if (has_mask_) {
    mask_bits_.resize(static_cast<size_t>((n_tokens_ + tokens.size() + 7) / 8), 0);
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (loss_mask != nullptr && loss_mask[i] == 0) continue;
      const uint64_t at = n_tokens_ + i;
      mask_bits_[static_cast<size_t>(at / 8)] |= static_cast<uint8_t>(1u << (at % 8));
      ++n_loss_tokens_;
    }
  } else {
    n_loss_tokens_ += tokens.size();
  }
  n_tokens_ += tokens.size();
  doc_offsets_.push_back(n_tokens_);
  return Status::Ok();
}

Status ShardWriter::Close() {
  if (file_ == nullptr) return Status::Internal(path_ + ": Close called twice");
  std::vector<unsigned char> index(doc_offsets_.size() * 8);
  for (size_t i = 0; i < doc_offsets_.size(); ++i) PutU64(index.data() + 8 * i, doc_offsets_[i]);
  unsigned char header[kShardHeaderBytes] = {};
  std::memcpy(header, kShardMagic, 8);
  PutU32(header + 8, has_mask_ ? kShardVersionLossMask : kShardVersion);
  PutU32(header + 12, kShardDTypeU32);
  PutU64(header + 16, n_tokens_);
  PutU64(header + 24, doc_offsets_.size() - 1);
  // Released on return: an error leaves no temporary file behind.
  const std::unique_ptr<AtomicFile> file = std::move(file_);
  LATAM_RETURN_IF_ERROR(file->file().Append(std::string_view(reinterpret_cast<const char*>(index.data()), index.size())));
  if (has_mask_) {
    LATAM_RETURN_IF_ERROR(
        file->file().Append(std::string_view(reinterpret_cast<const char*>(mask_bits_.data()), mask_bits_.size())));
  }
  LATAM_RETURN_IF_ERROR(file->file().WriteAt(0, std::string_view(reinterpret_cast<const char*>(header), sizeof(header))));
  return file->Commit();
}

Result<std::unique_ptr<ShardReader>> ShardReader::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return Status::InvalidInput("cannot open token shard " + path + ": " + Errno());
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return Status::InvalidInput("cannot stat token shard " + path + ": " + Errno());
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::InvalidInput(path + (S_ISDIR(st.st_mode) ? ": is a directory" : ": is not a regular file") +
                                ", not a token shard");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < kShardHeaderBytes) {
    ::close(fd);
    return Status::InvalidInput(path + " is not a token shard: " + std::to_string(size) +
                                " bytes, shorter than the 32-byte header");
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return Status::IoError("cannot map " + path + ": " + Errno());
  std::unique_ptr<ShardReader> r(new ShardReader());
  r->path_ = path;
  r->map_ = map;
  r->map_bytes_ = size;
  const auto* bytes = static_cast<const unsigned char*>(map);
  if (std::memcmp(bytes, kShardMagic, 8) != 0) {
    return Status::InvalidInput(path + " is not a token shard (bad magic; expected \"LATAMTOK\")");
  }
  const uint32_t version = GetU32(bytes + 8);
  if (version != kShardVersion && version != kShardVersionLossMask) {
    return Status::InvalidInput(path + ": unsupported shard version " + std::to_string(version) +
                                " (this build reads versions " + std::to_string(kShardVersion) + " and " +
                                std::to_string(kShardVersionLossMask) + ")");
  }
  r->version_ = version;
  const uint32_t dtype = GetU32(bytes + 12);
  if (dtype != kShardDTypeU32) {
    return Status::InvalidInput(path + ": unsupported token dtype code " + std::to_string(dtype));
  }
  r->n_tokens_ = GetU64(bytes + 16);
  r->n_docs_ = GetU64(bytes + 24);
  // Guard the size arithmetic against absurd header values before multiplying.
  if (r->n_tokens_ > size / 4 || r->n_docs_ > size / 8) {
    return Status::InvalidInput(path + ": header claims " + std::to_string(r->n_tokens_) + " tokens and " +
                                std::to_string(r->n_docs_) + " documents, more than the file's " +
                                std::to_string(size) + " bytes hold (truncated?)");
  }
  const size_t mask_bytes = version == kShardVersionLossMask ? static_cast<size_t>((r->n_tokens_ + 7) / 8) : 0;
  const size_t expected = kShardHeaderBytes + 4 * r->n_tokens_ + 8 * (r->n_docs_ + 1) + mask_bytes;
  if (size != expected) {
    return Status::InvalidInput(path + ": file is " + std::to_string(size) + " bytes but its header implies " +
                                std::to_string(expected) + " (truncated or corrupt)");
  }
  r->tokens_ = reinterpret_cast<const uint32_t*>(bytes + kShardHeaderBytes);
  r->index_ = bytes + kShardHeaderBytes + 4 * r->n_tokens_;
  uint64_t prev = 0;
  for (uint64_t d = 0; d <= r->n_docs_; ++d) {
    const uint64_t off = GetU64(r->index_ + 8 * d);
    if ((d == 0 && off != 0) || off < prev || off > r->n_tokens_ || (d == r->n_docs_ && off != r->n_tokens_)) {
      return Status::InvalidInput(path + ": corrupt document index at entry " + std::to_string(d));
    }
    prev = off;
  }
  if (version == kShardVersionLossMask) {
    r->mask_ = r->index_ + 8 * (r->n_docs_ + 1);
    const unsigned bits_in_last = static_cast<unsigned>(r->n_tokens_ % 8);
    if (bits_in_last != 0 && (r->mask_[mask_bytes - 1] >> bits_in_last) != 0) {
      return Status::InvalidInput(path + ": corrupt loss mask (bits set past the last token)");
    }
  }
  madvise(map, size, MADV_RANDOM);
  return r;
}

ShardReader::~ShardReader() {
  if (map_ != nullptr) munmap(map_, map_bytes_);
}

uint64_t ShardReader::DocOffset(uint64_t d) const {
  LATAM_CHECK(d <= n_docs_, "document " << d << " of " << n_docs_ << " in " << path_);
  return GetU64(index_ + 8 * d);
}

}  // namespace latam::data
