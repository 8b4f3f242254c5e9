// Counter-based random numbers.
//
// Value i of stream `stream` under `seed` is a pure function of
// (seed, stream, i): no generator state is carried between calls. Parameter
// initialisation uses the tensor's canonical name as the stream and the
// element's index in the full (unsharded) tensor as i, so every parallel
// layout draws exactly the same initial weights.
#pragma once

#include <cstdint>
#include <string_view>

namespace latam {

// SplitMix64 finaliser: a bijective 64-bit mixer.
uint64_t Mix64(uint64_t x);
// Stream id of a name (64-bit FNV-1a).
uint64_t StreamId(std::string_view name);
// Uniform double in [0, 1) with 53 random bits.
double UniformAt(uint64_t seed, uint64_t stream, uint64_t index);
// Standard normal (Box-Muller on two uniforms derived from index).
double NormalAt(uint64_t seed, uint64_t stream, uint64_t index);

// dst[j] = std * NormalAt(seed, stream, first_index + j) for j in [0, n).
void FillNormal(float* dst, int64_t n, float std, uint64_t seed, uint64_t stream, uint64_t first_index);

}  // namespace latam
