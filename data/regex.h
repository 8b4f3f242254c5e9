// A compiled PCRE2 regular expression for tokenizer pre-splitting.
//
// Patterns are compiled in UTF mode with Unicode properties (PCRE2_UCP, so
// \s, \w and \d are Unicode-aware, as in the Oniguruma regexes Hugging Face
// tokenizers use) and JIT-compiled when the platform supports it. Matching
// is thread-safe: each call uses its own match data. Subject strings must
// be valid UTF-8 (Tokenizer sanitises its input first).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "core/check.h"
#include "core/status.h"

namespace latam::data {

class Regex {
 public:
  static Result<std::unique_ptr<Regex>> Compile(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls on_match(begin, end) (byte offsets) for every non-overlapping
  // match, left to right. Empty matches are skipped.
  void ForEachMatch(std::string_view text, const std::function<void(size_t, size_t)>& on_match) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
};

}  // namespace latam::data
