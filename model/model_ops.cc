#include "model/model_ops.h"

#include <string>

namespace latam {

const char* AttentionChoiceName(AttentionChoice choice) {
  switch (choice) {
    case AttentionChoice::kAuto:
      return "auto";
    case AttentionChoice::kSimple:
      return "simple";
    case AttentionChoice::kWgmma:
      return "wgmma";
    case AttentionChoice::kWgmmaTma:
      return "wgmma_tma";
  }
  return "?";
}

std::string AttentionKernelsName(AttentionChoice choice, bool tensor_core) {
  if (!tensor_core || choice == AttentionChoice::kSimple) return "simple";
  if (choice == AttentionChoice::kWgmma) return "tensor-core, wgmma forward and backward";
  if (choice == AttentionChoice::kWgmmaTma) return "tensor-core, wgmma+TMA forward, wgmma backward";
  return "tensor-core, mma.sync forward and backward";
}

size_t OpsWorkspaceBytes(Device device, const OpsShape& shape) {
  if (device == Device::kCPU) return CpuOpsWorkspaceBytes(shape);
#ifdef LATAM_HAVE_CUDA
  return CudaOpsWorkspaceBytes(shape);
#else
  return 0;  // a build without CUDA cannot size (or allocate) them
#endif
}

#ifndef LATAM_HAVE_CUDA
std::unique_ptr<ModelOps> MakeCudaOps(const OpsShape&, const RopeTable&, DType, Stream, AttentionChoice) {
  LATAM_CHECK(false, "train.device=cuda needs a build with CUDA (configure with LATAM_CUDA=ON)");
  return nullptr;
}
#endif

}  // namespace latam
