#include "core/env.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace latam {

namespace {

namespace fs = std::filesystem;

std::string ErrnoText(int err) { return std::strerror(err); }

Status PosixError(const std::string& what, const std::string& path, int err) {
  return Status::IoError("cannot " + what + " " + path + ": " + ErrnoText(err));
}

// Writes all of [data, data + n) at the file position (offset < 0) or at
// `offset`, retrying short writes and EINTR.
Status WriteFully(int fd, const char* data, size_t n, off_t offset, const std::string& path) {
  while (n > 0) {
    const ssize_t w = offset < 0 ? ::write(fd, data, n) : ::pwrite(fd, data, n, offset);
    if (w < 0) {
      if (errno == EINTR) continue;
      return PosixError("write", path, errno);
    }
    data += w;
    n -= static_cast<size_t>(w);
    if (offset >= 0) offset += w;
  }
  return Status::Ok();
}

// Appends go through a buffer of kBufferBytes; a larger append is written
// straight through after the buffer is emptied.
class PosixWritableFile final : public WritableFile {
 public:
  static constexpr size_t kBufferBytes = size_t{64} << 10;

  PosixWritableFile(std::string path, int fd, uint64_t size) : path_(std::move(path)), fd_(fd), size_(size) {
    buffer_.reserve(kBufferBytes);
  }
  ~PosixWritableFile() override { (void)Close(); }

  Status Append(std::string_view data) override {
    if (fd_ < 0) return Status::Internal(path_ + ": Append after Close");
    size_ += data.size();
    if (buffer_.size() + data.size() <= kBufferBytes) {
      buffer_.append(data);
      return Status::Ok();
    }
    LATAM_RETURN_IF_ERROR(Flush());
    if (data.size() < kBufferBytes) {
      buffer_.append(data);
      return Status::Ok();
    }
    return WriteFully(fd_, data.data(), data.size(), -1, path_);
  }

  Status WriteAt(uint64_t offset, std::string_view data) override {
    if (fd_ < 0) return Status::Internal(path_ + ": WriteAt after Close");
    if (offset + data.size() > size_) {
      return Status::Internal(path_ + ": WriteAt past the end (" + std::to_string(offset + data.size()) + " > " +
                              std::to_string(size_) + " bytes)");
    }
    LATAM_RETURN_IF_ERROR(Flush());
    return WriteFully(fd_, data.data(), data.size(), static_cast<off_t>(offset), path_);
  }

  Status Flush() override {
    if (fd_ < 0) return Status::Internal(path_ + ": Flush after Close");
    if (buffer_.empty()) return Status::Ok();
    Status s = WriteFully(fd_, buffer_.data(), buffer_.size(), -1, path_);
    buffer_.clear();
    return s;
  }

  Status Sync() override {
    LATAM_RETURN_IF_ERROR(Flush());
    if (::fsync(fd_) != 0) return PosixError("fsync", path_, errno);
    return Status::Ok();
  }

  Status Close() override {
    if (fd_ < 0) return Status::Ok();
    Status s = Flush();
    if (::close(fd_) != 0 && s.ok()) s = PosixError("close", path_, errno);
    fd_ = -1;
    return s;
  }

  const std::string& path() const override { return path_; }
  uint64_t size() const override { return size_; }

 private:
  std::string path_;
  int fd_;
  uint64_t size_;
  std::string buffer_;
};

class PosixEnv final : public Env {
 public:
  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return PosixError("create", path, errno);
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd, 0));
  }

  Result<std::unique_ptr<WritableFile>> NewAppendableFile(const std::string& path) override {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return PosixError("open", path, errno);
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return PosixError("stat", path, err);
    }
    return std::unique_ptr<WritableFile>(new PosixWritableFile(path, fd, static_cast<uint64_t>(st.st_size)));
  }

  Result<std::string> ReadFile(const std::string& path) override {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::InvalidInput("cannot open " + path + ": " + ErrnoText(errno));
    std::string out;
    char buf[1 << 16];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        ::close(fd);
        return PosixError("read", path, err);
      }
      if (n == 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    return out;
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) {
      return Status::IoError("cannot rename " + from + " to " + to + ": " + ErrnoText(errno));
    }
    return Status::Ok();
  }

  Status RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) return PosixError("remove", path, errno);
    return Status::Ok();
  }

  Status RemoveTree(const std::string& path) override {
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) return Status::IoError("cannot remove " + path + ": " + ec.message());
    return Status::Ok();
  }

  Status CreateDirs(const std::string& path) override {
    std::error_code ec;
    fs::create_directories(path, ec);
    if (ec) return Status::IoError("cannot create directory " + path + ": " + ec.message());
    return Status::Ok();
  }

  Result<std::vector<std::string>> ListDir(const std::string& dir) override {
    std::error_code ec;
    std::vector<std::string> names;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      names.push_back(it->path().filename().string());
    }
    if (ec) return Status::IoError("cannot list " + dir + ": " + ec.message());
    std::sort(names.begin(), names.end());
    return names;
  }

  bool FileExists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }

  bool IsDirectory(const std::string& path) override {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }

  Result<uint64_t> FileSize(const std::string& path) override {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return PosixError("stat", path, errno);
    return static_cast<uint64_t>(st.st_size);
  }

  Status SyncDir(const std::string& dir) override {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return PosixError("open directory", dir, errno);
    const int rc = ::fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0 && err != EINVAL) return PosixError("fsync directory", dir, err);
    return Status::Ok();
  }
};

}  // namespace

Env* Env::Default() {
  static PosixEnv* env = new PosixEnv();
  return env;
}

std::string DirName(const std::string& path) {
  const std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

Result<std::unique_ptr<AtomicFile>> AtomicFile::Create(Env* env, const std::string& path) {
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> file, env->NewWritableFile(path + ".tmp"));
  return std::unique_ptr<AtomicFile>(new AtomicFile(env, path, std::move(file)));
}

AtomicFile::~AtomicFile() {
  if (committed_) return;
  (void)file_->Close();
  (void)env_->RemoveFile(file_->path());
}

Status AtomicFile::Commit() {
  if (committed_) return Status::Internal(path_ + ": committed twice");
  Status s = file_->Sync();
  const Status closed = file_->Close();
  if (s.ok()) s = closed;
  if (s.ok()) s = env_->RenameFile(file_->path(), path_);
  if (!s.ok()) return s;  // the destructor removes the temporary file
  committed_ = true;
  return env_->SyncDir(DirName(path_));
}

Status WriteFileAtomically(Env* env, const std::string& path, std::string_view bytes) {
  LATAM_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFile> file, AtomicFile::Create(env, path));
  LATAM_RETURN_IF_ERROR(file->file().Append(bytes));
  return file->Commit();
}

Status CopyFileAtomically(Env* env, const std::string& from, const std::string& to) {
  LATAM_ASSIGN_OR_RETURN(const std::string bytes, env->ReadFile(from));
  return WriteFileAtomically(env, to, bytes);
}

}  // namespace latam
