// Checkpoint storage: rectangular blocks of named global tensors in shard
// files, described by the manifest (checkpoint/checkpoint.proto).
//
// Writing. Each rank appends its blocks to its own file with a
// ShardFileWriter, which returns one `Shard` record per block (file, byte
// range, per-dimension offset and extent, CRC-32C of the block and of every
// kChunkBytes piece of it). The records of one rank are written next to the
// data as `rank_NNNNN.index.pb`; MergeRankIndexes turns all ranks' indexes
// into the manifest's tensor list and checks that the blocks of every tensor
// tile it exactly (no element missing, none stored twice).
//
// Reading. CheckpointReader opens a manifest, checks it against the files
// on disk (every shard file present and long enough, every shard inside its
// tensor, shards not overlapping and covering the tensor), and reads any
// block of any tensor: it intersects the requested block with the stored
// ones and reads only the byte span of each intersection, rounded out to
// whole checksum chunks, which it verifies before copying. Stored bf16 is
// converted to f32. Every error names the tensor and the file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.pb.h"
#include "core/block.h"
#include "core/env.h"
#include "core/status.h"

namespace latam::ckpt {

inline constexpr uint32_t kFormatVersion = 1;
inline constexpr uint32_t kChunkBytes = 1u << 20;
inline constexpr const char* kManifestFile = "manifest.pb";
inline constexpr const char* kLatestFile = "latest";

// "step_00000042"
std::string StepDirName(int64_t step);
// "rank_00003.bin" / "rank_00003.index.pb"
std::string RankFileName(int rank);
std::string RankIndexName(int rank);

size_t DTypeBytes(DType dtype);

class ShardFileWriter {
 public:
  // Creates (truncates) dir/file_name through `env`.
  static Result<std::unique_ptr<ShardFileWriter>> Create(const std::string& dir, const std::string& file_name,
                                                         Env* env = Env::Default());
  ~ShardFileWriter() = default;
  ShardFileWriter(const ShardFileWriter&) = delete;
  ShardFileWriter& operator=(const ShardFileWriter&) = delete;

  // Appends `block` of a tensor, its elements row-major in `data` (of
  // `dtype`), and returns its record.
  Result<Shard> Append(const void* data, DType dtype, const Block& block);
  // Flushes to stable storage (fsync) and closes.
  Status Close();
  uint64_t bytes_written() const { return offset_; }

 private:
  ShardFileWriter(std::string file_name, std::unique_ptr<WritableFile> file)
      : file_name_(std::move(file_name)), file_(std::move(file)) {}
  std::string file_name_;
  std::unique_ptr<WritableFile> file_;
  bool closed_ = false;
  uint64_t offset_ = 0;
};

// Merges the rank indexes rank_00000.index.pb .. of `dir` (ranks [0, ranks),
// read through `env`) into `manifest`'s tensors, in order of first
// appearance, and checks that each tensor is covered exactly once.
Status MergeRankIndexes(const std::string& dir, int ranks, Checkpoint* manifest, Env* env = Env::Default());

class CheckpointReader {
 public:
  // `path` is a step directory, or a run's checkpoints/ directory (then the
  // step its `latest` file names), or a run directory containing one.
  static Result<std::unique_ptr<CheckpointReader>> Open(const std::string& path);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const Checkpoint& manifest() const { return manifest_; }
  const std::string& dir() const { return dir_; }
  const TensorRecord* Find(const std::string& name) const;

  // Reads `block` of tensor `name` into `out` (row-major over block.extent).
  Status Read(const std::string& name, const Block& block, float* out);
  // Reads every shard in full and checks its block and chunk checksums;
  // reports the first bad tensor and file.
  Status VerifyAll();
  // Bytes read from shard files so far.
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  CheckpointReader() = default;
  Status Validate();
  Result<int> FileDescriptor(const std::string& file);
  Status ReadSpan(const TensorRecord& t, const Shard& s, uint64_t begin, uint64_t end, std::vector<char>* buf,
                  uint64_t* buf_begin);

  std::string dir_;
  Checkpoint manifest_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, int> fds_;
  uint64_t bytes_read_ = 0;
};

// Resolves `path` as CheckpointReader::Open does, returning the step directory.
Result<std::string> ResolveCheckpointDir(const std::string& path);

}  // namespace latam::ckpt
