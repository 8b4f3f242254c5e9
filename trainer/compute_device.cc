#include "trainer/compute_device.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#ifdef LATAM_HAVE_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/flash_attention.h"
#endif

#include "model/model_ops.h"

namespace latam {

Result<std::unique_ptr<ComputeDevice>> ComputeDevice::Open([[maybe_unused]] int local_rank,
                                                           [[maybe_unused]] int local_size, int world_rank,
                                                           [[maybe_unused]] AttentionChoice attention) {
#ifdef LATAM_HAVE_CUDA
  const int count = cuda::DeviceCount();
  if (count < local_size) {
    return Status::InvalidInput("train.device=cuda: rank " + std::to_string(world_rank) + " sees " +
                                std::to_string(count) + " CUDA GPU(s) for " + std::to_string(local_size) +
                                " ranks on its node (one GPU per rank; check CUDA_VISIBLE_DEVICES and -np)");
  }
  std::unique_ptr<ComputeDevice> d(new ComputeDevice());
  d->ordinal_ = local_rank;
  CUDA_CHECK(cudaSetDevice(local_rank));
  if ((attention == AttentionChoice::kWgmma || attention == AttentionChoice::kWgmmaTma) &&
      !cuda::FlashWgmmaForwardAvailable()) {
    return Status::InvalidInput(std::string("train.attention=") + AttentionChoiceName(attention) + ": rank " +
                                std::to_string(world_rank) + "'s GPU " + std::to_string(local_rank) +
                                " is not compute capability 9.0 (H100, H200), which the wgmma kernels need");
  }
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  d->stream_ = stream;
  d->SampleMemory();
  return d;
#else
  return Status::InvalidInput("train.device=cuda: rank " + std::to_string(world_rank) +
                              " runs a build without CUDA (configure with LATAM_CUDA=ON where nvcc exists)");
#endif
}

std::string ComputeDevice::Describe() const {
#ifdef LATAM_HAVE_CUDA
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal_));
  return std::string(prop.name) + " (compute capability " + std::to_string(prop.major) + "." +
         std::to_string(prop.minor) + ")";
#else
  return "no GPU";
#endif
}

ComputeDevice::~ComputeDevice() {
#ifdef LATAM_HAVE_CUDA
  if (stream_ != nullptr) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
#endif
}

void ComputeDevice::Synchronize() const {
#ifdef LATAM_HAVE_CUDA
  CUDA_CHECK(cudaStreamSynchronize(stream_));
#endif
}

double ComputeDevice::PeakFlops(bool bf16) {
  if (const char* env = std::getenv("LATAM_PEAK_TFLOPS"); env != nullptr && std::atof(env) > 0) {
    return std::atof(env) * 1e12;
  }
  return bf16 ? 989e12 : 67e12;
}

size_t ComputeDevice::PeakMemoryBytes() const { return peak_used_; }

void ComputeDevice::SampleMemory() {
#ifdef LATAM_HAVE_CUDA
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  peak_used_ = std::max(peak_used_, total_bytes - free_bytes);
#endif
}

}  // namespace latam
