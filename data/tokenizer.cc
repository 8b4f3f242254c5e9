#include "data/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "data/utf8.h"

namespace latam::data {

namespace {

using Json = nlohmann::json;

// GPT-2's pre-tokenizer regex, used by ByteLevel steps with use_regex.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Unicode White_Space (what Rust's char::is_whitespace tests).
bool IsWhitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

// Byte offset where the whitespace run ending at `end` starts.
size_t WhitespaceRunStart(std::string_view text, size_t begin, size_t end) {
  // Walk forward (UTF-8 cannot be decoded backwards simply), remembering the
  // start of the last run of whitespace that reaches `end`.
  size_t pos = begin, run_start = end;
  bool in_run = false;
  while (pos < end) {
    const size_t start = pos;
    const auto cp = NextCodePoint(text, &pos);
    const bool ws = cp && IsWhitespace(*cp);
    if (ws && !in_run) run_start = start;
    in_run = ws;
  }
  return in_run ? run_start : end;
}

// Byte offset where the whitespace run starting at `begin` ends.
size_t WhitespaceRunEnd(std::string_view text, size_t begin) {
  size_t pos = begin;
  while (pos < text.size()) {
    size_t next = pos;
    const auto cp = NextCodePoint(text, &next);
    if (!cp || !IsWhitespace(*cp)) break;
    pos = next;
  }
  return pos;
}

uint64_t PairKey(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

std::string EscapeForRegex(const std::string& literal) { return "\\Q" + literal + "\\E"; }

std::string ToByteLevel(std::string_view bytes) {
  std::string out;
  for (char c : bytes) out += ByteLevelStrings()[static_cast<uint8_t>(c)];
  return out;
}

// The ids of a tokenizer.json as they are read: each must be an integer in
// [0, Tokenizer::kMaxIds) that names one text (an added token may repeat its
// vocabulary entry, as GPT-2's <|endoftext|> does), and, once all are read,
// the largest must be below twice the number of distinct ids, so that the
// tables indexed by id stay proportional to the file.
class IdChecker {
 public:
  explicit IdChecker(std::string source) : source_(std::move(source)) {}

  // `token` as the file writes it, `text` its byte-level form.
  Result<uint32_t> Add(const std::string& field, const std::string& token, const std::string& text, const Json& id) {
    auto bad = [&](const std::string& what) {
      return Status::InvalidInput(source_ + ": " + field + ": token '" + token + "' has id " + id.dump() + ", " +
                                  what);
    };
    if (!id.is_number_integer()) return bad("not an integer");
    if (id.is_number_unsigned() ? id.get<uint64_t>() >= static_cast<uint64_t>(Tokenizer::kMaxIds)
                                : id.get<int64_t>() < 0 || id.get<int64_t>() >= Tokenizer::kMaxIds) {
      return bad("outside [0, " + std::to_string(Tokenizer::kMaxIds) + ")");
    }
    const uint32_t i = static_cast<uint32_t>(id.get<int64_t>());
    const auto [it, inserted] = text_of_.emplace(i, Named{token, text});
    if (!inserted && it->second.text != text) return bad("already the id of '" + it->second.token + "'");
    max_id_ = std::max(max_id_, i);
    return i;
  }

  Status CheckBound() const {
    if (text_of_.empty()) return Status::InvalidInput(source_ + ": model.vocab: is empty");
    if (static_cast<uint64_t>(max_id_) >= 2 * text_of_.size()) {
      return Status::InvalidInput(source_ + ": token id " + std::to_string(max_id_) + " (of '" +
                                  text_of_.at(max_id_).token + "') is not below twice the number of tokens, " +
                                  std::to_string(text_of_.size()) + ": ids must be dense or nearly so");
    }
    return Status::Ok();
  }

  uint32_t max_id() const { return max_id_; }

 private:
  struct Named {
    std::string token, text;
  };
  std::string source_;
  std::unordered_map<uint32_t, Named> text_of_;
  uint32_t max_id_ = 0;
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec) return Status::InvalidInput(path + ": cannot open tokenizer file: " + ec.message());
  if (std::filesystem::is_directory(status)) {
    return Status::InvalidInput(path + ": is a directory, not a tokenizer.json file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status::InvalidInput(path + ": cannot open tokenizer file");
  std::stringstream text;
  text << in.rdbuf();
  return FromJson(text.str(), path);
}

Result<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const std::string& json_text, const std::string& source) {
  std::unique_ptr<Tokenizer> t(new Tokenizer());
  LATAM_RETURN_IF_ERROR(t->Parse(json_text, source));
  return t;
}

Status Tokenizer::Parse(const std::string& json_text, const std::string& source) {
  auto fail = [&](const std::string& field, const std::string& what) {
    return Status::InvalidInput(source + ": " + field + ": " + what);
  };
  Json j;
  try {
    j = Json::parse(json_text);
  } catch (const Json::exception& e) {  // parse_error, or out_of_range for a number too large for a double
    return Status::InvalidInput(source + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) {
    return Status::InvalidInput(source + ": not a Hugging Face tokenizer.json (no \"model\" object)");
  }
  try {
    const Json& model = j["model"];
    if (model.value("type", std::string("BPE")) != "BPE") {
      return fail("model.type", "'" + model["type"].get<std::string>() + "' is not supported (only BPE)");
    }
    if (model.value("byte_fallback", false)) return fail("model.byte_fallback", "true is not supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty()) {
        return fail(std::string("model.") + key, "is not supported");
      }
    }
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      return fail("normalizer", "type '" + j["normalizer"].value("type", std::string("?")) + "' is not supported");
    }
    ignore_merges_ = model.value("ignore_merges", false);

    // Vocabulary and added tokens share one id space (see IdChecker).
    if (!model.contains("vocab") || !model["vocab"].is_object()) return fail("model.vocab", "missing");
    const Json added = j.value("added_tokens", Json::array());
    if (!added.is_array()) return fail("added_tokens", "is not a list");
    IdChecker ids(source);
    for (const auto& [token, id] : model["vocab"].items()) {
      LATAM_ASSIGN_OR_RETURN(const uint32_t i, ids.Add("model.vocab", token, token, id));
      vocab_[token] = i;
    }
    std::vector<uint32_t> added_token_ids;
    for (const Json& a : added) {
      const std::string content = a.at("content").get<std::string>();
      LATAM_ASSIGN_OR_RETURN(const uint32_t i, ids.Add("added_tokens", content, ToByteLevel(content), a.at("id")));
      added_token_ids.push_back(i);
    }
    LATAM_RETURN_IF_ERROR(ids.CheckBound());
    id_to_bytes_.assign(static_cast<size_t>(ids.max_id()) + 1, std::string());
    id_valid_.assign(static_cast<size_t>(ids.max_id()) + 1, false);
    for (const auto& [token, id] : vocab_) {
      std::string bytes;
      size_t pos = 0;
      while (pos < token.size()) {
        const auto cp = NextCodePoint(token, &pos);
        const auto byte = cp ? CharToByte(*cp) : std::nullopt;
        if (!byte) return fail("model.vocab", "token '" + token + "' is not in the byte-level alphabet");
        bytes.push_back(static_cast<char>(*byte));
      }
      id_to_bytes_[id] = std::move(bytes);
      id_valid_[id] = true;
    }
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(ByteLevelStrings()[static_cast<size_t>(b)]);
      if (it == vocab_.end()) {
        return fail("model.vocab", "has no token for byte " + std::to_string(b) + " (not a byte-level BPE)");
      }
      byte_ids_[static_cast<size_t>(b)] = it->second;
    }
    for (size_t k = 0; k < added.size(); ++k) {
      const Json& a = added[k];
      AddedToken tok{added_token_ids[k], a.at("content").get<std::string>(), a.value("lstrip", false),
                     a.value("rstrip", false)};
      if (a.value("single_word", false)) {
        return fail("added_tokens", "'" + tok.content + "' uses single_word, which is not supported");
      }
      if (tok.content.empty()) return fail("added_tokens", "empty content for id " + std::to_string(tok.id));
      id_to_bytes_[tok.id] = tok.content;
      id_valid_[tok.id] = true;
      added_ids_[tok.content] = tok.id;
      added_first_byte_[static_cast<uint8_t>(tok.content[0])] = true;
      added_.push_back(std::move(tok));
    }

    // Merges: "a b" strings (tokenizers < 0.20) or ["a", "b"] pairs.
    const Json merges = model.value("merges", Json::array());
    uint32_t rank = 0;
    for (const Json& m : merges) {
      std::string left, right;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          return fail("model.merges[" + std::to_string(rank) + "]", "'" + s + "' is not two space-separated tokens");
        }
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2) {
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        return fail("model.merges[" + std::to_string(rank) + "]", "expected \"a b\" or [\"a\", \"b\"]");
      }
      const auto l = vocab_.find(left), r = vocab_.find(right), merged = vocab_.find(left + right);
      if (l == vocab_.end() || r == vocab_.end() || merged == vocab_.end()) {
        return fail("model.merges[" + std::to_string(rank) + "]",
                    "'" + left + " " + right + "' refers to a token missing from model.vocab");
      }
      // The first occurrence of a pair wins, as in Hugging Face.
      merges_.emplace(PairKey(l->second, r->second), std::make_pair(rank, merged->second));
      ++rank;
    }

