#include "tests/unit/fault_injection_env.h"

#include <filesystem>

namespace latam::testing {

namespace {

namespace fs = std::filesystem;

// One spelling per path, so that "a//b/" and "a/b" are the same key.
std::string Key(const std::string& path) {
  std::string k = fs::path(path).lexically_normal().string();
  while (k.size() > 1 && k.back() == '/') k.pop_back();
  return k;
}

bool Under(const std::string& path, const std::string& root) {
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

}  // namespace

// Forwards to the base file, counting each call as an operation and
// recording the size at each Sync.
class FaultInjectionEnv::File final : public WritableFile {
 public:
  File(FaultInjectionEnv* env, std::unique_ptr<WritableFile> base, std::string key)
      : env_(env), base_(std::move(base)), key_(std::move(key)) {}
  ~File() override {
    if (!closed_) (void)base_->Close();  // bytes past the last Sync are dropped by a crash anyway
    std::lock_guard<std::mutex> lock(env_->mu_);
    --env_->open_files_;
  }

  Status Append(std::string_view data) override {
    LATAM_RETURN_IF_ERROR(env_->Begin("append " + std::to_string(data.size()) + " bytes to " + key_));
    return base_->Append(data);
  }
  Status WriteAt(uint64_t offset, std::string_view data) override {
    LATAM_RETURN_IF_ERROR(env_->Begin("write at " + std::to_string(offset) + " of " + key_));
    return base_->WriteAt(offset, data);
  }
  Status Flush() override {
    LATAM_RETURN_IF_ERROR(env_->Begin("flush " + key_));
    return base_->Flush();
  }
  Status Sync() override {
    LATAM_RETURN_IF_ERROR(env_->Begin("sync " + key_));
    LATAM_RETURN_IF_ERROR(base_->Sync());
    std::lock_guard<std::mutex> lock(env_->mu_);
    env_->synced_[key_] = base_->size();
    return Status::Ok();
  }
  Status Close() override {
    if (closed_) return Status::Ok();
    LATAM_RETURN_IF_ERROR(env_->Begin("close " + key_));
    closed_ = true;
    return base_->Close();
  }
  const std::string& path() const override { return base_->path(); }
  uint64_t size() const override { return base_->size(); }

 private:
  FaultInjectionEnv* env_;
  std::unique_ptr<WritableFile> base_;
  std::string key_;
  bool closed_ = false;
};

int64_t FaultInjectionEnv::operations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return operations_;
}

std::vector<std::string> FaultInjectionEnv::log() const {
  std::lock_guard<std::mutex> lock(mu_);
  return log_;
}

void FaultInjectionEnv::CrashBeforeOperation(int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  crash_at_ = n;
}

bool FaultInjectionEnv::crashed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return crashed_;
}

Status FaultInjectionEnv::Begin(const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!crashed_ && operations_ == crash_at_) crashed_ = true;
  if (crashed_) return Status::IoError("injected crash: " + what + " did not happen");
  ++operations_;
  log_.push_back(what);
  return Status::Ok();
}

void FaultInjectionEnv::Forget(const std::string& path) {
  std::erase_if(synced_, [&](const auto& entry) { return Under(entry.first, path); });
}

Result<std::unique_ptr<WritableFile>> FaultInjectionEnv::Open(const std::string& path, bool append) {
  const std::string key = Key(path);
  LATAM_RETURN_IF_ERROR(Begin((append ? "open to append " : "create ") + key));
  const bool existed = base_->FileExists(path);
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file,
                         append ? base_->NewAppendableFile(path) : base_->NewWritableFile(path));
  std::lock_guard<std::mutex> lock(mu_);
  ++open_files_;
  if (!existed) {
    synced_[key] = 0;
    pending_.push_back({Key(DirName(key)), key, std::nullopt, std::nullopt});
  } else if (!append) {
    synced_[key] = 0;  // truncated, at once
  } else if (!synced_.count(key)) {
    synced_[key] = file->size();  // written before this Env knew it: durable
  }
  return std::unique_ptr<WritableFile>(new File(this, std::move(file), key));
}

Result<std::unique_ptr<WritableFile>> FaultInjectionEnv::NewWritableFile(const std::string& path) {
  return Open(path, false);
}

Result<std::unique_ptr<WritableFile>> FaultInjectionEnv::NewAppendableFile(const std::string& path) {
  return Open(path, true);
}

