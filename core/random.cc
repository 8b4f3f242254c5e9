#include "core/random.h"

#include <cmath>
#include <numbers>

namespace latam {

uint64_t Mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t StreamId(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

double UniformAt(uint64_t seed, uint64_t stream, uint64_t index) {
  const uint64_t bits = Mix64(Mix64(Mix64(seed) ^ stream) ^ index);
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

double NormalAt(uint64_t seed, uint64_t stream, uint64_t index) {
  // u1 in (0, 1] so that log(u1) is finite.
  const double u1 = 1.0 - UniformAt(seed, stream, 2 * index);
  const double u2 = UniformAt(seed, stream, 2 * index + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
}

void FillNormal(float* dst, int64_t n, float std, uint64_t seed, uint64_t stream, uint64_t first_index) {
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < n; ++j) {
    dst[j] = static_cast<float>(std * NormalAt(seed, stream, first_index + static_cast<uint64_t>(j)));
  }
}

}  // namespace latam
