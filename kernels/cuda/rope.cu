#include "kernels/cuda/rope.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/vec.cuh"

namespace latam::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

// kN consecutive elements at p, in fp32 registers. kVec: 16-byte Packs
// (kN a multiple of Pack<T>::kN, p 16-byte aligned); else element by element.
template <bool kVec, typename T, int kN>
__device__ __forceinline__ void Load(const T* p, float (&out)[kN]) {
  if constexpr (kVec) {
    constexpr int kP = Pack<T>::kN;
    static_assert(kN % kP == 0, "whole packs only");
#pragma unroll
    for (int j = 0; j < kN / kP; ++j) {
      const Pack<T> pack = reinterpret_cast<const Pack<T>*>(p)[j];
#pragma unroll
      for (int k = 0; k < kP; ++k) out[j * kP + k] = ToFloat(pack.v[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kN; ++k) out[k] = ToFloat(p[k]);
  }
}

template <bool kVec, typename T, int kN>
__device__ __forceinline__ void Store(T* p, const float (&in)[kN]) {
  if constexpr (kVec) {
    constexpr int kP = Pack<T>::kN;
    static_assert(kN % kP == 0, "whole packs only");
#pragma unroll
    for (int j = 0; j < kN / kP; ++j) {
      Pack<T> pack;
#pragma unroll
      for (int k = 0; k < kP; ++k) pack.v[k] = FromFloat<T>(in[j * kP + k]);
      reinterpret_cast<Pack<T>*>(p)[j] = pack;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kN; ++k) p[k] = FromFloat<T>(in[k]);
  }
}

// One work item is (row m, rotated head h, kN consecutive i in [0, half)):
// grid-stride over rows * n_rot_heads * half / kN items, consecutive threads
// on consecutive i, so both halves of a head are read and written coalesced.
// Row m is at position t = positions[m] (kPositions) or else
// t = first_position + m % seq_len; with c = cos[t, i], s = direction * sin[t, i]:
//   lo[i] = a c - b s,   hi[i] = b c + a s,   a = lo[i], b = hi[i]
// direction = +1 is the forward rotation, -1 the backward (rotation by -angle).
// A position outside [0, max_positions) stops the kernel before the table is
// read: __trap() on the device (the launch fails and the next synchronising
// CUDA call reports it; the context is unusable afterwards), a fatal error
// naming the row in the host emulation.
template <typename T, bool kVec, bool kPositions>
__global__ void RopeKernel(T* __restrict__ x, const float* __restrict__ cos_table, const float* __restrict__ sin_table,
                           const int32_t* __restrict__ positions, int max_positions, int64_t rows, int64_t row_width,
                           int64_t seq_len, int64_t first_position, int n_rot_heads, int half, float direction) {
  constexpr int kN = kVec ? Pack<T>::kN : 1;
  const int chunks_per_head = half / kN;
  const int64_t chunks_per_row = static_cast<int64_t>(n_rot_heads) * chunks_per_head;
  const int64_t n_items = rows * chunks_per_row;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < n_items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = item / chunks_per_row;
    const int rest = static_cast<int>(item - m * chunks_per_row);
    const int h = rest / chunks_per_head;
    const int i = (rest - h * chunks_per_head) * kN;
    int64_t t;
    if constexpr (kPositions) {
      const int32_t p = positions[m];
      if (static_cast<uint32_t>(p) >= static_cast<uint32_t>(max_positions)) {
#ifdef LATAM_CUDA_EMULATION
        LATAM_CHECK(false, "cuda rope row " << m << " is at position " << p << ", outside the RoPE table [0, "
                                            << max_positions << ")");
#else
        __trap();
#endif
        return;
      }
      t = p;
    } else {
      t = first_position + m % seq_len;
    }
    T* lo = x + m * row_width + static_cast<int64_t>(h) * 2 * half + i;
    T* hi = lo + half;
    float a[kN], b[kN], c[kN], s[kN];
    Load<kVec>(lo, a);
    Load<kVec>(hi, b);
    Load<kVec>(cos_table + t * half + i, c);
    Load<kVec>(sin_table + t * half + i, s);
    float out_lo[kN], out_hi[kN];
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      const float sn = direction * s[k];
      out_lo[k] = a[k] * c[k] - b[k] * sn;
      out_hi[k] = b[k] * c[k] + a[k] * sn;
    }
    Store<kVec>(lo, out_lo);
    Store<kVec>(hi, out_hi);
  }
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename T, bool kVec, bool kPositions>
void LaunchKernel(int blocks, const Tensor& x, const int32_t* positions, int64_t seq_len, int64_t first_position,
                  int n_rot_heads, const RopeDeviceTable& table, float direction, cudaStream_t stream) {
  Launch(RopeKernel<T, kVec, kPositions>, blocks, kThreads, 0, stream, static_cast<T*>(x.data), table.cos.as<float>(),
         table.sin.as<float>(), positions, table.max_positions(), x.shape.rows(), x.shape.cols(), seq_len,
         first_position, n_rot_heads, table.head_dim() / 2, direction);
}

// positions (device int32, one per row) or null: first_position + m % seq_len.
template <typename T>
void LaunchRope(const Tensor& x, const int32_t* positions, int64_t seq_len, int64_t first_position, int n_rot_heads,
                const RopeDeviceTable& table, float direction, cudaStream_t stream) {
  const int64_t rows = x.shape.rows();
  const int64_t row_width = x.shape.cols();
  const int half = table.head_dim() / 2;
  constexpr int kN = Pack<T>::kN;
  // Every chunk of kN elements (of x and of the table) then starts on a
  // 16-byte boundary: rows, heads and both halves start at multiples of kN.
  const bool vec = half % kN == 0 && row_width % kN == 0 && Aligned16(x.data) && Aligned16(table.cos.data) &&
                   Aligned16(table.sin.data);
  const int64_t n_items = rows * n_rot_heads * (vec ? half / kN : half);
  if (n_items == 0) return;
  const int blocks = static_cast<int>(std::min<int64_t>((n_items + kThreads - 1) / kThreads, kMaxBlocks));
  if (positions != nullptr) {
    if (vec) {
      LaunchKernel<T, true, true>(blocks, x, positions, seq_len, first_position, n_rot_heads, table, direction, stream);
    } else {
      LaunchKernel<T, false, true>(blocks, x, positions, seq_len, first_position, n_rot_heads, table, direction,
                                   stream);
    }
  } else if (vec) {
    LaunchKernel<T, true, false>(blocks, x, nullptr, seq_len, first_position, n_rot_heads, table, direction, stream);
  } else {
    LaunchKernel<T, false, false>(blocks, x, nullptr, seq_len, first_position, n_rot_heads, table, direction, stream);
  }
  CUDA_CHECK_LAUNCH();
}

void CheckRope(const Tensor& x, int n_rot_heads, const RopeDeviceTable& table) {
  LATAM_CHECK(x.dtype == DType::kF32 || x.dtype == DType::kBF16, "cuda rope x must be f32 or bf16, got " << x.str());
  CheckTensor(x, x.dtype, x.shape, Device::kCUDA, "cuda rope x");
  LATAM_CHECK(table.cos.shape.rank() == 2,
              "cuda rope table must be [max_positions, head_dim/2], got " << table.cos.str());
  CheckTensor(table.cos, DType::kF32, table.cos.shape, Device::kCUDA, "cuda rope cos");
  CheckTensor(table.sin, DType::kF32, table.cos.shape, Device::kCUDA, "cuda rope sin");
  LATAM_CHECK(n_rot_heads >= 0 && static_cast<int64_t>(n_rot_heads) * table.head_dim() <= x.shape.cols(),
              n_rot_heads << " heads of " << table.head_dim() << " exceed row width " << x.shape.cols());
}

void Dispatch(const Tensor& x, const int32_t* positions, int64_t seq_len, int64_t first_position, int n_rot_heads,
              const RopeDeviceTable& table, float direction, cudaStream_t stream) {
  if (x.dtype == DType::kF32) {
    LaunchRope<float>(x, positions, seq_len, first_position, n_rot_heads, table, direction, stream);
  } else {
    LaunchRope<__nv_bfloat16>(x, positions, seq_len, first_position, n_rot_heads, table, direction, stream);
  }
}

void Rotate(const Tensor& x, int seq_len, int n_rot_heads, const RopeDeviceTable& table, const int32_t* positions,
            float direction, cudaStream_t stream) {
  CheckRope(x, n_rot_heads, table);
  LATAM_CHECK(seq_len > 0 && seq_len <= table.max_positions(),
              "seq_len " << seq_len << " exceeds the RoPE table (" << table.max_positions() << ")");
  LATAM_CHECK(x.shape.rows() % seq_len == 0, "rope rows " << x.shape.rows() << " not a multiple of " << seq_len);
  Dispatch(x, positions, seq_len, 0, n_rot_heads, table, direction, stream);
}

}  // namespace

