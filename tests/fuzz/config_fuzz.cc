// Fuzz target: a training config (trainer/config.h): LoadConfigFile, then
// ValidateConfig without a world size (as --plan) and with one, then `--set`
// overrides through ApplyOverride and ValidateConfig again.
//
// Input: the config text, optionally followed by a NUL byte and `--set`
// assignments, one per line ("train.steps=100\nparallel.tensor=2").
// A config that loads must print (ConfigToText) to text that loads again.
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

#include "tests/fuzz/fuzz_support.h"
#include "trainer/config.h"

namespace {

constexpr int kWorldSize = 8;

void Validate(const latam::Config& config) {
  latam::fuzz::RequireOkOrInputError(latam::ValidateConfig(config, {.world_size = 0, .check_files = false}),
                                     "ValidateConfig (no world size)");
  latam::fuzz::RequireOkOrInputError(latam::ValidateConfig(config, {.world_size = kWorldSize, .check_files = false}),
                                     "ValidateConfig (world size 8)");
}

void RequireReloads(const latam::Config& config) {
  const std::string text = latam::ConfigToText(config);
  latam::fuzz::WriteScratchFile("printed.textproto", text);
  auto reloaded = latam::LoadConfigFile(latam::fuzz::ScratchDir() + "/printed.textproto");
  if (!reloaded.ok()) {
    std::fprintf(stderr, "ConfigToText wrote a config that does not load: %s\n%s\n",
                 reloaded.status().message().c_str(), text.c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  latam::fuzz::WriteScratchFile("config.textproto", std::string_view(input).substr(0, nul));
  auto config = latam::LoadConfigFile(latam::fuzz::ScratchDir() + "/config.textproto");
  latam::fuzz::RequireOkOrInputError(config.status(), "LoadConfigFile");
  if (!config.ok()) return 0;
  Validate(*config);
  RequireReloads(*config);
  if (nul == std::string::npos) return 0;
  std::istringstream overrides(input.substr(nul + 1));
  for (std::string line; std::getline(overrides, line);) {
    latam::fuzz::RequireOkOrInputError(latam::ApplyOverride(&*config, line), "ApplyOverride");
  }
  Validate(*config);
  RequireReloads(*config);
  return 0;
}
