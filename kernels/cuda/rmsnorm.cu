#include "kernels/cuda/rmsnorm.h"

#include <cuda_bf16.h>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/vec.cuh"

namespace latam::cuda {

namespace {

constexpr int kThreads = 256;
// Rows per block of the backward; each block writes one partial dw row.
constexpr int kBackwardRows = 32;

// One block per row. kVec: 16-byte packs when d is a multiple of the pack
// size (and the pointers are 16-byte aligned), else scalar.
template <typename T, bool kVec>
__global__ void RmsNormForwardKernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                     float* __restrict__ rstd, int d, float eps) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * d;
  T* yr = y + row * d;
  float ss = 0.0f;
  if constexpr (kVec) {
    constexpr int kN = Pack<T>::kN;
    for (int i = threadIdx.x * kN; i < d; i += blockDim.x * kN) {
      const Pack<T> p = *reinterpret_cast<const Pack<T>*>(xr + i);
#pragma unroll
      for (int k = 0; k < kN; ++k) {
        const float v = ToFloat(p.v[k]);
        ss += v * v;
      }
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = ToFloat(xr[i]);
      ss += v * v;
    }
  }
  ss = BlockSum(ss, shared);
  const float r = rsqrtf(ss / static_cast<float>(d) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  if constexpr (kVec) {
    constexpr int kN = Pack<T>::kN;
    for (int i = threadIdx.x * kN; i < d; i += blockDim.x * kN) {
      const Pack<T> px = *reinterpret_cast<const Pack<T>*>(xr + i);
      const Pack<T> pw = *reinterpret_cast<const Pack<T>*>(w + i);
      Pack<T> out;
#pragma unroll
      for (int k = 0; k < kN; ++k) out.v[k] = FromFloat<T>(ToFloat(px.v[k]) * r * ToFloat(pw.v[k]));
      *reinterpret_cast<Pack<T>*>(yr + i) = out;
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = FromFloat<T>(ToFloat(xr[i]) * r * ToFloat(w[i]));
  }
}

// Block b handles rows [b * kBackwardRows, ...). Threads stride over columns;
// partial dw for the block is kept in shared memory (d floats) and written
// to partial[b, :].
template <typename T>
__global__ void RmsNormBackwardKernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                      const float* __restrict__ rstd, T* __restrict__ dx, bool accumulate,
                                      float* __restrict__ partial, int64_t rows, int d) {
  float* dw_shared = DynamicShared<float>();
  __shared__ float red[32];
  for (int i = threadIdx.x; i < d; i += blockDim.x) dw_shared[i] = 0.0f;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.x) * kBackwardRows;
  const int64_t row_end = min(rows, row_begin + kBackwardRows);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const T* dyr = dy + row * d;
    const T* xr = x + row * d;
    T* dxr = dx + row * d;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dot += ToFloat(dyr[i]) * ToFloat(w[i]) * ToFloat(xr[i]);
    dot = BlockSum(dot, red);
    const float c = dot * r * r * r / static_cast<float>(d);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float g = ToFloat(dyr[i]);
      const float xv = ToFloat(xr[i]);
      float v = r * g * ToFloat(w[i]) - xv * c;
      if (accumulate) v += ToFloat(dxr[i]);
      dxr[i] = FromFloat<T>(v);
      dw_shared[i] += g * xv * r;  // column i is always owned by this thread
    }
  }
  __syncthreads();
  float* out = partial + static_cast<int64_t>(blockIdx.x) * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) out[i] = dw_shared[i];
}

// dw[j] += sum_b partial[b, j], in block order.
__global__ void SumPartialsKernel(const float* __restrict__ partial, int64_t n_blocks, int d, float* __restrict__ dw) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  float s = 0.0f;
  for (int64_t b = 0; b < n_blocks; ++b) s += partial[b * d + j];
  dw[j] += s;
}