Status FaultInjectionEnv::RenameFile(const std::string& from, const std::string& to) {
  const std::string src = Key(from), dst = Key(to);
  if (Key(DirName(src)) != Key(DirName(dst))) {
    return Status::Internal("FaultInjectionEnv models renames within one directory only: " + src + " to " + dst);
  }
  LATAM_RETURN_IF_ERROR(Begin("rename " + src + " to " + dst));
  PendingName pending{Key(DirName(dst)), dst, src, std::nullopt};
  if (base_->FileExists(to)) {
    LATAM_ASSIGN_OR_RETURN(std::string old, base_->ReadFile(to));
    std::lock_guard<std::mutex> lock(mu_);
    auto synced = synced_.find(dst);
    if (synced != synced_.end() && old.size() > synced->second) old.resize(synced->second);
    pending.replaced = std::move(old);
  }
  LATAM_RETURN_IF_ERROR(base_->RenameFile(from, to));
  std::lock_guard<std::mutex> lock(mu_);
  auto moved = synced_.find(src);
  synced_.erase(dst);
  if (moved != synced_.end()) {
    synced_[dst] = moved->second;
    synced_.erase(moved);
  }
  pending_.push_back(std::move(pending));
  return Status::Ok();
}

Status FaultInjectionEnv::RemoveFile(const std::string& path) {
  LATAM_RETURN_IF_ERROR(Begin("remove " + Key(path)));
  LATAM_RETURN_IF_ERROR(base_->RemoveFile(path));
  std::lock_guard<std::mutex> lock(mu_);
  Forget(Key(path));
  std::erase_if(pending_, [&](const PendingName& p) { return Under(p.name, Key(path)); });
  return Status::Ok();
}

Status FaultInjectionEnv::RemoveTree(const std::string& path) {
  LATAM_RETURN_IF_ERROR(Begin("remove tree " + Key(path)));
  LATAM_RETURN_IF_ERROR(base_->RemoveTree(path));
  std::lock_guard<std::mutex> lock(mu_);
  Forget(Key(path));
  std::erase_if(pending_, [&](const PendingName& p) { return Under(p.name, Key(path)); });
  return Status::Ok();
}

Status FaultInjectionEnv::CreateDirs(const std::string& path) {
  const std::string key = Key(path);
  LATAM_RETURN_IF_ERROR(Begin("create directories " + key));
  std::vector<std::string> created;
  fs::path prefix;
  for (const fs::path& part : fs::path(key)) {
    prefix /= part;
    if (!base_->FileExists(prefix.string())) created.push_back(Key(prefix.string()));
  }
  LATAM_RETURN_IF_ERROR(base_->CreateDirs(path));
  std::lock_guard<std::mutex> lock(mu_);
  for (const std::string& dir : created) pending_.push_back({Key(DirName(dir)), dir, std::nullopt, std::nullopt});
  return Status::Ok();
}

Status FaultInjectionEnv::SyncDir(const std::string& dir) {
  const std::string key = Key(dir);
  LATAM_RETURN_IF_ERROR(Begin("sync directory " + key));
  LATAM_RETURN_IF_ERROR(base_->SyncDir(dir));
  std::lock_guard<std::mutex> lock(mu_);
  std::erase_if(pending_, [&](const PendingName& p) { return p.dir == key; });
  return Status::Ok();
}

Status FaultInjectionEnv::DropUnsyncedData() {
  std::lock_guard<std::mutex> lock(mu_);
  if (open_files_ != 0) {
    return Status::Internal("FaultInjectionEnv: " + std::to_string(open_files_) + " files still open at the crash");
  }
  // Names first, newest change first.
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    if (!it->from) {
      LATAM_RETURN_IF_ERROR(base_->RemoveTree(it->name));
      Forget(it->name);
      continue;
    }
    if (base_->FileExists(it->name)) {
      LATAM_RETURN_IF_ERROR(base_->RenameFile(it->name, *it->from));
      auto moved = synced_.find(it->name);
      if (moved != synced_.end()) {
        synced_[*it->from] = moved->second;
        synced_.erase(moved);
      }
    }
    if (it->replaced && base_->IsDirectory(it->dir)) {
      LATAM_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f, base_->NewWritableFile(it->name));
      LATAM_RETURN_IF_ERROR(f->Append(*it->replaced));
      LATAM_RETURN_IF_ERROR(f->Sync());
      LATAM_RETURN_IF_ERROR(f->Close());
      synced_.erase(it->name);
    }
  }
  // Then contents: each file keeps what it had at its last Sync.
  for (const auto& [path, size] : synced_) {
    if (!base_->FileExists(path)) continue;
    LATAM_ASSIGN_OR_RETURN(const uint64_t now, base_->FileSize(path));
    if (now <= size) continue;
    std::error_code ec;
    fs::resize_file(path, size, ec);
    if (ec) return Status::IoError("cannot truncate " + path + ": " + ec.message());
  }
  synced_.clear();
  pending_.clear();
  log_.clear();
  operations_ = 0;
  crash_at_ = -1;
  crashed_ = false;
  return Status::Ok();
}

}  // namespace latam::testing
