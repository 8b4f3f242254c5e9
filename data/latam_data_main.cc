// latam-data: token-shard tools.
//
//   latam-data synthesize --out FILE --vocab V --tokens N [--branching B]
//                         [--doc-len L] [--seed S]
//       Writes a generated, learnable token stream (data/synthetic.h) as a
//       shard and prints its size and its bigram entropy (the loss floor).
//   latam-data inspect FILE
//       Prints the shard's token and document counts and its first tokens.
//
// Exit codes: 0 ok, 2 bad input, 1 other failures.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "data/shard.h"
#include "data/synthetic.h"

namespace {

constexpr const char* kUsage =
    "usage: latam-data synthesize --out FILE --vocab V --tokens N [--branching B] [--doc-len L] [--seed S]\n"
    "       latam-data inspect FILE\n";

int Fail(const latam::Status& s) {
  std::fprintf(stderr, "latam-data: error: %s\n", s.message().c_str());
  return s.exit_code();
}

// Parses "--name value" pairs; every name must be in `allowed`.
latam::Result<std::map<std::string, std::string>> ParseFlags(int argc, char** argv, int first,
                                                             const std::vector<std::string>& allowed) {
  std::map<std::string, std::string> flags;
  for (int i = first; i < argc; i += 2) {
    const std::string name = argv[i];
    bool known = false;
    for (const auto& a : allowed) known = known || name == "--" + a;
    if (!known) return latam::Status::InvalidInput("unknown argument " + name + "\n" + kUsage);
    if (i + 1 >= argc) return latam::Status::InvalidInput(name + " needs a value");
    flags[name.substr(2)] = argv[i + 1];
  }
  return flags;
}

latam::Result<int64_t> IntFlag(const std::map<std::string, std::string>& flags, const std::string& name,
                               int64_t fallback, bool required) {
  auto it = flags.find(name);
  if (it == flags.end()) {
    if (required) return latam::Status::InvalidInput("--" + name + " is required");
    return fallback;
  }
  char* end = nullptr;
  const long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (end == it->second.c_str() || *end != '\0') {
    return latam::Status::InvalidInput("--" + name + ": '" + it->second + "' is not an integer");
  }
  return static_cast<int64_t>(v);
}

latam::Status Synthesize(int argc, char** argv) {
  LATAM_ASSIGN_OR_RETURN(auto flags,
                         ParseFlags(argc, argv, 2, {"out", "vocab", "tokens", "branching", "doc-len", "seed"}));
  if (flags.count("out") == 0) return latam::Status::InvalidInput("--out is required");
  latam::data::SyntheticSpec spec;
  LATAM_ASSIGN_OR_RETURN(const int64_t vocab, IntFlag(flags, "vocab", 0, true));
  LATAM_ASSIGN_OR_RETURN(spec.n_tokens, IntFlag(flags, "tokens", 0, true));
  LATAM_ASSIGN_OR_RETURN(const int64_t branching, IntFlag(flags, "branching", 4, false));
  LATAM_ASSIGN_OR_RETURN(const int64_t doc_len, IntFlag(flags, "doc-len", 512, false));
  LATAM_ASSIGN_OR_RETURN(const int64_t seed, IntFlag(flags, "seed", 1, false));
  if (vocab < 3 || vocab > (int64_t{1} << 31)) return latam::Status::InvalidInput("--vocab must be in [3, 2^31]");
  if (spec.n_tokens < 1) return latam::Status::InvalidInput("--tokens must be >= 1");
  if (branching < 1 || branching > 64) return latam::Status::InvalidInput("--branching must be in [1, 64]");
  if (doc_len < 2) return latam::Status::InvalidInput("--doc-len must be >= 2");
  spec.vocab = static_cast<int>(vocab);
  spec.branching = static_cast<int>(branching);
  spec.mean_doc_len = static_cast<int>(doc_len);
  spec.seed = static_cast<uint64_t>(seed);

  const auto docs = latam::data::GenerateSyntheticDocuments(spec);
  LATAM_ASSIGN_OR_RETURN(auto writer, latam::data::ShardWriter::Create(flags["out"]));
  std::vector<uint32_t> all;
  for (const auto& d : docs) {
    LATAM_RETURN_IF_ERROR(writer->AddDocument(d));
    all.insert(all.end(), d.begin(), d.end());
  }
  LATAM_RETURN_IF_ERROR(writer->Close());
  std::printf("{\"path\": \"%s\", \"tokens\": %zu, \"documents\": %zu, \"bigram_entropy_nats\": %.4f}\n",
              flags["out"].c_str(), all.size(), docs.size(), latam::data::EmpiricalBigramEntropy(all, spec.vocab));
  return latam::Status::Ok();
}

latam::Status Inspect(int argc, char** argv) {
  if (argc != 3) return latam::Status::InvalidInput(std::string("inspect takes one shard path\n") + kUsage);
  LATAM_ASSIGN_OR_RETURN(auto shard, latam::data::ShardReader::Open(argv[2]));
  uint32_t max_id = 0;
  for (uint64_t i = 0; i < shard->n_tokens(); ++i) max_id = std::max(max_id, shard->tokens()[i]);
  std::printf("{\"path\": \"%s\", \"tokens\": %llu, \"documents\": %llu, \"max_token_id\": %u, \"first_tokens\": [",
              argv[2], static_cast<unsigned long long>(shard->n_tokens()),
              static_cast<unsigned long long>(shard->n_docs()), max_id);
  const uint64_t show = std::min<uint64_t>(16, shard->n_tokens());
  for (uint64_t i = 0; i < show; ++i) std::printf("%s%u", i ? ", " : "", shard->tokens()[i]);
  std::printf("]}\n");
  return latam::Status::Ok();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string command = argv[1];
  latam::Status status;
  if (command == "synthesize") {
    status = Synthesize(argc, argv);
  } else if (command == "inspect") {
    status = Inspect(argc, argv);
  } else {
    status = latam::Status::InvalidInput("unknown command '" + command + "'\n" + kUsage);
  }
  return status.ok() ? 0 : Fail(status);
}
