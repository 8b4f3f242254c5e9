#include "trainer/optimizer.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "kernels/adamw.h"
#include "kernels/grad_norm.h"

#ifdef LATAM_HAVE_CUDA
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/optimizer.h"
#endif

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
    slice_grads_ = Arena(params_->device(), static_cast<size_t>(slice_size_) * sizeof(float));
  } else {
    slice_begin_ = 0;
    slice_size_ = params_->numel();
  }
  exp_avg_ = Arena(params_->device(), static_cast<size_t>(slice_size_) * sizeof(float));
  exp_avg_sq_ = Arena(params_->device(), static_cast<size_t>(slice_size_) * sizeof(float));
  const int64_t slice_end = slice_begin_ + slice_size_;
  for (size_t i = 0; i < params_->size(); ++i) {
    const int64_t begin = static_cast<int64_t>(params_->table().entry(i).offset / sizeof(float));
    const int64_t end = begin + params_->param(i).numel();
    const int64_t b = std::max(begin, slice_begin_), e = std::min(end, slice_end);
    if (b < e) segments_.push_back({i, b, e});
  }
  if (params_->device() == Device::kCUDA) BuildDeviceTable();
}

Tensor AdamWOptimizer::SliceGrads() const {
  return zero_stage_ == 1 ? slice_grads_.View(0, DType::kF32, Shape{slice_size_}) : params_->flat_grads();
}

void AdamWOptimizer::BuildDeviceTable() {
#ifdef LATAM_HAVE_CUDA
  // The arenas never move, so the table is built once.
  const Tensor grads = SliceGrads();
  float* params = params_->padded_params().as<float>();
  float* m = static_cast<float*>(exp_avg_.data());
  float* v = static_cast<float*>(exp_avg_sq_.data());
  // ZeRO-1 re-casts the whole copy after the all-gather instead.
  BF16* copy = params_->placement().compute_dtype == DType::kBF16 && zero_stage_ == 0
                   ? params_->padded_compute().as<BF16>()
                   : nullptr;
  std::vector<cuda::OptimizerSegment> table;
  for (const Segment& s : segments_) {
    const int64_t at = s.begin - slice_begin_;
    cuda::OptimizerSegment seg{};
    seg.param = params + s.begin;
    seg.grad = grads.as<float>() + at;
    seg.exp_avg = m + at;
    seg.exp_avg_sq = v + at;
    seg.param_bf16 = copy != nullptr ? copy + s.begin : nullptr;
    seg.numel = s.end - s.begin;
    seg.weight_decay = params_->spec(s.tensor).weight_decay ? 1 : 0;
    seg.counted = params_->spec(s.tensor).counted ? 1 : 0;
    table.push_back(seg);
  }
  const size_t bytes = table.size() * sizeof(cuda::OptimizerSegment);
  device_segments_ = Arena(Device::kCUDA, bytes);
  if (bytes > 0) CUDA_CHECK(cudaMemcpy(device_segments_.data(), table.data(), bytes, cudaMemcpyHostToDevice));
  // GradSumOfSquares' per-block partials, then the sum.
  norm_scratch_ =
      Arena(Device::kCUDA, static_cast<size_t>(cuda::GradSumOfSquaresWorkspaceElems() + 1) * sizeof(double));
#else
  LATAM_CHECK(false, "a CUDA optimizer in a build without CUDA");
#endif
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
  const Tensor grads = SliceGrads();
  double sum = 0.0;
#ifdef LATAM_HAVE_CUDA
  if (params_->device() == Device::kCUDA) {
    const auto stream = static_cast<cudaStream_t>(params_->placement().stream);
    double* scratch = static_cast<double*>(norm_scratch_.data());
    double* device_sum = scratch + cuda::GradSumOfSquaresWorkspaceElems();
    if (segments_.empty()) {
      CUDA_CHECK(cudaMemsetAsync(device_sum, 0, sizeof(double), stream));
    } else {
      cuda::GradSumOfSquares(static_cast<const cuda::OptimizerSegment*>(device_segments_.data()),
                             static_cast<int>(segments_.size()), scratch, device_sum, stream);
    }
    CUDA_CHECK(cudaMemcpyAsync(&sum, device_sum, sizeof(double), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return std::sqrt(comms_.norm_group->AllReduceScalar(sum, ReduceOp::kSum));
  }
#endif
  for (const Segment& s : segments_) {
    if (!params_->spec(s.tensor).counted) continue;
    sum += cpu::SumOfSquares(grads.Rows(s.begin - slice_begin_, s.end - slice_begin_));
  }
  return std::sqrt(comms_.norm_group->AllReduceScalar(sum, ReduceOp::kSum));
}

void AdamWOptimizer::Step(float lr, float grad_factor) {
  ++step_;
  const Tensor grads = SliceGrads();
  const Tensor params = params_->padded_params();
  AdamWHyper h;
  h.lr = lr;
  h.beta1 = static_cast<float>(config_.beta1());
  h.beta2 = static_cast<float>(config_.beta2());
  h.eps = static_cast<float>(config_.eps());
  h.step = step_;
#ifdef LATAM_HAVE_CUDA
  if (params_->device() == Device::kCUDA) {
    h.weight_decay = static_cast<float>(config_.weight_decay());  // for the segments flagged to decay
    if (!segments_.empty()) {
      cuda::MultiTensorAdamW(static_cast<const cuda::OptimizerSegment*>(device_segments_.data()),
                             static_cast<int>(segments_.size()), h, grad_factor,
                             static_cast<cudaStream_t>(params_->placement().stream));
    }
    if (zero_stage_ == 1) {
      comms_.dp->AllGather(params.Rows(slice_begin_, slice_begin_ + slice_size_), params)->Wait();
      params_->SyncCompute();
    }
    return;
  }
#endif
  if (grad_factor != 1.0f) cpu::Scale(grads, grad_factor);
  const Tensor m = exp_avg_.View(0, DType::kF32, Shape{slice_size_});
  const Tensor v = exp_avg_sq_.View(0, DType::kF32, Shape{slice_size_});
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
