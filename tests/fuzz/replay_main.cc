// Replays inputs through a fuzz target without libFuzzer: the FuzzReplay*
// tests link each target with this main and pass it the target's corpus and
// regression directories.
//
// Usage: fuzz_replay_<target> PATH...
// Each PATH is a file or a directory whose regular files (sorted by name)
// are inputs. Prints the number of inputs replayed; exits 1 when a path is
// missing or unreadable or no input was found. A crashing input aborts the
// process (after a line naming it), which fails the test.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "core/env.h"
#include "tests/fuzz/fuzz_support.h"

namespace fs = std::filesystem;

namespace {

bool CollectInputs(const std::string& path, std::vector<fs::path>* inputs) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) {
    inputs->push_back(path);
    return true;
  }
  if (!fs::is_directory(path, ec)) {
    std::fprintf(stderr, "replay: %s: no such file or directory\n", path.c_str());
    return false;
  }
  std::vector<fs::path> found;
  for (const fs::directory_entry& e : fs::directory_iterator(path, ec)) {
    if (e.is_regular_file()) found.push_back(e.path());
  }
  if (ec) {
    std::fprintf(stderr, "replay: cannot list %s: %s\n", path.c_str(), ec.message().c_str());
    return false;
  }
  std::sort(found.begin(), found.end());
  inputs->insert(inputs->end(), found.begin(), found.end());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    if (!CollectInputs(argv[i], &inputs)) return 1;
  }
  if (inputs.empty()) {
    std::fprintf(stderr, "replay: no inputs (usage: %s FILE_OR_DIR...)\n", argv[0]);
    return 1;
  }
  for (const fs::path& input : inputs) {
    const latam::Result<std::string> bytes = latam::Env::Default()->ReadFile(input.string());
    if (!bytes.ok()) {
      std::fprintf(stderr, "replay: %s\n", bytes.status().message().c_str());
      return 1;
    }
    std::fprintf(stderr, "replay: %s\n", input.c_str());
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size());
  }
  std::printf("replay: %zu inputs, no crash\n", inputs.size());
  return 0;
}
