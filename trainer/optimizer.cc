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
      self_dp_(std::make_unique<SelfCommunicator>("dp")),
      self_norm_(std::make_unique<SelfCommunicator>("norm")) {
  comms_ = {self_dp_.get(), self_norm_.get()};
  Init();
}

AdamWOptimizer::AdamWOptimizer(ParameterSet* params, const config::OptimizerConfig& config, int zero_stage,
                               OptimizerComms comms)
    : params_(params), config_(config), zero_stage_(zero_stage), comms_(comms) {
  LATAM_CHECK(comms.dp != nullptr && comms.norm_group != nullptr, "optimizer groups missing");
  LATAM_CHECK(zero_stage == 0 || zero_stage == 1, "ZeRO stage " << zero_stage);
  Init();
}

void AdamWOptimizer::Init() {
  const int d = comms_.dp->size(), r = comms_.dp->rank();
  if (zero_stage_ == 1) {
    LATAM_CHECK(params_->padded_numel() % d == 0,
                "parameters padded to " << params_->padded_numel() << ", not a multiple of " << d << " replicas");
    slice_size_ = params_->padded_numel() / d;
    slice_begin_ = r * slice_size_;
    slice_grads_ = Arena(Device::kCPU, static_cast<size_t>(slice_size_) * sizeof(float));
  } else {
    slice_begin_ = 0;
    slice_size_ = params_->numel();
  }
  exp_avg_ = Arena(Device::kCPU, static_cast<size_t>(slice_size_) * sizeof(float));
  exp_avg_sq_ = Arena(Device::kCPU, static_cast<size_t>(slice_size_) * sizeof(float));
  const int64_t slice_end = slice_begin_ + slice_size_;
  for (size_t i = 0; i < params_->size(); ++i) {
    const int64_t begin = static_cast<int64_t>(params_->table().entry(i).offset / sizeof(float));
    const int64_t end = begin + params_->param(i).numel();
    const int64_t b = std::max(begin, slice_begin_), e = std::min(end, slice_end);
    if (b < e) segments_.push_back({i, b, e});
  }
}

std::vector<AdamWOptimizer::MomentSlice> AdamWOptimizer::Moments() const {
  std::vector<MomentSlice> out;
  float* m = static_cast<float*>(exp_avg_.data());
  float* v = static_cast<float*>(exp_avg_sq_.data());
  for (const Segment& s : segments_) {
    out.push_back({s.tensor, s.begin, s.end, m + (s.begin - slice_begin_), v + (s.begin - slice_begin_)});
  }
  return out;
}

void AdamWOptimizer::ResetMoments() {
  exp_avg_.Zero();
  exp_avg_sq_.Zero();
  step_ = 0;
}

void AdamWOptimizer::ReduceGradients() {
  if (zero_stage_ == 1) {
    comms_.dp->ReduceScatter(params_->padded_grads(), slice_grads_.View(0, DType::kF32, Shape{slice_size_}))->Wait();
  } else {
    comms_.dp->AllReduceSync(params_->flat_grads(), ReduceOp::kSum);
  }
}

double AdamWOptimizer::GradNorm() {
  const Tensor grads = zero_stage_ == 1 ? slice_grads_.View(0, DType::kF32, Shape{slice_size_}) : params_->flat_grads();
  double sum = 0.0;
  for (const Segment& s : segments_) {
    if (!params_->spec(s.tensor).counted) continue;
    sum += cpu::SumOfSquares(grads.Rows(s.begin - slice_begin_, s.end - slice_begin_));
  }
  return std::sqrt(comms_.norm_group->AllReduceScalar(sum, ReduceOp::kSum));
}

void AdamWOptimizer::Step(float lr, float grad_factor) {
  ++step_;
  const Tensor grads = zero_stage_ == 1 ? slice_grads_.View(0, DType::kF32, Shape{slice_size_}) : params_->flat_grads();
  if (grad_factor != 1.0f) cpu::Scale(grads, grad_factor);
  const Tensor params = params_->padded_params();
  const Tensor m = exp_avg_.View(0, DType::kF32, Shape{slice_size_});
  const Tensor v = exp_avg_sq_.View(0, DType::kF32, Shape{slice_size_});
  AdamWHyper h;
  h.lr = lr;
  h.beta1 = static_cast<float>(config_.beta1());
  h.beta2 = static_cast<float>(config_.beta2());
  h.eps = static_cast<float>(config_.eps());
  h.step = step_;
  for (const Segment& s : segments_) {
    h.weight_decay = params_->spec(s.tensor).weight_decay ? static_cast<float>(config_.weight_decay()) : 0.0f;
    const int64_t b = s.begin - slice_begin_, e = s.end - slice_begin_;
    cpu::AdamWUpdate(params.Rows(s.begin, s.end), grads.Rows(b, e), m.Rows(b, e), v.Rows(b, e), h);
  }
  if (zero_stage_ == 1) {
    comms_.dp->AllGather(params.Rows(slice_begin_, slice_begin_ + slice_size_), params)->Wait();
  }
}

}  // namespace latam