    // Pre-tokenizer: Split and ByteLevel steps, possibly in a Sequence.
    std::vector<Json> steps;
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null()) {
      const Json& pt = j["pre_tokenizer"];
      if (pt.value("type", std::string()) == "Sequence") {
        for (const Json& s : pt.at("pretokenizers")) steps.push_back(s);
      } else {
        steps.push_back(pt);
      }
    }
    bool byte_level = false;
    for (const Json& s : steps) {
      const std::string type = s.value("type", std::string());
      PreTokenizerStep step;
      if (type == "Split") {
        if (s.value("invert", false)) return fail("pre_tokenizer.Split.invert", "true is not supported");
        const std::string behavior = s.value("behavior", std::string("Isolated"));
        if (behavior != "Isolated") return fail("pre_tokenizer.Split.behavior", "'" + behavior + "' is not supported");
        const Json& pattern = s.at("pattern");
        std::string regex;
        if (pattern.contains("Regex")) {
          regex = pattern["Regex"].get<std::string>();
        } else if (pattern.contains("String")) {
          regex = EscapeForRegex(pattern["String"].get<std::string>());
        } else {
          return fail("pre_tokenizer.Split.pattern", "needs Regex or String");
        }
        step.kind = PreTokenizerStep::kSplit;
        auto compiled = Regex::Compile(regex);
        if (!compiled.ok()) return compiled.status().WithContext(source + ": pre_tokenizer.Split.pattern");
        step.regex = std::move(compiled).value();
      } else if (type == "ByteLevel") {
        step.kind = PreTokenizerStep::kByteLevel;
        step.add_prefix_space = s.value("add_prefix_space", false);
        if (s.value("use_regex", true)) {
          auto compiled = Regex::Compile(kGpt2Pattern);
          if (!compiled.ok()) return compiled.status();
          step.regex = std::move(compiled).value();
        }
        byte_level = true;
      } else {
        return fail("pre_tokenizer", "type '" + type + "' is not supported");
      }
      pre_tokenizer_.push_back(std::move(step));
    }
    if (!byte_level) return fail("pre_tokenizer", "has no ByteLevel step (only byte-level BPE is supported)");
    if (j.contains("decoder") && !j["decoder"].is_null()) {
      const std::string type = j["decoder"].value("type", std::string());
      if (type != "ByteLevel") return fail("decoder", "type '" + type + "' is not supported (only ByteLevel)");
    }
  } catch (const Json::exception& e) {
    return Status::InvalidInput(source + ": malformed tokenizer.json: " + e.what());
  }
  return Status::Ok();
}

