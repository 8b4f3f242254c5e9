#include "checkpoint/state.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "core/arena.h"

namespace latam::ckpt {

namespace fs = std::filesystem;

namespace {

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

namespace {

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The step directory name `latest` points at, or "".
std::string LatestName(Env* env, const std::string& checkpoints_dir) {
  Result<std::string> text = env->ReadFile(checkpoints_dir + "/" + kLatestFile);
  return text.ok() ? Trimmed(*text) : "";
}

// The piece's live elements as a flat tensor.
Tensor PieceTensor(const StatePiece& p) { return Tensor::Of(p.data, Shape{p.block.numel()}, p.device); }

}  // namespace

Result<LoadWhat> ParseLoadWhat(const std::string& text) {
  if (text == "weights") return LoadWhat::kWeights;
  if (text == "optimizer") return LoadWhat::kWeightsAndOptimizer;
  if (text == "all") return LoadWhat::kAll;
  return Status::InvalidInput("train.init_load: '" + text + "' is not one of weights, optimizer, all");
}

Status CheckSameModel(const Checkpoint& manifest, const config::ModelConfig& model, const std::string& where) {
  const config::ModelConfig& saved = manifest.model();
  auto differs = [&](const char* field, int64_t a, int64_t b) -> Status {
    if (a == b) return Status::Ok();
    return Status::InvalidInput("checkpoint " + where + " holds a different model: model." + field + " is " +
                                std::to_string(a) + " there and " + std::to_string(b) + " in the config");
  };
  LATAM_RETURN_IF_ERROR(differs("vocab_size", saved.vocab_size(), model.vocab_size()));
  LATAM_RETURN_IF_ERROR(differs("dim", saved.dim(), model.dim()));
  LATAM_RETURN_IF_ERROR(differs("n_layers", saved.n_layers(), model.n_layers()));
  LATAM_RETURN_IF_ERROR(differs("n_heads", saved.n_heads(), model.n_heads()));
  LATAM_RETURN_IF_ERROR(differs("n_kv_heads", saved.n_kv_heads(), model.n_kv_heads()));
  LATAM_RETURN_IF_ERROR(differs("ffn_dim", saved.ffn_dim(), model.ffn_dim()));
  LATAM_RETURN_IF_ERROR(differs("tie_embeddings", saved.tie_embeddings(), model.tie_embeddings()));
  return Status::Ok();
}

Result<LoadResult> LoadState(CheckpointReader& reader, const config::ModelConfig& model,
                             const std::vector<StatePiece>& pieces, LoadWhat what) {
  const Checkpoint& m = reader.manifest();
  LATAM_RETURN_IF_ERROR(CheckSameModel(m, model, reader.dir()));
  LATAM_RETURN_IF_ERROR(reader.VerifyFiles());
  const bool have_moments =
      std::any_of(pieces.begin(), pieces.end(), [](const StatePiece& p) { return p.moment; });
  LoadResult r;
  r.moments_loaded = what != LoadWhat::kWeights && m.optimizer().has_moments() && have_moments;
  if (r.moments_loaded) r.optimizer_step = m.optimizer().step();
  std::vector<float> staging;
  for (const StatePiece& p : pieces) {
    if (p.moment && !r.moments_loaded) continue;
    const TensorRecord* t = reader.Find(p.name);
    if (t == nullptr) return Status::InvalidInput("checkpoint " + reader.dir() + ": tensor " + p.name + " is missing");
    const std::vector<int64_t> stored(t->shape().begin(), t->shape().end());
    if (stored != p.global_shape) {
      return Status::InvalidInput("checkpoint " + reader.dir() + ": tensor " + p.name + " has shape " +
                                  WholeBlock(stored).ToString() + ", the model expects " +
                                  WholeBlock(p.global_shape).ToString());
    }
    if (p.device == Device::kCPU) {
      LATAM_RETURN_IF_ERROR(reader.Read(p.name, p.block, p.data));
    } else {
      // Device memory: read into host memory, then one copy.
      staging.resize(static_cast<size_t>(p.block.numel()));
      LATAM_RETURN_IF_ERROR(reader.Read(p.name, p.block, staging.data()));
      CopyTensor(PieceTensor(p), Tensor::Of(staging.data(), Shape{p.block.numel()}));
    }
  }
  if (what == LoadWhat::kAll) {
    r.step = m.step();
    r.consumed_samples = m.consumed_samples();
  }
  return r;
}

// ---------------------------------------------------------------------------
// CheckpointSaver
// ---------------------------------------------------------------------------

CheckpointSaver::CheckpointSaver(std::string checkpoints_dir, Communicator* world, int keep, std::string tokenizer,
                                 Env* env)
    : checkpoints_dir_(std::move(checkpoints_dir)),
      world_(world),
      keep_(keep),
      tokenizer_(std::move(tokenizer)),
      env_(env) {}

CheckpointSaver::~CheckpointSaver() {
  if (writer_.joinable()) writer_.join();
}

Status CheckpointSaver::PrepareDirectory(const std::string& dir) {
  if (!env_->IsDirectory(checkpoints_dir_)) {
    LATAM_RETURN_IF_ERROR(env_->CreateDirs(checkpoints_dir_));
    LATAM_RETURN_IF_ERROR(env_->SyncDir(DirName(checkpoints_dir_)));
  }
  if (env_->FileExists(dir)) {
    // Only a leftover (a save interrupted by a crash, a step of an abandoned
    // history, or a damaged step that loading fell back from) can be here;
    // the complete checkpoint `latest` names never is.
    if (LatestName(env_, checkpoints_dir_) == fs::path(dir).filename().string() && CheckManifestFile(dir, env_).ok()) {
      return Status::Internal("refusing to overwrite " + dir + ", the latest complete checkpoint");
    }
    LATAM_RETURN_IF_ERROR(env_->RemoveTree(dir).WithContext("removing a stale checkpoint"));
  }
  LATAM_RETURN_IF_ERROR(env_->CreateDirs(dir));
  // The step directory's name is durable before anything can point at it.
  LATAM_RETURN_IF_ERROR(env_->SyncDir(checkpoints_dir_));
  if (!tokenizer_.empty()) {
    LATAM_RETURN_IF_ERROR(CopyFileAtomically(env_, tokenizer_, dir + "/tokenizer.json"));
  }
  return Status::Ok();
}

Status CheckpointSaver::Start(const Checkpoint& header, const std::vector<StatePiece>& pieces) {
  if (in_flight_) {
    LATAM_ASSIGN_OR_RETURN(const std::optional<SaveStats> done, Poll(true));
    (void)done;
  }
  start_time_ = NowSeconds();
  header_ = header;
  header_.set_tokenizer_file(tokenizer_.empty() ? "" : "tokenizer.json");
  step_dir_ = checkpoints_dir_ + "/" + StepDirName(header.step());
  Status prepared = world_->rank() == 0 ? PrepareDirectory(step_dir_) : Status::Ok();
  if (world_->AllReduceScalar(prepared.ok() ? 0.0 : 1.0, ReduceOp::kSum) > 0) {
    return prepared.ok() ? Status::IoError("rank 0 could not create " + step_dir_) : prepared;
  }

  // Snapshot: the blocks this rank writes, copied so training can go on.
  snapshot_pieces_.clear();
  size_t total = 0;
  for (const StatePiece& p : pieces) {
    if (!p.saved_here) continue;
    snapshot_pieces_.push_back(p);
    total += static_cast<size_t>(p.block.numel());
  }
  // The buffer is kept between saves: only the first one pays for its pages.
  snapshot_.resize(total);
  size_t at = 0;
  for (StatePiece& p : snapshot_pieces_) {
    if (p.device == Device::kCPU) {
      std::copy_n(p.data, p.block.numel(), snapshot_.data() + at);
    } else {
      CopyTensor(Tensor::Of(snapshot_.data() + at, Shape{p.block.numel()}), PieceTensor(p));
    }
    p.device = Device::kCPU;
    p.data = snapshot_.data() + at;
    at += static_cast<size_t>(p.block.numel());
  }
  snapshot_ms_ = (NowSeconds() - start_time_) * 1000.0;

  written_ = false;
  in_flight_ = true;
  const int rank = world_->rank();
  writer_ = std::thread([this, rank] {
    const double begin = NowSeconds();
    uint64_t bytes = 0;
    write_status_ = WriteRankShards(step_dir_, rank, snapshot_pieces_, &bytes, env_);
    bytes_ = bytes;
    write_s_ = NowSeconds() - begin;
    written_ = true;
  });
  return Status::Ok();
}

Status WriteRankShards(const std::string& step_dir, int rank, const std::vector<StatePiece>& pieces,
                       uint64_t* bytes, Env* env) {
  Checkpoint index;
  LATAM_ASSIGN_OR_RETURN(auto writer, ShardFileWriter::Create(step_dir, RankFileName(rank), env));
  for (const StatePiece& p : pieces) {
    if (!p.saved_here) continue;
    LATAM_ASSIGN_OR_RETURN(const Shard shard, writer->Append(p.data, DType::F32, p.block));
    TensorRecord* t = index.add_tensors();
    t->set_name(p.name);
    t->set_dtype(DType::F32);
    for (int64_t d : p.global_shape) t->add_shape(d);
    *t->add_shards() = shard;
  }
  if (bytes != nullptr) *bytes = writer->bytes_written();
  LATAM_RETURN_IF_ERROR(writer->Close());
  return WriteFileAtomically(env, step_dir + "/" + RankIndexName(rank), index.SerializeAsString());
}

Status WriteManifest(const std::string& step_dir, int ranks, const Checkpoint& header, Env* env) {
  Checkpoint manifest = header;
  manifest.set_format_version(kFormatVersion);
  manifest.clear_tensors();
  manifest.clear_files();
  LATAM_RETURN_IF_ERROR(MergeRankIndexes(step_dir, ranks, &manifest, env));
  if (!manifest.tokenizer_file().empty()) {
    LATAM_ASSIGN_OR_RETURN(const std::string bytes, env->ReadFile(step_dir + "/" + manifest.tokenizer_file()));
    *manifest.add_files() = MakeFileRecord(manifest.tokenizer_file(), bytes);
  }
  return WriteFileAtomically(env, step_dir + "/" + kManifestFile, SerializeManifest(manifest));
}

Status WriteLatest(const std::string& checkpoints_dir, const std::string& step_dir_name, Env* env) {
  return WriteFileAtomically(env, checkpoints_dir + "/" + kLatestFile, step_dir_name + "\n");
}

Result<std::optional<SaveStats>> CheckpointSaver::Poll(bool wait) {
  if (!in_flight_) return std::optional<SaveStats>();
  if (wait && writer_.joinable()) writer_.join();
  const double pending = world_->AllReduceScalar(written_ ? 0.0 : 1.0, ReduceOp::kSum);
  if (pending > 0) return std::optional<SaveStats>();
  if (writer_.joinable()) writer_.join();
  in_flight_ = false;
  snapshot_pieces_.clear();
  const double failed = world_->AllReduceScalar(write_status_.ok() ? 0.0 : 1.0, ReduceOp::kSum);
  if (failed > 0) {
    return write_status_.ok() ? Status::IoError("another rank could not write its part of " + step_dir_)
                              : write_status_;
  }
  SaveStats stats;
  stats.step = header_.step();
  stats.dir = step_dir_;
  stats.snapshot_ms = snapshot_ms_;
  stats.write_s = world_->AllReduceScalar(write_s_, ReduceOp::kMax);
  stats.bytes = static_cast<uint64_t>(world_->AllReduceScalar(static_cast<double>(bytes_), ReduceOp::kSum));
  Status finalized = world_->rank() == 0 ? Finalize() : Status::Ok();
  if (world_->AllReduceScalar(finalized.ok() ? 0.0 : 1.0, ReduceOp::kSum) > 0) {
    return finalized.ok() ? Status::IoError("rank 0 could not complete " + step_dir_) : finalized;
  }
  stats.total_s = NowSeconds() - start_time_;
  return std::optional<SaveStats>(stats);
}

Status CheckpointSaver::Finalize() {
  LATAM_RETURN_IF_ERROR(WriteManifest(step_dir_, world_->size(), header_, env_));
  LATAM_RETURN_IF_ERROR(WriteLatest(checkpoints_dir_, StepDirName(header_.step()), env_));
  ApplyRetention();
  return Status::Ok();
}

void CheckpointSaver::ApplyRetention() {
  const std::string latest = LatestName(env_, checkpoints_dir_);
  Result<std::vector<std::string>> names = env_->ListDir(checkpoints_dir_);
  if (!names.ok()) return;
  std::vector<std::string> complete, stale;
  for (const std::string& name : *names) {
    const std::string path = checkpoints_dir_ + "/" + name;
    if (name.rfind("step_", 0) != 0 || name == latest || !env_->IsDirectory(path)) continue;
    (env_->FileExists(path + "/" + kManifestFile) ? complete : stale).push_back(name);
  }
  // Retention is best effort: what it fails to remove now, the next save retries.
  // Incomplete directories are leftovers of interrupted saves.
  for (const std::string& name : stale) (void)env_->RemoveTree(checkpoints_dir_ + "/" + name);
  if (keep_ <= 0) return;
  // step_XXXXXXXX names sort by step; keep the newest keep - 1 besides latest.
  std::sort(complete.begin(), complete.end());
  const size_t others = static_cast<size_t>(keep_ - 1);
  for (size_t i = 0; i + others < complete.size(); ++i) (void)env_->RemoveTree(checkpoints_dir_ + "/" + complete[i]);
}

}  // namespace latam::ckpt
