#include "kernels/elementwise.h"

#include "kernels/cpu/vec_math.h"

namespace latam::cpu {

namespace {
LATAM_CPU_CLONES
void AddAll(const float* a, const float* b, float* out, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
}  // namespace

void Add(const Tensor& a, const Tensor& b, const Tensor& out) {
  CheckTensor(a, DType::kF32, a.shape, Device::kCPU, "add a");
  CheckTensor(b, DType::kF32, a.shape, Device::kCPU, "add b");
  CheckTensor(out, DType::kF32, a.shape, Device::kCPU, "add out");
  AddAll(a.as<float>(), b.as<float>(), out.as<float>(), a.numel());
}

}  // namespace latam::cpu