template <typename T>
void LaunchForward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd,
                   cudaStream_t stream) {
  const int64_t rows = x.shape.rows();
  const int d = static_cast<int>(x.shape.cols());
  const bool vec = d % Pack<T>::kN == 0 && reinterpret_cast<uintptr_t>(x.data) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(y.data) % 16 == 0 && reinterpret_cast<uintptr_t>(w.data) % 16 == 0;
  if (rows == 0) return;
  if (vec) {
    Launch(RmsNormForwardKernel<T, true>, rows, kThreads, 0, stream, static_cast<const T*>(x.data),
           static_cast<const T*>(w.data), static_cast<T*>(y.data), rstd.as<float>(), d, eps);
  } else {
    Launch(RmsNormForwardKernel<T, false>, rows, kThreads, 0, stream, static_cast<const T*>(x.data),
           static_cast<const T*>(w.data), static_cast<T*>(y.data), rstd.as<float>(), d, eps);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void LaunchBackward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dx,
                    bool accumulate, const Tensor& dw, const Tensor& workspace, cudaStream_t stream) {
  const int64_t rows = x.shape.rows();
  const int d = static_cast<int>(x.shape.cols());
  if (rows == 0) return;
  const int64_t n_blocks = (rows + kBackwardRows - 1) / kBackwardRows;
  const size_t shared_bytes = static_cast<size_t>(d) * sizeof(float);
  if (shared_bytes > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(RmsNormBackwardKernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(shared_bytes)));
  }
  Launch(RmsNormBackwardKernel<T>, n_blocks, kThreads, shared_bytes, stream, static_cast<const T*>(dy.data),
         static_cast<const T*>(x.data), static_cast<const T*>(w.data), rstd.as<float>(), static_cast<T*>(dx.data),
         accumulate, workspace.as<float>(), rows, d);
  CUDA_CHECK_LAUNCH();
  Launch(SumPartialsKernel, (d + kThreads - 1) / kThreads, kThreads, 0, stream, workspace.as<float>(), n_blocks, d,
         dw.as<float>());
  CUDA_CHECK_LAUNCH();
}

void CheckCommon(const Tensor& x, const Tensor& w, const Tensor& rstd) {
  LATAM_CHECK(x.dtype == DType::kF32 || x.dtype == DType::kBF16, "cuda rmsnorm x must be f32 or bf16, got " << x.str());
  CheckTensor(x, x.dtype, x.shape, Device::kCUDA, "cuda rmsnorm x");
  CheckTensor(w, x.dtype, Shape{x.shape.cols()}, Device::kCUDA, "cuda rmsnorm w");
  CheckTensor(rstd, DType::kF32, Shape{x.shape.rows()}, Device::kCUDA, "cuda rmsnorm rstd");
}

}  // namespace

void RmsNormForward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd,
                    cudaStream_t stream) {
  CheckCommon(x, w, rstd);
  CheckTensor(y, x.dtype, x.shape, Device::kCUDA, "cuda rmsnorm y");
  if (x.dtype == DType::kF32) {
    LaunchForward<float>(x, w, eps, y, rstd, stream);
  } else {
    LaunchForward<__nv_bfloat16>(x, w, eps, y, rstd, stream);
  }
}

int64_t RmsNormBackwardWorkspaceElems(int64_t rows, int64_t d) {
  return (rows + kBackwardRows - 1) / kBackwardRows * d;
}

void RmsNormBackward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dx,
                     bool accumulate_dx, const Tensor& dw, const Tensor& workspace, cudaStream_t stream) {
  CheckCommon(x, w, rstd);
  CheckTensor(dy, x.dtype, x.shape, Device::kCUDA, "cuda rmsnorm dy");
  CheckTensor(dx, x.dtype, x.shape, Device::kCUDA, "cuda rmsnorm dx");
  CheckTensor(dw, DType::kF32, Shape{x.shape.cols()}, Device::kCUDA, "cuda rmsnorm dw");
  LATAM_CHECK(workspace.dtype == DType::kF32 && workspace.device == Device::kCUDA &&
                  workspace.numel() >= RmsNormBackwardWorkspaceElems(x.shape.rows(), x.shape.cols()),
              "cuda rmsnorm workspace too small: " << workspace.str());
  if (x.dtype == DType::kF32) {
    LaunchBackward<float>(dy, x, w, rstd, dx, accumulate_dx, dw, workspace, stream);
  } else {
    LaunchBackward<__nv_bfloat16>(dy, x, w, rstd, dx, accumulate_dx, dw, workspace, stream);
  }
}

}  // namespace latam::cuda
