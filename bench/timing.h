// Timing helper shared by the benchmarks.
#pragma once

#include <chrono>
#include <functional>

namespace latam::bench {

// Calls fn once to warm up, then repeatedly until `seconds` have passed;
// returns the mean seconds per call.
inline double SecondsPerCall(const std::function<void()>& fn, double seconds) {
  fn();
  int iters = 0;
  const auto start = std::chrono::steady_clock::now();
  double elapsed = 0.0;
  do {
    fn();
    ++iters;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (elapsed < seconds);
  return elapsed / iters;
}

}  // namespace latam::bench
