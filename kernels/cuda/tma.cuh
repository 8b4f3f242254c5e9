// Hopper's bulk tensor copy engine (TMA) and shared-memory barriers
// (mbarrier), for the warp-specialised attention forward
// (kernels/cuda/flash_attention_wgmma.cuh). Internal to kernels/cuda.
//
// TMA copies a box of a tensor described by a tensor map (CUtensorMap,
// encoded on the host by the driver's cuTensorMapEncodeTiled and passed to
// the kernel as a __grid_constant__ parameter) from global to shared memory,
// zero-filling what lies outside the tensor, and reports the bytes written
// to an mbarrier (complete_tx). Here the maps are 3-D, {columns, rows,
// batch}, bf16, with the 128-byte swizzle: a box of {64 columns, R rows, 1}
// lands as R rows of 128 bytes with 16-byte chunk c of row r at c ^ (r % 8),
// the layout wgmma.cuh's descriptors read (destination 1024-byte aligned).
//
// An mbarrier (8 bytes of shared memory) completes a phase when its
// expected arrivals have arrived and the transaction bytes announced with
// ArriveExpectTx have landed; WaitParity(bar, p) returns once the phase of
// parity p has completed (a fresh barrier is in phase 0, so waiting for
// parity 1 returns at once: producers wait on "empty" barriers with the
// flipped parity).
//
// Named barriers (bar.sync / bar.arrive with an id and a thread count) let
// two warpgroups take turns without stopping the rest of the block.
//
// With LATAM_CUDA_EMULATION the tensor map is a plain struct filled on the
// host (TensorMap below), TMA copies at once (swizzling as above and
// zero-filling outside the tensor, then completing the transaction), the
// mbarrier's state lives in its 8 bytes of shared memory, and waits yield to
// the block's other threads (simt::Yield).
#pragma once

#include <cstdint>

#include "kernels/cuda/mma.cuh"

#ifdef LATAM_CUDA_EMULATION
#include "core/check.h"
#else
#include <cuda.h>
#endif

namespace latam::cuda::tma {

#ifdef LATAM_CUDA_EMULATION

// What the emulated copy needs of a 3-D tiled bf16 tensor map.
struct alignas(64) TensorMap {
  const void* base = nullptr;
  uint64_t dims[3] = {0, 0, 0};   // elements: columns, rows, batch
  uint64_t strides[2] = {0, 0};   // bytes between rows, between batches
  uint32_t box[3] = {0, 0, 0};    // columns (64), rows, 1
};

namespace detail {
// The emulated barrier's 8 bytes: expected arrivals, pending arrivals,
// outstanding transaction bytes (signed: a copy may land before it is
// announced) and the phase bit.
struct Barrier {
  uint16_t expected;
  uint16_t pending;
  int32_t tx : 31;
  uint32_t phase : 1;
};
static_assert(sizeof(Barrier) == 8, "an mbarrier is 8 bytes");

inline Barrier* At(uint64_t* bar) { return reinterpret_cast<Barrier*>(bar); }

inline void MaybeComplete(Barrier* b) {
  if (b->pending == 0 && b->tx == 0) {
    b->phase ^= 1u;
    b->pending = b->expected;
  }
  simt::NoteProgress();
}
}  // namespace detail

inline void InitBarrier(uint64_t* bar, int arrivals) {
  detail::Barrier* b = detail::At(bar);
  b->expected = static_cast<uint16_t>(arrivals);
  b->pending = static_cast<uint16_t>(arrivals);
  b->tx = 0;
  b->phase = 0;
}
inline void FenceBarrierInit() {}

inline void Arrive(uint64_t* bar) {
  detail::Barrier* b = detail::At(bar);
  LATAM_CHECK(b->pending > 0, "emulated mbarrier: more arrivals than expected");
  --b->pending;
  detail::MaybeComplete(b);
}

inline void ArriveExpectTx(uint64_t* bar, uint32_t bytes) {
  detail::At(bar)->tx += static_cast<int32_t>(bytes);
  Arrive(bar);
}

inline void WaitParity(uint64_t* bar, uint32_t parity) {
  while (detail::At(bar)->phase == (parity & 1u)) simt::Yield();
  simt::NoteProgress();
}

// TMA: box {64, rows, 1} at coordinates (column, row, batch) into `dst`.
inline void Load3d(void* dst, const TensorMap& map, int column, int row, int batch, uint64_t* bar) {
  LATAM_CHECK(mma::SharedAddress(dst) % 1024 == 0, "emulated TMA: a 128-byte-swizzled destination must be "
                                                   "1024-byte aligned, got offset "
                                                       << mma::SharedAddress(dst));
  LATAM_CHECK(map.box[0] == 64 && map.box[2] == 1, "emulated TMA supports boxes of {64, rows, 1}");
  unsigned char* out = static_cast<unsigned char*>(dst);
  const auto* base = static_cast<const unsigned char*>(map.base);
  for (uint32_t r = 0; r < map.box[1]; ++r) {
    for (int c = 0; c < 8; ++c) {
      unsigned char* chunk = out + r * 128 + ((static_cast<uint32_t>(c) ^ (r % 8)) * 16);
      for (int e = 0; e < 8; ++e) {
        const int64_t col = column + 8 * c + e, y = row + static_cast<int64_t>(r);
        const bool inside = col >= 0 && col < static_cast<int64_t>(map.dims[0]) && y >= 0 &&
                            y < static_cast<int64_t>(map.dims[1]) && batch >= 0 &&
                            batch < static_cast<int64_t>(map.dims[2]);
        uint16_t v = 0;
        if (inside) {
          std::memcpy(&v, base + static_cast<uint64_t>(batch) * map.strides[1] + static_cast<uint64_t>(y) * map.strides[0] +
                              static_cast<uint64_t>(col) * 2,
                      2);
        }
        std::memcpy(chunk + 2 * e, &v, 2);
      }
    }
  }
  detail::Barrier* b = detail::At(bar);
  b->tx -= static_cast<int32_t>(map.box[0] * map.box[1] * 2);
  detail::MaybeComplete(b);
}

template <int kRegisters>
inline void DecreaseRegisters() {}
template <int kRegisters>
inline void IncreaseRegisters() {}

template <int kId>
inline void NamedBarrierSync(int threads) {
  simt::NamedBarrierSync(kId, threads);
}
template <int kId>
inline void NamedBarrierArrive(int threads) {
  simt::NamedBarrierArrive(kId, threads);
}

#else  // the device

using TensorMap = CUtensorMap;

__device__ __forceinline__ void InitBarrier(uint64_t* bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(mma::SharedAddress(bar)), "r"(arrivals) : "memory");
}

