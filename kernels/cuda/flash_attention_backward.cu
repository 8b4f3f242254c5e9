// The tensor-core attention backward pass (kernels/cuda/flash_attention.h):
// checks and the three launches; the kernels are in
// flash_attention_kernels.cuh (mma.sync) and flash_attention_wgmma_backward.cuh
// (wgmma).
#include <cuda_bf16.h>

#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/flash_attention_kernels.cuh"
#include "kernels/cuda/flash_attention_wgmma_backward.cuh"
#include "kernels/cuda/launch.cuh"

namespace latam::cuda {

namespace {

using flash::FlashGeometry;
using flash::kBlockM;
using flash::kThreads;
using bf16 = __nv_bfloat16;

template <int kHd>
void LaunchFlashBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                         const AttentionDims& d, bool causal, const Tensor& dqkv, const Tensor& workspace,
                         cudaStream_t stream, FlashBackwardPath path) {
  const FlashGeometry g = flash::MakeFlashGeometry(d, causal);
  const bf16* qkv_p = static_cast<const bf16*>(qkv.data);
  const bf16* dout_p = static_cast<const bf16*>(dout.data);
  const float* lse_p = lse.as<float>();
  float* dsum = workspace.as<float>();
  bf16* dqkv_p = static_cast<bf16*>(dqkv.data);
  const unsigned n_tiles = static_cast<unsigned>((d.seq_len + kBlockM - 1) / kBlockM);

  const int64_t items = static_cast<int64_t>(d.batch) * d.seq_len * d.n_heads;
  const int64_t threads = items * (kHd / 8);
  const int64_t dot_blocks = (threads + flash::kRowDotThreads - 1) / flash::kRowDotThreads;
  LATAM_CHECK(dot_blocks <= 0x7fffffff, "flash attention backward: too many rows for the D kernel's grid");
  Launch(flash::FlashRowDotKernel<kHd>, static_cast<unsigned>(dot_blocks), flash::kRowDotThreads, 0, stream,
         static_cast<const bf16*>(out.data), dout_p, dsum, items, d.n_heads, d.seq_len);
  CUDA_CHECK_LAUNCH();

  if (path == FlashBackwardPath::kWgmma) {
    const unsigned wg_tiles = static_cast<unsigned>((d.seq_len + flash::kWgBwdRows - 1) / flash::kWgBwdRows);
    const size_t wkv_bytes = flash::WgmmaKeyValueSmemBytes<kHd>();
    flash::AllowSharedBytes(flash::FlashKeyValueWgmmaKernel<kHd>, wkv_bytes);
    Launch(flash::FlashKeyValueWgmmaKernel<kHd>,
           dim3(wg_tiles, static_cast<unsigned>(d.n_kv_heads), static_cast<unsigned>(d.batch)), flash::kWgBwdThreads,
           wkv_bytes, stream, qkv_p, dout_p, lse_p, dsum, dqkv_p, g);
    CUDA_CHECK_LAUNCH();
    const size_t wq_bytes = flash::WgmmaQuerySmemBytes<kHd>();
    flash::AllowSharedBytes(flash::FlashQueryWgmmaKernel<kHd>, wq_bytes);
    Launch(flash::FlashQueryWgmmaKernel<kHd>,
           dim3(wg_tiles, static_cast<unsigned>(d.n_heads), static_cast<unsigned>(d.batch)), flash::kWgBwdThreads,
           wq_bytes, stream, qkv_p, dout_p, lse_p, dsum, dqkv_p, g);
    CUDA_CHECK_LAUNCH();
    return;
  }

  const size_t kv_bytes = flash::KeyValueSmemBytes<kHd>();
  flash::AllowSharedBytes(flash::FlashKeyValueKernel<kHd>, kv_bytes);
  Launch(flash::FlashKeyValueKernel<kHd>,
         dim3(n_tiles, static_cast<unsigned>(d.n_kv_heads), static_cast<unsigned>(d.batch)), kThreads, kv_bytes, stream,
         qkv_p, dout_p, lse_p, dsum, dqkv_p, g);
  CUDA_CHECK_LAUNCH();

  const size_t q_bytes = flash::QuerySmemBytes<kHd>();
  flash::AllowSharedBytes(flash::FlashQueryKernel<kHd>, q_bytes);
  Launch(flash::FlashQueryKernel<kHd>, dim3(n_tiles, static_cast<unsigned>(d.n_heads), static_cast<unsigned>(d.batch)),
         kThreads, q_bytes, stream, qkv_p, dout_p, lse_p, dsum, dqkv_p, g);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

int64_t FlashAttentionBackwardWorkspaceElems(const AttentionDims& d) {
  return static_cast<int64_t>(d.batch) * d.n_heads * d.seq_len;
}

void FlashAttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                            const AttentionDims& dims, bool causal, const Tensor& dqkv, const Tensor& workspace,
                            cudaStream_t stream, FlashBackwardPath path) {
  flash::CheckFlashTensors(qkv, dims, out, lse);
  flash::CheckDocuments(dims, causal, path != FlashBackwardPath::kMmaSync);
  LATAM_CHECK(path == FlashBackwardPath::kMmaSync || FlashWgmmaForwardAvailable(),
              "the wgmma attention backward needs a compute capability 9.0 GPU (H100, H200), and this device is not "
              "one");
  CheckTensor(dout, DType::kBF16, out.shape, Device::kCUDA, "flash attention dout");
  LATAM_CHECK(reinterpret_cast<uintptr_t>(dout.data) % 16 == 0,
              "flash attention needs 16-byte aligned dout " << dout.str());
  CheckTensor(dqkv, DType::kBF16, qkv.shape, Device::kCUDA, "flash attention dqkv");
  LATAM_CHECK(reinterpret_cast<uintptr_t>(dqkv.data) % 16 == 0,
              "flash attention needs 16-byte aligned dqkv " << dqkv.str());
  LATAM_CHECK(dqkv.data != qkv.data,
              "flash attention backward: dqkv must not alias qkv (it is read while dqkv is written)");
  LATAM_CHECK(workspace.dtype == DType::kF32 && workspace.device == Device::kCUDA &&
                  workspace.numel() >= FlashAttentionBackwardWorkspaceElems(dims),
              "flash attention backward workspace must be f32 on the device with at least "
                  << FlashAttentionBackwardWorkspaceElems(dims)
                  << " elements (FlashAttentionBackwardWorkspaceElems), got " << workspace.str());
  if (dims.head_dim == 64) {
    LaunchFlashBackward<64>(qkv, out, dout, lse, dims, causal, dqkv, workspace, stream, path);
  } else {
    LaunchFlashBackward<128>(qkv, out, dout, lse, dims, causal, dqkv, workspace, stream, path);
  }
}

}  // namespace latam::cuda
