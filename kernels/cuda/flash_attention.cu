// The tensor-core attention forward pass and the shared host-side checks
// (kernels/cuda/flash_attention.h). The backward kernels are in
// flash_attention_backward.cu.
#include <cuda_bf16.h>
#ifndef LATAM_CUDA_EMULATION
#include <cuda.h>
#include <cudaTypedefs.h>
#endif

#include <cmath>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/flash_attention_kernels.cuh"
#include "kernels/cuda/flash_attention_wgmma.cuh"
#include "kernels/cuda/launch.cuh"

namespace latam::cuda {

namespace flash {

void CheckFlashTensors(const Tensor& qkv, const AttentionDims& d, const Tensor& out, const Tensor& lse) {
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

void CheckDocuments(const AttentionDims& d, bool causal, bool wgmma) {
  if (d.doc_start == nullptr) return;
  LATAM_CHECK(causal, "flash attention: document masking (doc_start) is block-causal and needs causal = true");
  LATAM_CHECK(!wgmma,
              "flash attention: the wgmma kernels do not implement document masking (doc_start); "
              "run FlashForwardPath::kMmaSync / FlashBackwardPath::kMmaSync (FlashWgmmaSupports)");
}

}  // namespace flash

namespace {

using flash::kBlockM;
using flash::kBlockN;
using flash::kThreads;
using bf16 = __nv_bfloat16;

template <int kHd>
void LaunchFlashForward(const Tensor& qkv, const AttentionDims& d, bool causal, const Tensor& out,
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
void LaunchFlashForwardWgmma(const Tensor& qkv, const AttentionDims& d, bool causal, const Tensor& out,
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

#ifndef LATAM_CUDA_EMULATION
// The driver's tensor-map encoder, looked up through the runtime so that
// nothing links against libcuda (absent where no driver is installed);
// nullptr where the driver lacks it.
PFN_cuTensorMapEncodeTiled_v12000 TensorMapEncoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encoder = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return static_cast<PFN_cuTensorMapEncodeTiled_v12000>(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encoder;
}
#endif

// qkv as the 3-D tensor {columns, T, B} (bf16, rows row_stride apart,
// batches T rows apart), read in boxes of {64 columns, 128 rows, 1} with
// the 128-byte swizzle and zeros outside: what FlashForwardWgmmaTmaKernel
// loads Q, K and V tiles through.
tma::TensorMap QkvTensorMap(const Tensor& qkv, const AttentionDims& d) {
  const uint64_t width = static_cast<uint64_t>(d.n_heads + 2 * d.n_kv_heads) * static_cast<uint64_t>(d.head_dim);
  const uint64_t dims[3] = {width, static_cast<uint64_t>(d.seq_len), static_cast<uint64_t>(d.batch)};
  const uint64_t strides[2] = {width * sizeof(bf16), width * sizeof(bf16) * static_cast<uint64_t>(d.seq_len)};
  const uint32_t box[3] = {64, static_cast<uint32_t>(flash::kWgBlockN), 1};
  static_assert(flash::kWgBlockM == flash::kWgBlockN, "one box shape serves the Q, K and V tiles");
  tma::TensorMap map;
#ifdef LATAM_CUDA_EMULATION
  map.base = qkv.data;
  for (int i = 0; i < 3; ++i) map.dims[i] = dims[i];
  for (int i = 0; i < 2; ++i) map.strides[i] = strides[i];
  for (int i = 0; i < 3; ++i) map.box[i] = box[i];
#else
  const PFN_cuTensorMapEncodeTiled_v12000 encode = TensorMapEncoder();
  LATAM_CHECK(encode != nullptr, "the CUDA driver has no cuTensorMapEncodeTiled (the TMA attention forward needs "
                                 "a CUDA 12 driver)");
  const cuuint32_t element_strides[3] = {1, 1, 1};
  const CUresult result = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, qkv.data, dims, strides, box,
                                 element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                 CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  LATAM_CHECK(result == CUDA_SUCCESS,
              "cuTensorMapEncodeTiled failed (CUresult " << static_cast<int>(result) << ") for " << qkv.str());
#endif
  return map;
}

template <int kHd>
void LaunchFlashForwardWgmmaTma(const Tensor& qkv, const AttentionDims& d, bool causal, const Tensor& out,
                                const Tensor& lse, cudaStream_t stream) {
  const size_t bytes = flash::WgmmaTmaForwardSmemBytes<kHd>();
  flash::AllowSharedBytes(flash::FlashForwardWgmmaTmaKernel<kHd>, bytes);
#ifndef LATAM_CUDA_EMULATION
  // The consumers' setmaxnreg.inc draws on the registers the block was
  // launched with; too few would hang the kernel, so refuse to launch.
  static const int registers = [] {
    cudaFuncAttributes attributes{};
    CUDA_CHECK(cudaFuncGetAttributes(&attributes, flash::FlashForwardWgmmaTmaKernel<kHd>));
    return attributes.numRegs;
  }();
  constexpr int kNeeded = wgmma::kWarpgroupThreads * (flash::kWsProducerRegisters + 2 * flash::kWsConsumerRegisters);
  LATAM_CHECK(registers * flash::kWsThreads >= kNeeded,
              "the TMA attention forward was compiled with " << registers << " registers per thread; its warpgroups' "
              "setmaxnreg counts need " << kNeeded << " registers per block, more than " << flash::kWsThreads
              << " threads have");
#endif
  const dim3 grid(static_cast<unsigned>((d.seq_len + flash::kWgBlockM - 1) / flash::kWgBlockM),
                  static_cast<unsigned>(d.n_heads), static_cast<unsigned>(d.batch));
  Launch(flash::FlashForwardWgmmaTmaKernel<kHd>, grid, flash::kWsThreads, bytes, stream, QkvTensorMap(qkv, d),
         static_cast<bf16*>(out.data), lse.as<float>(), flash::MakeFlashGeometry(d, causal));
  CUDA_CHECK_LAUNCH();
}

}  // namespace

bool FlashWgmmaForwardAvailable() {
#ifdef LATAM_CUDA_EMULATION
  return true;  // the emulation computes wgmma, TMA and mbarriers from their definitions
#else
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return false;
  if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) return false;
  return major == 9 && minor == 0 && TensorMapEncoder() != nullptr;
#endif
}

bool FlashWgmmaSupports(const AttentionDims& d) { return d.doc_start == nullptr; }

bool FlashAttentionSupports(const AttentionDims& d, DType dtype) {
  return dtype == DType::kBF16 && (d.head_dim == 64 || d.head_dim == 128) && d.batch > 0 && d.batch <= 65535 &&
         d.seq_len > 0 && d.n_heads > 0 && d.n_kv_heads > 0 && d.n_heads % d.n_kv_heads == 0 && d.n_heads <= 65535;
}

void FlashAttentionForward(const Tensor& qkv, const AttentionDims& dims, bool causal, const Tensor& out,
                           const Tensor& lse, cudaStream_t stream, FlashForwardPath path) {
  flash::CheckFlashTensors(qkv, dims, out, lse);
  flash::CheckDocuments(dims, causal, path != FlashForwardPath::kMmaSync);
  if (path == FlashForwardPath::kWgmma || path == FlashForwardPath::kWgmmaTma) {
    LATAM_CHECK(FlashWgmmaForwardAvailable(),
                "the wgmma attention forward needs a compute capability 9.0 GPU (H100, H200), and this device is not one");
    const bool tma = path == FlashForwardPath::kWgmmaTma;
    if (dims.head_dim == 64) {
      tma ? LaunchFlashForwardWgmmaTma<64>(qkv, dims, causal, out, lse, stream)
          : LaunchFlashForwardWgmma<64>(qkv, dims, causal, out, lse, stream);
    } else {
      tma ? LaunchFlashForwardWgmmaTma<128>(qkv, dims, causal, out, lse, stream)
          : LaunchFlashForwardWgmma<128>(qkv, dims, causal, out, lse, stream);
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
