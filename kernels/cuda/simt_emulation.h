// A CPU emulation of the CUDA execution model, for testing warp-level
// kernels (kernels/cuda/flash_attention_kernels.cuh) on machines without a
// GPU. Compiled only into tests, with LATAM_CUDA_EMULATION defined; it is
// not a general CUDA runtime.
//
// Launch() runs a kernel body for every block of a grid, one block at a
// time, each CUDA thread of the block a cooperative fiber on the
// calling thread. threadIdx, blockIdx, blockDim and gridDim are globals as in
// CUDA, set for the fiber that runs; __syncthreads() is a barrier over the
// block's threads, __syncwarp() over the warp's (a fiber switches only
// there). The warp-collective operations the kernels use (shuffles,
// ldmatrix, mma.sync m16n8k16 bf16) exchange their operands through the
// warp's slots between two warp barriers and compute the result each lane
// would receive, following the PTX ISA's fragment layouts. Asynchronous
// operations complete at the wait that retires them (cp.async at its
// wait_group, in mma.cuh; wgmma at its wait_group, in wgmma.cuh), so reading
// a tile before its wait sees the old contents; a thread that ends with
// some never waited for is an error (AsyncPending). TMA copies (tma.cuh)
// land at issue and complete their mbarrier transaction then. Races
// between threads that barriers do not order are not detected here
// (compute-sanitizer's racecheck on a GPU does that); everything else a
// lane computes is the kernel's own code.
//
// Products in the emulated mma are summed in fp32 in k order; the tensor
// cores' order differs, which tests absorb in their tolerances.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#ifndef LATAM_CUDA_EMULATION
#error "simt_emulation.h is for host builds of CUDA kernels with LATAM_CUDA_EMULATION"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__ __restrict
#define __align__(n) alignas(n)
// A kernel's static shared arrays become function-local statics: blocks run
// one at a time and their threads on one host thread, so a static is shared
// by exactly the threads of the running block.
#define __shared__ static

// Plain aggregates with CUDA's layouts (vector_types.h), no member functions.
struct alignas(16) uint4 {
  uint32_t x, y, z, w;
};
struct alignas(8) uint2 {
  uint32_t x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
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

// The operand slots of one warp while its lanes exchange values.
struct Warp {
  uint64_t words[32][8] = {};
  const void* pointers[32] = {};
};

// Barriers of the running block: the calling CUDA thread waits until every
// thread of its block (BlockBarrier) or of its warp (WarpBarrier) arrived.
void BlockBarrier();
void WarpBarrier();
// __syncthreads_count: the number of the block's threads passing true.
int BlockBarrierCount(bool predicate);
// Lets the block's other threads run (a thread spinning on a condition that
// another thread makes true, such as an mbarrier wait, must yield). The
// scheduler calls the block deadlocked when a whole round of its threads
// passes with no progress: no barrier arrival, no finished thread and no
// NoteProgress().
void Yield();
// Records that shared state changed or a wait succeeded (emulated mbarriers).
void NoteProgress();
// Counts the calling thread's asynchronous operations in flight (+1 when
// one is issued, -1 when it completes); a thread that ends with some still
// in flight is an error (its kernel never waited for them).
void AsyncPending(int delta);
// Named barriers (bar.sync / bar.arrive id, count; ids 1-15, 0 being
// __syncthreads'): Sync waits until `count` threads have arrived at barrier
// `id` by Sync or Arrive, Arrive counts the calling thread without waiting.
void NamedBarrierSync(int id, int count);
void NamedBarrierArrive(int id, int count);
Warp& CurrentWarp();
inline int Lane() { return static_cast<int>(threadIdx.x % 32); }

// Runs body() as every thread of every block of `grid`; `shared_bytes` of
// zeroed dynamic shared memory per block (SharedMemory()). Blocks run one
// after another; the threads of a block are cooperative fibers on the
// calling thread that switch only at barriers, so static __shared__ arrays
// (function-local statics here) are the running block's.
void Launch(Dim3 grid, Dim3 block, size_t shared_bytes, const std::function<void()>& body);
unsigned char* SharedMemory();
// Bytes of dynamic shared memory the running block has.
size_t SharedBytes();
// A number that differs for every block run (per-thread state kept by the
// emulated asynchronous operations resets when it changes).
uint64_t BlockSerial();

// One CUDA thread's asynchronous operations of one kind (cp.async, wgmma),
// in groups as the PTX commit_group / wait_group instructions make them:
// Issue adds an operation to the open group, Commit closes it, and
// Retire(keep, complete) completes the oldest committed groups, in order,
// until `keep` remain (wait_group keep). Per thread of the running block:
// the state starts empty in every block (BlockSerial).
template <typename Op>
class AsyncGroups {
 public:
  static AsyncGroups& ThisThread() {
    static std::vector<AsyncGroups> threads;  // by threadIdx.x; blocks run one at a time
    if (threads.size() < blockDim.x) threads.resize(blockDim.x);
    AsyncGroups& t = threads[threadIdx.x];
    if (t.block_ != BlockSerial()) t = AsyncGroups(BlockSerial());
    return t;
  }
  void Issue(const Op& op) {
    open_.push_back(op);
    AsyncPending(1);
  }
  void Commit() {
    committed_.push_back(std::move(open_));
    open_.clear();
  }
  size_t open() const { return open_.size(); }
  template <typename Complete>
  void Retire(size_t keep, Complete complete) {
    while (committed_.size() > keep) {
      const std::vector<Op> group = std::move(committed_.front());
      committed_.erase(committed_.begin());
      for (const Op& op : group) {
        complete(op);
        AsyncPending(-1);
      }
    }
  }
  AsyncGroups() = default;

 private:
  explicit AsyncGroups(uint64_t block) : block_(block) {}
  uint64_t block_ = 0;
  std::vector<std::vector<Op>> committed_;  // oldest first
  std::vector<Op> open_;
};

// Every lane publishes `words` (up to 8 64-bit words), then reads any lane's.
template <typename Fn>
inline void Exchange(const uint64_t* words, int n, Fn read) {
  Warp& w = CurrentWarp();
  const int lane = Lane();
  for (int i = 0; i < n; ++i) w.words[lane][i] = words[i];
  WarpBarrier();
  read(w);
  WarpBarrier();
}

}  // namespace latam::simt

inline void __syncthreads() { latam::simt::BlockBarrier(); }
inline int __syncthreads_count(int predicate) { return latam::simt::BlockBarrierCount(predicate != 0); }
inline void __syncwarp(unsigned = 0xffffffffu) { latam::simt::WarpBarrier(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
  uint64_t word = 0;
  std::memcpy(&word, &v, 4);
  float out = 0.0f;
  latam::simt::Exchange(&word, 1, [&](latam::simt::Warp& w) {
    std::memcpy(&out, &w.words[latam::simt::Lane() ^ lane_mask][0], 4);
  });
  return out;
}

inline int atomicMax(int* address, int value) {  // fibers switch only at barriers: plain read-modify-write
  const int old = *address;
  if (value > old) *address = value;
  return old;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{{latam::simt::RoundToBf16(lo)}, {latam::simt::RoundToBf16(hi)}};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{latam::simt::RoundToBf16(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 v) { return latam::simt::Bf16ToFloat(v.bits); }
