// FaultInjectionEnv: an Env (core/env.h) for tests that counts every
// operation that changes the disk, can make the process "die" just before
// any one of them, and then puts the disk in the state a power cut would
// leave.
//
// Operations counted (each is one crash point): creating or opening a file
// for writing, Append, WriteAt, Flush, Sync and Close of a file, RenameFile,
// RemoveFile, RemoveTree, CreateDirs and SyncDir. Reads are not counted.
// After CrashBeforeOperation(n), operation n (0-based) and every later one
// fail with an IoError and leave the disk untouched: the process is gone.
//
// The crash model (what DropUnsyncedData() undoes), after LevelDB's
// fault_injection_test:
//   - File contents: a file written through this Env keeps only what was
//     there at its last Sync (it is truncated to that size; never synced:
//     empty). Files this Env never wrote count as durable.
//   - Names: creating a file or directory, and renaming over a name, are
//     durable only once the directory holding the name is synced (SyncDir).
//     Undone in reverse order: a new name disappears (a directory with
//     everything in it), a rename is reversed and the file it replaced comes
//     back with its durable contents.
//   - Removals (RemoveFile, RemoveTree) and the truncation done when an
//     existing file is opened for writing take effect at once and are never
//     undone (a pending change to a removed name is dropped with it): data
//     can only be lost earlier than the program expects, never come back.
//   - WriteAt inside the synced part of a file is not undone.
//   - Renames must stay inside one directory (all the project makes).
// Every file must be closed or destroyed before DropUnsyncedData().
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/env.h"

namespace latam::testing {

class FaultInjectionEnv final : public Env {
 public:
  explicit FaultInjectionEnv(Env* base = Env::Default()) : base_(base) {}

  // Operations performed so far (not counting the one refused by a crash).
  int64_t operations() const;
  // One line per operation performed, for failure messages.
  std::vector<std::string> log() const;
  // Operation n (0-based, counted from construction) and all later ones fail.
  void CrashBeforeOperation(int64_t n);
  // Whether an operation has been refused.
  bool crashed() const;
  // Rewrites the disk as the crash model above says, then forgets all
  // history: everything on disk is durable and no crash is armed.
  Status DropUnsyncedData();

  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override;
  Result<std::unique_ptr<WritableFile>> NewAppendableFile(const std::string& path) override;
  Result<std::string> ReadFile(const std::string& path) override { return base_->ReadFile(path); }
  Status RenameFile(const std::string& from, const std::string& to) override;
  Status RemoveFile(const std::string& path) override;
  Status RemoveTree(const std::string& path) override;
  Status CreateDirs(const std::string& path) override;
  Result<std::vector<std::string>> ListDir(const std::string& dir) override { return base_->ListDir(dir); }
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  bool IsDirectory(const std::string& path) override { return base_->IsDirectory(path); }
  Result<uint64_t> FileSize(const std::string& path) override { return base_->FileSize(path); }
  Status SyncDir(const std::string& dir) override;

 private:
  class File;
  friend class File;

  // A name change not yet made durable by a SyncDir of `dir`.
  struct PendingName {
    std::string dir;
    std::string name;                    // created, or the rename's target
    std::optional<std::string> from;     // set for a rename
    std::optional<std::string> replaced; // durable contents of the file the rename replaced
  };

  // Under mu_: counts the operation, or returns the crash error.
  Status Begin(const std::string& what);
  Result<std::unique_ptr<WritableFile>> Open(const std::string& path, bool append);
  void Forget(const std::string& path);  // under mu_: drops the sizes of path and everything under it

  Env* base_;
  mutable std::mutex mu_;
  int64_t operations_ = 0;
  int64_t crash_at_ = -1;
  bool crashed_ = false;
  std::vector<std::string> log_;
  std::map<std::string, uint64_t> synced_;  // file written here -> bytes durable
  std::vector<PendingName> pending_;
  int open_files_ = 0;
};

}  // namespace latam::testing
