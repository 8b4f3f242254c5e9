// The tensor-core attention forward pass and the shared host-side checks
// (kernels/cuda/flash_attention.h). The backward kernels are in
// flash_attention_backward.cu.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/flash_attention_kernels.cuh"
#include "kernels/cuda/flash_attention_wgmma.cuh"
#include "kernels/cuda/launch.cuh"

namespace latam::cuda {

namespace flash {

void CheckFlashTensors(const Tensor& qkv, const cpu::AttentionDims& d, const Tensor& out, const Tensor& lse) {
  LATAM_CHECK(FlashAttentionSupports(d, qkv.dtype),
              "flash attention needs bf16 and head_dim 64 or 128, got " << qkv.str() << " B=" << d.batch << " T="
                                                                        << d.seq_len << " Hq=" << d.n_heads
                                                                        << " Hkv=" << d.n_kv_heads
                                                                        << " hd=" << d.head_dim);
  const int64_t rows = static_cast<int64_t>(d.batch) * d.seq_len;
  CheckTensor(qkv, DType::kBF16, Shape{rows, static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim},
              Device::kCUDA, "flash attention qkv");
  CheckTensor(out, DType::kBF16, Shape{rows, static_cast<int64_t>(d.n_heads) * d.head_dim}, Device::kCUDA,
              "flash attention out");
  CheckTensor(lse, DType::kF32, Shape{d.batch, d.n_heads, d.seq_len}, Device::kCUDA, "flash attention lse");
  for (const Tensor* t : {&qkv, &out}) {
    LATAM_CHECK(reinterpret_cast<uintptr_t>(t->data) % 16 == 0, "flash attention needs 16-byte aligned " << t->str());
  }
}

}  // namespace flash

namespace {

using flash::kBlockM;
using flash::kBlockN;
using flash::kThreads;
using bf16 = __nv_bfloat16;

template <int kHd>
void LaunchFlashForward(const Tensor& qkv, const cpu::AttentionDims& d, bool causal, const Tensor& out,
                        const Tensor& lse, cudaStream_t stream) {
  const size_t bytes = static_cast<size_t>(kBlockM + 4 * kBlockN) * kHd * sizeof(bf16);
  flash::AllowSharedBytes(flash::FlashForwardKernel<kHd>, bytes);
  const dim3 grid(static_cast<unsigned>((d.seq_len + kBlockM - 1) / kBlockM), static_cast<unsigned>(d.n_heads),
                  static_cast<unsigned>(d.batch));
  Launch(flash::FlashForwardKernel<kHd>, grid, kThreads, bytes, stream, static_cast<const bf16*>(qkv.data),
         static_cast<bf16*>(out.data), lse.as<float>(), flash::MakeFlashGeometry(d, causal));
  CUDA_CHECK_LAUNCH();
}

template <int kHd>
void LaunchFlashForwardWgmma(const Tensor& qkv, const cpu::AttentionDims& d, bool causal, const Tensor& out,
                             const Tensor& lse, cudaStream_t stream) {
  const size_t bytes = flash::WgmmaForwardSmemBytes<kHd>();
  flash::AllowSharedBytes(flash::FlashForwardWgmmaKernel<kHd>, bytes);
  const dim3 grid(static_cast<unsigned>((d.seq_len + flash::kWgBlockM - 1) / flash::kWgBlockM),
                  static_cast<unsigned>(d.n_heads), static_cast<unsigned>(d.batch));
  Launch(flash::FlashForwardWgmmaKernel<kHd>, grid, flash::kWgThreads, bytes, stream,
         static_cast<const bf16*>(qkv.data), static_cast<bf16*>(out.data), lse.as<float>(),
         flash::MakeFlashGeometry(d, causal));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool FlashWgmmaForwardAvailable() {
#ifdef LATAM_CUDA_EMULATION
  return true;  // the emulation computes wgmma from its definition
#else
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) return false;
  return major == 9 && minor == 0;
#endif
}

bool FlashAttentionSupports(const cpu::AttentionDims& d, DType dtype) {
  return dtype == DType::kBF16 && (d.head_dim == 64 || d.head_dim == 128) && d.batch > 0 && d.batch <= 65535 &&
         d.seq_len > 0 && d.n_heads > 0 && d.n_kv_heads > 0 && d.n_heads % d.n_kv_heads == 0 && d.n_heads <= 65535;
}

void FlashAttentionForward(const Tensor& qkv, const cpu::AttentionDims& dims, bool causal, const Tensor& out,
                           const Tensor& lse, cudaStream_t stream, FlashForwardPath path) {
  flash::CheckFlashTensors(qkv, dims, out, lse);
  if (path == FlashForwardPath::kWgmma) {
    LATAM_CHECK(FlashWgmmaForwardAvailable(),
                "the wgmma attention forward needs a compute capability 9.0 GPU (H100, H200), and this device is not one");
    if (dims.head_dim == 64) {
      LaunchFlashForwardWgmma<64>(qkv, dims, causal, out, lse, stream);
    } else {
      LaunchFlashForwardWgmma<128>(qkv, dims, causal, out, lse, stream);
    }
    return;
  }
  if (dims.head_dim == 64) {
    LaunchFlashForward<64>(qkv, dims, causal, out, lse, stream);
  } else {
    LaunchFlashForward<128>(qkv, dims, causal, out, lse, stream);
  }
}

}  // namespace latam::cuda
