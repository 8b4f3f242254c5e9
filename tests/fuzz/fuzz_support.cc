#include "tests/fuzz/fuzz_support.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

namespace latam::fuzz {
namespace {

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz support: %s\n", what.c_str());
  std::abort();
}

void RemoveScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(ScratchDir(), ec);
}

}  // namespace

const std::string& ScratchDir() {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/latam-fuzz-XXXXXX";
    std::vector<char> buf(templ.begin(), templ.end());
    buf.push_back('\0');
    if (::mkdtemp(buf.data()) == nullptr) Fail("cannot create a scratch directory from " + templ);
    return std::string(buf.data());
  }();
  static const bool cleanup_registered = std::atexit(RemoveScratchDir) == 0;
  (void)cleanup_registered;
  return dir;
}

void WriteScratchFile(const std::string& relative_path, std::string_view bytes) {
  const std::string path = ScratchDir() + "/" + relative_path;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) Fail("cannot create " + path);
  const bool written = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  if (std::fclose(f) != 0 || !written) Fail("cannot write " + path);
}

std::string ScratchSubdir(const std::string& relative_dir) {
  const std::string path = ScratchDir() + "/" + relative_dir;
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec) Fail("cannot create " + path + ": " + ec.message());
  return path;
}

void RequireOkOrInputError(const Status& status, const char* what) {
  if (status.ok() || status.code() == StatusCode::kInvalidInput) return;
  std::fprintf(stderr, "%s: failed with a status other than invalid input (code %d): %s\n", what,
               static_cast<int>(status.code()), status.message().c_str());
  std::abort();
}

}  // namespace latam::fuzz
