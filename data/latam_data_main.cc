// latam-data: corpus, tokenizer and token-shard tools.
//
//   latam-data train-tokenizer --out tokenizer.json --vocab-size N
//              [--min-frequency 2] [--special TOKEN]... [--text-field text] FILE...
//   latam-data encode --tokenizer tokenizer.json --out SHARD.bin
//              [--eos-token <|end_of_text|>] [--bos-token <|begin_of_text|>]
//              [--text-field text] FILE...
//   latam-data encode-chat --tokenizer tokenizer.json --out SHARD.bin FILE.jsonl...
//   latam-data tokenize --tokenizer tokenizer.json      (text on stdin -> ids)
//   latam-data detokenize --tokenizer tokenizer.json    (ids on stdin -> text)
//   latam-data inspect SHARD.bin [--tokenizer tokenizer.json]
//   latam-data synthesize --out SHARD.bin --vocab V --tokens N
//              [--branching B] [--doc-len L] [--seed S]
//   latam-data eval-tasks --out TASKS.jsonl [--items N] [--choices K]
//              NAME=FILE...   (latam-eval tasks from held-out documents)
//
// Corpus FILEs are .jsonl (one {"text": ...} document per line) or plain
// text (one document per file); encode-chat's are .jsonl conversations
// (data/chat.h). Exit codes: 0 ok, 2 bad input, 1 other.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "core/escape.h"
#include "data/bpe_trainer.h"
#include "data/chat.h"
#include "data/corpus.h"
#include "data/shard.h"
#include "data/synthetic.h"
#include "data/tokenizer.h"
#include "core/env.h"
#include "core/threads.h"
#include "nlohmann/json.hpp"

namespace {

using latam::Result;
using latam::Status;

constexpr const char* kUsage =
    "usage: latam-data train-tokenizer --out tokenizer.json --vocab-size N [--min-frequency F]\n"
    "                  [--special TOKEN]... [--text-field NAME] FILE...\n"
    "       latam-data encode --tokenizer tokenizer.json --out SHARD.bin [--eos-token TOKEN]\n"
    "                  [--bos-token TOKEN] [--text-field NAME] FILE...\n"
    "       latam-data encode-chat --tokenizer tokenizer.json --out SHARD.bin FILE.jsonl...\n"
    "       latam-data tokenize --tokenizer tokenizer.json   < text\n"
    "       latam-data detokenize --tokenizer tokenizer.json < ids\n"
    "       latam-data inspect SHARD.bin [--tokenizer tokenizer.json]\n"
    "       latam-data synthesize --out SHARD.bin --vocab V --tokens N [--branching B] [--doc-len L] [--seed S]\n"
    "       latam-data eval-tasks --out TASKS.jsonl [--items N] [--choices K] NAME=FILE...\n";

// Documents are handed to the parallel stages in batches of about this size.
constexpr size_t kBatchBytes = 16 << 20;

struct Args {
  std::map<std::string, std::vector<std::string>> flags;
  std::vector<std::string> positional;

  bool Has(const std::string& name) const { return flags.count(name) != 0; }
  std::string Get(const std::string& name, const std::string& fallback = "") const {
    auto it = flags.find(name);
    return it == flags.end() ? fallback : it->second.back();
  }
  Result<std::string> Required(const std::string& name) const {
    if (!Has(name)) return Status::InvalidInput("--" + name + " is required\n" + kUsage);
    return Get(name);
  }
  Result<int64_t> Int(const std::string& name, int64_t fallback, bool required = false) const {
    if (!Has(name)) {
      if (required) return Status::InvalidInput("--" + name + " is required\n" + kUsage);
      return fallback;
    }
    const std::string v = Get(name);
    char* end = nullptr;
    errno = 0;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || errno == ERANGE) {
      return Status::InvalidInput("--" + name + ": '" + v + "' is not a 64-bit integer");
    }
    return static_cast<int64_t>(x);
  }
};

