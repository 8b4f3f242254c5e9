#include "kernels/cuda/swiglu.h"

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

// One chunk of columns per work item: a 16-byte Pack (kVec) or one element.
template <typename T, bool kVec>
constexpr int kChunk = kVec ? Pack<T>::kN : 1;

template <bool kVec, typename T>
__device__ __forceinline__ void Load(const T* p, float (&out)[kChunk<T, kVec>]) {
  if constexpr (kVec) {
    const Pack<T> pack = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
    for (int k = 0; k < Pack<T>::kN; ++k) out[k] = ToFloat(pack.v[k]);
  } else {
    out[0] = ToFloat(*p);
  }
}

template <bool kVec, typename T>
__device__ __forceinline__ void Store(T* p, const float (&in)[kChunk<T, kVec>]) {
  if constexpr (kVec) {
    Pack<T> pack;
#pragma unroll
    for (int k = 0; k < Pack<T>::kN; ++k) pack.v[k] = FromFloat<T>(in[k]);
    *reinterpret_cast<Pack<T>*>(p) = pack;
  } else {
    *p = FromFloat<T>(in[0]);
  }
}

// Full-precision expf (no fast-math intrinsics): within a few ulps of the
// CPU's SigmoidF. expf(-g) overflows to inf for g < -88.7, giving s = 0.
__device__ __forceinline__ float Sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

// Work item w covers row m = w / (F / kN) and columns [j, j + kN) of gate
// (gu[m, j]), up (gu[m, F + j]) and out (out[m, j]); grid-stride, consecutive
// threads on consecutive columns.
//   out = g s u,   s = sigmoid(g)
template <typename T, bool kVec>
__global__ void SwigluForwardKernel(const T* __restrict__ gu, T* __restrict__ out, int64_t rows, int64_t f) {
  constexpr int kN = kChunk<T, kVec>;
  const int64_t chunks_per_row = f / kN;
  const int64_t n_items = rows * chunks_per_row;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < n_items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = item / chunks_per_row;
    const int64_t j = (item - m * chunks_per_row) * kN;
    const T* gate = gu + m * 2 * f + j;
    float g[kN], u[kN], o[kN];
    Load<kVec>(gate, g);
    Load<kVec>(gate + f, u);
#pragma unroll
    for (int k = 0; k < kN; ++k) o[k] = g[k] * Sigmoid(g[k]) * u[k];
    Store<kVec>(out + m * f + j, o);
  }
}

// Same work items as the forward, writing both halves of dgu:
//   dgate = dout u s (1 + g (1 - s)),   dup = dout g s
template <typename T, bool kVec>
__global__ void SwigluBackwardKernel(const T* __restrict__ dout, const T* __restrict__ gu, T* __restrict__ dgu,
                                     int64_t rows, int64_t f) {
  constexpr int kN = kChunk<T, kVec>;
  const int64_t chunks_per_row = f / kN;
  const int64_t n_items = rows * chunks_per_row;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < n_items;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = item / chunks_per_row;
    const int64_t j = (item - m * chunks_per_row) * kN;
    const T* gate = gu + m * 2 * f + j;
    T* dgate = dgu + m * 2 * f + j;
    float d[kN], g[kN], u[kN], dg[kN], du[kN];
    Load<kVec>(dout + m * f + j, d);
    Load<kVec>(gate, g);
    Load<kVec>(gate + f, u);
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      const float s = Sigmoid(g[k]);
      dg[k] = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
      du[k] = d[k] * (g[k] * s);
    }
    Store<kVec>(dgate, dg);
    Store<kVec>(dgate + f, du);
  }
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

int Blocks(int64_t n_items) {
  return static_cast<int>(std::min<int64_t>((n_items + kThreads - 1) / kThreads, kMaxBlocks));
}

template <typename T>
void LaunchForward(const Tensor& gu, const Tensor& out, cudaStream_t stream) {
  const int64_t rows = gu.shape.rows(), f = gu.shape.cols() / 2;
  // Rows of gu (2F) and out (F) and the up half (offset F) then all start on
  // 16-byte boundaries.
  const bool vec = f % Pack<T>::kN == 0 && Aligned16(gu.data) && Aligned16(out.data);
  const int64_t n_items = rows * (vec ? f / Pack<T>::kN : f);
  if (n_items == 0) return;
  if (vec) {
    Launch(SwigluForwardKernel<T, true>, Blocks(n_items), kThreads, 0, stream, static_cast<const T*>(gu.data),
           static_cast<T*>(out.data), rows, f);
  } else {
    Launch(SwigluForwardKernel<T, false>, Blocks(n_items), kThreads, 0, stream, static_cast<const T*>(gu.data),
           static_cast<T*>(out.data), rows, f);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void LaunchBackward(const Tensor& dout, const Tensor& gu, const Tensor& dgu, cudaStream_t stream) {
  const int64_t rows = gu.shape.rows(), f = gu.shape.cols() / 2;
  const bool vec = f % Pack<T>::kN == 0 && Aligned16(dout.data) && Aligned16(gu.data) && Aligned16(dgu.data);
  const int64_t n_items = rows * (vec ? f / Pack<T>::kN : f);
  if (n_items == 0) return;
  if (vec) {
    Launch(SwigluBackwardKernel<T, true>, Blocks(n_items), kThreads, 0, stream, static_cast<const T*>(dout.data),
           static_cast<const T*>(gu.data), static_cast<T*>(dgu.data), rows, f);
  } else {
    Launch(SwigluBackwardKernel<T, false>, Blocks(n_items), kThreads, 0, stream, static_cast<const T*>(dout.data),
           static_cast<const T*>(gu.data), static_cast<T*>(dgu.data), rows, f);
  }
  CUDA_CHECK_LAUNCH();
}

// Checks gu [M, 2F] (f32 or bf16, on the device) and returns F.
int64_t CheckGu(const Tensor& gu) {
  LATAM_CHECK(gu.dtype == DType::kF32 || gu.dtype == DType::kBF16,
              "cuda swiglu gu must be f32 or bf16, got " << gu.str());
  LATAM_CHECK(gu.shape.cols() % 2 == 0, "cuda swiglu gu must have an even width, got " << gu.str());
  CheckTensor(gu, gu.dtype, gu.shape, Device::kCUDA, "cuda swiglu gu");
  return gu.shape.cols() / 2;
}

}  // namespace

void SwigluForward(const Tensor& gu, const Tensor& out, cudaStream_t stream) {
  const int64_t f = CheckGu(gu);
  CheckTensor(out, gu.dtype, Shape{gu.shape.rows(), f}, Device::kCUDA, "cuda swiglu out");
  if (gu.dtype == DType::kF32) {
    LaunchForward<float>(gu, out, stream);
  } else {
    LaunchForward<__nv_bfloat16>(gu, out, stream);
  }
}

void SwigluBackward(const Tensor& dout, const Tensor& gu, const Tensor& dgu, cudaStream_t stream) {
  const int64_t f = CheckGu(gu);
  CheckTensor(dout, gu.dtype, Shape{gu.shape.rows(), f}, Device::kCUDA, "cuda swiglu dout");
  CheckTensor(dgu, gu.dtype, Shape{gu.shape.rows(), 2 * f}, Device::kCUDA, "cuda swiglu dgu");
  if (gu.dtype == DType::kF32) {
    LaunchBackward<float>(dout, gu, dgu, stream);
  } else {
    LaunchBackward<__nv_bfloat16>(dout, gu, dgu, stream);
  }
}

}  // namespace latam::cuda
