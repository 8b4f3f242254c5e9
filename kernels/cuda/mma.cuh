// Warp-level tensor-core building blocks (sm_80 and later, so Hopper too):
// bf16 mma.sync m16n8k16 with fp32 accumulators, ldmatrix fragment loads,
// cp.async global-to-shared copies, and the XOR swizzle of shared-memory
// tiles. Internal to kernels/cuda.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), for lane
// l of a warp, g = l / 4 (its row group) and q = l % 4 (its quad index):
//   A (16 x 16, row-major): 4 registers of 2 bf16:
//       a[0] = A[g][2q, 2q+1]       a[1] = A[g+8][2q, 2q+1]
//       a[2] = A[g][2q+8, 2q+9]     a[3] = A[g+8][2q+8, 2q+9]
//   B (16 x 8, "col": stored as 8 rows of 16 k-values): 2 registers:
//       b[0] = B[2q, 2q+1][g]       b[1] = B[2q+8, 2q+9][g]
//   C/D (16 x 8, fp32): 4 floats:
//       c[0], c[1] = C[g][2q, 2q+1]   c[2], c[3] = C[g+8][2q, 2q+1]
// so the C fragments of two adjacent n8 tiles, rounded to bf16, are exactly
// the A fragment of the k16 step they span (used for P V after Q K^T).
//
// ldmatrix .x4 loads four 8 x 8 bf16 matrices; lanes 8i .. 8i+7 give the row
// addresses of matrix i (16 bytes each), and register i of every lane gets
// matrix i's elements [g][2q, 2q+1] (or, with .trans, [2q, 2q+1][g]).
//
// Shared-memory tiles are rows of 16-byte chunks; chunk c of row r is stored
// at chunk c ^ (r % 8) (Swizzle). Eight consecutive rows at one logical
// chunk, as ldmatrix reads them, then hit eight different 16-byte bank
// groups: no bank conflicts, for any row length that is a multiple of 128
// bytes.
// With LATAM_CUDA_EMULATION the same functions run on the host under
// kernels/cuda/simt_emulation.h, exchanging operands between emulated lanes.
#pragma once

#include <cstdint>

#ifdef LATAM_CUDA_EMULATION
#include "kernels/cuda/simt_emulation.h"
#else
#include <cuda_bf16.h>
#endif

namespace latam::cuda::mma {

#ifdef LATAM_CUDA_EMULATION

// The byte offset of `p` in the running block's dynamic shared memory, which
// stands for the shared address space (offset 0 is aligned to anything).
inline uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - simt::SharedMemory());
}

// Register i of lane l: matrix i's row (l / 4), elements 2 (l % 4) and +1;
// with `trans`, rows 2 (l % 4) and +1 of column l / 4. Lanes 8i .. 8i+7
// give matrix i's row addresses.
inline void LdMatrixX4Emulated(uint32_t (&r)[4], const void* row_address, bool trans) {
  simt::Warp& w = simt::CurrentWarp();
  const int lane = simt::Lane(), g = lane / 4, q = lane % 4;
  w.pointers[lane] = row_address;
  simt::WarpBarrier();
  for (int i = 0; i < 4; ++i) {
    auto at = [&](int row, int col) { return static_cast<const uint16_t*>(w.pointers[8 * i + row])[col]; };
    const uint32_t lo = trans ? at(2 * q, g) : at(g, 2 * q);
    const uint32_t hi = trans ? at(2 * q + 1, g) : at(g, 2 * q + 1);
    r[i] = lo | (hi << 16);
  }
  simt::WarpBarrier();
}

inline void LdMatrixX4(uint32_t (&r)[4], const void* row_address) { LdMatrixX4Emulated(r, row_address, false); }
inline void LdMatrixX4Trans(uint32_t (&r)[4], const void* row_address) { LdMatrixX4Emulated(r, row_address, true); }