// "--name value" flags (every name must be in `allowed`) and positional args.
// --out names the file to write: a directory there is bad input.
Result<std::string> OutputPath(const Args& args) {
  LATAM_ASSIGN_OR_RETURN(const std::string out, args.Required("out"));
  std::error_code ec;
  if (std::filesystem::is_directory(out, ec)) return Status::InvalidInput("--out " + out + ": is a directory");
  return out;
}

Result<Args> Parse(int argc, char** argv, const std::vector<std::string>& allowed) {
  Args a;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      a.positional.push_back(arg);
      continue;
    }
    const std::string name = arg.substr(2);
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      return Status::InvalidInput("unknown argument " + arg + "\n" + kUsage);
    }
    if (i + 1 >= argc) return Status::InvalidInput(arg + " needs a value");
    a.flags[name].push_back(argv[++i]);
  }
  return a;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Progress on stderr: rewritten in place on a terminal, a line every 10 s otherwise.
class Progress {
 public:
  Progress() : tty_(isatty(2) != 0), start_(std::chrono::steady_clock::now()), last_(start_) {}
  void Update(const std::string& line) {
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_).count() < (tty_ ? 0.5 : 10.0)) return;
    last_ = now;
    std::fprintf(stderr, tty_ ? "\r%s   " : "%s\n", line.c_str());
    std::fflush(stderr);
  }
  void Done() {
    if (tty_) std::fprintf(stderr, "\n");
  }
  double elapsed() const { return Seconds(start_); }

 private:
  bool tty_;
  std::chrono::steady_clock::time_point start_, last_;
};

std::string Mb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MB", bytes / 1e6);
  return buf;
}

// Reads the corpus files in batches of documents and calls on_batch for each;
// every file is checked before the first is read.
Status ForEachBatch(const std::vector<std::string>& files, const std::string& text_field,
                    const std::function<Status(std::vector<std::string>&)>& on_batch) {
  for (const std::string& file : files) LATAM_RETURN_IF_ERROR(latam::data::CheckCorpusFile(file));
  std::vector<std::string> batch;
  size_t batch_bytes = 0;
  Status status;
  for (const std::string& file : files) {
    LATAM_RETURN_IF_ERROR(latam::data::ForEachDocument(file, text_field, [&](std::string_view doc) {
      batch.emplace_back(doc);
      batch_bytes += doc.size();
      if (batch_bytes >= kBatchBytes) {
        status = on_batch(batch);
        batch.clear();
        batch_bytes = 0;
      }
      return status.ok();
    }));
    LATAM_RETURN_IF_ERROR(status);
  }
  if (!batch.empty()) LATAM_RETURN_IF_ERROR(on_batch(batch));
  return Status::Ok();
}

Status TrainTokenizer(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(const Args args,
                         Parse(argc, argv, {"out", "vocab-size", "min-frequency", "special", "text-field"}));
  LATAM_ASSIGN_OR_RETURN(const std::string out, OutputPath(args));
  if (args.positional.empty()) return Status::InvalidInput(std::string("no corpus files given\n") + kUsage);
  latam::data::BpeTrainerOptions options;
  LATAM_ASSIGN_OR_RETURN(const int64_t vocab, args.Int("vocab-size", 0, true));
  LATAM_ASSIGN_OR_RETURN(options.min_frequency, args.Int("min-frequency", 2));
  if (vocab <= 0 || vocab > latam::data::Tokenizer::kMaxIds) {
    return Status::InvalidInput("--vocab-size must be in [1, 2^24] (the ids a tokenizer.json may use)");
  }
  options.vocab_size = static_cast<int>(vocab);
  if (args.Has("special")) options.special_tokens = args.flags.at("special");
  LATAM_ASSIGN_OR_RETURN(auto trainer, latam::data::BpeTrainer::Create(options));

  Progress progress;
  double bytes = 0;
  int64_t docs = 0;
  LATAM_RETURN_IF_ERROR(ForEachBatch(args.positional, args.Get("text-field", "text"), [&](auto& batch) {
    trainer->AddDocuments(batch);
    docs += static_cast<int64_t>(batch.size());
    for (const auto& d : batch) bytes += static_cast<double>(d.size());
    progress.Update("counting words: " + Mb(bytes) + ", " + std::to_string(docs) + " documents");
    return Status::Ok();
  }));
  progress.Done();
  const double count_s = progress.elapsed();
  LATAM_ASSIGN_OR_RETURN(const std::string json, trainer->Train());
  LATAM_RETURN_IF_ERROR(latam::WriteFileAtomically(latam::Env::Default(), out, json));
  std::fprintf(stderr,
               "train-tokenizer: %s in %lld documents, %lld unique words; %lld merges; vocabulary %d; "
               "%.1f s counting + %.1f s merging -> %s\n",
               Mb(bytes).c_str(), static_cast<long long>(docs), static_cast<long long>(trainer->unique_words()),
               static_cast<long long>(trainer->merges()), options.vocab_size, count_s, progress.elapsed() - count_s,
               out.c_str());
  return Status::Ok();
}

