#include "kernels/cuda/adamw.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"

namespace latam::cuda {

namespace {

struct AdamWArgs {
  float lr, beta1, beta2, eps, weight_decay, bias1, bias2;
};

__device__ __forceinline__ float Step(float& p, float g, float& m, float& v, const AdamWArgs& a) {
  m = a.beta1 * m + (1.0f - a.beta1) * g;
  v = a.beta2 * v + (1.0f - a.beta2) * g * g;
  const float update = (m / a.bias1) / (sqrtf(v / a.bias2) + a.eps);
  p -= a.lr * (update + a.weight_decay * p);
  return p;
}

// Four elements per thread per iteration through float4; grid-stride.
__global__ void AdamWVec4Kernel(float4* __restrict__ p, const float4* __restrict__ g, float4* __restrict__ m,
                                float4* __restrict__ v, __nv_bfloat162* __restrict__ p_bf16, int64_t n4, AdamWArgs a) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float4 pp = p[i], mm = m[i], vv = v[i];
    const float4 gg = g[i];
    Step(pp.x, gg.x, mm.x, vv.x, a);
    Step(pp.y, gg.y, mm.y, vv.y, a);
    Step(pp.z, gg.z, mm.z, vv.z, a);
    Step(pp.w, gg.w, mm.w, vv.w, a);
    p[i] = pp;
    m[i] = mm;
    v[i] = vv;
    if (p_bf16 != nullptr) {
      p_bf16[2 * i] = __floats2bfloat162_rn(pp.x, pp.y);
      p_bf16[2 * i + 1] = __floats2bfloat162_rn(pp.z, pp.w);
    }
  }
}

__global__ void AdamWScalarKernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                  float* __restrict__ v, __nv_bfloat16* __restrict__ p_bf16, int64_t begin, int64_t n,
                                  AdamWArgs a) {
  for (int64_t i = begin + blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float pi = p[i], mi = m[i], vi = v[i];
    Step(pi, g[i], mi, vi, a);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (p_bf16 != nullptr) p_bf16[i] = __float2bfloat16_rn(pi);
  }
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

void AdamWUpdate(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWHyper& h, const Tensor& param_bf16, cudaStream_t stream) {
  CheckTensor(param, DType::kF32, param.shape, Device::kCUDA, "cuda adamw param");
  CheckTensor(grad, DType::kF32, param.shape, Device::kCUDA, "cuda adamw grad");
  CheckTensor(exp_avg, DType::kF32, param.shape, Device::kCUDA, "cuda adamw exp_avg");
  CheckTensor(exp_avg_sq, DType::kF32, param.shape, Device::kCUDA, "cuda adamw exp_avg_sq");
  const bool write_bf16 = param_bf16.data != nullptr;
  if (write_bf16) CheckTensor(param_bf16, DType::kBF16, param.shape, Device::kCUDA, "cuda adamw param_bf16");
  LATAM_CHECK(h.step >= 1, "AdamW step is 1-based, got " << h.step);
  AdamWArgs a;
  a.lr = h.lr;
  a.beta1 = h.beta1;
  a.beta2 = h.beta2;
  a.eps = h.eps;
  a.weight_decay = h.weight_decay;
  a.bias1 = static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(h.step)));
  a.bias2 = static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(h.step)));
  const int64_t n = param.numel();
  if (n == 0) return;
  constexpr int kThreads = 256;
  const bool vec = Aligned16(param.data) && Aligned16(grad.data) && Aligned16(exp_avg.data) &&
                   Aligned16(exp_avg_sq.data) && (!write_bf16 || reinterpret_cast<uintptr_t>(param_bf16.data) % 8 == 0);
  int64_t done = 0;
  if (vec && n >= 4) {
    const int64_t n4 = n / 4;
    const int blocks = static_cast<int>(std::min<int64_t>((n4 + kThreads - 1) / kThreads, 65535));
    Launch(AdamWVec4Kernel, blocks, kThreads, 0, stream, static_cast<float4*>(param.data),
           static_cast<const float4*>(grad.data), static_cast<float4*>(exp_avg.data),
           static_cast<float4*>(exp_avg_sq.data), write_bf16 ? static_cast<__nv_bfloat162*>(param_bf16.data) : nullptr,
           n4, a);
    CUDA_CHECK_LAUNCH();
    done = n4 * 4;
  }
  if (done < n) {
    const int blocks = static_cast<int>(std::min<int64_t>((n - done + kThreads - 1) / kThreads, 65535));
    Launch(AdamWScalarKernel, blocks, kThreads, 0, stream, param.as<float>(), grad.as<float>(), exp_avg.as<float>(),
           exp_avg_sq.as<float>(), write_bf16 ? static_cast<__nv_bfloat16*>(param_bf16.data) : nullptr, done, n, a);
    CUDA_CHECK_LAUNCH();
  }
}

}  // namespace latam::cuda
