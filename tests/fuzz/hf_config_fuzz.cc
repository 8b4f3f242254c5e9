// Fuzz target: a Hugging Face config.json (checkpoint/hf_config.h,
// ParseHfConfigText). A config that parses must also print back through
// HfConfigJson and parse again.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "checkpoint/hf_config.h"
#include "tests/fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto parsed = latam::ckpt::ParseHfConfigText(text, "fuzz/config.json");
  latam::fuzz::RequireOkOrInputError(parsed.status(), "ParseHfConfigText");
  if (!parsed.ok()) return 0;
  const std::string printed =
      latam::ckpt::HfConfigJson(parsed->model, parsed->torch_dtype, parsed->bos_token_id, parsed->eos_token_id);
  auto reparsed = latam::ckpt::ParseHfConfigText(printed, "fuzz/config.json (printed)");
  if (!reparsed.ok()) {
    std::fprintf(stderr, "HfConfigJson wrote a config.json that does not parse: %s\n%s\n",
                 reparsed.status().message().c_str(), printed.c_str());
    std::abort();
  }
  return 0;
}