Status Encode(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(const Args args,
                         Parse(argc, argv, {"tokenizer", "out", "eos-token", "bos-token", "text-field"}));
  LATAM_ASSIGN_OR_RETURN(const std::string tokenizer_path, args.Required("tokenizer"));
  LATAM_ASSIGN_OR_RETURN(const std::string out, OutputPath(args));
  if (args.positional.empty()) return Status::InvalidInput(std::string("no corpus files given\n") + kUsage);
  LATAM_ASSIGN_OR_RETURN(auto tok, latam::data::Tokenizer::Load(tokenizer_path));
  const std::string eos_token = args.Get("eos-token", "<|end_of_text|>");
  const auto eos = tok->TokenId(eos_token);
  if (!eos) return Status::InvalidInput(tokenizer_path + ": has no token '" + eos_token + "' (set --eos-token)");
  // Llama 3 starts every document with <|begin_of_text|>: the default when
  // the tokenizer has it; --bos-token '' writes none.
  std::optional<uint32_t> bos;
  if (args.Has("bos-token")) {
    const std::string bos_token = args.Get("bos-token", "");
    if (!bos_token.empty()) {
      bos = tok->TokenId(bos_token);
      if (!bos) {
        return Status::InvalidInput(tokenizer_path + ": has no token '" + bos_token +
                                    "' (set --bos-token, or --bos-token '' for none)");
      }
    }
  } else {
    bos = tok->TokenId("<|begin_of_text|>");
  }
  LATAM_ASSIGN_OR_RETURN(auto writer, latam::data::ShardWriter::Create(out));

  const int threads = omp_get_max_threads();
  std::vector<latam::data::Tokenizer::Cache> caches(static_cast<size_t>(threads));
  Progress progress;
  double bytes = 0;
  int64_t docs = 0;
  auto encode_batch = [&](std::vector<std::string>& batch) {
    std::vector<std::vector<uint32_t>> ids(batch.size());
#pragma omp parallel for schedule(dynamic, 8)
    for (size_t d = 0; d < batch.size(); ++d) {
      if (bos) ids[d].push_back(*bos);
      const std::vector<uint32_t> text = tok->Encode(batch[d], &caches[static_cast<size_t>(omp_get_thread_num())]);
      ids[d].insert(ids[d].end(), text.begin(), text.end());
      ids[d].push_back(*eos);
    }
    for (size_t d = 0; d < batch.size(); ++d) {
      LATAM_RETURN_IF_ERROR(writer->AddDocument(ids[d]));
      bytes += static_cast<double>(batch[d].size());
    }
    docs += static_cast<int64_t>(batch.size());
    progress.Update("encoding: " + Mb(bytes) + ", " + std::to_string(docs) + " documents, " +
                    std::to_string(writer->n_tokens()) + " tokens, " + Mb(bytes / progress.elapsed()) + "/s");
    return Status::Ok();
  };
  LATAM_RETURN_IF_ERROR(ForEachBatch(args.positional, args.Get("text-field", "text"), encode_batch));
  progress.Done();
  const uint64_t tokens = writer->n_tokens();
  LATAM_RETURN_IF_ERROR(writer->Close());
  const double s = progress.elapsed();
  std::fprintf(stderr, "encode: %lld documents, %s -> %llu tokens in %.1f s (%s/s, %.0f tokens/s, %d threads) -> %s\n",
               static_cast<long long>(docs), Mb(bytes).c_str(), static_cast<unsigned long long>(tokens), s,
               Mb(bytes / s).c_str(), static_cast<double>(tokens) / s, threads, out.c_str());
  return Status::Ok();
}

