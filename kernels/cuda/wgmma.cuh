// Hopper warpgroup matrix multiply-accumulate (wgmma, sm_90a) for the
// attention forward kernel (kernels/cuda/flash_attention_wgmma.cuh). Internal
// to kernels/cuda.
//
// A warpgroup is four consecutive warps (threads 128 w .. 128 w + 127); one
// wgmma.mma_async m64nNk16 multiplies a 64 x 16 bf16 A by a 16 x N bf16 B
// into 64 x N fp32 accumulators spread over the warpgroup's registers:
//   - warp i of the group holds rows 16 i .. 16 i + 15, and within the warp
//     the m16n8k16 layouts of mma.cuh: accumulator d[j][0..3] holds rows
//     g = lane / 4 (e = 0, 1) and g + 8 (e = 2, 3), columns 8 j + 2 q + (e & 1)
//     with q = lane % 4; an A fragment from registers is mma.cuh's A fragment
//     of the warp's 16 rows. So, as with mma.sync, the accumulators of S,
//     rounded to bf16 in pairs, are the A fragments of P V (PackA).
//   - operands in shared memory are named by a 64-bit matrix descriptor
//     (PTX ISA, "Matrix Descriptor Format"): bits 0-13 start address, 16-29
//     leading-dimension byte offset (LBO), 32-45 stride-dimension byte offset
//     (SBO), all in 16-byte units; 49-51 base offset (0 here); 62-63 the
//     swizzle mode (1 = 128-byte swizzle, the only one used here).
//
// Tiles here use the 128-byte swizzle: a tile of R rows of C bf16 is stored
// as C / 64 column blocks of R rows x 128 bytes, and 16-byte chunk c of row r
// of a block sits at chunk c ^ (r % 8). Blocks start 1024-byte aligned in the
// shared address space (the hardware swizzles address bits 4-6 with bits
// 7-9). With that layout, element (row, k) of a K-major operand (A, or B
// given as N rows of K: Q, K) at k16 step kk is at
//   start + (row / 8) SBO + (row % 8) 128 + 2 k, start = block(kk / 4) + 32 (kk % 4),
// swizzled, with SBO = 1024 (8 rows); and element (k, n) of an MN-major B
// (given as K rows of N: V, transposed by the instruction) at
//   start + (n / 64) LBO + 2 (n % 64) + (k % 8) 128 + (k / 8) SBO,
// with LBO = the column-block stride and SBO = 1024.
//
// Ordering: wgmma.fence before the first wgmma that reads registers
// written by other instructions; commit_group / wait_group to complete
// them; FenceOperands keeps the compiler from moving accumulator reads and
// writes across those; fence.proxy.async after ordinary (or cp.async) writes
// to shared memory that a wgmma reads next.
//
// With LATAM_CUDA_EMULATION (kernels/cuda/simt_emulation.h) each wgmma is
// computed when a wait retires its group, per warp (a warp's rows depend
// only on its own A fragments), from the descriptor arithmetic above,
// reading its operands and writing its accumulators then; the fences are
// no-ops, and a thread that ends with wgmmas not waited for is an error.
// So the emulation checks the kernel's layouts, descriptors and fragment
// bookkeeping, but only a GPU checks the descriptors against the hardware.
#pragma once

#include <cstdint>

#include "kernels/cuda/mma.cuh"

#ifdef LATAM_CUDA_EMULATION
#include "core/check.h"
#endif

// wgmma exists only in the architecture-specific sm_90a target. Other device
// passes (the compute_90 PTX kept for newer GPUs) compile the wrappers to a
// trap; the host launches the wgmma kernel only on compute capability 9.0
// (FlashWgmmaForwardAvailable), where the sm_90a code is what runs.
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LATAM_WGMMA_TRAP 1
#endif

namespace latam::cuda::wgmma {

constexpr int kWarpgroupThreads = 128;

// The descriptor of a 128-byte-swizzled operand starting at `tile`.
__device__ __forceinline__ uint64_t Sw128Descriptor(const void* tile, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  const uint32_t address = mma::SharedAddress(tile);
  return static_cast<uint64_t>((address >> 4) & 0x3fffu) |
         (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3fffu) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3fffu) << 32) | (static_cast<uint64_t>(1) << 62);
}

#ifdef LATAM_CUDA_EMULATION

inline void FenceProxyAsync() {}
template <typename T, int kBlocks>
inline void FenceOperands(T (&)[kBlocks][4]) {}
inline void Fence() {}

