#include "data/sampler.h"

#include "kernels/check.h"
#include "kernels/random.h"

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

WindowSampler::WindowSampler(uint64_t n_tokens, int seq_len, uint64_t seed)
    : windows_(seq_len > 0 && n_tokens > 0 ? (n_tokens - 1) / static_cast<uint64_t>(seq_len) : 0),
      seq_len_(seq_len),
      seed_(seed) {
  LATAM_CHECK(windows_ > 0, "a stream of " << n_tokens << " tokens has no window of " << seq_len << "+1 tokens");
}

uint64_t WindowSampler::WindowStart(uint64_t sample_index) const {
  const uint64_t epoch = sample_index / windows_;
  const Permutation perm(windows_, Mix64(seed_ ^ Mix64(epoch + 0x5eed)));
  return perm(sample_index % windows_) * static_cast<uint64_t>(seq_len_);
}

}  // namespace latam::data
