#include "model/model_ops.h"

#include <cstdlib>
#include <string>

namespace latam {

Result<AttentionChoice> AttentionChoiceFromEnvironment() {
  const char* value = std::getenv("LATAM_ATTENTION");
  const std::string choice = value == nullptr ? "" : value;
  if (choice.empty() || choice == "auto") return AttentionChoice::kAuto;
  if (choice == "simple") return AttentionChoice::kSimple;
  if (choice == "wgmma") return AttentionChoice::kWgmma;
  if (choice == "wgmma-tma") return AttentionChoice::kWgmmaTma;
  return Status::InvalidInput("LATAM_ATTENTION=" + choice + ": expected auto, simple, wgmma or wgmma-tma");
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
std::unique_ptr<ModelOps> MakeCudaOps(const OpsShape&, const RopeTable&, DType, void*) {
  LATAM_CHECK(false, "train.device=cuda needs a build with CUDA (configure with LATAM_CUDA=ON)");
  return nullptr;
}
#endif

}  // namespace latam
