// Vectorisable math for the CPU kernels (internal to kernels/cpu).
//
// The kernels' hot loops are compiled for several ISAs (target_clones); these
// helpers are plain arithmetic so that GCC vectorises them in every clone
// without -ffast-math (which would break the -inf masks of attention).
#pragma once

#include <cstdint>
#include <cstring>

// Hot loops get an AVX-512, an AVX2 and a baseline clone; the dynamic loader
// picks the best one for the CPU the process runs on.
#define LATAM_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

namespace latam::cpu {

// exp(x) for float, max relative error about 2e-7 over the whole float
// range; returns exactly 0 below -87.33 (including -inf) and saturates at
// exp(88.37) above.
//   exp(x) = 2^n * exp(r),  n = round(x / ln 2),  r = x - n ln 2, |r| <= ln2/2
// exp(r) is a degree-7 Taylor polynomial (truncation error < 2e-8 on |r| <= 0.347).
inline float ExpF(float x) {
  const float clamped = x < -87.33654f ? -87.33654f : (x > 88.37626f ? 88.37626f : x);
  // Round to nearest via the 1.5 * 2^23 trick (valid for |v| < 2^22).
  const float shifter = 12582912.0f;
  const float n = (clamped * 1.44269504088896341f + shifter) - shifter;
  // Cody-Waite split of ln 2 keeps r accurate.
  const float r = (clamped - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 +
                                          r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
  const int32_t biased = static_cast<int32_t>(n) + 127;
  const uint32_t bits = static_cast<uint32_t>(biased) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.33654f ? 0.0f : p * scale;
}

// Logistic sigmoid 1 / (1 + exp(-x)).
inline float SigmoidF(float x) { return 1.0f / (1.0f + ExpF(-x)); }

}  // namespace latam::cpu
