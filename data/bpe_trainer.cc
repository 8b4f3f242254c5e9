#include "data/bpe_trainer.h"

#include <omp.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_set>

#include "data/utf8.h"

namespace latam::data {

namespace {

uint64_t PairKey(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }
uint32_t Left(uint64_t key) { return static_cast<uint32_t>(key >> 32); }
uint32_t Right(uint64_t key) { return static_cast<uint32_t>(key & 0xffffffffu); }

struct HeapEntry {
  int64_t count;
  uint64_t pair;
  // Max-heap on count; among equal counts the smaller pair comes first.
  bool operator<(const HeapEntry& o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

}  // namespace

Result<std::unique_ptr<BpeTrainer>> BpeTrainer::Create(const BpeTrainerOptions& options) {
  const int min_vocab = 256 + static_cast<int>(options.special_tokens.size());
  if (options.vocab_size < min_vocab) {
    return Status::InvalidInput("--vocab-size " + std::to_string(options.vocab_size) + " is below the " +
                                std::to_string(min_vocab) + " byte and special tokens");
  }
  if (options.min_frequency < 1) return Status::InvalidInput("--min-frequency must be >= 1");
  std::unordered_set<std::string> seen;
  for (const std::string& s : options.special_tokens) {
    if (s.empty() || !seen.insert(s).second) {
      return Status::InvalidInput("special token '" + s + "' is empty or repeated");
    }
  }
  std::unique_ptr<BpeTrainer> t(new BpeTrainer(options));
  LATAM_ASSIGN_OR_RETURN(t->regex_, Regex::Compile(options.pattern));
  return t;
}

void BpeTrainer::AddDocuments(const std::vector<std::string>& documents) {
  const int threads = omp_get_max_threads();
  std::vector<std::unordered_map<std::string, int64_t>> partial(static_cast<size_t>(threads));
#pragma omp parallel
  {
    auto& counts = partial[static_cast<size_t>(omp_get_thread_num())];
#pragma omp for schedule(dynamic, 16)
    for (size_t d = 0; d < documents.size(); ++d) {
      const std::string text = SanitizeUtf8(documents[d]);
      regex_->ForEachMatch(text, [&](size_t begin, size_t end) { ++counts[text.substr(begin, end - begin)]; });
    }
  }
  for (auto& counts : partial) {
    for (auto& [word, n] : counts) word_counts_[word] += n;
  }
}

Result<std::string> BpeTrainer::Train() {
  // Words as symbol sequences, in a deterministic order.
  std::vector<std::pair<std::string, int64_t>> sorted(word_counts_.begin(), word_counts_.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::vector<uint32_t>> words(sorted.size());
  std::vector<int64_t> counts(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    for (unsigned char c : sorted[w].first) words[w].push_back(c);
    counts[w] = sorted[w].second;
  }

  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<uint32_t>> where;  // pair -> words that contained it (may be stale)
  for (size_t w = 0; w < words.size(); ++w) {
    for (size_t i = 0; i + 1 < words[w].size(); ++i) {
      const uint64_t p = PairKey(words[w][i], words[w][i + 1]);
      pair_counts[p] += counts[w];
      auto& list = where[p];
      if (list.empty() || list.back() != w) list.push_back(static_cast<uint32_t>(w));
    }
  }
  std::priority_queue<HeapEntry> heap;
  for (const auto& [p, c] : pair_counts) heap.push({c, p});

  // token_bytes[id]: raw bytes of each token.
  std::vector<std::string> token_bytes(256);
  for (int b = 0; b < 256; ++b) token_bytes[static_cast<size_t>(b)] = std::string(1, static_cast<char>(b));
  std::unordered_map<std::string, uint32_t> token_ids;
  for (uint32_t b = 0; b < 256; ++b) token_ids[token_bytes[b]] = b;
  std::vector<std::pair<uint32_t, uint32_t>> merges;
  const size_t target_tokens = static_cast<size_t>(options_.vocab_size) - options_.special_tokens.size();

  std::unordered_map<uint64_t, int64_t> delta;
  while (token_bytes.size() < target_tokens && !heap.empty()) {
    const HeapEntry top = heap.top();
    heap.pop();
    auto it = pair_counts.find(top.pair);
    if (it == pair_counts.end() || it->second != top.count) continue;  // stale entry
    if (top.count < options_.min_frequency) break;
    const uint32_t a = Left(top.pair), b = Right(top.pair);
    // Two merge paths can spell the same bytes ("ab"+"c", "a"+"bc"): the
    // second merge reuses the first one's token.
    const std::string merged_bytes = token_bytes[a] + token_bytes[b];
    auto [token_it, is_new] = token_ids.emplace(merged_bytes, static_cast<uint32_t>(token_bytes.size()));
    if (is_new) token_bytes.push_back(merged_bytes);
    const uint32_t merged = token_it->second;
    merges.emplace_back(a, b);

    // Rewrite every word containing (a, b); record the pair-count changes.
    delta.clear();
    std::vector<uint32_t> affected = std::move(where[top.pair]);
    where.erase(top.pair);
    for (uint32_t w : affected) {
      std::vector<uint32_t>& syms = words[w];
      bool contains = false;
      for (size_t i = 0; i + 1 < syms.size() && !contains; ++i) contains = syms[i] == a && syms[i + 1] == b;
      if (!contains) continue;
      const int64_t c = counts[w];
      for (size_t i = 0; i + 1 < syms.size(); ++i) delta[PairKey(syms[i], syms[i + 1])] -= c;
      std::vector<uint32_t> out;
      out.reserve(syms.size());
      for (size_t i = 0; i < syms.size(); ++i) {
        if (i + 1 < syms.size() && syms[i] == a && syms[i + 1] == b) {
          out.push_back(merged);
          ++i;
        } else {
          out.push_back(syms[i]);
        }
      }
      syms.swap(out);
      for (size_t i = 0; i + 1 < syms.size(); ++i) {
        const uint64_t p = PairKey(syms[i], syms[i + 1]);
        delta[p] += c;
        if (Left(p) == merged || Right(p) == merged) {
          auto& list = where[p];
          if (list.empty() || list.back() != w) list.push_back(w);
        }
      }
    }
    for (const auto& [p, d] : delta) {
      if (d == 0) continue;
      int64_t& c = pair_counts[p];
      c += d;
      if (c <= 0) {
        pair_counts.erase(p);
      } else {
        heap.push({c, p});
      }
    }
    pair_counts.erase(top.pair);
  }
  merges_learned_ = static_cast<int64_t>(merges.size());

  // tokenizer.json, laid out like Llama 3's.
  using OJson = nlohmann::ordered_json;
  const auto byte_level = [](const std::string& bytes) {
    std::string s;
    for (unsigned char c : bytes) s += ByteLevelStrings()[c];
    return s;
  };
  OJson vocab = OJson::object();
  for (size_t id = 0; id < token_bytes.size(); ++id) vocab[byte_level(token_bytes[id])] = id;
  OJson merge_list = OJson::array();
  for (const auto& [l, r] : merges) merge_list.push_back(byte_level(token_bytes[l]) + " " + byte_level(token_bytes[r]));
  OJson added = OJson::array();
  for (size_t i = 0; i < options_.special_tokens.size(); ++i) {
    added.push_back({{"id", token_bytes.size() + i},
                     {"content", options_.special_tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const OJson byte_level_step = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  OJson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", OJson::array({{{"type", "Split"},
                                                         {"pattern", {{"Regex", options_.pattern}}},
                                                         {"behavior", "Isolated"},
                                                         {"invert", false}},
                                                        byte_level_step})}};
  j["post_processor"] = {
      {"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", true},
                {"vocab", vocab},
                {"merges", merge_list}};
  return j.dump(1);
}

}  // namespace latam::data
