// Hugging Face safetensors files: a streaming writer, a validating reader, the
// directory layout transformers uses (single file or sharded with an index),
// and a sharded export driver.
//
// File format (all integers little-endian):
//   u64   N                header length in bytes
//   N     bytes            JSON object {"<tensor>": {"dtype": "F32"|"BF16"|"F16"|...,
//                          "shape": [d0, ...], "data_offsets": [begin, end]}, ...,
//                          optional "__metadata__": {"<key>": "<string>"}},
//                          padded with spaces so the data section starts at a
//                          multiple of 8 bytes
//   rest  data section     row-major little-endian tensor bytes; offsets are
//                          relative to its start
// This module handles the F32, BF16 and F16 dtypes; any other dtype in a file
// is rejected at Open.
//
// Directory layout: either `model.safetensors`, or `model.safetensors.index.json`
// ({"metadata": {"total_size": N}, "weight_map": {"<tensor>": "<shard file>"}})
// plus its shard files `model-00001-of-0000K.safetensors` ...; the index wins
// when both exist.
//
// Ownership: SafetensorsFile owns its open file descriptor and reads tensors
// on demand with pread (a file is never loaded whole); HfWeights owns the
// SafetensorsFiles of its directory. SafetensorsWriter writes through an
// AtomicFile (core/env.h): "<path>.tmp" until Finish() renames it onto <path>;
// a writer destroyed before Finish() removes the temporary file, so a
// half-written file never carries the final name.
//
// Errors: malformed files, missing files or tensors and misuse of the writer
// (wrong order or byte count) are Status::InvalidInput whose message names the
// file and, where relevant, the tensor (exit code 2); failing reads, writes,
// fsyncs and renames are Status::IoError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/env.h"
#include "core/status.h"

namespace latam::ckpt {

enum class StDType { kF32, kBF16, kF16 };

// "F32", "BF16", "F16": the names used in safetensors headers.
const char* StDTypeName(StDType dtype);
// Parses a header dtype name; false for anything this module does not handle.
bool ParseStDType(const std::string& name, StDType* dtype);
size_t StDTypeSize(StDType dtype);

// Element conversions. BF16 and F16 widen to float exactly; float narrows to
// BF16 with round-to-nearest-even, NaN staying NaN (core/tensor.h BF16).
uint16_t F32ToBF16Bits(float f);
float BF16BitsToF32(uint16_t bits);
float F16BitsToF32(uint16_t bits);
// `n` elements of `dtype` at `in` (little-endian bytes) to floats at `out`.
void ConvertToF32(StDType dtype, const void* in, size_t n, float* out);
// `n` floats to `dtype` elements at `out` (F32 copies, BF16 rounds as above).
// F16 output is not supported (aborts): nothing here writes F16.
void ConvertFromF32(StDType dtype, const float* in, size_t n, void* out);

using StMetadata = std::map<std::string, std::string>;

struct StEntry {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  // Byte range [begin, end) relative to the data section. Filled in by the
  // reader, and by the writer's layout; ignored on the writer's input.
  uint64_t begin = 0;
  uint64_t end = 0;

  int64_t numel() const;
  uint64_t bytes() const { return end - begin; }
};

// Streams one safetensors file: the header goes out in Begin(), then each
// tensor's bytes in entry order, so a model never has to be in memory whole.
class SafetensorsWriter {
 public:
  // `entries` fixes the tensor order and the header; their offsets are laid
  // out contiguously in that order.
  SafetensorsWriter(std::string path, std::vector<StEntry> entries, StMetadata metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Validates the entries (unique non-empty names, non-negative dims) and
  // writes the header to "<path>.tmp".
  Status Begin();
  // The next tensor's data; `name` must be the next entry and `size` exactly
  // its byte size.
  Status Append(const std::string& name, const void* bytes, size_t size);
  // Requires every entry appended; flushes, fsyncs and renames onto `path`.
  Status Finish();

  const std::string& path() const { return path_; }
  const std::vector<StEntry>& entries() const { return entries_; }
  // Size of the finished file in bytes (valid after Begin()).
  uint64_t file_bytes() const { return data_start_ + data_bytes_; }

 private:
  void Abandon();

  std::string path_;
  std::vector<StEntry> entries_;
  StMetadata metadata_;
  std::unique_ptr<AtomicFile> file_;
  size_t next_ = 0;
  uint64_t data_start_ = 0;
  uint64_t data_bytes_ = 0;
  bool finished_ = false;
};

// One safetensors file, validated at Open: size, header length, JSON, every
// entry's dtype, shape and offsets (byte count equals numel * element size,
// inside the data section, no two entries overlapping).
class SafetensorsFile {
 public:
  static Result<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // In header order (the order of the JSON object's keys).
  const std::vector<StEntry>& entries() const { return entries_; }
  // nullptr when the file has no such tensor.
  const StEntry* Find(const std::string& name) const;
  const StMetadata& metadata() const { return metadata_; }
  // Absolute file offset of the data section (8 + N).
  uint64_t data_start() const { return data_start_; }

