#include "model/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "kernels/grad_norm.h"

#ifdef LATAM_HAVE_CUDA
#include <cuda_runtime.h>

#include "core/cuda_check.h"
#include "kernels/cuda/elementwise.h"
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

OptimizerMemory AdamWOptimizer::MemoryPerRank(int64_t padded_numel, int dp, int zero_stage, DType compute_dtype,
                                              int64_t grad_arena_elems) {
  LATAM_CHECK(zero_stage >= 0 && zero_stage <= 2, "ZeRO stage " << zero_stage);
  LATAM_CHECK(zero_stage != 2 || grad_arena_elems >= 0, "ZeRO-2's memory needs the gradient pool's size");
  LATAM_CHECK(dp >= 1 && (zero_stage == 0 || padded_numel % dp == 0),
              padded_numel << " elements do not split over " << dp << " replicas");
  const int64_t n = padded_numel, f32 = 4;
  const int64_t copy = compute_dtype == DType::kF32 ? 0 : static_cast<int64_t>(DTypeSize(compute_dtype));
  OptimizerMemory m;
  if (zero_stage == 0) {
    m.weights = f32 * n + copy * n;  // the f32 master and the compute copy
    m.grads = f32 * n;
    m.moments = 2 * f32 * n;
  } else {
    const int64_t owned = n / dp;
    m.weights = copy > 0 ? copy * n : f32 * n;  // only the compute copy
    // ZeRO-1 reduce-scatters in place into the full arena; ZeRO-2 keeps
    // only the bucket pool and accumulates the reduced shares beside it.
    m.grads = zero_stage == 1 ? f32 * n : f32 * grad_arena_elems + f32 * owned;
    m.master = f32 * owned;
    m.moments = 2 * f32 * owned;
  }
  return m;
}

AdamWOptimizer::AdamWOptimizer(ParameterSet* params, const config::OptimizerConfig& config)
    : params_(params),
      config_(config),
      self_dp_(std::make_unique<SelfCommunicator>("dp")),
      self_norm_(std::make_unique<SelfCommunicator>("norm")) {
  comms_ = {self_dp_.get(), self_norm_.get()};
  LATAM_CHECK(params->has_fp32_params(), "ZeRO-0 needs the parameters' f32 master weights");
  Init();
}

AdamWOptimizer::AdamWOptimizer(ParameterSet* params, const config::OptimizerConfig& config, int zero_stage,
                               OptimizerComms comms)
    : params_(params), config_(config), zero_stage_(zero_stage), comms_(comms) {
  LATAM_CHECK(comms.dp != nullptr && comms.norm_group != nullptr, "optimizer groups missing");
  LATAM_CHECK(zero_stage >= 0 && zero_stage <= 2, "ZeRO stage " << zero_stage);
  LATAM_CHECK((zero_stage == 2) == params->placement().pooled_grads,
              "pooled gradient buckets go with ZeRO-2, and ZeRO-2 needs them");
  LATAM_CHECK(zero_stage == 0 || !params->placement().fp32_weights ||
                  params->placement().compute_dtype == DType::kF32,
              "ZeRO-1/2 keep the f32 master weights: place the parameters without them (fp32_weights false)");
  LATAM_CHECK(zero_stage >= 1 || params->has_fp32_params(), "ZeRO-0 needs the parameters' f32 master weights");
  Init();
}

