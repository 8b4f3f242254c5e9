// A CPU emulation of the CUDA execution model, for testing warp-level
// kernels (kernels/cuda/flash_attention_kernels.cuh) on machines without a
// GPU. Compiled only into tests, with LATAM_CUDA_EMULATION defined; it is
// not a general CUDA runtime.
//
// Launch() runs a kernel body for every block of a grid, one block at a
// time, with one host thread per CUDA thread of the block. threadIdx,
// blockIdx, blockDim and gridDim are thread-local globals as in CUDA;
// __syncthreads() is a barrier over the block's threads, __syncwarp() over
// the warp's. The warp-collective operations the kernels use (shuffles,
// ldmatrix, mma.sync m16n8k16 bf16) exchange their operands through the
// warp's slots between two warp barriers and compute the result each lane
// would receive, following the PTX ISA's fragment layouts. cp.async copies
// at once, so a missing wait is not detected here (compute-sanitizer's
// racecheck on a GPU does that); everything else a lane computes is the
// kernel's own code.
//
// Products in the emulated mma are summed in fp32 in k order; the tensor
// cores' order differs, which tests absorb in their tolerances.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#ifndef LATAM_CUDA_EMULATION
#error "simt_emulation.h is for host builds of CUDA kernels with LATAM_CUDA_EMULATION"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict

// Plain aggregates with CUDA's layouts (vector_types.h), no member functions.
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
// Storage-only stand-ins for cuda_bf16.h's types (kernels convert through
// the helpers below).
struct __nv_bfloat16 {
  uint16_t bits;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

namespace latam::simt {
struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
}  // namespace latam::simt

extern thread_local latam::simt::Dim3 threadIdx, blockIdx, blockDim, gridDim;

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace latam::simt {

// Rounding as the hardware's cvt.rn.bf16.f32: nearest even, NaN kept quiet.
inline uint16_t RoundToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float Bf16ToFloat(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The state of one warp while its lanes exchange operands.
struct Warp {
  explicit Warp() : barrier(32) {}
  std::barrier<> barrier;
  uint64_t words[32][8] = {};
  const void* pointers[32] = {};
};

struct Block {
  explicit Block(unsigned threads) : barrier(static_cast<std::ptrdiff_t>(threads)) {
    for (unsigned w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<Warp>());
  }
  std::barrier<> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> shared;
};

Block& CurrentBlock();
inline Warp& CurrentWarp() { return *CurrentBlock().warps[threadIdx.x / 32]; }
inline int Lane() { return static_cast<int>(threadIdx.x % 32); }

// Runs body() as every thread of every block of `grid`; `shared_bytes` of
// zeroed dynamic shared memory per block (SharedMemory()).
void Launch(Dim3 grid, Dim3 block, size_t shared_bytes, const std::function<void()>& body);
unsigned char* SharedMemory();

// Every lane publishes `words` (up to 8 64-bit words), then reads any lane's.
template <typename Fn>
inline void Exchange(const uint64_t* words, int n, Fn read) {
  Warp& w = CurrentWarp();
  const int lane = Lane();
  for (int i = 0; i < n; ++i) w.words[lane][i] = words[i];
  w.barrier.arrive_and_wait();
  read(w);
  w.barrier.arrive_and_wait();
}

}  // namespace latam::simt

inline void __syncthreads() { latam::simt::CurrentBlock().barrier.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { latam::simt::CurrentWarp().barrier.arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  uint64_t word = 0;
  std::memcpy(&word, &v, 4);
  float out = 0.0f;
  latam::simt::Exchange(&word, 1, [&](latam::simt::Warp& w) {
    std::memcpy(&out, &w.words[latam::simt::Lane() ^ lane_mask][0], 4);
  });
  return out;
}

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{{latam::simt::RoundToBf16(lo)}, {latam::simt::RoundToBf16(hi)}};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{latam::simt::RoundToBf16(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 v) { return latam::simt::Bf16ToFloat(v.bits); }
