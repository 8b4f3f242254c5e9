// Fuzz target: a tokenizer.json (data/tokenizer.h, Tokenizer::FromJson).
// A tokenizer that loads must also encode a fixed text and the input's first
// bytes, and decode what it encoded.
#include <string>
#include <string_view>

#include "data/tokenizer.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

// Bounds the encode work per input: BPE over a long text with a large
// fuzzed vocabulary would turn into a timeout, not a finding.
constexpr size_t kMaxEncodedBytes = 256;

void EncodeAndDecode(const latam::data::Tokenizer& tokenizer, std::string_view text) {
  latam::data::Tokenizer::Cache cache;
  const std::vector<uint32_t> ids = tokenizer.Encode(text, &cache);
  for (uint32_t id : ids) {
    if (!tokenizer.IsValidId(id)) {
      std::fprintf(stderr, "Encode returned id %u, which names no token\n", id);
      std::abort();
    }
  }
  (void)tokenizer.Decode(ids);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string json(reinterpret_cast<const char*>(data), size);
  auto tokenizer = latam::data::Tokenizer::FromJson(json, "fuzz/tokenizer.json");
  latam::fuzz::RequireOkOrInputError(tokenizer.status(), "Tokenizer::FromJson");
  if (!tokenizer.ok()) return 0;
  EncodeAndDecode(**tokenizer, "Hello, world! ¿Qué tal? 123 <|end_of_text|>\n\t  x");
  EncodeAndDecode(**tokenizer, std::string_view(json).substr(0, kMaxEncodedBytes));
  (void)(*tokenizer)->TokenId("hello");
  return 0;
}