void AdamWOptimizer::Init() {
  std::vector<std::string> names;
  for (size_t i = 0; i < params_->size(); ++i) names.push_back(params_->spec(i).name);
  GradStorage storage;
  storage.at = params_->grad_at();
  for (size_t b = 0; b < params_->buckets().size(); ++b) storage.whole_step.push_back(params_->whole_step_bucket(b));
  if (zero_stage_ == 2) {
    const Device device = params_->device();
    const Stream stream = params_->placement().stream;
    storage.zero = [device, stream](const Tensor& t) {
      if (device == Device::kCPU) {
        if (t.numel() > 0) std::memset(t.data, 0, t.bytes());
        return;
      }
#ifdef LATAM_HAVE_CUDA
      if (t.numel() > 0) CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.bytes(), stream.cuda()));
#endif
    };
    storage.add = [device, stream](const Tensor& acc, const Tensor& t) {
      if (t.numel() == 0) return;
      if (device == Device::kCPU) {
        cpu::Add(acc, t, acc);
        return;
      }
#ifdef LATAM_HAVE_CUDA
      cuda::Add(acc, t, acc, stream.cuda());
#endif
    };
  }
  reducer_ = std::make_unique<GradientReducer>(params_->buckets(), std::move(names), comms_.dp, zero_stage_,
                                               std::move(storage));
  // The elements this rank updates ("owned"), bucket by bucket: all of them
  // (ZeRO-0), or share r of every bucket (ZeRO-1). The owned gradients,
  // moments and the segments' owned_at index one buffer in bucket order.
  const std::vector<GradBucket>& buckets = params_->buckets();
  for (size_t k = 0; k < buckets.size(); ++k) {
    const auto [own_begin, own_end] = reducer_->owned(k);
    const int64_t at = reducer_->owned_at(k);
    for (size_t i = buckets[k].first_tensor; i < buckets[k].end_tensor; ++i) {
      const int64_t begin = params_->flat_offset(i), end = begin + params_->spec(i).shape.numel();
      const int64_t lo = std::max(begin, own_begin), hi = std::min(end, own_end);
      if (lo < hi) segments_.push_back({i, k, lo, hi, at + (lo - own_begin), reducer_->reduced_at(k, lo)});
    }
  }
  owned_size_ = reducer_->owned_size();
  if (zero_stage_ >= 1) {
    if (zero_stage_ == 2) owned_grads_ = Arena(params_->device(), static_cast<size_t>(owned_size_) * sizeof(float));
    master_ = Arena(params_->device(), static_cast<size_t>(owned_size_) * sizeof(float));
    if (params_->has_fp32_params()) {
      // The set's f32 array (the compute copy here) may already hold weights.
      const Tensor full = params_->padded_params();
      for (size_t k = 0; k < buckets.size(); ++k) {
        const auto [own_begin, own_end] = reducer_->owned(k);
        const int64_t at = reducer_->owned_at(k);
        CopyTensor(Master().Rows(at, at + (own_end - own_begin)), full.Rows(own_begin, own_end));
      }
    }
  }
  exp_avg_ = Arena(params_->device(), static_cast<size_t>(owned_size_) * sizeof(float));
  exp_avg_sq_ = Arena(params_->device(), static_cast<size_t>(owned_size_) * sizeof(float));
  if (params_->device() == Device::kCUDA) BuildDeviceTable();
}

Tensor AdamWOptimizer::Master() const { return master_.View(0, DType::kF32, Shape{owned_size_}); }

Tensor AdamWOptimizer::ReducedGrads() const {
  return zero_stage_ == 2 ? owned_grads_.View(0, DType::kF32, Shape{owned_size_}) : params_->grad_arena();
}

Tensor AdamWOptimizer::SegmentGrads(const Segment& s) const {
  return ReducedGrads().Rows(s.grad_at, s.grad_at + (s.end - s.begin));
}