  // The tensor's stored bytes (entry.bytes() of them) into `out`.
  Status ReadRaw(const std::string& name, void* out) const;
  // The tensor's numel() values as float into `out`, widening BF16/F16 exactly.
  Status ReadF32(const std::string& name, float* out) const;

 private:
  SafetensorsFile() = default;
  Result<const StEntry*> Lookup(const std::string& name) const;
  Status PRead(void* out, uint64_t size, uint64_t offset, const std::string& tensor) const;

  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  std::vector<StEntry> entries_;
  std::unordered_map<std::string, size_t> by_name_;
  StMetadata metadata_;
};

inline constexpr char kHfSingleFile[] = "model.safetensors";
inline constexpr char kHfIndexFile[] = "model.safetensors.index.json";
// Hugging Face's default "5GB" shard limit (decimal gigabytes).
inline constexpr uint64_t kHfMaxShardBytes = 5ull * 1000 * 1000 * 1000;

// The weights of a Hugging Face model directory.
class HfWeights {
 public:
  // Opens `dir`/model.safetensors.index.json and its shards when the index
  // exists, else `dir`/model.safetensors. Every tensor the index lists must be
  // in its shard; tensors a shard holds beyond the index are not exposed.
  static Result<std::unique_ptr<HfWeights>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool sharded() const { return sharded_; }
  // Every tensor: sorted by name for an index, header order for one file.
  const std::vector<std::string>& names() const { return names_; }
  // nullptr when the directory has no such tensor.
  const StEntry* Find(const std::string& name) const;
  // The file holding `name`; nullptr when absent.
  const SafetensorsFile* FileOf(const std::string& name) const;
  Status ReadF32(const std::string& name, float* out) const;
  Status ReadRaw(const std::string& name, void* out) const;

 private:
  HfWeights() = default;
  Result<const SafetensorsFile*> Lookup(const std::string& name) const;

  std::string dir_;
  bool sharded_ = false;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, const SafetensorsFile*> file_of_;
};

struct HfTensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Produces one tensor's values: must leave exactly numel(shape) floats in *data.
using HfTensorProducer = std::function<Status(const std::string& name, std::vector<float>* data)>;

// Shard file name transformers uses: "model-00002-of-00005.safetensors" (1-based).
std::string HfShardName(int index, int count);

// Writes `tensors` (in the given order) as `dtype` (F32 or BF16) into `dir`
// (created if missing), asking `produce` for one tensor at a time. Tensors are
// packed greedily into shards of at most `max_shard_bytes` of tensor data (a
// larger tensor gets a shard of its own); a single shard is written as
// model.safetensors, several as HfShardName files plus model.safetensors.index.json
// (total_size, weight_map). Every file carries {"format": "pt"} metadata.
// Weight files an earlier export left in `dir` (model.safetensors, the index,
// shards named model-NNNNN-of-NNNNN.safetensors) that this export did not
// write are removed, so that loaders see only the new weights.
Status WriteHfWeights(const std::string& dir, const std::vector<HfTensorSpec>& tensors, StDType dtype,
                      const HfTensorProducer& produce, uint64_t max_shard_bytes = kHfMaxShardBytes);

}  // namespace latam::ckpt
