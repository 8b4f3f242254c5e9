#include "checkpoint/store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string_view>
#include <utility>

#include "core/crc32c.h"
#include "core/escape.h"
#include "core/tensor.h"

namespace latam::ckpt {

namespace fs = std::filesystem;

namespace {

std::string ErrnoText() { return std::strerror(errno); }

constexpr uint8_t kTrailerTag = (15 << 3) | 5;  // Checkpoint.manifest_crc32c, fixed32
constexpr size_t kTrailerBytes = 5;


// A name that stays inside the step directory: no separator, not . or ..
bool PlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

// The step of a "step_<digits>" directory name, or -1.
int64_t StepOfDirName(const std::string& name) {
  const std::string prefix = "step_";
  if (name.size() <= prefix.size() || name.size() > prefix.size() + 18 || name.compare(0, prefix.size(), prefix) != 0) {
    return -1;
  }
  int64_t step = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

std::vector<int64_t> ShapeOf(const TensorRecord& t) { return {t.shape().begin(), t.shape().end()}; }

Block BlockOf(const Shard& s) {
  return Block{{s.dim_offset().begin(), s.dim_offset().end()}, {s.dim_extent().begin(), s.dim_extent().end()}};
}

// Row-major element index of `point` inside block `b`.
int64_t IndexIn(const Block& b, const std::vector<int64_t>& point) {
  int64_t index = 0;
  for (size_t d = 0; d < b.offset.size(); ++d) index = index * b.extent[d] + (point[d] - b.offset[d]);
  return index;
}

void ConvertToF32(const char* src, DType dtype, int64_t n, float* out) {
  if (dtype == DType::F32) {
    std::memcpy(out, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    latam::BF16 b;
    std::memcpy(&b.bits, src + i * 2, 2);
    out[i] = b.ToFloat();
  }
}

}  // namespace

std::string StepDirName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string RankFileName(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank_%05d.bin", rank);
  return buf;
}

std::string RankIndexName(int rank) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "rank_%05d.index.pb", rank);
  return buf;
}

size_t DTypeBytes(DType dtype) { return dtype == DType::BF16 ? 2 : 4; }

// ---------------------------------------------------------------------------
// The manifest file
// ---------------------------------------------------------------------------

FileRecord MakeFileRecord(const std::string& name, const std::string& bytes) {
  FileRecord f;
  f.set_name(name);
  f.set_bytes(bytes.size());
  f.set_crc32c(Crc32c(bytes.data(), bytes.size()));
  return f;
}

std::string SerializeManifest(const Checkpoint& manifest) {
  Checkpoint body = manifest;
  body.clear_manifest_crc32c();
  std::string bytes = body.SerializeAsString();
  const uint32_t crc = Crc32c(bytes.data(), bytes.size());
  bytes.push_back(static_cast<char>(kTrailerTag));
  for (int i = 0; i < 4; ++i) bytes.push_back(static_cast<char>((crc >> (8 * i)) & 0xff));
  return bytes;
}

Result<Checkpoint> ParseManifest(const std::string& bytes, const std::string& path, std::string* warning) {
  warning->clear();
  const size_t n = bytes.size();
  const bool tagged = n >= kTrailerBytes && static_cast<uint8_t>(bytes[n - kTrailerBytes]) == kTrailerTag;
  uint32_t stored = 0;
  if (tagged) {
    for (int i = 0; i < 4; ++i) stored |= static_cast<uint32_t>(static_cast<uint8_t>(bytes[n - 4 + i])) << (8 * i);
  }
  const bool trailer_ok = tagged && stored == Crc32c(bytes.data(), n - kTrailerBytes);
  Checkpoint m;
  const bool parsed = m.ParseFromString(bytes);
  if (trailer_ok) {
    if (!parsed) return Status::InvalidInput("checkpoint " + path + ": not a valid manifest (protobuf parse failed)");
    if (m.format_version() < kFormatVersion) {
      return Status::InvalidInput("checkpoint " + path + ": format version " + std::to_string(m.format_version()) +
                                  " with a manifest checksum, which only version " + std::to_string(kFormatVersion) +
                                  " and later have: the file is corrupt");
    }
    return m;
  }
  // No valid trailer: only a format-1 manifest may lack one. A damaged
  // trailer (or a damaged byte anywhere) of a later version lands here too.
  if (parsed && m.format_version() == kFormatVersionWithoutChecksums && !m.has_manifest_crc32c()) {
    *warning = "checkpoint " + path + ": format version 1 carries no manifest checksum; its manifest is not verified";
    return m;
  }
  if (tagged || (parsed && (m.format_version() >= kFormatVersion || m.has_manifest_crc32c()))) {
    return Status::InvalidInput("checkpoint " + path + ": manifest checksum mismatch (" +
                                (tagged ? "the trailer does not match its bytes" : "no valid trailer") +
                                "): the file is corrupt");
  }
  if (!parsed) return Status::InvalidInput("checkpoint " + path + ": not a valid manifest (protobuf parse failed)");
  return Status::InvalidInput("checkpoint " + path + ": format version " + std::to_string(m.format_version()) +
                              ", this build reads versions " + std::to_string(kFormatVersionWithoutChecksums) +
                              " to " + std::to_string(kFormatVersion));
}

Status CheckManifestFile(const std::string& step_dir, Env* env) {
  const std::string path = step_dir + "/" + kManifestFile;
  if (!env->FileExists(path)) return Status::InvalidInput("checkpoint " + step_dir + ": has no " + kManifestFile);
  LATAM_ASSIGN_OR_RETURN(const std::string bytes, env->ReadFile(path));
  std::string warning;
  LATAM_ASSIGN_OR_RETURN(const Checkpoint m, ParseManifest(bytes, path, &warning));
  (void)m;
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// The tensors of a model
// ---------------------------------------------------------------------------

Status CheckModelConfig(const config::ModelConfig& m, const std::string& where) {
  auto positive = [&](const char* field, int64_t v) -> Status {
    if (v > 0) return Status::Ok();
    return Status::InvalidInput(where + ": model." + field + " is " + std::to_string(v) + ", expected > 0");
  };
  LATAM_RETURN_IF_ERROR(positive("vocab_size", m.vocab_size()));
  LATAM_RETURN_IF_ERROR(positive("dim", m.dim()));
  LATAM_RETURN_IF_ERROR(positive("n_layers", m.n_layers()));
  LATAM_RETURN_IF_ERROR(positive("n_heads", m.n_heads()));
  LATAM_RETURN_IF_ERROR(positive("n_kv_heads", m.n_kv_heads()));
  LATAM_RETURN_IF_ERROR(positive("ffn_dim", m.ffn_dim()));
  if (m.dim() % m.n_heads() != 0) {
    return Status::InvalidInput(where + ": model.n_heads " + std::to_string(m.n_heads()) + " does not divide model.dim " +
                                std::to_string(m.dim()));
  }
  if (m.n_heads() % m.n_kv_heads() != 0) {
    return Status::InvalidInput(where + ": model.n_kv_heads " + std::to_string(m.n_kv_heads()) +
                                " does not divide model.n_heads " + std::to_string(m.n_heads()));
  }
  return Status::Ok();
}

namespace {

// The LoRA target modules in ModelTensors' order.
constexpr const char* kAdapterModules[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                           "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                           "mlp.down_proj"};

bool HasAdapter(const config::AdapterConfig& a) { return a.kind() != config::AdapterConfig::NONE; }

// Whether module k (kAdapterModules) is one of the adapter's targets.
bool Targets(const config::AdapterConfig& a, size_t k) {
  const std::string name = std::string(kAdapterModules[k]).substr(std::string(kAdapterModules[k]).find('.') + 1);
  return std::find(a.targets().begin(), a.targets().end(), name) != a.targets().end();
}

}  // namespace

Status CheckAdapterConfig(const config::AdapterConfig& a, const config::ModelConfig& m, const std::string& where) {
  if (!HasAdapter(a)) return Status::Ok();
  if (a.kind() != config::AdapterConfig::LORA && a.kind() != config::AdapterConfig::QLORA) {
    return Status::InvalidInput(where + ": adapter.kind " + std::to_string(a.kind()) + " is unknown");
  }
  const int64_t limit = std::min<int64_t>(m.dim(), m.ffn_dim());
  if (a.rank() < 1 || a.rank() > limit) {
    return Status::InvalidInput(where + ": adapter.rank " + std::to_string(a.rank()) + " is outside [1, " +
                                std::to_string(limit) + "]");
  }
  std::set<std::string> seen;
  for (int i = 0; i < a.targets_size(); ++i) {
    bool known = false;
    for (const char* module : kAdapterModules) known = known || a.targets(i) == std::string(module).substr(std::string(module).find('.') + 1);
    if (!known || !seen.insert(a.targets(i)).second) {
      return Status::InvalidInput(where + ": adapter.targets[" + std::to_string(i) + "] '" + EscapeBytes(a.targets(i)) +
                                  "' is unknown or repeated");
    }
  }
  if (a.targets_size() == 0) return Status::InvalidInput(where + ": adapter.targets is empty");
  return Status::Ok();
}

int64_t ModelTensorCount(const config::ModelConfig& m, bool with_moments, const config::AdapterConfig& adapter) {
  const int64_t parameters = 9 * static_cast<int64_t>(m.n_layers()) + 2 + (m.tie_embeddings() ? 0 : 1);
  if (!HasAdapter(adapter)) return parameters * (with_moments ? 3 : 1);
  return parameters + 2 * adapter.targets_size() * static_cast<int64_t>(m.n_layers()) * (with_moments ? 3 : 1);
}

std::vector<TensorSpec> ModelTensors(const config::ModelConfig& m, bool with_moments,
                                     const config::AdapterConfig& adapter) {
  const int64_t dim = m.dim(), ffn = m.ffn_dim(), vocab = m.vocab_size();
  const int64_t hd = dim / m.n_heads(), q_rows = m.n_heads() * hd, kv_rows = m.n_kv_heads() * hd;
  const bool lora = HasAdapter(adapter);
  std::vector<TensorSpec> out;
  out.reserve(static_cast<size_t>(ModelTensorCount(m, with_moments, adapter)));
  auto add_with = [&](std::string name, std::vector<int64_t> shape, bool moments) {
    if (moments) {
      out.push_back({name, shape});
      out.push_back({name + ".exp_avg", shape});
      out.push_back({name + ".exp_avg_sq", std::move(shape)});
    } else {
      out.push_back({std::move(name), std::move(shape)});
    }
  };
  // A frozen base (LoRA) keeps no moments.
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    add_with(std::move(name), std::move(shape), with_moments && !lora);
  };
  add("model.embed_tokens.weight", {vocab, dim});
  for (int64_t i = 0; i < m.n_layers(); ++i) {
    const std::string layer = "model.layers." + std::to_string(i) + ".";
    add(layer + "input_layernorm.weight", {dim});
    add(layer + "self_attn.q_proj.weight", {q_rows, dim});
    add(layer + "self_attn.k_proj.weight", {kv_rows, dim});
    add(layer + "self_attn.v_proj.weight", {kv_rows, dim});
    add(layer + "self_attn.o_proj.weight", {dim, q_rows});
    add(layer + "post_attention_layernorm.weight", {dim});
    add(layer + "mlp.gate_proj.weight", {ffn, dim});
    add(layer + "mlp.up_proj.weight", {ffn, dim});
    add(layer + "mlp.down_proj.weight", {dim, ffn});
    if (!lora) continue;
    // [out, in] of each target module, in kAdapterModules' order.
    const int64_t shapes[7][2] = {{q_rows, dim}, {kv_rows, dim}, {kv_rows, dim}, {dim, q_rows},
                                  {ffn, dim},    {ffn, dim},     {dim, ffn}};
    const int64_t r = adapter.rank();
    for (size_t k = 0; k < 7; ++k) {
      if (!Targets(adapter, k)) continue;
      add_with(layer + kAdapterModules[k] + ".lora_A.weight", {r, shapes[k][1]}, with_moments);
      add_with(layer + kAdapterModules[k] + ".lora_B.weight", {shapes[k][0], r}, with_moments);
    }
  }
  add("model.norm.weight", {dim});
  if (!m.tie_embeddings()) add("lm_head.weight", {vocab, dim});
  return out;
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

Result<std::unique_ptr<ShardFileWriter>> ShardFileWriter::Create(const std::string& dir, const std::string& file_name,
                                                                 Env* env) {
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, env->NewWritableFile(dir + "/" + file_name));
  return std::unique_ptr<ShardFileWriter>(new ShardFileWriter(file_name, std::move(file)));
}

Result<Shard> ShardFileWriter::Append(const void* data, DType dtype, const Block& block) {
  const uint64_t length = static_cast<uint64_t>(block.numel()) * DTypeBytes(dtype);
  Shard s;
  s.set_file(file_name_);
  s.set_offset(offset_);
  s.set_length(length);
  for (size_t d = 0; d < block.offset.size(); ++d) {
    s.add_dim_offset(block.offset[d]);
    s.add_dim_extent(block.extent[d]);
  }
  s.set_chunk_bytes(kChunkBytes);
  const char* bytes = static_cast<const char*>(data);
  uint32_t whole = 0;
  for (uint64_t c = 0; c < length; c += kChunkBytes) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, length - c));
    s.add_chunk_crc32c(Crc32c(bytes + c, n));
    whole = Crc32c(bytes + c, n, whole);
  }
  s.set_crc32c(whole);
  if (closed_) return Status::Internal(file_->path() + ": Append after Close");
  LATAM_RETURN_IF_ERROR(file_->Append(std::string_view(bytes, static_cast<size_t>(length))));
  offset_ += length;
  return s;
}