void Tokenizer::PreTokenize(std::string_view segment, std::vector<std::string>* pieces) const {
  std::vector<std::string> current{std::string(segment)}, next;
  for (const PreTokenizerStep& step : pre_tokenizer_) {
    next.clear();
    for (std::string& piece : current) {
      if (step.kind == PreTokenizerStep::kByteLevel && step.add_prefix_space && !piece.empty() && piece[0] != ' ') {
        piece.insert(piece.begin(), ' ');
      }
      if (!step.regex) {
        next.push_back(std::move(piece));
        continue;
      }
      // Isolated: matches become pieces, and so do the gaps between them.
      size_t last = 0;
      step.regex->ForEachMatch(piece, [&](size_t begin, size_t end) {
        if (begin > last) next.push_back(piece.substr(last, begin - last));
        next.push_back(piece.substr(begin, end - begin));
        last = end;
      });
      if (last < piece.size()) next.push_back(piece.substr(last));
    }
    current.swap(next);
  }
  for (std::string& p : current) {
    if (!p.empty()) pieces->push_back(std::move(p));
  }
}

void Tokenizer::Merge(std::string_view piece, std::vector<uint32_t>* out) const {
  const size_t n = piece.size();
  if (n == 1) {
    out->push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  // Symbols in a doubly linked list; a min-heap of candidate merges keyed by
  // (rank, position). Entries whose symbols changed since they were pushed
  // are skipped when popped.
  struct Symbol {
    uint32_t id;
    int prev, next;
  };
  std::vector<Symbol> sym(n);
  for (size_t i = 0; i < n; ++i) {
    sym[i] = {byte_ids_[static_cast<uint8_t>(piece[i])], static_cast<int>(i) - 1,
              i + 1 < n ? static_cast<int>(i) + 1 : -1};
  }
  struct Candidate {
    uint32_t rank;
    int pos;
    uint32_t left, right;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int pos) {
    if (pos < 0 || sym[static_cast<size_t>(pos)].next < 0) return;
    const uint32_t l = sym[static_cast<size_t>(pos)].id,
                   r = sym[static_cast<size_t>(sym[static_cast<size_t>(pos)].next)].id;
    auto it = merges_.find(PairKey(l, r));
    if (it != merges_.end()) heap.push({it->second.first, pos, l, r});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int>(i));
  std::vector<bool> dead(n, false);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& s = sym[static_cast<size_t>(c.pos)];
    if (dead[static_cast<size_t>(c.pos)] || s.id != c.left || s.next < 0 ||
        sym[static_cast<size_t>(s.next)].id != c.right) {
      continue;
    }
    const int removed = s.next;
    s.id = merges_.at(PairKey(c.left, c.right)).second;
    s.next = sym[static_cast<size_t>(removed)].next;
    if (s.next >= 0) sym[static_cast<size_t>(s.next)].prev = c.pos;
    dead[static_cast<size_t>(removed)] = true;
    push(s.prev);
    push(c.pos);
  }
  for (int i = 0; i >= 0; i = sym[static_cast<size_t>(i)].next) out->push_back(sym[static_cast<size_t>(i)].id);
}

