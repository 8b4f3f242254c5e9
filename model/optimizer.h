// AdamW over a rank's ParameterSet with data-parallel gradient reduction
// (ZeRO stage 0 or 1), the global gradient norm, clipping, and the
// learning-rate schedule.
//
// Gradients are reduced bucket by bucket (GradientReducer,
// parallel/data_parallel.h, over the ParameterSet's buckets):
// the engine declares tensors' gradients final as the last micro-batch's
// backward pass finishes them (GradientsFinal), and a bucket's collective is
// issued as soon as all its tensors are final, so it runs while the backward
// pass goes on (on GPUs on the data-parallel communicator's own stream; with
// MPI as a non-blocking collective). FinishGradientReduction waits for all.
// ZeRO-0: each bucket is all-reduced over the data-parallel group and every
//   replica updates all its parameters (Adam moments for all of them).
// ZeRO-1: each bucket (padded to a multiple of D elements) is
//   reduce-scattered, so replica r holds the summed gradients of share r of
//   every bucket and keeps Adam moments for those only; it updates those
//   parameters and all-gathers every bucket from the replicas.
// Gradient norm: sum of squares of every parameter counted once
//   (ParamSpec::counted excludes replicas: TP copies of the norm gains,
//   replicated KV heads, the tied embedding's copy), summed over the
//   model-parallel group (ZeRO-0; data-parallel replicas hold equal sums) or
//   over the whole world (ZeRO-1; each replica holds a different slice).
// Weight decay applies to the tensors whose ParamSpec says so.
//
// Device. The moments live where the ParameterSet does. On CUDA the norm and
// the update are one multi-tensor launch each over a table of this rank's
// segments (kernels/cuda/optimizer.h), enqueued on the parameters' stream;
// the update also refreshes the bf16 compute copy (ZeRO-0), or the copy is
// re-cast after the all-gather of the updated fp32 weights (ZeRO-1). Only
// GradNorm() waits for the device (it needs the norm on the host to clip).
#pragma once

#include <cstdint>
#include <vector>

#include "core/arena.h"
#include "parallel/communicator.h"
#include "parallel/data_parallel.h"
#include "model/config.pb.h"
#include "model/parameters.h"

namespace latam {

// Learning rate for optimizer step `step` (0-based) of `total_steps`:
// linear warmup from lr/warmup_steps to lr over warmup_steps steps, then a
// cosine decay from lr to min_lr, reaching min_lr at the last step.
double LearningRate(const config::OptimizerConfig& o, int64_t step, int64_t total_steps);

// Factor that scales gradients of global norm `grad_norm` down to
// `max_norm` (1 when already below it, or when max_norm is 0).
float ClipFactor(double grad_norm, double max_norm);

struct OptimizerComms {
  Communicator* dp = nullptr;          // data-parallel replicas of this shard
  Communicator* norm_group = nullptr;  // ranks whose norm sums add up: model-parallel (ZeRO-0) or world (ZeRO-1)
};

class AdamWOptimizer {
 public:
  // The single-process optimizer (no data parallelism).
  AdamWOptimizer(ParameterSet* params, const config::OptimizerConfig& config);
  // params must be padded to a multiple of comms.dp->size() for ZeRO-1.
  AdamWOptimizer(ParameterSet* params, const config::OptimizerConfig& config, int zero_stage, OptimizerComms comms);

  // Sums the gradients over data parallelism (ZeRO-1: into this rank's
  // shares), bucket by bucket as their tensors are declared final:
  //   BeginGradientReduction(); GradientsFinal(...) for every tensor exactly
  //   once; FinishGradientReduction().
  // Every replica must declare tensors in the same order (the same schedule
  // does). ReduceGradients() does all three at once.
  void BeginGradientReduction();
  void GradientsFinal(const std::vector<size_t>& tensors);
  void FinishGradientReduction();
  void ReduceGradients();
  // The global gradient norm (after ReduceGradients).
  double GradNorm();
  // Multiplies the (reduced) gradients by grad_factor, applies AdamW with
  // learning rate `lr`, and (ZeRO-1) all-gathers the parameters.
  void Step(float lr, float grad_factor);
  int64_t step() const { return step_; }
  // Restores the step counter (bias correction) when resuming.
  void set_step(int64_t step) { step_ = step; }
  int zero_stage() const { return zero_stage_; }

  // The Adam moments this rank keeps, one entry per piece of a parameter
  // tensor: flat elements [begin, end) of the parameter arena (ZeRO-0: every
  // tensor whole; ZeRO-1: the pieces inside this rank's bucket shares) and
  // their exp_avg / exp_avg_sq storage. Checkpoints save and restore them in
  // place.
  struct MomentSlice {
    size_t tensor;
    int64_t begin, end;
    float* exp_avg;
    float* exp_avg_sq;
  };
  std::vector<MomentSlice> Moments() const;
  // Sets every moment to zero (a fresh optimizer).
  void ResetMoments();

 private:
  // A piece of one tensor that this rank updates.
  struct Segment {
    size_t tensor;
    int64_t begin, end;  // flat element range of the parameter arena
    int64_t owned_at;    // its first element in the owned gradients and moments
  };
  void Init();
  // The summed gradients this rank updates from: the gradient arena (ZeRO-0)
  // or its bucket shares, in bucket order (ZeRO-1).
  Tensor OwnedGrads() const;
  void GatherParameters();  // ZeRO-1: all-gathers every bucket, then refreshes the compute copy
  void BuildDeviceTable();  // CUDA only

  ParameterSet* params_;
  config::OptimizerConfig config_;
  int zero_stage_ = 0;
  std::unique_ptr<SelfCommunicator> self_dp_, self_norm_;
  OptimizerComms comms_;
  std::unique_ptr<GradientReducer> reducer_;  // owns the owned-element bookkeeping
  int64_t owned_size_ = 0;                    // elements this rank updates
  std::vector<Segment> segments_;
  Arena exp_avg_, exp_avg_sq_, slice_grads_;  // over the owned elements (slice_grads_: ZeRO-1 only)
  Arena device_segments_, norm_scratch_;       // CUDA: segment table; norm partials and sum
  int64_t step_ = 0;
};

}  // namespace latam
