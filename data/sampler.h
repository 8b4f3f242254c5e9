// Stateless sample order over one token stream.
//
// The stream of n tokens is cut into W = (n - 1) / seq_len windows; window k
// covers tokens [k*seq_len, k*seq_len + seq_len + 1) (inputs are the first
// seq_len, targets the last seq_len). Sample i of the run is window
//   Permute(seed, epoch = i / W)(i mod W)
// where each epoch uses its own pseudo-random bijection of [0, W). Sample i
// is a pure function of (seed, i): there is no iterator state, so resuming
// needs only the number of consumed samples, and any split of the sample
// indices between data-parallel ranks sees the same global order.
#pragma once

#include <cstdint>

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

class WindowSampler {
 public:
  // n_tokens >= seq_len + 1 is required (callers validate).
  WindowSampler(uint64_t n_tokens, int seq_len, uint64_t seed);
  uint64_t num_windows() const { return windows_; }
  // First token of the window that sample `sample_index` reads.
  uint64_t WindowStart(uint64_t sample_index) const;

 private:
  uint64_t windows_;
  int seq_len_;
  uint64_t seed_;
};

}  // namespace latam::data
