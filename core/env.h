// Env: the filesystem as the rest of the project sees it, and the one
// atomic whole-file replacement every writer uses.
//
// Everything that creates, replaces, renames or removes a file goes through
// an Env, so that a test can put another one underneath (tests/unit's
// fault-injection Env drops what was never made durable, as a power cut
// would). Env::Default() is the POSIX filesystem; it is stateless and lives
// for the whole process. Every method may be called from any thread.
//
// Errors: every failure is a Status naming the path and carrying strerror
// (kIoError), except a file to read that cannot be opened, which is
// kInvalidInput (bad input: a checkpoint or a config naming a file that is
// not there).
//
// Durability vocabulary, as POSIX has it: Append/Flush hand bytes to the
// operating system, which may lose them in a crash; Sync makes a file's
// contents durable; a new name (create, rename, remove) is durable only
// once the directory holding it has been synced (SyncDir).
//
// WriteFileAtomically / AtomicFile: write "<path>.tmp" in the same directory,
// Sync it, rename it onto <path>, Sync the directory. A reader (or a crash
// at any point) sees either the old file or the new one in full, never a
// mixture; after the call returns the new one survives a crash.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace latam {

// A file open for writing. Not thread-safe: one writer at a time.
class WritableFile {
 public:
  virtual ~WritableFile() = default;

  // Appends `data` at the end (buffered: may reach the OS only at Flush).
  virtual Status Append(std::string_view data) = 0;
  // Overwrites bytes [offset, offset + data.size()) of what was already
  // appended (a header filled in at the end); the size does not change.
  virtual Status WriteAt(uint64_t offset, std::string_view data) = 0;
  // Hands buffered bytes to the operating system.
  virtual Status Flush() = 0;
  // Flush, then makes the contents durable (fsync).
  virtual Status Sync() = 0;
  // Flush and close; does not sync. Further calls fail. Idempotent.
  virtual Status Close() = 0;

  virtual const std::string& path() const = 0;
  // Bytes in the file so far, the appended ones included.
  virtual uint64_t size() const = 0;
};

class Env {
 public:
  virtual ~Env() = default;

  // The POSIX filesystem. Never null; not owned by the caller.
  static Env* Default();

  // Creates `path`, or truncates it if it exists.
  virtual Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) = 0;
  // Opens `path` for appending, creating it if missing; size() starts at its length.
  virtual Result<std::unique_ptr<WritableFile>> NewAppendableFile(const std::string& path) = 0;

  // The whole contents of `path`.
  virtual Result<std::string> ReadFile(const std::string& path) = 0;
  // rename(2): replaces `to` atomically if it exists. Same file system only.
  virtual Status RenameFile(const std::string& from, const std::string& to) = 0;
  // Removes a file; removing a missing file is ok.
  virtual Status RemoveFile(const std::string& path) = 0;
  // Removes a directory and everything under it; a missing one is ok.
  virtual Status RemoveTree(const std::string& path) = 0;
  // Creates `path` and any missing parents (mkdir -p); an existing directory is ok.
  virtual Status CreateDirs(const std::string& path) = 0;
  // Names (not paths) of the entries of `dir`, sorted, without "." and "..".
  virtual Result<std::vector<std::string>> ListDir(const std::string& dir) = 0;
  virtual bool FileExists(const std::string& path) = 0;
  virtual bool IsDirectory(const std::string& path) = 0;
  virtual Result<uint64_t> FileSize(const std::string& path) = 0;
  // Makes the names in `dir` durable (fsync of the directory). A file system
  // that cannot sync directories (EINVAL) is taken as having nothing to sync.
  virtual Status SyncDir(const std::string& dir) = 0;
};

// The directory part of `path` ("." when it has none).
std::string DirName(const std::string& path);

// A file written under "<path>.tmp" that replaces <path> atomically on
// Commit() (Sync, Close, rename, SyncDir of the parent). Destroyed without a
// successful Commit(), it removes the temporary file: a half-written file
// never carries the final name.
class AtomicFile {
 public:
  static Result<std::unique_ptr<AtomicFile>> Create(Env* env, const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // The temporary file, for Append / WriteAt.
  WritableFile& file() { return *file_; }
  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return file_->path(); }
  Status Commit();

 private:
  AtomicFile(Env* env, std::string path, std::unique_ptr<WritableFile> file)
      : env_(env), path_(std::move(path)), file_(std::move(file)) {}
  Env* env_;
  std::string path_;
  std::unique_ptr<WritableFile> file_;
  bool committed_ = false;
};

// Replaces `path` with `bytes` atomically and durably (see AtomicFile).
Status WriteFileAtomically(Env* env, const std::string& path, std::string_view bytes);

// Copies `from` to `to` through WriteFileAtomically.
Status CopyFileAtomically(Env* env, const std::string& from, const std::string& to);

}  // namespace latam