void Tokenizer::EncodePiece(const std::string& piece, Cache* cache, std::vector<uint32_t>* out) const {
  if (cache != nullptr) {
    auto it = cache->entries_.find(piece);
    if (it != cache->entries_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = out->size();
  bool done = false;
  if (ignore_merges_) {
    auto it = vocab_.find(ToByteLevel(piece));
    if (it != vocab_.end()) {
      out->push_back(it->second);
      done = true;
    }
  }
  if (!done) Merge(piece, out);
  if (cache != nullptr) {
    if (cache->entries_.size() >= cache->capacity_) cache->entries_.clear();
    cache->entries_.emplace(piece,
                            std::vector<uint32_t>(out->begin() + static_cast<std::ptrdiff_t>(start), out->end()));
  }
}

std::vector<uint32_t> Tokenizer::Encode(std::string_view raw, Cache* cache) const {
  const std::string text = SanitizeUtf8(raw);
  std::vector<uint32_t> ids;
  std::vector<std::string> pieces;
  auto encode_segment = [&](size_t begin, size_t end) {
    if (end <= begin) return;
    pieces.clear();
    PreTokenize(std::string_view(text).substr(begin, end - begin), &pieces);
    for (const std::string& p : pieces) EncodePiece(p, cache, &ids);
  };
  // Cut out added tokens: leftmost match, longest at that position.
  size_t segment_begin = 0, pos = 0;
  while (pos < text.size()) {
    const AddedToken* match = nullptr;
    if (added_first_byte_[static_cast<uint8_t>(text[pos])]) {
      for (const AddedToken& a : added_) {
        if ((match == nullptr || a.content.size() > match->content.size()) &&
            text.compare(pos, a.content.size(), a.content) == 0) {
          match = &a;
        }
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    const size_t left_end = match->lstrip ? WhitespaceRunStart(text, segment_begin, pos) : pos;
    encode_segment(segment_begin, left_end);
    ids.push_back(match->id);
    pos += match->content.size();
    if (match->rstrip) pos = WhitespaceRunEnd(text, pos);
    segment_begin = pos;
  }
  encode_segment(segment_begin, text.size());
  return ids;
}

std::vector<uint32_t> Tokenizer::EncodeOrdinary(std::string_view raw, Cache* cache) const {
  const std::string text = SanitizeUtf8(raw);
  std::vector<uint32_t> ids;
  if (text.empty()) return ids;
  std::vector<std::string> pieces;
  PreTokenize(text, &pieces);
  for (const std::string& p : pieces) EncodePiece(p, cache, &ids);
  return ids;
}

std::string Tokenizer::DecodeBytes(std::span<const uint32_t> ids) const {
  std::string out;
  for (uint32_t id : ids) {
    LATAM_CHECK(id < id_valid_.size() && id_valid_[id], "token id " << id << " is not in the vocabulary");
    out += id_to_bytes_[id];
  }
  return out;
}

std::string Tokenizer::Decode(std::span<const uint32_t> ids) const { return SanitizeUtf8(DecodeBytes(ids)); }

std::optional<uint32_t> Tokenizer::AddedTokenId(std::string_view content) const {
  if (auto it = added_ids_.find(std::string(content)); it != added_ids_.end()) return it->second;
  return std::nullopt;
}

std::optional<uint32_t> Tokenizer::TokenId(std::string_view token) const {
  const std::string key(token);
  if (auto it = added_ids_.find(key); it != added_ids_.end()) return it->second;
  if (auto it = vocab_.find(key); it != vocab_.end()) return it->second;
  return std::nullopt;
}

}  // namespace latam::data