// Element (mn, k) of the operand `desc` names: K-major (mn = row, K
// contiguous) or MN-major (MN contiguous).
inline float Sw128Element(uint64_t desc, int mn, int k, bool mn_major) {
  LATAM_CHECK((desc >> 62) == 1 && ((desc >> 49) & 7u) == 0,
              "emulated wgmma supports 128-byte-swizzled descriptors with base offset 0, got " << std::hex << desc);
  const uint32_t start = static_cast<uint32_t>(desc & 0x3fffu) << 4;
  const uint32_t lbo = static_cast<uint32_t>((desc >> 16) & 0x3fffu) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3fffu) << 4;
  uint32_t at = mn_major ? start + (mn / 64) * lbo + (mn % 64) * 2 + (k % 8) * 128 + (k / 8) * sbo
                         : start + (mn / 8) * sbo + (mn % 8) * 128 + k * 2;
  at ^= ((at >> 7) & 7u) << 4;
  LATAM_CHECK(at + 2 <= simt::SharedBytes(), "emulated wgmma operand at byte " << at << " is past the block's "
                                                                               << simt::SharedBytes()
                                                                               << " bytes of shared memory");
  uint16_t bits;
  std::memcpy(&bits, simt::SharedMemory() + at, 2);
  return simt::Bf16ToFloat(bits);
}

namespace detail {

// An issued wgmma. The emulation computes it when a wait retires its group,
// not at issue: it reads its shared-memory operands and its A registers
// then, and writes the accumulators then. So a kernel that touches the
// accumulators, the A fragments or the shared tiles of a wgmma still in
// flight computes something else and fails its tests, as it would on the
// hardware (where the reads and writes happen at some point in between).
struct PendingMma {
  int n;                     // 64 or 128
  float* d;                  // the thread's accumulators, n / 8 x 4
  const uint32_t* a;         // its A fragment (register A), or nullptr (A in shared memory)
  uint64_t desc_a, desc_b;
  bool accumulate;
};

using MmaGroups = simt::AsyncGroups<PendingMma>;

// This lane's accumulators of D (+)= A B, A given per warp as 16 x 16
// (rows of the warp) and B by `b_at(k, n)`.
template <typename AAt, typename BAt>
inline void EmulatedMma(float* d, int n_cols, AAt a_at, BAt b_at, bool accumulate) {
  const int lane = simt::Lane(), g = lane / 4, q = lane % 4;
  float a[2][16];
  for (int r = 0; r < 2; ++r) {
    for (int k = 0; k < 16; ++k) a[r][k] = a_at(g + 8 * r, k);
  }
  for (int j = 0; j < n_cols / 8; ++j) {
    for (int e = 0; e < 4; ++e) {
      const int n = 8 * j + 2 * q + (e & 1);
      float sum = accumulate ? d[4 * j + e] : 0.0f;
      for (int k = 0; k < 16; ++k) sum += a[e / 2][k] * b_at(k, n);
      d[4 * j + e] = sum;
    }
  }
}

// Computes one issued wgmma for this lane: SS (A and B K-major in shared
// memory) or RS (A from the warp's registers, B MN-major, transposed by the
// instruction). Every lane of the warp retires the same wgmmas in the same
// order, so the RS exchange lines up.
inline void Execute(const PendingMma& op) {
  if (op.a == nullptr) {
    const int row0 = 16 * static_cast<int>((threadIdx.x / 32) % 4);  // the warp's rows in its warpgroup's 64
    EmulatedMma(
        op.d, op.n, [&](int r, int k) { return Sw128Element(op.desc_a, row0 + r, k, false); },
        [&](int k, int n) { return Sw128Element(op.desc_b, n, k, false); }, op.accumulate);
    return;
  }
  uint64_t words[4];
  for (int i = 0; i < 4; ++i) words[i] = op.a[i];
  float rows[16][16];
  simt::Exchange(words, 4, [&](simt::Warp& w) {
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, q = l % 4;
      for (int i = 0; i < 4; ++i) {
        const int r = g + 8 * (i % 2), k = 2 * q + 8 * (i / 2);
        rows[r][k] = simt::Bf16ToFloat(static_cast<uint16_t>(w.words[l][i] & 0xffffu));
        rows[r][k + 1] = simt::Bf16ToFloat(static_cast<uint16_t>((w.words[l][i] >> 16) & 0xffffu));
      }
    }
  });
  EmulatedMma(
      op.d, op.n, [&](int r, int k) { return rows[r][k]; },
      [&](int k, int n) { return Sw128Element(op.desc_b, n, k, true); }, op.accumulate);
}

}  // namespace detail

inline void Commit() { detail::MmaGroups::ThisThread().Commit(); }

// Retires (computes) committed groups, oldest first, until at most
// kPending remain.
template <int kPending>
inline void Wait() {
  detail::MmaGroups& t = detail::MmaGroups::ThisThread();
  LATAM_CHECK(t.open() == 0, "emulated wgmma: " << t.open() << " wgmmas issued but not committed at a wait");
  t.Retire(kPending, detail::Execute);
}