// Rebuilds A (16 x 16), B (16 x 8) and C (16 x 8) from every lane's
// fragments, then gives this lane its part of A B + C.
inline void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  uint64_t words[8];
  for (int i = 0; i < 4; ++i) words[i] = a[i];
  words[4] = b0;
  words[5] = b1;
  uint32_t c[4];
  std::memcpy(c, d, sizeof(c));
  words[6] = c[0] | (static_cast<uint64_t>(c[1]) << 32);
  words[7] = c[2] | (static_cast<uint64_t>(c[3]) << 32);
  simt::Exchange(words, 8, [&](simt::Warp& w) {
    float A[16][16], B[16][8], C[16][8];
    auto lo = [](uint64_t v) { return simt::Bf16ToFloat(static_cast<uint16_t>(v & 0xffffu)); };
    auto hi = [](uint64_t v) { return simt::Bf16ToFloat(static_cast<uint16_t>((v >> 16) & 0xffffu)); };
    auto f32 = [](uint64_t v) {
      const uint32_t bits = static_cast<uint32_t>(v);
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    };
    for (int l = 0; l < 32; ++l) {
      const uint64_t* x = w.words[l];
      const int g = l / 4, q = l % 4;
      A[g][2 * q] = lo(x[0]);
      A[g][2 * q + 1] = hi(x[0]);
      A[g + 8][2 * q] = lo(x[1]);
      A[g + 8][2 * q + 1] = hi(x[1]);
      A[g][2 * q + 8] = lo(x[2]);
      A[g][2 * q + 9] = hi(x[2]);
      A[g + 8][2 * q + 8] = lo(x[3]);
      A[g + 8][2 * q + 9] = hi(x[3]);
      B[2 * q][g] = lo(x[4]);
      B[2 * q + 1][g] = hi(x[4]);
      B[2 * q + 8][g] = lo(x[5]);
      B[2 * q + 9][g] = hi(x[5]);
      C[g][2 * q] = f32(x[6]);
      C[g][2 * q + 1] = f32(x[6] >> 32);
      C[g + 8][2 * q] = f32(x[7]);
      C[g + 8][2 * q + 1] = f32(x[7] >> 32);
    }
    const int lane = simt::Lane(), g = lane / 4, q = lane % 4;
    const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
    for (int e = 0; e < 4; ++e) {
      float sum = C[rows[e]][cols[e]];
      for (int k = 0; k < 16; ++k) sum += A[rows[e]][k] * B[k][cols[e]];
      d[e] = sum;
    }
  });
}

// cp.async lands when a wait retires its group, not at issue: a kernel that
// reads a tile before waiting for it reads the old contents, as it may on
// the hardware; a thread that ends with copies not waited for is an error.
struct PendingCopy {
  void* dst;
  const void* src;
  int bytes;
  bool valid;
};
using CopyGroups = simt::AsyncGroups<PendingCopy>;

// `bytes` global -> shared, zero-filled when `valid` is false.
inline void CpAsync(void* shared_dst, const void* global_src, int bytes, bool valid) {
  CopyGroups::ThisThread().Issue({shared_dst, global_src, bytes, valid});
}
inline void CpAsync16(void* shared_dst, const void* global_src, bool valid) {
  CpAsync(shared_dst, global_src, 16, valid);
}
inline void CpAsyncCommit() { CopyGroups::ThisThread().Commit(); }
template <int kPending>
inline void CpAsyncWait() {
  CopyGroups::ThisThread().Retire(kPending, [](const PendingCopy& p) {
    if (p.valid) {
      std::memcpy(p.dst, p.src, static_cast<size_t>(p.bytes));
    } else {
      std::memset(p.dst, 0, static_cast<size_t>(p.bytes));
    }
  });
}

#else  // the device

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row_address)));
}

__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* row_address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SharedAddress(row_address)));
}

// d = a b + d for one m16n8k16 tile (bf16 inputs, fp32 accumulators).
__device__ __forceinline__ void MmaBf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 16 bytes global -> shared without passing through registers; when `valid`
// is false the destination is zero-filled and global memory is not read.
__device__ __forceinline__ void CpAsync16(void* shared_dst, const void* global_src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(shared_dst)), "l"(global_src),
               "r"(src_bytes));
}

__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most `kPending` committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

#endif  // LATAM_CUDA_EMULATION

// Two floats rounded to bf16 (nearest even) in one register, lo in the low half.
__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &v, sizeof(bits));
  return bits;
}

// Element offset of logical (row, 16-byte chunk) in a swizzled tile of
// `kRowElems` bf16 per row.
template <int kRowElems>
__device__ __forceinline__ int Swizzle(int row, int chunk) {
  return row * kRowElems + ((chunk ^ (row & 7)) << 3);
}

}  // namespace latam::cuda::mma