// Conversations -> one version 2 shard (data/chat.h: template and mask).
Status EncodeChat(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(const Args args, Parse(argc, argv, {"tokenizer", "out"}));
  LATAM_ASSIGN_OR_RETURN(const std::string tokenizer_path, args.Required("tokenizer"));
  LATAM_ASSIGN_OR_RETURN(const std::string out, OutputPath(args));
  if (args.positional.empty()) return Status::InvalidInput(std::string("no conversation files given\n") + kUsage);
  for (const std::string& file : args.positional) LATAM_RETURN_IF_ERROR(latam::data::CheckCorpusFile(file));
  LATAM_ASSIGN_OR_RETURN(auto tok, latam::data::Tokenizer::Load(tokenizer_path));
  LATAM_ASSIGN_OR_RETURN(const latam::data::ChatTemplate chat,
                         latam::data::ChatTemplate::Create(tok.get(), tokenizer_path));
  LATAM_ASSIGN_OR_RETURN(auto writer, latam::data::ShardWriter::Create(out));
  latam::data::Tokenizer::Cache cache;
  Progress progress;
  int64_t conversations = 0;
  auto add_conversation = [&](std::vector<latam::data::ChatMessage>& messages) {
    const latam::data::EncodedChat encoded = chat.Encode(messages, &cache);
    LATAM_RETURN_IF_ERROR(writer->AddDocument(encoded.tokens, encoded.loss_mask));
    ++conversations;
    progress.Update(std::string("encoding conversations: ")
                        .append(std::to_string(conversations))
                        .append(", ")
                        .append(std::to_string(writer->n_tokens()))
                        .append(" tokens"));
    return Status::Ok();
  };
  for (const std::string& file : args.positional) {
    LATAM_RETURN_IF_ERROR(latam::data::ForEachConversation(file, add_conversation));
  }
  progress.Done();
  if (conversations == 0) return Status::InvalidInput("no conversations in the input files: nothing to write");
  const uint64_t tokens = writer->n_tokens(), in_loss = writer->n_loss_tokens();
  LATAM_RETURN_IF_ERROR(writer->Close());
  std::fprintf(stderr,
               "encode-chat: %lld conversations -> %llu tokens, %llu in the loss (%.1f%%, assistant replies) in "
               "%.1f s -> %s\n",
               static_cast<long long>(conversations), static_cast<unsigned long long>(tokens),
               static_cast<unsigned long long>(in_loss),
               100.0 * static_cast<double>(in_loss) / static_cast<double>(tokens), progress.elapsed(), out.c_str());
  return Status::Ok();
}

std::string ReadAll(std::FILE* f) {
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.append(buf, n);
  return data;
}

Status Tokenize(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(const Args args, Parse(argc, argv, {"tokenizer"}));
  LATAM_ASSIGN_OR_RETURN(const std::string path, args.Required("tokenizer"));
  LATAM_ASSIGN_OR_RETURN(auto tok, latam::data::Tokenizer::Load(path));
  const std::vector<uint32_t> ids = tok->Encode(ReadAll(stdin));
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) line += ' ';
    line += std::to_string(ids[i]);
  }
  std::printf("%s\n", line.c_str());
  return Status::Ok();
}