void AdamWOptimizer::BuildDeviceTable() {
#ifdef LATAM_HAVE_CUDA
  // The arenas never move, so the table is built once.
  float* grads = ReducedGrads().as<float>();
  // ZeRO-1/2 update the master shard (indexed like the moments), ZeRO-0 the
  // set's f32 weights (indexed by flat offset).
  float* params = zero_stage_ >= 1 ? Master().as<float>() : params_->padded_params().as<float>();
  float* m = static_cast<float*>(exp_avg_.data());
  float* v = static_cast<float*>(exp_avg_sq_.data());
  // The update writes the bf16 copy of what it updates (ZeRO-1: the owned
  // range, which the all-gather then spreads).
  BF16* copy =
      params_->placement().compute_dtype == DType::kBF16 ? params_->padded_compute().as<BF16>() : nullptr;
  std::vector<cuda::OptimizerSegment> table;
  for (const Segment& s : segments_) {
    cuda::OptimizerSegment seg{};
    seg.param = params + (zero_stage_ >= 1 ? s.owned_at : s.begin);
    seg.grad = grads + s.grad_at;
    seg.exp_avg = m + s.owned_at;
    seg.exp_avg_sq = v + s.owned_at;
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
  float* master = zero_stage_ >= 1 ? Master().as<float>() : nullptr;
  for (const Segment& s : segments_) {
    out.push_back({s.tensor, s.begin, s.end, m + s.owned_at, v + s.owned_at,
                   master != nullptr ? master + s.owned_at : nullptr});
  }
  return out;
}

void AdamWOptimizer::ResetMoments() {
  exp_avg_.Zero();
  exp_avg_sq_.Zero();
  step_ = 0;
}

void AdamWOptimizer::BeginGradientReduction() {
  reducer_->Begin(params_->grad_arena(),
                  zero_stage_ == 2 ? owned_grads_.View(0, DType::kF32, Shape{owned_size_}) : Tensor());
}

void AdamWOptimizer::GradientsNeeded(const std::vector<size_t>& tensors) { reducer_->TensorsNeeded(tensors); }

void AdamWOptimizer::GradientsFinal(const std::vector<size_t>& tensors, bool last_micro_batch) {
  reducer_->TensorsFinal(tensors, last_micro_batch);
}

void AdamWOptimizer::FinishGradientReduction() { reducer_->Finish(); }

void AdamWOptimizer::ReduceGradients() {
  LATAM_CHECK(zero_stage_ != 2, "ZeRO-2 reduces as the model computes (GradientsNeeded, GradientsFinal)");
  BeginGradientReduction();
  std::vector<size_t> all(params_->size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  GradientsFinal(all);
  FinishGradientReduction();
}

double AdamWOptimizer::GradNorm() {
  double sum = 0.0;
#ifdef LATAM_HAVE_CUDA
  if (params_->device() == Device::kCUDA) {
    const auto stream = params_->placement().stream.cuda();
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
    sum += cpu::SumOfSquares(SegmentGrads(s));
  }
  return std::sqrt(comms_.norm_group->AllReduceScalar(sum, ReduceOp::kSum));
}

void AdamWOptimizer::WriteShardToCompute(bool bf16_done) {
  const Tensor compute = params_->padded_compute();
  const bool bf16 = compute.dtype != DType::kF32;
  if (bf16 && bf16_done) return;
  const std::vector<GradBucket>& buckets = params_->buckets();
  for (size_t k = 0; k < buckets.size(); ++k) {
    const auto [own_begin, own_end] = reducer_->owned(k);
    const int64_t at = reducer_->owned_at(k);
    const Tensor shard = Master().Rows(at, at + (own_end - own_begin));
    const Tensor dst = compute.Rows(own_begin, own_end);
    if (params_->device() == Device::kCPU) {
      CopyTensor(dst, shard);
      continue;
    }
#ifdef LATAM_HAVE_CUDA
    const auto stream = params_->placement().stream.cuda();
    if (bf16) {
      cuda::Cast(shard, dst, stream);  // rounds to nearest even, as the update kernel does
    } else if (shard.numel() > 0) {
      CUDA_CHECK(cudaMemcpyAsync(dst.data, shard.data, shard.bytes(), cudaMemcpyDeviceToDevice, stream));
    }
#endif
  }
}

void AdamWOptimizer::InitWeights(uint64_t seed) {
  if (zero_stage_ == 0) {
    params_->InitWeights(seed);
    return;
  }
  // Every replica draws the same weights; each keeps its shares as the master.
  std::vector<float> host = params_->DrawWeights(seed);
  const Tensor all = Tensor::Of(host.data(), Shape{params_->padded_numel()});
  const std::vector<GradBucket>& buckets = params_->buckets();
  for (size_t k = 0; k < buckets.size(); ++k) {
    const auto [own_begin, own_end] = reducer_->owned(k);
    const int64_t at = reducer_->owned_at(k);
    CopyTensor(Master().Rows(at, at + (own_end - own_begin)), all.Rows(own_begin, own_end));
  }
  WeightsLoaded();
}

void AdamWOptimizer::WeightsLoaded() {
  if (zero_stage_ == 0) {
    params_->SyncCompute();
    return;
  }
  FinishParameterGather();
  WriteShardToCompute(false);
  reducer_->AllGatherParameters(params_->padded_compute());
}

void AdamWOptimizer::WaitForWeights(const std::vector<size_t>& tensors) {
  for (size_t t : tensors) reducer_->WaitGather(params_->bucket_of(t));
}

void AdamWOptimizer::FinishParameterGather() { reducer_->FinishGather(); }

void AdamWOptimizer::Step(float lr, float grad_factor) {
  ++step_;
  // The copy's owned ranges are about to be rewritten: no gather may still read them.
  FinishParameterGather();
  // ZeRO-1/2 update the master shard (indexed like the moments), ZeRO-0 the
  // set's f32 weights (indexed by flat offset).
  const Tensor params = zero_stage_ >= 1 ? Master() : params_->padded_params();
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
                             params_->placement().stream.cuda());
    }
    if (zero_stage_ >= 1) {
      WriteShardToCompute(true);
      reducer_->StartGather(params_->padded_compute());
    }
    return;
  }
#endif
  const Tensor m = exp_avg_.View(0, DType::kF32, Shape{owned_size_});
  const Tensor v = exp_avg_sq_.View(0, DType::kF32, Shape{owned_size_});
  for (const Segment& s : segments_) {
    h.weight_decay = params_->spec(s.tensor).weight_decay ? static_cast<float>(config_.weight_decay()) : 0.0f;
    const int64_t b = s.owned_at, e = s.owned_at + (s.end - s.begin);
    const Tensor p = zero_stage_ >= 1 ? params.Rows(b, e) : params.Rows(s.begin, s.end);
    const Tensor g = SegmentGrads(s);
    if (grad_factor != 1.0f) cpu::Scale(g, grad_factor);
    cpu::AdamWUpdate(p, g, m.Rows(b, e), v.Rows(b, e), h);
  }
  if (zero_stage_ >= 1) {
    WriteShardToCompute(false);
    reducer_->StartGather(params_->padded_compute());
  }
}

}  // namespace latam