Status ShardFileWriter::Close() {
  if (closed_) return Status::Ok();
  closed_ = true;
  const Status synced = file_->Sync();
  const Status closed = file_->Close();
  return synced.ok() ? closed : synced;
}

Status MergeRankIndexes(const std::string& dir, int ranks, Checkpoint* manifest, Env* env) {
  std::map<std::string, int> position;
  for (int r = 0; r < ranks; ++r) {
    const std::string path = dir + "/" + RankIndexName(r);
    LATAM_ASSIGN_OR_RETURN(const std::string bytes, env->ReadFile(path));
    Checkpoint index;
    if (!index.ParseFromString(bytes)) return Status::IoError("cannot parse " + path);
    *manifest->add_files() = MakeFileRecord(RankIndexName(r), bytes);
    for (const TensorRecord& t : index.tensors()) {
      auto it = position.find(t.name());
      if (it == position.end()) {
        position[t.name()] = manifest->tensors_size();
        *manifest->add_tensors() = t;
        continue;
      }
      TensorRecord* merged = manifest->mutable_tensors(it->second);
      if (ShapeOf(*merged) != ShapeOf(t) || merged->dtype() != t.dtype()) {
        return Status::Internal("tensor " + t.name() + ": ranks disagree on its shape or dtype (" + path + ")");
      }
      for (const Shard& s : t.shards()) *merged->add_shards() = s;
    }
  }
  for (const TensorRecord& t : manifest->tensors()) {
    int64_t stored = 0;
    for (const Shard& s : t.shards()) stored += BlockOf(s).numel();
    if (stored != WholeBlock(ShapeOf(t)).numel()) {
      return Status::Internal("tensor " + t.name() + ": the ranks stored " + std::to_string(stored) + " of its " +
                              std::to_string(WholeBlock(ShapeOf(t)).numel()) + " elements");
    }
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

Result<std::string> ResolveCheckpointDir(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return Status::InvalidInput("checkpoint " + path + ": no such directory");
  if (fs::exists(fs::path(path) / kManifestFile, ec)) return path;
  std::string checkpoints = path;
  if (!fs::exists(fs::path(path) / kLatestFile, ec) && fs::is_directory(fs::path(path) / "checkpoints", ec)) {
    checkpoints = (fs::path(path) / "checkpoints").string();
  }
  const std::string latest = (fs::path(checkpoints) / kLatestFile).string();
  if (!fs::exists(latest, ec)) {
    return Status::InvalidInput("checkpoint " + path + ": not a checkpoint (no " + kManifestFile + ", no " +
                                kLatestFile + " file naming one)");
  }
  LATAM_ASSIGN_OR_RETURN(std::string name, Env::Default()->ReadFile(latest));
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const std::string said = "'" + EscapeBytes(name) + "'";
  std::string problem;
  if (!PlainFileName(name) || StepOfDirName(name) < 0) {
    problem = "not a step directory name";
  } else {
    const Status complete = CheckManifestFile(checkpoints + "/" + name);
    if (complete.ok()) return checkpoints + "/" + name;
    problem = complete.message();
  }
  // The newest complete step directory instead.
  LATAM_ASSIGN_OR_RETURN(const std::vector<std::string> names, Env::Default()->ListDir(checkpoints));
  std::vector<std::pair<int64_t, std::string>> steps;
  for (const std::string& n : names) {
    if (StepOfDirName(n) >= 0 && n != name && fs::is_directory(fs::path(checkpoints) / n, ec)) {
      steps.emplace_back(StepOfDirName(n), n);
    }
  }
  std::sort(steps.rbegin(), steps.rend());
  for (const auto& [step, candidate] : steps) {
    if (!CheckManifestFile(checkpoints + "/" + candidate).ok()) continue;
    std::fprintf(stderr, "latam: warning: %s says %s (%s); using %s, the newest complete checkpoint\n",
                 latest.c_str(), said.c_str(), problem.c_str(), candidate.c_str());
    return checkpoints + "/" + candidate;
  }
  return Status::InvalidInput("checkpoint " + latest + " says " + said + " (" + problem + "), and no step directory of " +
                              checkpoints + " holds a complete checkpoint");
}

Result<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& path) {
  LATAM_ASSIGN_OR_RETURN(const std::string dir, ResolveCheckpointDir(path));
  std::unique_ptr<CheckpointReader> r(new CheckpointReader());
  r->dir_ = dir;
  const std::string manifest_path = dir + "/" + kManifestFile;
  LATAM_ASSIGN_OR_RETURN(const std::string bytes, Env::Default()->ReadFile(manifest_path));
  std::string warning;
  LATAM_ASSIGN_OR_RETURN(r->manifest_, ParseManifest(bytes, manifest_path, &warning));
  if (!warning.empty()) std::fprintf(stderr, "latam: warning: %s\n", warning.c_str());
  LATAM_RETURN_IF_ERROR(r->Validate());
  return r;
}

CheckpointReader::~CheckpointReader() {
  for (const auto& [name, fd] : fds_) ::close(fd);
}

const TensorRecord* CheckpointReader::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &manifest_.tensors(static_cast<int>(it->second));
}

