// Learning a byte-level BPE tokenizer and writing it as a Hugging Face
// tokenizer.json (the layout of Llama 3's, which `transformers` and
// Tokenizer::Load read).
//
// Training: documents are pre-split with the regex (Llama 3's by default)
// into words, counted. Starting from the 256 byte tokens, the most frequent
// adjacent pair over all words (weighted by word count) is merged, again and
// again, until the vocabulary has vocab_size entries (including the special
// tokens) or no pair occurs min_frequency times. Ties are broken by the
// smaller (left id, right id), so training is deterministic. A merge whose
// bytes some earlier merge already produced reuses that token. Pair counts
// are kept in a max-heap with lazy invalidation and an index from each pair
// to the words containing it, so one merge costs time proportional to the
// words it touches, not to the corpus.
//
// Ids: 0..255 are the bytes (in byte order), merged tokens follow in merge
// order, special tokens come last. By default the special tokens are the
// five of Llama 3's that pretraining (<|begin_of_text|>, <|end_of_text|>)
// and its chat template (<|start_header_id|>, <|end_header_id|>,
// <|eot_id|>; data/chat.h) use, in that order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data/regex.h"
#include "core/status.h"

namespace latam::data {

// Llama 3's pre-tokenizer pattern.
inline constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct BpeTrainerOptions {
  int vocab_size = 16384;  // total, including the 256 bytes and the special tokens
  int64_t min_frequency = 2;
  std::vector<std::string> special_tokens = {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                             "<|end_header_id|>", "<|eot_id|>"};
  std::string pattern = kLlama3Pattern;
};

class BpeTrainer {
 public:
  static Result<std::unique_ptr<BpeTrainer>> Create(const BpeTrainerOptions& options);

  // Pre-splits and counts the words of a batch of documents, in parallel over
  // the calling thread's OpenMP team. Invalid UTF-8 is sanitised first.
  void AddDocuments(const std::vector<std::string>& documents);
  int64_t unique_words() const { return static_cast<int64_t>(word_counts_.size()); }

  // Runs the merges and returns the tokenizer.json text.
  Result<std::string> Train();
  // Merges learned by the last Train() call.
  int64_t merges() const { return merges_learned_; }

 private:
  explicit BpeTrainer(BpeTrainerOptions options) : options_(std::move(options)) {}
  BpeTrainerOptions options_;
  std::unique_ptr<Regex> regex_;
  std::unordered_map<std::string, int64_t> word_counts_;  // raw bytes of each pre-token
  int64_t merges_learned_ = 0;
};

}  // namespace latam::data
