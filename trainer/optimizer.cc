#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kernels/adamw.h"
#include "kernels/grad_norm.h"

namespace latam {

double LearningRate(const config::OptimizerConfig& o, int64_t step, int64_t total_steps) {
  const int64_t warmup = o.warmup_steps();
  if (step < warmup) return o.lr() * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warmup - 1);
  const double progress = std::clamp(static_cast<double>(step - warmup) / static_cast<double>(decay_steps), 0.0, 1.0);
  return o.min_lr() + 0.5 * (o.lr() - o.min_lr()) * (1.0 + std::cos(std::numbers::pi * progress));
}

float ClipFactor(double grad_norm, double max_norm) {
  if (max_norm <= 0.0 || !(grad_norm > max_norm)) return 1.0f;
  return static_cast<float>(max_norm / (grad_norm + 1e-6));
}

AdamWOptimizer::AdamWOptimizer(ParameterSet* params, const config::OptimizerConfig& config)
    : params_(params),
      config_(config),
      exp_avg_(Device::kCPU, params->table().total_bytes()),
      exp_avg_sq_(Device::kCPU, params->table().total_bytes()) {}

void AdamWOptimizer::Step(float lr, float grad_factor) {
  ++step_;
  if (grad_factor != 1.0f) cpu::Scale(params_->flat_grads(), grad_factor);
  AdamWHyper h;
  h.lr = lr;
  h.beta1 = static_cast<float>(config_.beta1());
  h.beta2 = static_cast<float>(config_.beta2());
  h.eps = static_cast<float>(config_.eps());
  h.step = step_;
  for (size_t i = 0; i < params_->size(); ++i) {
    h.weight_decay = params_->spec(i).weight_decay ? static_cast<float>(config_.weight_decay()) : 0.0f;
    cpu::AdamWUpdate(params_->param(i), params_->grad(i), exp_avg(i), exp_avg_sq(i), h);
  }
}

}  // namespace latam