// Orders this thread's mbarrier.init before later uses of the barriers:
// the release fence PTX defines for barrier initialisation (what CUTLASS's
// fence_barrier_init emits), and a proxy fence so that the copy engine,
// which completes transactions through the async proxy, sees the
// initialised barriers too (as in CUDA's own TMA examples). A block barrier
// must follow before other threads use them.
__device__ __forceinline__ void FenceBarrierInit() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void Arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(mma::SharedAddress(bar)) : "memory");
}

__device__ __forceinline__ void ArriveExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(mma::SharedAddress(bar)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void WaitParity(uint64_t* bar, uint32_t parity) {
  const uint32_t address = mma::SharedAddress(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(address), "r"(parity)
        : "memory");
  } while (done == 0);
}

__device__ __forceinline__ void Load3d(void* dst, const TensorMap& map, int column, int row, int batch,
                                       uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(mma::SharedAddress(dst)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(column), "r"(row), "r"(batch), "r"(mma::SharedAddress(bar))
      : "memory");
}

// Hands registers back to (Decrease) or takes them from (Increase) the
// SM's pool, per warpgroup (sm_90a; a trap in other device passes, see
// wgmma.cuh).
template <int kRegisters>
__device__ __forceinline__ void DecreaseRegisters() {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#else
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
#endif
}

template <int kRegisters>
__device__ __forceinline__ void IncreaseRegisters() {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __trap();
#else
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
#endif
}

// Named barrier kId (1-15; 0 is __syncthreads'; a constant, so ptxas
// reserves only the barriers used): Sync waits until `threads` threads (a
// multiple of 32) have arrived by Sync or Arrive; Arrive counts the calling
// warp's threads without waiting.
template <int kId>
__device__ __forceinline__ void NamedBarrierSync(int threads) {
  static_assert(kId > 0 && kId < 16, "named barriers 1-15");
  asm volatile("bar.sync %0, %1;\n" ::"n"(kId), "r"(threads) : "memory");
}

template <int kId>
__device__ __forceinline__ void NamedBarrierArrive(int threads) {
  static_assert(kId > 0 && kId < 16, "named barriers 1-15");
  asm volatile("bar.arrive %0, %1;\n" ::"n"(kId), "r"(threads) : "memory");
}

#endif  // LATAM_CUDA_EMULATION

}  // namespace latam::cuda::tma