Status CheckpointReader::Validate() {
  const std::string where = "checkpoint " + dir_ + "/" + kManifestFile;
  if (manifest_.format_version() < kFormatVersionWithoutChecksums || manifest_.format_version() > kFormatVersion) {
    return Status::InvalidInput(where + ": format version " + std::to_string(manifest_.format_version()) +
                                ", this build reads versions " + std::to_string(kFormatVersionWithoutChecksums) +
                                " to " + std::to_string(kFormatVersion));
  }
  if (!manifest_.has_model() || manifest_.tensors_size() == 0) {
    return Status::InvalidInput(where + ": has no model config or no tensors");
  }
  LATAM_RETURN_IF_ERROR(ValidateTensorSet());
  LATAM_RETURN_IF_ERROR(ValidateFileRecords());
  std::map<std::string, uint64_t> file_sizes;
  for (int i = 0; i < manifest_.tensors_size(); ++i) {
    const TensorRecord& t = manifest_.tensors(i);
    if (!by_name_.emplace(t.name(), static_cast<size_t>(i)).second) {
      return Status::InvalidInput(where + ": tensor " + t.name() + " listed twice");
    }
    const std::vector<int64_t> shape = ShapeOf(t);
    const Block whole = WholeBlock(shape);
    int64_t covered = 0;
    for (int k = 0; k < t.shards_size(); ++k) {
      const Shard& s = t.shards(k);
      const std::string shard_where = "tensor " + t.name() + " in " + dir_ + "/" + s.file();
      const Block b = BlockOf(s);
      if (b.offset.size() != shape.size() || b.extent.size() != shape.size()) {
        return Status::InvalidInput(shard_where + ": shard rank does not match the tensor's");
      }
      for (size_t d = 0; d < shape.size(); ++d) {
        if (b.offset[d] < 0 || b.extent[d] < 1) {
          return Status::InvalidInput(shard_where + ": shard " + b.ToString() + " has an empty or negative extent");
        }
      }
      const std::optional<Block> inside = Intersect(b, whole);
      if (!inside || inside->numel() != b.numel()) {
        return Status::InvalidInput(shard_where + ": shard " + b.ToString() + " lies outside the tensor");
      }
      if (s.length() != static_cast<uint64_t>(b.numel()) * DTypeBytes(t.dtype()) || s.chunk_bytes() == 0 ||
          static_cast<uint64_t>(s.chunk_crc32c_size()) != (s.length() + s.chunk_bytes() - 1) / s.chunk_bytes() ||
          !PlainFileName(s.file())) {
        return Status::InvalidInput(shard_where + ": inconsistent shard record");
      }
      for (int j = 0; j < k; ++j) {
        if (Intersect(b, BlockOf(t.shards(j)))) {
          return Status::InvalidInput(shard_where + ": shards " + b.ToString() + " and " +
                                      BlockOf(t.shards(j)).ToString() + " overlap");
        }
      }
      covered += b.numel();
      auto size = file_sizes.find(s.file());
      if (size == file_sizes.end()) {
        struct stat st;
        const std::string path = dir_ + "/" + s.file();
        if (::stat(path.c_str(), &st) != 0) {
          return Status::InvalidInput("tensor " + t.name() + ": shard file " + path + " is missing");
        }
        size = file_sizes.emplace(s.file(), static_cast<uint64_t>(st.st_size)).first;
      }
      if (s.offset() + s.length() > size->second) {
        return Status::InvalidInput(shard_where + ": file is truncated (" + std::to_string(size->second) +
                                    " bytes, the shard ends at byte " + std::to_string(s.offset() + s.length()) + ")");
      }
    }
    if (covered != whole.numel()) {
      return Status::InvalidInput(where + ": tensor " + t.name() + " has " + std::to_string(covered) + " of its " +
                                  std::to_string(whole.numel()) + " elements stored");
    }
  }
  return Status::Ok();
}