// D (+)= A B, A and B K-major in shared memory.
template <int kN>
inline void MmaSS(float (&d)[kN / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  detail::MmaGroups::ThisThread().Issue({kN, &d[0][0], nullptr, desc_a, desc_b, accumulate != 0});
}

// D (+)= A B, A from registers (mma.cuh's A fragments), B MN-major in
// shared memory (transposed by the instruction).
template <int kN>
inline void MmaRSTransB(float (&d)[kN / 8][4], const uint32_t (&a)[4], uint64_t desc_b, int accumulate) {
  detail::MmaGroups::ThisThread().Issue({kN, &d[0][0], a, 0, desc_b, accumulate != 0});
}

#else  // the device

__device__ __forceinline__ void Fence() {
#ifdef LATAM_WGMMA_TRAP
  __trap();
#else
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void Commit() {
#ifdef LATAM_WGMMA_TRAP
  __trap();
#else
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

// Waits until at most `kPending` committed wgmma groups are in flight.
template <int kPending>
__device__ __forceinline__ void Wait() {
#ifdef LATAM_WGMMA_TRAP
  __trap();
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

__device__ __forceinline__ void FenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Pins accumulators (float) or register A fragments (uint32_t) in place: the
// compiler may not move their reads or writes across this point, nor reuse
// their registers before it (around Fence / Wait: a wgmma in flight still
// reads its A fragments and writes its accumulators).
template <int kBlocks>
__device__ __forceinline__ void FenceOperands(float (&d)[kBlocks][4]) {
#pragma unroll
  for (int j = 0; j < kBlocks; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[j][e])::"memory");
  }
}
template <int kBlocks>
__device__ __forceinline__ void FenceOperands(uint32_t (&a)[kBlocks][4]) {
#pragma unroll
  for (int j = 0; j < kBlocks; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(a[j][e])::"memory");
  }
}

#define LATAM_WGMMA_D4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
#define LATAM_WGMMA_D32                                                                                          \
  LATAM_WGMMA_D4(0), LATAM_WGMMA_D4(1), LATAM_WGMMA_D4(2), LATAM_WGMMA_D4(3), LATAM_WGMMA_D4(4), LATAM_WGMMA_D4(5), \
      LATAM_WGMMA_D4(6), LATAM_WGMMA_D4(7)
#define LATAM_WGMMA_D64                                                                                        \
  LATAM_WGMMA_D32, LATAM_WGMMA_D4(8), LATAM_WGMMA_D4(9), LATAM_WGMMA_D4(10), LATAM_WGMMA_D4(11),                \
      LATAM_WGMMA_D4(12), LATAM_WGMMA_D4(13), LATAM_WGMMA_D4(14), LATAM_WGMMA_D4(15)
#define LATAM_WGMMA_REGS32                                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define LATAM_WGMMA_REGS64                                                                    \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, "  \
  "%40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, "  \
  "%59, %60, %61, %62, %63}"

// D (+)= A B (m64nNk16, bf16 in, fp32 accumulate), A and B K-major in shared
// memory; `accumulate` 0 overwrites D.
template <int kN>
__device__ __forceinline__ void MmaSS(float (&d)[kN / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  static_assert(kN == 64 || kN == 128, "MmaSS is instantiated for N = 64 and 128");
#ifdef LATAM_WGMMA_TRAP
  __trap();
#else
  if constexpr (kN == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LATAM_WGMMA_REGS32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : LATAM_WGMMA_D32
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LATAM_WGMMA_REGS64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
        : LATAM_WGMMA_D64
        : "l"(desc_a), "l"(desc_b), "r"(accumulate));
  }
#endif
}

// D (+)= A B, A from registers (the warp's A fragments), B MN-major in
// shared memory (imm-trans-b = 1).
template <int kN>
__device__ __forceinline__ void MmaRSTransB(float (&d)[kN / 8][4], const uint32_t (&a)[4], uint64_t desc_b,
                                            int accumulate) {
  static_assert(kN == 64 || kN == 128, "MmaRSTransB is instantiated for N = 64 and 128");
#ifdef LATAM_WGMMA_TRAP
  __trap();
#else
  if constexpr (kN == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " LATAM_WGMMA_REGS32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : LATAM_WGMMA_D32
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " LATAM_WGMMA_REGS64
        ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : LATAM_WGMMA_D64
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));
  }
#endif
}

#undef LATAM_WGMMA_D4
#undef LATAM_WGMMA_D32
#undef LATAM_WGMMA_D64
#undef LATAM_WGMMA_REGS32
#undef LATAM_WGMMA_REGS64

#endif  // LATAM_CUDA_EMULATION

}  // namespace latam::cuda::wgmma
