// A generated, learnable token stream for tests, benchmarks and the
// quickstart before a real corpus is tokenized.
//
// Tokens 0 .. vocab-2 follow a first-order Markov chain: token a is followed
// by one of `branching` successors succ(a, k) (k = 0 .. branching-1, chosen
// pseudo-randomly from the seed) with probability 2^-(k+1), the last successor
// taking the remainder (1/2, 1/4, 1/8, 1/8 for 4 successors). Documents end with the EOS token
// vocab-1 after a geometric number of tokens (mean `mean_doc_len`); the first
// token of a document is uniform. A model that learns the bigram table
// reaches the chain's conditional entropy, which EmpiricalBigramEntropy
// measures on the generated stream itself.
#pragma once

#include <cstdint>
#include <vector>

namespace latam::data {

struct SyntheticSpec {
  int vocab = 256;
  int64_t n_tokens = 1 << 20;
  int branching = 4;
  int mean_doc_len = 512;
  uint64_t seed = 1;
};

// Documents (each ending in EOS = vocab-1) totalling at least n_tokens.
std::vector<std::vector<uint32_t>> GenerateSyntheticDocuments(const SyntheticSpec& spec);

// Plug-in estimate of H(next | current) in nats over consecutive pairs of
// `tokens`: the loss floor of a model that predicts from the previous token.
double EmpiricalBigramEntropy(const std::vector<uint32_t>& tokens, int vocab);

}  // namespace latam::data
