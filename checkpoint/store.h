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
// SerializeManifest gives manifest.pb's bytes: the message without
// `manifest_crc32c`, then that field (tag 0x7d, little-endian CRC-32C of
// everything before it) as the file's last 5 bytes.
//
// Reading. CheckpointReader::Open checks, before anything is read from the
// shards: the manifest's own checksum (before parsing it), its format
// version, its structure against the files on disk (every shard file
// present and long enough, every shard inside its tensor, shards not
// overlapping and covering the tensor), that its tensors are exactly the
// ones a model of manifest.model() saves (ModelTensors, same shapes), that
// every FileRecord names a plain file of the step directory, and the
// tokenizer's checksum. VerifyFiles checks every FileRecord's size and
// checksum (small files: the tokenizer and the rank indexes); LoadState
// calls it. Read reads any block of any tensor: it intersects the requested
// block with the stored ones and reads only the byte span of each
// intersection, rounded out to whole checksum chunks, which it verifies
// before copying. Stored bf16 is converted to f32. VerifyAll is VerifyFiles
// plus every shard read in full: what `latam-ckpt verify` runs, a superset
// of what a load checks. Every error names the tensor or the file.
//
// Format versions. 2 (written now) has the manifest trailer and the
// FileRecords. 1 (no trailer, no FileRecords) is still read, with a one-line
// warning on stderr that nothing protects the manifest; a manifest saying
// version 2 or later without a valid trailer is refused.
//
// Which step. A path that is a run's checkpoints/ directory (or a run
// directory holding one) means the step its `latest` file names, if that
// step is complete (manifest.pb present and its checksum good). Otherwise
// (latest names a missing or half-written step, or holds garbage) the
// newest complete step_* directory is used, with a warning on stderr naming
// both; when none is complete, the path is bad input.
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

inline constexpr uint32_t kFormatVersion = 2;
// Manifests without the trailer and FileRecords; read with a warning.
inline constexpr uint32_t kFormatVersionWithoutChecksums = 1;
inline constexpr uint32_t kChunkBytes = 1u << 20;
inline constexpr const char* kManifestFile = "manifest.pb";
inline constexpr const char* kLatestFile = "latest";

// "step_00000042"
std::string StepDirName(int64_t step);
// "rank_00003.bin" / "rank_00003.index.pb"
std::string RankFileName(int rank);
std::string RankIndexName(int rank);

size_t DTypeBytes(DType dtype);

// The record of file `name` (relative to the step directory) holding `bytes`.
FileRecord MakeFileRecord(const std::string& name, const std::string& bytes);
// manifest.pb's bytes for `manifest` (its manifest_crc32c is ignored).
std::string SerializeManifest(const Checkpoint& manifest);
// Parses manifest.pb's bytes, checking the trailer first; `path` names the
// file in errors. A format-1 manifest (no trailer) parses with *warning set
// to a one-line message; otherwise *warning is cleared.
Result<Checkpoint> ParseManifest(const std::string& bytes, const std::string& path, std::string* warning);
// Ok when `step_dir` holds a complete checkpoint: manifest.pb present,
// readable and passing its checksum (the shards are not looked at).
Status CheckManifestFile(const std::string& step_dir, Env* env = Env::Default());

// A tensor every checkpoint of a model holds: canonical name, global shape.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  bool operator==(const TensorSpec& o) const { return name == o.name && shape == o.shape; }
};
// Ok when `model` describes a Llama model this code can hold: positive
// sizes, heads dividing dim, KV heads dividing heads. `where` prefixes errors.
Status CheckModelConfig(const config::ModelConfig& model, const std::string& where);
// The tensors a checkpoint of `model` (CheckModelConfig ok) holds, in the
// model's order: model.embed_tokens.weight [vocab, dim]; per layer i
// model.layers.i.{input_layernorm [dim], self_attn.q_proj [heads*hd, dim],
// k_proj and v_proj [kv_heads*hd, dim], o_proj [dim, heads*hd],
// post_attention_layernorm [dim], mlp.gate_proj and up_proj [ffn, dim],
// mlp.down_proj [dim, ffn]}.weight; model.norm.weight [dim]; lm_head.weight
// [vocab, dim] unless tied. With moments, each also as <name>.exp_avg and
// <name>.exp_avg_sq right after it. (The same names and shapes as
// LlamaParameterSpecs and StatePieces in model/; a test holds them equal.)
// With a LoRA adapter (adapter.kind not NONE) the base tensors come without
// moments whatever with_moments says (the base is frozen), and each layer
// adds, after its base tensors, per target in q, k, v, o, gate, up, down
// order: <module>.lora_A.weight [rank, in] and <module>.lora_B.weight
// [out, rank] (with moments when with_moments), where [out, in] is the
// module's weight shape.
std::vector<TensorSpec> ModelTensors(const config::ModelConfig& model, bool with_moments,
                                     const config::AdapterConfig& adapter = config::AdapterConfig());
// Their number, without building them.
int64_t ModelTensorCount(const config::ModelConfig& model, bool with_moments,
                         const config::AdapterConfig& adapter = config::AdapterConfig());
// A manifest's adapter block is usable: kind known, rank in [1, min(dim,
// ffn_dim)], targets known and named once (errors name the field, after `where`).
Status CheckAdapterConfig(const config::AdapterConfig& adapter, const config::ModelConfig& model,
                          const std::string& where);

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
// appearance, and checks that each tensor is covered exactly once. Each
// index file is recorded (size, CRC-32C of the bytes merged) in
// manifest->files.
Status MergeRankIndexes(const std::string& dir, int ranks, Checkpoint* manifest, Env* env = Env::Default());

class CheckpointReader {
 public:
  // `path` is a step directory, or a run's checkpoints/ directory (then the
  // step its `latest` file names, see "Which step" above), or a run
  // directory containing one.
  static Result<std::unique_ptr<CheckpointReader>> Open(const std::string& path);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  const Checkpoint& manifest() const { return manifest_; }
  const std::string& dir() const { return dir_; }
  const TensorRecord* Find(const std::string& name) const;

  // Reads `block` of tensor `name` into `out` (row-major over block.extent).
  Status Read(const std::string& name, const Block& block, float* out);
  // Checks every FileRecord: the file is there with its recorded size and
  // CRC-32C. Reads only those (small) files.
  Status VerifyFiles();
  // VerifyFiles, then reads every shard in full and checks its block and
  // chunk checksums; reports the first bad file, and tensor.
  Status VerifyAll();
  // Bytes read from shard files so far.
  uint64_t bytes_read() const { return bytes_read_; }

 private:
  CheckpointReader() = default;
  Status Validate();
  Status ValidateTensorSet();
  Status ValidateFileRecords();
  Status VerifyFile(const FileRecord& f);
  Result<int> FileDescriptor(const std::string& file);
  Status ReadSpan(const TensorRecord& t, const Shard& s, uint64_t begin, uint64_t end, std::vector<char>* buf,
                  uint64_t* buf_begin);

  std::string dir_;
  Checkpoint manifest_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, int> fds_;
  uint64_t bytes_read_ = 0;
};

// Resolves `path` as CheckpointReader::Open does, returning the step
// directory (a fallback from `latest` is warned about on stderr).
Result<std::string> ResolveCheckpointDir(const std::string& path);

}  // namespace latam::ckpt
