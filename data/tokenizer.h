// A byte-level BPE tokenizer that reads Hugging Face tokenizer.json files
// (GPT-2 / Llama 3 style) and gives the same ids as Hugging Face's
// `tokenizers` library for them.
//
// Encoding (no special tokens are added; added tokens that occur in the text
// are recognised, as Hugging Face does):
//   1. Invalid UTF-8 is replaced by U+FFFD per maximal subpart (the input a
//      Python or JavaScript string would hold).
//   2. Added tokens are cut out of the text (leftmost, then longest match),
//      honouring their lstrip/rstrip flags.
//   3. Each remaining segment is pre-tokenized: Split(regex, Isolated) steps
//      and a ByteLevel step (optional prefix space, optional GPT-2 regex),
//      then mapped to the byte-level alphabet (utf8.h).
//   4. Each piece becomes one token if ignore_merges is set and the piece is
//      in the vocabulary; otherwise its bytes are merged pairwise, always
//      applying the lowest-ranked merge present (leftmost first on ties).
// Decoding maps tokens back to bytes (added tokens to their content).
//
// Supported tokenizer.json features: model BPE (byte-level vocabulary, merges
// as "a b" strings or [a, b] pairs, ignore_merges), normalizer null,
// pre_tokenizer Split / ByteLevel / Sequence of those, added tokens without
// single_word. Anything else is rejected at load with a message naming the
// file and the field. Ids (model.vocab and added_tokens) must be integers in
// [0, kMaxIds), one text per id (an added token may repeat its vocabulary
// entry), and the largest id below twice the number of tokens: gaps are
// allowed, but the id tables stay proportional to the file. A file that is
// missing, a directory or unreadable is a bad-input error naming the path.
// A loaded Tokenizer is immutable and thread-safe.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data/regex.h"
#include "core/check.h"
#include "core/status.h"

namespace latam::data {

class Tokenizer {
 public:
  // Memo of piece -> ids for one thread; pass the same cache to many Encode
  // calls on that thread to skip repeated BPE work (natural text repeats
  // words). Bounded: it is cleared when it grows past its capacity.
  class Cache {
   public:
    explicit Cache(size_t capacity = 1 << 18) : capacity_(capacity) {}

   private:
    friend class Tokenizer;
    size_t capacity_;
    std::unordered_map<std::string, std::vector<uint32_t>> entries_;
  };

  // Ids are below this bound (2^24, 16,777,216; Llama 3 uses 128,256).
  static constexpr int64_t kMaxIds = int64_t{1} << 24;

  static Result<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  // Parses tokenizer.json text; `source` names it in error messages.
  static Result<std::unique_ptr<Tokenizer>> FromJson(const std::string& json_text, const std::string& source);

  std::vector<uint32_t> Encode(std::string_view text, Cache* cache = nullptr) const;
  // Encode without step 2: text that spells an added token (a user typing
  // "<|eot_id|>") is ordinary text, pre-tokenized and merged like any other
  // (Hugging Face's split_special_tokens=True, for tokenizers whose added
  // tokens are all special, as Llama 3's are).
  std::vector<uint32_t> EncodeOrdinary(std::string_view text, Cache* cache = nullptr) const;
  // Concatenated bytes of the tokens (may be invalid UTF-8 for a partial
  // sequence of ids). Aborts on an id outside the vocabulary: check with
  // vocab_size() first when ids come from outside.
  std::string DecodeBytes(std::span<const uint32_t> ids) const;
  // DecodeBytes with invalid UTF-8 replaced by U+FFFD, as Hugging Face's
  // decode() returns it.
  std::string Decode(std::span<const uint32_t> ids) const;

  // One past the largest id (vocabulary and added tokens).
  uint32_t vocab_size() const { return static_cast<uint32_t>(id_to_bytes_.size()); }
  // Whether `id` names a token (ids below vocab_size() may be unused).
  bool IsValidId(uint32_t id) const { return id < id_valid_.size() && id_valid_[id]; }
  std::optional<uint32_t> TokenId(std::string_view token) const;
  // The id of an added token (tokenizer.json's added_tokens) of this content.
  std::optional<uint32_t> AddedTokenId(std::string_view content) const;

 private:
  struct AddedToken {
    uint32_t id;
    std::string content;
    bool lstrip, rstrip;
  };
  struct PreTokenizerStep {
    enum Kind { kSplit, kByteLevel } kind;
    std::unique_ptr<Regex> regex;  // Split pattern, or the GPT-2 regex for ByteLevel(use_regex)
    bool add_prefix_space = false;
  };

  Tokenizer() = default;
  Status Parse(const std::string& json_text, const std::string& source);
  // The pre-tokenizer's pieces of one segment (raw bytes; a ByteLevel step
  // with add_prefix_space may have prepended a space).
  void PreTokenize(std::string_view segment, std::vector<std::string>* pieces) const;
  void EncodePiece(const std::string& piece, Cache* cache, std::vector<uint32_t>* out) const;
  // Applies the BPE merges to one piece's bytes.
  void Merge(std::string_view piece, std::vector<uint32_t>* out) const;

  std::vector<std::string> id_to_bytes_;                                // decoded bytes of every id
  std::vector<bool> id_valid_;                                          // ids that name a token
  std::unordered_map<std::string, uint32_t> vocab_;                     // model tokens, in byte-level form
  std::unordered_map<std::string, uint32_t> added_ids_;                 // added tokens, by content
  std::array<uint32_t, 256> byte_ids_{};                                // id of each single byte
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>> merges_;  // (left, right) -> (rank, merged id)
  bool ignore_merges_ = false;
  std::vector<PreTokenizerStep> pre_tokenizer_;
  std::vector<AddedToken> added_;
  std::array<bool, 256> added_first_byte_{};  // some added token starts with this byte
};

}  // namespace latam::data
