#include "kernels/cuda/cross_entropy.h"

#include <cuda_bf16.h>
#include <math_constants.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/vec.cuh"

namespace latam::cuda {

namespace {

constexpr int kThreads = 256;

// Max over the block; every thread gets the result. `shared` needs 32
// floats. fmaxf skips NaNs, like the CPU kernel's `x > mx ? x : mx`.
__device__ __forceinline__ float BlockMax(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  v = lane < n_warps ? shared[lane] : -CUDART_INF_F;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Calls f(x) for this thread's share of the row's elements, as fp32. kVec:
// 16-byte packs when the row width is a multiple of the pack size (and the
// pointer is 16-byte aligned), else scalar.
template <typename T, bool kVec, typename F>
__device__ __forceinline__ void ForEachInRow(const T* row, int v, F&& f) {
  if constexpr (kVec) {
    constexpr int kN = Pack<T>::kN;
#pragma unroll 4
    for (int i = threadIdx.x * kN; i < v; i += blockDim.x * kN) {
      const Pack<T> p = *reinterpret_cast<const Pack<T>*>(row + i);
#pragma unroll
      for (int k = 0; k < kN; ++k) f(ToFloat(p.v[k]));
    }
  } else {
#pragma unroll 4
    for (int i = threadIdx.x; i < v; i += blockDim.x) f(ToFloat(row[i]));
  }
}

// row[j] = f(row[j] as fp32, j), rounded once to T.
template <typename T, bool kVec, typename F>
__device__ __forceinline__ void TransformRow(T* row, int v, F&& f) {
  if constexpr (kVec) {
    constexpr int kN = Pack<T>::kN;
#pragma unroll 4
    for (int i = threadIdx.x * kN; i < v; i += blockDim.x * kN) {
      Pack<T> p = *reinterpret_cast<const Pack<T>*>(row + i);
#pragma unroll
      for (int k = 0; k < kN; ++k) p.v[k] = FromFloat<T>(f(ToFloat(p.v[k]), i + k));
      *reinterpret_cast<Pack<T>*>(row + i) = p;
    }
  } else {
#pragma unroll 4
    for (int i = threadIdx.x; i < v; i += blockDim.x) row[i] = FromFloat<T>(f(ToFloat(row[i]), i));
  }
}

// One block per row: row_max[m] = max_v logits[m, v].
template <typename T, bool kVec>
__global__ void RowMaxKernel(const T* __restrict__ logits, float* __restrict__ row_max, int v) {
  __shared__ float shared[32];
  const int64_t m = blockIdx.x;
  float mx = -CUDART_INF_F;
  ForEachInRow<T, kVec>(logits + m * v, v, [&](float x) { mx = fmaxf(mx, x); });
  mx = BlockMax(mx, shared);
  if (threadIdx.x == 0) row_max[m] = mx;
}

// One block per row: sumexp[m] = sum_v exp(logits[m, v] - gmax[m]);
// tlogit[m] = logits[m, t - vocab_begin] when the target t is in the shard,
// else 0; targets >= vocab raise target_error.
template <typename T, bool kVec>
__global__ void RowSumExpKernel(const T* __restrict__ logits, const float* __restrict__ gmax,
                                const int32_t* __restrict__ targets, int64_t vocab_begin, int64_t vocab,
                                float* __restrict__ sumexp, float* __restrict__ tlogit, int32_t* target_error, int v) {
  __shared__ float shared[32];
  const int64_t m = blockIdx.x;
  const T* row = logits + m * v;
  const float mx = gmax[m];
  float sum = 0.0f;
  ForEachInRow<T, kVec>(row, v, [&](float x) { sum += expf(x - mx); });
  sum = BlockSum(sum, shared);
  if (threadIdx.x == 0) {
    sumexp[m] = sum;
    const int32_t t = targets[m];
    const int64_t local = static_cast<int64_t>(t) - vocab_begin;
    tlogit[m] = (t >= 0 && local >= 0 && local < v) ? ToFloat(row[local]) : 0.0f;
    if (t >= vocab) atomicMax(target_error, t);
  }
}

// One block per row, in place:
//   logits[m, j] = grad_scale * exp(logits[m, j] - lse[m]) - grad_scale * [j == t - vocab_begin]
// (the product rounded before the subtraction, as in the CPU kernel), and 0
// for rows with t < 0.
template <typename T, bool kVec>
__global__ void BackwardKernel(T* __restrict__ logits, const int32_t* __restrict__ targets, int64_t vocab_begin,
                               const float* __restrict__ lse, float grad_scale, int v) {
  const int64_t m = blockIdx.x;
  T* row = logits + m * v;
  const int32_t t = targets[m];
  if (t < 0) {
    TransformRow<T, kVec>(row, v, [](float, int) { return 0.0f; });
    return;
  }
  const float shift = lse[m];
  const int64_t local = static_cast<int64_t>(t) - vocab_begin;  // in [0, v) only when t is in the shard
  TransformRow<T, kVec>(row, v, [&](float x, int j) {
    const float g = __fmul_rn(grad_scale, expf(x - shift));
    return j == local ? g - grad_scale : g;
  });
}

bool VecOk(const Tensor& logits, int v, int pack) {
  return v % pack == 0 && reinterpret_cast<uintptr_t>(logits.data) % 16 == 0;
}

template <typename T>
void LaunchRowMax(const Tensor& logits, const Tensor& row_max, cudaStream_t stream) {
  const int64_t rows = logits.shape.rows();
  const int v = static_cast<int>(logits.shape.cols());
  if (rows == 0) return;
  const T* x = static_cast<const T*>(logits.data);
  if (VecOk(logits, v, Pack<T>::kN)) {
    Launch(RowMaxKernel<T, true>, rows, kThreads, 0, stream, x, row_max.as<float>(), v);
  } else {
    Launch(RowMaxKernel<T, false>, rows, kThreads, 0, stream, x, row_max.as<float>(), v);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void LaunchRowSumExp(const Tensor& logits, const Tensor& global_max, const Tensor& targets, int64_t vocab_begin,
                     int64_t vocab, const Tensor& row_sumexp, const Tensor& target_logit, const Tensor& target_error,
                     cudaStream_t stream) {
  const int64_t rows = logits.shape.rows();
  const int v = static_cast<int>(logits.shape.cols());
  if (rows == 0) return;
  const T* x = static_cast<const T*>(logits.data);
  if (VecOk(logits, v, Pack<T>::kN)) {
    Launch(RowSumExpKernel<T, true>, rows, kThreads, 0, stream, x, global_max.as<float>(), targets.as<int32_t>(),
           vocab_begin, vocab, row_sumexp.as<float>(), target_logit.as<float>(), target_error.as<int32_t>(), v);
  } else {
    Launch(RowSumExpKernel<T, false>, rows, kThreads, 0, stream, x, global_max.as<float>(), targets.as<int32_t>(),
           vocab_begin, vocab, row_sumexp.as<float>(), target_logit.as<float>(), target_error.as<int32_t>(), v);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void LaunchBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin, const Tensor& lse,
                    float grad_scale, cudaStream_t stream) {
  const int64_t rows = logits.shape.rows();
  const int v = static_cast<int>(logits.shape.cols());
  if (rows == 0) return;
  T* x = static_cast<T*>(logits.data);
  if (VecOk(logits, v, Pack<T>::kN)) {
    Launch(BackwardKernel<T, true>, rows, kThreads, 0, stream, x, targets.as<int32_t>(), vocab_begin, lse.as<float>(),
           grad_scale, v);
  } else {
    Launch(BackwardKernel<T, false>, rows, kThreads, 0, stream, x, targets.as<int32_t>(), vocab_begin, lse.as<float>(),
           grad_scale, v);
  }
  CUDA_CHECK_LAUNCH();
}

void CheckLogits(const Tensor& logits) {
  LATAM_CHECK(logits.dtype == DType::kF32 || logits.dtype == DType::kBF16,
              "cuda cross-entropy logits must be f32 or bf16, got " << logits.str());
  CheckTensor(logits, logits.dtype, logits.shape, Device::kCUDA, "cuda cross-entropy logits");
  LATAM_CHECK(logits.shape.cols() <= INT32_MAX, "cuda cross-entropy vocabulary shard too wide: " << logits.str());
}

void CheckRows(const Tensor& logits, const Tensor& t, DType dtype, const char* what) {
  CheckTensor(t, dtype, Shape{logits.shape.rows()}, Device::kCUDA, what);
}

}  // namespace

void LogitsRowMax(const Tensor& logits, const Tensor& row_max, cudaStream_t stream) {
  CheckLogits(logits);
  CheckRows(logits, row_max, DType::kF32, "cuda cross-entropy row_max");
  if (logits.dtype == DType::kF32) {
    LaunchRowMax<float>(logits, row_max, stream);
  } else {
    LaunchRowMax<__nv_bfloat16>(logits, row_max, stream);
  }
}

void LogitsRowSumExp(const Tensor& logits, const Tensor& global_max, const Tensor& targets, int64_t vocab_begin,
                     int64_t vocab, const Tensor& row_sumexp, const Tensor& target_logit, const Tensor& target_error,
                     cudaStream_t stream) {
  CheckLogits(logits);
  CheckRows(logits, global_max, DType::kF32, "cuda cross-entropy global_max");
  CheckRows(logits, targets, DType::kI32, "cuda cross-entropy targets");
  CheckRows(logits, row_sumexp, DType::kF32, "cuda cross-entropy row_sumexp");
  CheckRows(logits, target_logit, DType::kF32, "cuda cross-entropy target_logit");
  CheckTensor(target_error, DType::kI32, Shape{1}, Device::kCUDA, "cuda cross-entropy target_error");
  if (logits.dtype == DType::kF32) {
    LaunchRowSumExp<float>(logits, global_max, targets, vocab_begin, vocab, row_sumexp, target_logit, target_error,
                           stream);
  } else {
    LaunchRowSumExp<__nv_bfloat16>(logits, global_max, targets, vocab_begin, vocab, row_sumexp, target_logit,
                                   target_error, stream);
  }
}

void SoftmaxCrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin, const Tensor& lse,
                                 float grad_scale, cudaStream_t stream) {
  CheckLogits(logits);
  CheckRows(logits, targets, DType::kI32, "cuda cross-entropy targets");
  CheckRows(logits, lse, DType::kF32, "cuda cross-entropy lse");
  if (logits.dtype == DType::kF32) {
    LaunchBackward<float>(logits, targets, vocab_begin, lse, grad_scale, stream);
  } else {
    LaunchBackward<__nv_bfloat16>(logits, targets, vocab_begin, lse, grad_scale, stream);
  }
}

}  // namespace latam::cuda
