#include "data/sampler.h"

#include <algorithm>
#include <numeric>

#include "core/check.h"
#include "core/random.h"

namespace latam::data {

Permutation::Permutation(uint64_t n, uint64_t key) : n_(n), key_(key) {
  LATAM_CHECK(n > 0, "empty permutation");
  int bits = 2;
  while (bits < 64 && (uint64_t{1} << bits) < n) bits += 2;
  half_bits_ = bits / 2;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
}

uint64_t Permutation::Encrypt(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (uint64_t round = 0; round < 4; ++round) {
    const uint64_t f = Mix64(key_ ^ Mix64(right + (round << 56))) & half_mask_;
    const uint64_t next = left ^ f;
    left = right;
    right = next;
  }
  return (left << half_bits_) | right;
}

uint64_t Permutation::operator()(uint64_t i) const {
  LATAM_CHECK(i < n_, "permutation index " << i << " >= " << n_);
  // The Feistel network permutes [0, 4^half_bits); walking the cycle until
  // the value falls in [0, n) restricts it to a bijection of [0, n).
  uint64_t x = Encrypt(i);
  while (x >= n_) x = Encrypt(x);
  return x;
}

MixtureSampler::MixtureSampler(const std::vector<double>& weights, const std::vector<uint64_t>& windows, uint64_t seed)
    : windows_(windows), seed_(seed) {
  const size_t n = weights.size();
  LATAM_CHECK(n > 0 && n == windows.size() && n <= kBlock, "mixture of " << n << " datasets");
  const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  // Largest remainder: floors first, then the biggest fractional parts.
  per_block_.assign(n, 0);
  std::vector<double> remainder(n);
  uint64_t assigned = 0;
  for (size_t d = 0; d < n; ++d) {
    LATAM_CHECK(weights[d] > 0 && windows[d] > 0,
                "dataset " << d << " has weight " << weights[d] << " and " << windows[d] << " windows");
    const double exact = weights[d] / total * static_cast<double>(kBlock);
    per_block_[d] = std::max<uint64_t>(1, static_cast<uint64_t>(exact));
    remainder[d] = exact - static_cast<double>(per_block_[d]);
    assigned += per_block_[d];
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return remainder[a] > remainder[b]; });
  for (size_t k = 0; assigned < kBlock; k = (k + 1) % n, ++assigned) ++per_block_[order[k]];
  // Datasets raised to one sample may overfill the block: take back from the largest.
  while (assigned > kBlock) {
    const size_t largest =
        static_cast<size_t>(std::max_element(per_block_.begin(), per_block_.end()) - per_block_.begin());
    --per_block_[largest];
    --assigned;
  }
  block_offsets_.assign(n + 1, 0);
  for (size_t d = 0; d < n; ++d) block_offsets_[d + 1] = block_offsets_[d] + per_block_[d];
}

MixtureSampler::Draw MixtureSampler::Sample(uint64_t i) const {
  const uint64_t block = i / kBlock;
  const uint64_t t = Permutation(kBlock, Mix64(seed_ ^ Mix64(block ^ 0x6d697874757265ull)))(i % kBlock);
  const size_t d = static_cast<size_t>(std::upper_bound(block_offsets_.begin(), block_offsets_.end(), t) -
                                       block_offsets_.begin() - 1);
  const uint64_t j = block * per_block_[d] + (t - block_offsets_[d]);
  const uint64_t epoch = j / windows_[d];
  const Permutation windows(windows_[d], Mix64(seed_ ^ Mix64((static_cast<uint64_t>(d) << 40) ^ epoch)));
  return Draw{static_cast<int>(d), windows(j % windows_[d])};
}

std::vector<uint64_t> DataParallelSamples(uint64_t first_sample, uint64_t global_batch, int rank, int ranks) {
  LATAM_CHECK(ranks > 0 && rank >= 0 && rank < ranks && global_batch % static_cast<uint64_t>(ranks) == 0,
              "rank " << rank << " of " << ranks << " for a global batch of " << global_batch);
  const uint64_t per_rank = global_batch / static_cast<uint64_t>(ranks);
  std::vector<uint64_t> samples(per_rank);
  for (uint64_t k = 0; k < per_rank; ++k) samples[k] = first_sample + static_cast<uint64_t>(rank) * per_rank + k;
  return samples;
}

}  // namespace latam::data
