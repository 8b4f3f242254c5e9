#include "data/synthetic.h"

#include <cmath>
#include <unordered_map>

#include "core/check.h"
#include "core/random.h"

namespace latam::data {

std::vector<std::vector<uint32_t>> GenerateSyntheticDocuments(const SyntheticSpec& spec) {
  LATAM_CHECK(spec.vocab >= 3 && spec.branching >= 1 && spec.mean_doc_len >= 2 && spec.n_tokens > 0,
              "bad synthetic spec");
  const uint32_t eos = static_cast<uint32_t>(spec.vocab - 1);
  const uint64_t n_regular = static_cast<uint64_t>(spec.vocab - 1);
  const uint64_t stream_succ = StreamId("synthetic.successor");
  const uint64_t stream_draw = StreamId("synthetic.draw");
  // Successor k has probability 2^-(k+1); the last takes the remainder.
  std::vector<double> cumulative(static_cast<size_t>(spec.branching));
  double acc = 0.0;
  for (int k = 0; k < spec.branching; ++k) {
    acc += (k + 1 < spec.branching) ? std::ldexp(1.0, -(k + 1)) : 1.0 - acc;
    cumulative[static_cast<size_t>(k)] = acc;
  }
  const double end_prob = 1.0 / spec.mean_doc_len;
  std::vector<std::vector<uint32_t>> docs;
  int64_t produced = 0;
  uint64_t draw = 0;
  while (produced < spec.n_tokens) {
    std::vector<uint32_t> doc;
    uint32_t cur = static_cast<uint32_t>(UniformAt(spec.seed, stream_draw, draw++) * static_cast<double>(n_regular));
    doc.push_back(cur);
    while (UniformAt(spec.seed, stream_draw, draw++) >= end_prob) {
      const double u = UniformAt(spec.seed, stream_draw, draw++);
      int k = 0;
      while (k + 1 < spec.branching && u >= cumulative[static_cast<size_t>(k)]) ++k;
      cur = static_cast<uint32_t>(Mix64(Mix64(spec.seed ^ stream_succ) ^ (cur * 1024ull + static_cast<uint64_t>(k))) %
                                  n_regular);
      doc.push_back(cur);
    }
    doc.push_back(eos);
    produced += static_cast<int64_t>(doc.size());
    docs.push_back(std::move(doc));
  }
  return docs;
}

double EmpiricalBigramEntropy(const std::vector<uint32_t>& tokens, int vocab) {
  if (tokens.size() < 2) return 0.0;
  std::unordered_map<uint64_t, uint64_t> pair_counts;
  std::vector<uint64_t> context_counts(static_cast<size_t>(vocab), 0);
  for (size_t i = 0; i + 1 < tokens.size(); ++i) {
    ++pair_counts[static_cast<uint64_t>(tokens[i]) * static_cast<uint64_t>(vocab) + tokens[i + 1]];
    ++context_counts[tokens[i]];
  }
  double h = 0.0;
  const double total = static_cast<double>(tokens.size() - 1);
  for (const auto& [key, count] : pair_counts) {
    const double c = static_cast<double>(count);
    const double ctx = static_cast<double>(context_counts[key / static_cast<uint64_t>(vocab)]);
    h -= c / total * std::log(c / ctx);
  }
  return h;
}

}  // namespace latam::data
