#include "kernels/adamw.h"

#include <cmath>

#include "kernels/cpu/vec_math.h"

namespace latam::cpu {

namespace {

LATAM_CPU_CLONES
void Update(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2, float eps,
            float weight_decay, float bias1, float bias2) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float update = (mi / bias1) / (std::sqrt(vi / bias2) + eps);
    p[i] -= lr * (update + weight_decay * p[i]);
  }
}

}  // namespace

void AdamWUpdate(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWHyper& h) {
  CheckTensor(param, DType::kF32, param.shape, Device::kCPU, "adamw param");
  CheckTensor(grad, DType::kF32, param.shape, Device::kCPU, "adamw grad");
  CheckTensor(exp_avg, DType::kF32, param.shape, Device::kCPU, "adamw exp_avg");
  CheckTensor(exp_avg_sq, DType::kF32, param.shape, Device::kCPU, "adamw exp_avg_sq");
  LATAM_CHECK(h.step >= 1, "AdamW step is 1-based, got " << h.step);
  const float bias1 = static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta1), static_cast<double>(h.step)));
  const float bias2 = static_cast<float>(1.0 - std::pow(static_cast<double>(h.beta2), static_cast<double>(h.step)));
  Update(param.as<float>(), grad.as<float>(), exp_avg.as<float>(), exp_avg_sq.as<float>(), param.numel(), h.lr, h.beta1,
         h.beta2, h.eps, h.weight_decay, bias1, bias2);
}

}  // namespace latam::cpu