Status Detokenize(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(const Args args, Parse(argc, argv, {"tokenizer"}));
  LATAM_ASSIGN_OR_RETURN(const std::string path, args.Required("tokenizer"));
  LATAM_ASSIGN_OR_RETURN(auto tok, latam::data::Tokenizer::Load(path));
  std::istringstream in(ReadAll(stdin));
  std::vector<uint32_t> ids;
  std::string word;
  while (in >> word) {
    char* end = nullptr;
    const unsigned long long id = std::strtoull(word.c_str(), &end, 10);
    if (*end != '\0' || word[0] == '-' || id >= tok->vocab_size() || !tok->IsValidId(static_cast<uint32_t>(id))) {
      return Status::InvalidInput("'" + word + "' is not a token id of " + path + " (vocabulary of " +
                                  std::to_string(tok->vocab_size()) + ")");
    }
    ids.push_back(static_cast<uint32_t>(id));
  }
  const std::string text = tok->Decode(ids);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return Status::Ok();
}

Status Synthesize(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(const Args args,
                         Parse(argc, argv, {"out", "vocab", "tokens", "branching", "doc-len", "seed"}));
  LATAM_ASSIGN_OR_RETURN(const std::string out, OutputPath(args));
  latam::data::SyntheticSpec spec;
  LATAM_ASSIGN_OR_RETURN(const int64_t vocab, args.Int("vocab", 0, true));
  LATAM_ASSIGN_OR_RETURN(spec.n_tokens, args.Int("tokens", 0, true));
  LATAM_ASSIGN_OR_RETURN(const int64_t branching, args.Int("branching", 4));
  LATAM_ASSIGN_OR_RETURN(const int64_t doc_len, args.Int("doc-len", 512));
  LATAM_ASSIGN_OR_RETURN(const int64_t seed, args.Int("seed", 1));
  if (vocab < 3 || vocab > (int64_t{1} << 31)) return Status::InvalidInput("--vocab must be in [3, 2^31]");
  if (spec.n_tokens < 1) return Status::InvalidInput("--tokens must be >= 1");
  if (branching < 1 || branching > 64) return Status::InvalidInput("--branching must be in [1, 64]");
  if (doc_len < 2) return Status::InvalidInput("--doc-len must be >= 2");
  spec.vocab = static_cast<int>(vocab);
  spec.branching = static_cast<int>(branching);
  spec.mean_doc_len = static_cast<int>(doc_len);
  spec.seed = static_cast<uint64_t>(seed);

  const auto docs = latam::data::GenerateSyntheticDocuments(spec);
  LATAM_ASSIGN_OR_RETURN(auto writer, latam::data::ShardWriter::Create(out));
  std::vector<uint32_t> all;
  for (const auto& d : docs) {
    LATAM_RETURN_IF_ERROR(writer->AddDocument(d));
    all.insert(all.end(), d.begin(), d.end());
  }
  LATAM_RETURN_IF_ERROR(writer->Close());
  std::printf("{\"path\": \"%s\", \"tokens\": %zu, \"documents\": %zu, \"bigram_entropy_nats\": %.4f}\n", out.c_str(),
              all.size(), docs.size(), latam::data::EmpiricalBigramEntropy(all, spec.vocab));
  return Status::Ok();
}