size_t RopeTableBytes(const RopeTable& table) { return (table.cos.size() + table.sin.size()) * sizeof(float); }

RopeDeviceTable UploadRopeTable(const RopeTable& table, const Arena& arena, size_t offset, cudaStream_t stream) {
  LATAM_CHECK(arena.device() == Device::kCUDA, "cuda rope table must go to a device arena");
  const int half = table.head_dim / 2;
  const size_t n = static_cast<size_t>(table.max_positions) * static_cast<size_t>(half);
  LATAM_CHECK(table.head_dim > 0 && table.cos.size() == n && table.sin.size() == n,
              "malformed RoPE table: head_dim " << table.head_dim << ", max_positions " << table.max_positions);
  const Shape shape{table.max_positions, half};
  RopeDeviceTable out;
  out.cos = arena.View(offset, DType::kF32, shape);
  out.sin = arena.View(offset + n * sizeof(float), DType::kF32, shape);
  CUDA_CHECK(cudaMemcpyAsync(out.cos.data, table.cos.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
  CUDA_CHECK(cudaMemcpyAsync(out.sin.data, table.sin.data(), n * sizeof(float), cudaMemcpyHostToDevice, stream));
  return out;
}

void RopeForward(const Tensor& x, int seq_len, int n_rot_heads, const RopeDeviceTable& table, cudaStream_t stream,
                 const int32_t* positions) {
  Rotate(x, seq_len, n_rot_heads, table, positions, 1.0f, stream);
}

void RopeBackward(const Tensor& dx, int seq_len, int n_rot_heads, const RopeDeviceTable& table, cudaStream_t stream,
                  const int32_t* positions) {
  Rotate(dx, seq_len, n_rot_heads, table, positions, -1.0f, stream);
}

void RopeForwardAt(const Tensor& x, int64_t first_position, int n_rot_heads, const RopeDeviceTable& table,
                   cudaStream_t stream) {
  CheckRope(x, n_rot_heads, table);
  const int64_t rows = x.shape.rows();
  LATAM_CHECK(first_position >= 0 && first_position + rows <= table.max_positions(),
              "rows at positions [" << first_position << ", " << first_position + rows
                                    << ") exceed the RoPE table (" << table.max_positions() << ")");
  if (rows == 0) return;
  Dispatch(x, nullptr, rows, first_position, n_rot_heads, table, 1.0f, stream);
}

}  // namespace latam::cuda
