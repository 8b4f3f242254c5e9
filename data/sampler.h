// The stateless sample order of a training run over a mixture of datasets.
//
// Sample i of the run is a pure function of (seed, i, weights, dataset
// sizes): no iterator state exists, so a run resumes from the number of
// consumed samples alone, and any split of the sample indices between
// data-parallel ranks sees the same global order.
//
// Mixture. The weights are normalised and turned into exact counts n_d per
// block of kBlock = 4096 samples (largest remainder, every dataset with a
// positive weight getting at least one). Block b = i / kBlock is laid out by
// a keyed permutation of its slots: slot i mod kBlock maps to t =
// Permute(seed, b)(slot), and t's position in the concatenation [n_0 slots
// of dataset 0, n_1 of dataset 1, ...] names the dataset d and its rank r
// within the block. Dataset d's j-th sample is j = b n_d + r, so each
// dataset's samples are numbered 0, 1, 2, ... without gaps or repeats and
// the proportions hold exactly in every block.
//
// Windows. Dataset d's sample j reads window Permute(seed, d, e)(j mod W_d)
// of epoch e = j / W_d (W_d = its number of windows): every window once per
// epoch, in a new order each epoch.
//
// Data parallelism. Step s consumes samples [s G, (s + 1) G). Data-parallel
// rank r of D takes the contiguous slice [s G + r G/D, s G + (r + 1) G/D).
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"

namespace latam::data {

// A keyed pseudo-random bijection of [0, n): a 4-round Feistel network on the
// smallest even-bit power of two >= n, with cycle-walking back into [0, n).
class Permutation {
 public:
  Permutation(uint64_t n, uint64_t key);
  uint64_t operator()(uint64_t i) const;
  uint64_t size() const { return n_; }

 private:
  uint64_t Encrypt(uint64_t x) const;
  uint64_t n_;
  uint64_t key_;
  int half_bits_;
  uint64_t half_mask_;
};

class MixtureSampler {
 public:
  static constexpr uint64_t kBlock = 4096;

  struct Draw {
    int dataset;
    uint64_t window;  // window index within the dataset
  };

  // weights[d] > 0 and windows[d] > 0 for every dataset (callers validate);
  // at most kBlock datasets.
  MixtureSampler(const std::vector<double>& weights, const std::vector<uint64_t>& windows, uint64_t seed);

  Draw Sample(uint64_t sample_index) const;
  // Samples of dataset d in every block of kBlock.
  const std::vector<uint64_t>& per_block() const { return per_block_; }

 private:
  std::vector<uint64_t> windows_;
  std::vector<uint64_t> per_block_;
  std::vector<uint64_t> block_offsets_;  // prefix sums of per_block_
  uint64_t seed_;
};

// The global sample indices data-parallel rank `rank` of `ranks` trains on
// in the step whose global batch is samples [first_sample, first_sample +
// global_batch): a contiguous slice of global_batch / ranks of them. A run
// that resumes continues from the consumed-sample count, so the order holds
// whatever the data-parallel size or global batch of each segment.
std::vector<uint64_t> DataParallelSamples(uint64_t first_sample, uint64_t global_batch, int rank, int ranks);

}  // namespace latam::data