// The tensors must be exactly the ones a model of manifest.model() saves:
// checked by count first, so an absurd n_layers allocates nothing.
Status CheckpointReader::ValidateTensorSet() {
  const std::string where = "checkpoint " + dir_ + "/" + kManifestFile;
  const config::ModelConfig& model = manifest_.model();
  LATAM_RETURN_IF_ERROR(CheckModelConfig(model, where));
  const config::AdapterConfig& adapter = manifest_.adapter();
  LATAM_RETURN_IF_ERROR(CheckAdapterConfig(adapter, model, where));
  const bool moments = manifest_.optimizer().has_moments();
  const int64_t count = ModelTensorCount(model, moments, adapter);
  const std::string what = std::string("the ") + (moments ? "parameters and Adam moments" : "parameters") +
                           " of its model (n_layers " + std::to_string(model.n_layers()) +
                           (model.tie_embeddings() ? ", tied embeddings" : "") +
                           (HasAdapter(adapter) ? ", a LoRA adapter of rank " + std::to_string(adapter.rank()) : "") +
                           ")";
  if (count != manifest_.tensors_size()) {
    return Status::InvalidInput(where + ": lists " + std::to_string(manifest_.tensors_size()) + " tensors, " + what +
                                " are " + std::to_string(count));
  }
  std::map<std::string, std::vector<int64_t>> expected;
  for (TensorSpec& t : ModelTensors(model, moments, adapter)) expected.emplace(std::move(t.name), std::move(t.shape));
  for (const TensorRecord& t : manifest_.tensors()) {
    const auto it = expected.find(t.name());
    if (it == expected.end()) {
      return Status::InvalidInput(where + ": tensor '" + EscapeBytes(t.name()) + "' is not one of " + what);
    }
    if (ShapeOf(t) != it->second) {
      return Status::InvalidInput(where + ": tensor " + t.name() + " has shape " + WholeBlock(ShapeOf(t)).ToString() +
                                  ", its model's is " + WholeBlock(it->second).ToString());
    }
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16) {
      return Status::InvalidInput(where + ": tensor " + t.name() + " has an unknown dtype");
    }
  }
  return Status::Ok();
}