Status Inspect(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(const Args args, Parse(argc, argv, {"tokenizer"}));
  if (args.positional.size() != 1) return Status::InvalidInput(std::string("inspect takes one shard path\n") + kUsage);
  const std::string path = args.positional[0];
  LATAM_ASSIGN_OR_RETURN(auto shard, latam::data::ShardReader::Open(path));
  uint32_t max_id = 0;
  for (uint64_t i = 0; i < shard->n_tokens(); ++i) max_id = std::max(max_id, shard->tokens()[i]);
  nlohmann::ordered_json j;
  j["path"] = path;
  j["tokens"] = shard->n_tokens();
  j["documents"] = shard->n_docs();
  j["version"] = shard->version();
  // Tokens that count as targets: all of them without a loss mask.
  uint64_t in_loss = shard->n_tokens();
  if (shard->has_loss_mask()) {
    in_loss = 0;
    for (uint64_t i = 0; i < shard->n_tokens(); ++i) in_loss += shard->CountsInLoss(i) ? 1 : 0;
  }
  j["loss_mask"] = shard->has_loss_mask();
  j["loss_tokens"] = in_loss;
  j["loss_fraction"] =
      shard->n_tokens() > 0 ? static_cast<double>(in_loss) / static_cast<double>(shard->n_tokens()) : 0.0;
  j["max_token_id"] = max_id;
  const uint64_t show = std::min<uint64_t>(shard->n_docs() > 0 ? shard->DocOffset(1) : 0, 64);
  j["first_tokens"] = std::vector<uint32_t>(shard->tokens(), shard->tokens() + show);
  if (args.Has("tokenizer")) {
    LATAM_ASSIGN_OR_RETURN(auto tok, latam::data::Tokenizer::Load(args.Get("tokenizer")));
    if (max_id >= tok->vocab_size()) {
      return Status::InvalidInput(path + ": token id " + std::to_string(max_id) + " is outside the vocabulary of " +
                                  args.Get("tokenizer"));
    }
    const uint64_t sample_end = std::min<uint64_t>(shard->n_docs() > 0 ? shard->DocOffset(1) : 0, 256);
    j["sample_text"] = tok->Decode(std::vector<uint32_t>(shard->tokens(), shard->tokens() + sample_end));
  }
  std::printf("%s\n", j.dump().c_str());
  return Status::Ok();
}


// eval-tasks: latam-eval tasks (trainer/eval.h) built from held-out
// documents, deterministically (a pure function of the files and flags).
// For each NAME=FILE, in the order given:
//   NAME/perplexity    the first --items documents (default 64), each cut to
//                      its first kPerplexityBytes bytes at a whitespace;
//   NAME/continuation  multiple choice over the first --items documents that
//                      hold a context and a continuation: the context is the
//                      document's first kContextBytes bytes, or two thirds of
//                      a shorter one, cut back to a whitespace (at least
//                      kMinContextBytes in); the true choice is what follows,
//                      up to kContinuationBytes more (cut the same way unless
//                      the document ends first), opening with the whitespace
//                      that separated them, as lm-evaluation-harness tasks
//                      write choices. The other choices (--choices in all,
//                      default 4, fewer when fewer documents qualify; no task
//                      below 2) are the continuations of the next documents
//                      of the list (cyclically), skipping any equal to a
//                      choice already taken. The true choice sits at index
//                      (item number mod choices).
// Cuts fall on ASCII whitespace, so they never split a UTF-8 character.
constexpr size_t kPerplexityBytes = 1024;
constexpr size_t kContextBytes = 240;
constexpr size_t kContinuationBytes = 96;
constexpr size_t kMinContextBytes = 16;

