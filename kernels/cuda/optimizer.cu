#include "kernels/cuda/optimizer.h"

#include <cuda_bf16.h>

#include <cmath>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"

namespace latam::cuda {

namespace {

constexpr int kThreads = 256;
// Fixed grid: enough resident blocks to fill an H100 (132 SMs x 8 blocks of
// 256 threads), and a constant so the norm's partition never varies.
constexpr int kBlocks = 1024;
// Descriptors staged in shared memory at a time.
constexpr int kStage = 64;
static_assert(kOptimizerChunk % (4 * kThreads) == 0, "a chunk is whole float4 rows of the block");

__device__ __forceinline__ bool Aligned(const void* p, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Calls body(segment, begin, end) for every chunk [begin, end) this block
// owns: with the chunks of the table numbered in order, chunk number g
// belongs to block g % gridDim.x. Every thread of the block makes the same
// calls (body may synchronise the block).
template <typename Body>
__device__ __forceinline__ void ForEachOwnedChunk(const OptimizerSegment* segments, int n_segments, Body body) {
  __shared__ OptimizerSegment stage[kStage];
  const int64_t grid = gridDim.x;
  int64_t first = 0;  // number of the current segment's first chunk, mod grid
  for (int s0 = 0; s0 < n_segments; s0 += kStage) {
    const int count = min(kStage, n_segments - s0);
    __syncthreads();  // the previous batch is no longer read
    if (static_cast<int>(threadIdx.x) < count) stage[threadIdx.x] = segments[s0 + threadIdx.x];
    __syncthreads();
    for (int s = 0; s < count; ++s) {
      const OptimizerSegment& seg = stage[s];
      const int64_t n_chunks = (seg.numel + kOptimizerChunk - 1) / kOptimizerChunk;
      for (int64_t c = (blockIdx.x - first + grid) % grid; c < n_chunks; c += grid) {
        body(seg, c * kOptimizerChunk, min(seg.numel, (c + 1) * kOptimizerChunk));
      }
      first = (first + n_chunks) % grid;
    }
  }
}

struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay, bias1, bias2, grad_scale;
};

// m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
// p -= lr ((m / bias1) / (sqrt(v / bias2) + eps) + wd p)
__device__ __forceinline__ void AdamWStep(float& p, float grad, float& m, float& v, float wd, const AdamWArgs& a) {
  const float g = grad * a.grad_scale;
  m = a.beta1 * m + (1.0f - a.beta1) * g;
  v = a.beta2 * v + (1.0f - a.beta2) * g * g;
  const float update = (m / a.bias1) / (sqrtf(v / a.bias2) + a.eps);
  p -= a.lr * (update + wd * p);
}

__global__ void MultiTensorAdamWKernel(const OptimizerSegment* __restrict__ segments, int n_segments, AdamWArgs a) {
  ForEachOwnedChunk(segments, n_segments, [&](const OptimizerSegment& s, int64_t begin, int64_t end) {
    const float wd = s.weight_decay != 0 ? a.weight_decay : 0.0f;
    __nv_bfloat16* bf16 = reinterpret_cast<__nv_bfloat16*>(s.param_bf16);
    const bool vec = Aligned(s.param, 16) && Aligned(s.grad, 16) && Aligned(s.exp_avg, 16) &&
                     Aligned(s.exp_avg_sq, 16) && (bf16 == nullptr || Aligned(bf16, 8));
    int64_t scalar_begin = begin;
    if (vec) {
      // begin is a multiple of 4, so element i of a float4 row is 16-byte aligned.
      scalar_begin = begin + (end - begin) / 4 * 4;
      for (int64_t i = begin + 4 * threadIdx.x; i < scalar_begin; i += 4 * blockDim.x) {
        float4 p = *reinterpret_cast<const float4*>(s.param + i);
        float4 m = *reinterpret_cast<const float4*>(s.exp_avg + i);
        float4 v = *reinterpret_cast<const float4*>(s.exp_avg_sq + i);
        const float4 g = *reinterpret_cast<const float4*>(s.grad + i);
        AdamWStep(p.x, g.x, m.x, v.x, wd, a);
        AdamWStep(p.y, g.y, m.y, v.y, wd, a);
        AdamWStep(p.z, g.z, m.z, v.z, wd, a);
        AdamWStep(p.w, g.w, m.w, v.w, wd, a);
        *reinterpret_cast<float4*>(s.param + i) = p;
        *reinterpret_cast<float4*>(s.exp_avg + i) = m;
        *reinterpret_cast<float4*>(s.exp_avg_sq + i) = v;
        if (bf16 != nullptr) {
          __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(bf16 + i);
          out[0] = __floats2bfloat162_rn(p.x, p.y);
          out[1] = __floats2bfloat162_rn(p.z, p.w);
        }
      }
    }
    for (int64_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x) {
      float p = s.param[i], m = s.exp_avg[i], v = s.exp_avg_sq[i];
      AdamWStep(p, s.grad[i], m, v, wd, a);
      s.param[i] = p;
      s.exp_avg[i] = m;
      s.exp_avg_sq[i] = v;
      if (bf16 != nullptr) bf16[i] = __float2bfloat16_rn(p);
    }
  });
}

// Sum over the block in double; every thread gets the result. `shared`
// needs 32 doubles. Fixed shuffle tree: deterministic.
__device__ __forceinline__ double BlockSumDouble(double v, double* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int n_warps = (blockDim.x + 31) >> 5;
  v = lane < n_warps ? shared[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// partial[block] = sum of squares of the counted chunks this block owns.
__global__ void SumOfSquaresKernel(const OptimizerSegment* __restrict__ segments, int n_segments,
                                   double* __restrict__ partial) {
  __shared__ double red[32];
  double acc = 0.0;
  ForEachOwnedChunk(segments, n_segments, [&](const OptimizerSegment& s, int64_t begin, int64_t end) {
    if (s.counted == 0) return;
    float part = 0.0f;
    int64_t scalar_begin = begin;
    if (Aligned(s.grad, 16)) {
      scalar_begin = begin + (end - begin) / 4 * 4;
      for (int64_t i = begin + 4 * threadIdx.x; i < scalar_begin; i += 4 * blockDim.x) {
        const float4 g = *reinterpret_cast<const float4*>(s.grad + i);
        part += g.x * g.x;
        part += g.y * g.y;
        part += g.z * g.z;
        part += g.w * g.w;
      }
    }
    for (int64_t i = scalar_begin + threadIdx.x; i < end; i += blockDim.x) part += s.grad[i] * s.grad[i];
    acc += static_cast<double>(part);
  });
  acc = BlockSumDouble(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// *sum = sum_b partial[b]: thread t adds blocks t, t + blockDim.x, ... in
// order, then the fixed tree of BlockSumDouble.
__global__ void SumPartialsKernel(const double* __restrict__ partial, int n, double* __restrict__ sum) {
  __shared__ double red[32];
  double acc = 0.0;
  for (int b = threadIdx.x; b < n; b += blockDim.x) acc += partial[b];
  acc = BlockSumDouble(acc, red);
  if (threadIdx.x == 0) *sum = acc;
}

}  // namespace

void MultiTensorAdamW(const OptimizerSegment* segments, int n_segments, const AdamWHyper& h, float grad_scale,
                      cudaStream_t stream) {
  LATAM_CHECK(n_segments >= 0, "multi-tensor AdamW: " << n_segments << " segments");
  LATAM_CHECK(segments != nullptr || n_segments == 0, "multi-tensor AdamW: no segment table");
  LATAM_CHECK(h.step >= 1, "AdamW step is 1-based, got " << h.step);
  if (n_segments == 0) return;
  AdamWArgs a;
  a.lr = h.lr;
  a.beta1 = h.beta1;
  a.beta2 = h.beta2;
  a.eps = h.eps;
  a.weight_decay = h.weight_decay;
  a.bias1 = static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(h.step)));
  a.bias2 = static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(h.step)));
  a.grad_scale = grad_scale;
  Launch(MultiTensorAdamWKernel, kBlocks, kThreads, 0, stream, segments, n_segments, a);
  CUDA_CHECK_LAUNCH();
}

int64_t GradSumOfSquaresWorkspaceElems() { return kBlocks; }

void GradSumOfSquares(const OptimizerSegment* segments, int n_segments, double* workspace, double* sum,
                      cudaStream_t stream) {
  LATAM_CHECK(n_segments >= 0, "gradient sum of squares: " << n_segments << " segments");
  LATAM_CHECK(segments != nullptr || n_segments == 0, "gradient sum of squares: no segment table");
  LATAM_CHECK(workspace != nullptr && sum != nullptr, "gradient sum of squares: missing workspace or output");
  Launch(SumOfSquaresKernel, kBlocks, kThreads, 0, stream, segments, n_segments, workspace);
  CUDA_CHECK_LAUNCH();
  Launch(SumPartialsKernel, 1, kThreads, 0, stream, workspace, kBlocks, sum);
  CUDA_CHECK_LAUNCH();
}

}  // namespace latam::cuda