// Every FileRecord names a plain file of the step directory, once; the
// tokenizer has one (format 2) and its checksum is checked now.
Status CheckpointReader::ValidateFileRecords() {
  const std::string where = "checkpoint " + dir_ + "/" + kManifestFile;
  std::map<std::string, const FileRecord*> records;
  for (const FileRecord& f : manifest_.files()) {
    if (!PlainFileName(f.name()) || !f.has_bytes() || !f.has_crc32c()) {
      return Status::InvalidInput(where + ": file record '" + EscapeBytes(f.name()) + "' is not a valid record");
    }
    if (!records.emplace(f.name(), &f).second) {
      return Status::InvalidInput(where + ": file " + f.name() + " is recorded twice");
    }
  }
  const std::string& tokenizer = manifest_.tokenizer_file();
  if (tokenizer.empty()) return Status::Ok();
  if (!PlainFileName(tokenizer)) {
    return Status::InvalidInput(where + ": tokenizer_file '" + EscapeBytes(tokenizer) + "' is not a file of " + dir_);
  }
  const auto it = records.find(tokenizer);
  if (it == records.end()) {
    if (manifest_.format_version() == kFormatVersionWithoutChecksums) return Status::Ok();
    return Status::InvalidInput(where + ": the tokenizer " + tokenizer + " has no checksum record");
  }
  return VerifyFile(*it->second);
}

