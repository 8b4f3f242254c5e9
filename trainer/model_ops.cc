#include "trainer/model_ops.h"

namespace latam {

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