bool IsSpace(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

// The last whitespace position p in (begin, min(end, size)] of `text`, or 0.
size_t CutBack(std::string_view text, size_t begin, size_t end) {
  for (size_t p = std::min(end, text.size() - 1); p > begin; --p) {
    if (IsSpace(text[p])) return p;
  }
  return 0;
}

std::string_view Trim(std::string_view t) {
  while (!t.empty() && IsSpace(t.front())) t.remove_prefix(1);
  while (!t.empty() && IsSpace(t.back())) t.remove_suffix(1);
  return t;
}

Status EvalTasks(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(const Args args, Parse(argc, argv, {"out", "items", "choices", "text-field"}));
  LATAM_ASSIGN_OR_RETURN(const std::string out, OutputPath(args));
  LATAM_ASSIGN_OR_RETURN(const int64_t items, args.Int("items", 64));
  LATAM_ASSIGN_OR_RETURN(const int64_t n_choices, args.Int("choices", 4));
  if (items < 1 || items > 1000000) return Status::InvalidInput("--items must be in [1, 10^6]");
  if (n_choices < 2 || n_choices > 26) return Status::InvalidInput("--choices must be in [2, 26]");
  if (args.positional.empty()) return Status::InvalidInput(std::string("no NAME=FILE given\n") + kUsage);
  std::string lines;
  auto emit = [&](nlohmann::ordered_json j) {
    lines += j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    lines += '\n';
  };
  for (const std::string& spec : args.positional) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
      return Status::InvalidInput("'" + spec + "': expected NAME=FILE");
    }
    const std::string name = spec.substr(0, eq), path = spec.substr(eq + 1);
    LATAM_RETURN_IF_ERROR(latam::data::CheckCorpusFile(path));
    std::vector<std::string> docs;
    LATAM_RETURN_IF_ERROR(latam::data::ForEachDocument(path, args.Get("text-field", "text"), [&](std::string_view d) {
      const std::string_view t = Trim(d);
      if (!t.empty()) docs.emplace_back(t);
      return true;
    }));
    int64_t ppl = 0;
    for (const std::string& d : docs) {
      if (ppl == items) break;
      // Short documents whole, long ones up to a whitespace near the limit.
      const size_t cut = d.size() <= kPerplexityBytes ? d.size() : CutBack(d, 0, kPerplexityBytes);
      if (cut == 0) continue;
      emit({{"task", name + "/perplexity"}, {"text", d.substr(0, cut)}});
      ++ppl;
    }
    // Each usable document's context and continuation.
    struct Passage {
      std::string context, continuation;
    };
    std::vector<Passage> passages;
    for (const std::string& d : docs) {
      if (static_cast<int64_t>(passages.size()) == items) break;
      const size_t c = CutBack(d, kMinContextBytes, std::min(kContextBytes, d.size() * 2 / 3));
      if (c == 0) continue;
      size_t e = d.size() <= c + kContinuationBytes ? d.size() : CutBack(d, c + 1, c + kContinuationBytes);
      while (e > c && IsSpace(d[e - 1])) --e;
      if (e <= c + 1) continue;
      passages.push_back(Passage{d.substr(0, c), d.substr(c, e - c)});
    }
    const size_t n = passages.size();
    const int64_t k_choices = std::min<int64_t>(n_choices, static_cast<int64_t>(n));
    if (k_choices < 2) {
      std::fprintf(stderr, "eval-tasks: %s: fewer than 2 documents long enough for %s/continuation; skipped\n",
                   path.c_str(), name.c_str());
      continue;
    }
    for (size_t i = 0; i < n; ++i) {
      std::vector<std::string> others;
      for (size_t k = 1; k < n && static_cast<int64_t>(others.size()) + 1 < k_choices; ++k) {
        const std::string& c = passages[(i + k) % n].continuation;
        if (c == passages[i].continuation || std::find(others.begin(), others.end(), c) != others.end()) continue;
        others.push_back(c);
      }
      if (static_cast<int64_t>(others.size()) + 1 < k_choices) continue;
      const size_t answer = i % static_cast<size_t>(k_choices);
      others.insert(others.begin() + static_cast<std::ptrdiff_t>(answer), passages[i].continuation);
      emit({{"task", name + "/continuation"}, {"context", passages[i].context}, {"choices", others},
            {"answer", answer}});
    }
  }
  LATAM_RETURN_IF_ERROR(latam::WriteFileAtomically(latam::Env::Default(), out, lines));
  std::fprintf(stderr, "eval-tasks: wrote %s\n", out.c_str());
  return Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  latam::ConfigureCpuThreads(1);
  const std::string command = argv[1];
  Status status;
  if (command == "train-tokenizer") {
    status = TrainTokenizer(argc, argv);
  } else if (command == "encode") {
    status = Encode(argc, argv);
  } else if (command == "encode-chat") {
    status = EncodeChat(argc, argv);
  } else if (command == "tokenize") {
    status = Tokenize(argc, argv);
  } else if (command == "detokenize") {
    status = Detokenize(argc, argv);
  } else if (command == "inspect") {
    status = Inspect(argc, argv);
  } else if (command == "synthesize") {
    status = Synthesize(argc, argv);
  } else if (command == "eval-tasks") {
    status = EvalTasks(argc, argv);
  } else {
    status = Status::InvalidInput("unknown command '" + command + "'\n" + kUsage);
  }
  if (status.ok()) return 0;
  std::fprintf(stderr, "latam-data: error: %s\n", latam::EscapeControlBytes(status.message()).c_str());
  return status.exit_code();
}