Status CheckpointReader::VerifyFile(const FileRecord& f) {
  const std::string path = dir_ + "/" + f.name();
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Status::InvalidInput("checkpoint file " + path + " is missing");
  }
  if (static_cast<uint64_t>(st.st_size) != f.bytes()) {
    return Status::InvalidInput("checkpoint file " + path + " has " + std::to_string(st.st_size) +
                                " bytes, the manifest records " + std::to_string(f.bytes()) + ": the file is corrupt");
  }
  LATAM_ASSIGN_OR_RETURN(const std::string bytes, Env::Default()->ReadFile(path));
  if (bytes.size() != f.bytes() || Crc32c(bytes.data(), bytes.size()) != f.crc32c()) {
    return Status::InvalidInput("checkpoint file " + path + ": checksum mismatch: the file is corrupt");
  }
  return Status::Ok();
}

Status CheckpointReader::VerifyFiles() {
  for (const FileRecord& f : manifest_.files()) LATAM_RETURN_IF_ERROR(VerifyFile(f));
  return Status::Ok();
}

Result<int> CheckpointReader::FileDescriptor(const std::string& file) {
  auto it = fds_.find(file);
  if (it != fds_.end()) return it->second;
  const std::string path = dir_ + "/" + file;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::InvalidInput("cannot open shard file " + path + ": " + ErrnoText());
  fds_[file] = fd;
  return fd;
}

// Reads bytes [begin, end) of shard `s`, extended to whole checksum chunks,
// into *buf, verifying each chunk; *buf_begin is the shard byte at buf[0].
Status CheckpointReader::ReadSpan(const TensorRecord& t, const Shard& s, uint64_t begin, uint64_t end,
                                  std::vector<char>* buf, uint64_t* buf_begin) {
  const uint64_t chunk = s.chunk_bytes();
  const uint64_t first_chunk = begin / chunk, last_chunk = (end + chunk - 1) / chunk;
  const uint64_t span_begin = first_chunk * chunk, span_end = std::min(last_chunk * chunk, s.length());
  buf->resize(static_cast<size_t>(span_end - span_begin));
  LATAM_ASSIGN_OR_RETURN(const int fd, FileDescriptor(s.file()));
  const std::string path = dir_ + "/" + s.file();
  uint64_t done = 0;
  while (done < buf->size()) {
    const ssize_t n = ::pread(fd, buf->data() + done, buf->size() - done, static_cast<off_t>(s.offset() + span_begin + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::InvalidInput("tensor " + t.name() + ": cannot read " + path + " (truncated?)");
    done += static_cast<uint64_t>(n);
  }
  bytes_read_ += done;
  for (uint64_t c = first_chunk; c < last_chunk; ++c) {
    const uint64_t lo = c * chunk - span_begin, hi = std::min((c + 1) * chunk, s.length()) - span_begin;
    if (Crc32c(buf->data() + lo, static_cast<size_t>(hi - lo)) != s.chunk_crc32c(static_cast<int>(c))) {
      return Status::InvalidInput("tensor " + t.name() + ": checksum mismatch in " + path + " (bytes " +
                                  std::to_string(s.offset() + c * chunk) + ".." +
                                  std::to_string(s.offset() + c * chunk + (hi - lo)) + "): the file is corrupt");
    }
  }
  *buf_begin = span_begin;
  return Status::Ok();
}

Status CheckpointReader::Read(const std::string& name, const Block& want, float* out) {
  const TensorRecord* t = Find(name);
  if (t == nullptr) return Status::InvalidInput("checkpoint " + dir_ + ": has no tensor " + name);
  if (want.offset.size() != static_cast<size_t>(t->shape_size())) {
    return Status::InvalidInput("tensor " + name + ": has " + std::to_string(t->shape_size()) +
                                " dimensions in checkpoint " + dir_ + ", the model expects " +
                                std::to_string(want.offset.size()));
  }
  const std::optional<Block> inside = Intersect(want, WholeBlock(ShapeOf(*t)));
  if (!inside || inside->numel() != want.numel()) {
    return Status::InvalidInput("tensor " + name + ": block " + want.ToString() + " is outside its shape in checkpoint " +
                                dir_ + " (saved for a different model?)");
  }
  const size_t esize = DTypeBytes(t->dtype());
  const size_t rank = want.offset.size();
  int64_t filled = 0;
  std::vector<char> buf;
  for (const Shard& s : t->shards()) {
    const Block stored = BlockOf(s);
    const std::optional<Block> common = Intersect(want, stored);
    if (!common) continue;
    std::vector<int64_t> last(rank);
    for (size_t d = 0; d < rank; ++d) last[d] = common->offset[d] + common->extent[d] - 1;
    const uint64_t begin = static_cast<uint64_t>(IndexIn(stored, common->offset)) * esize;
    const uint64_t end = static_cast<uint64_t>(IndexIn(stored, last) + 1) * esize;
    uint64_t buf_begin = 0;
    LATAM_RETURN_IF_ERROR(ReadSpan(*t, s, begin, end, &buf, &buf_begin));
    // Copy the intersection run by run along the last dimension.
    const int64_t run = rank == 0 ? 1 : common->extent[rank - 1];
    std::vector<int64_t> point = common->offset;
    const int64_t runs = common->numel() / std::max<int64_t>(run, 1);
    for (int64_t k = 0; k < runs; ++k) {
      const uint64_t src = static_cast<uint64_t>(IndexIn(stored, point)) * esize - buf_begin;
      ConvertToF32(buf.data() + src, t->dtype(), run, out + IndexIn(want, point));
      for (size_t d = rank - 1; d-- > 0;) {  // advance the leading dimensions
        if (++point[d] < common->offset[d] + common->extent[d]) break;
        point[d] = common->offset[d];
      }
    }
    filled += common->numel();
  }
  if (filled != want.numel()) {
    return Status::InvalidInput("tensor " + name + ": the shards of checkpoint " + dir_ + " do not cover block " +
                                want.ToString());
  }
  return Status::Ok();
}

Status CheckpointReader::VerifyAll() {
  LATAM_RETURN_IF_ERROR(VerifyFiles());
  std::vector<char> buf;
  for (const TensorRecord& t : manifest_.tensors()) {
    for (const Shard& s : t.shards()) {
      uint64_t buf_begin = 0;
      LATAM_RETURN_IF_ERROR(ReadSpan(t, s, 0, s.length(), &buf, &buf_begin));
      if (Crc32c(buf.data(), buf.size()) != s.crc32c()) {
        return Status::InvalidInput("tensor " + t.name() + ": checksum mismatch in " + dir_ + "/" + s.file());
      }
    }
  }
  return Status::Ok();
}

}  // namespace latam::ckpt
