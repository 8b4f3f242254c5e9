// AdamW over a rank's ParameterSet with data-parallel gradient reduction
// (ZeRO stage 0, 1 or 2), the global gradient norm, clipping, and the
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
//   replica updates all its parameters: the ParameterSet's full f32 weights
//   are the master weights, Adam moments for all of them.
// ZeRO-1 (Megatron's distributed optimizer): each bucket (padded to a
//   multiple of D elements) is reduce-scattered in place, so replica r holds
//   the summed gradients of share r of every bucket where its own were. The
//   optimizer keeps, for
//   those owned elements only, the f32 master weights (the master shard)
//   and the Adam moments. Step() updates the master shard, writes it into
//   the owned range of the compute copy (rounded to bf16 on GPUs with bf16
//   compute), and all-gathers the compute copy bucket by bucket in the
//   compute dtype, non-blocking: the next forward waits per bucket
//   (WaitForWeights, called by LlamaModel::OnWeightsNeeded) only when it
//   reaches weights still in flight. FinishParameterGather() completes them
//   all (before anything outside a forward reads the compute copy).
//   The ParameterSet then keeps no f32 master of its own
//   (ParameterPlacement::fp32_weights false): with bf16 compute only the
//   bf16 copy exists; with f32 compute its f32 array is the compute copy,
//   and the master shard is a separate copy of the owned part.
// ZeRO-2: as ZeRO-1, but the ParameterSet has no full gradient arena
//   (ParameterPlacement::pooled_grads: two bucket-sized slots). The model
//   asks for a bucket before writing its gradients (GradientsNeeded, which
//   zeroes its slot) and declares it final after every micro-batch; each
//   bucket is then reduce-scattered in place and the share added into the
//   optimizer's owned gradient buffer (GradientReducer,
//   parallel/data_parallel.h). The gradient traffic is the micro-batch count
//   times ZeRO-1's; the gradient memory is the pool plus 4/D bytes.
// Bytes per parameter per rank (N parameters, D replicas; MemoryPerRank):
//             weights            gradients          master   moments
//   ZeRO-0    4 (+2 bf16 copy)   4                  -        8
//   ZeRO-1    2 bf16 / 4 f32     4                  4/D      8/D
//   ZeRO-2    2 bf16 / 4 f32     4/D + bucket pool  4/D      8/D
// so with bf16 compute 18 bytes (ZeRO-0), 6 + 12/D (ZeRO-1, as Megatron's
// distributed optimizer) and 2 + 16/D plus the pool (ZeRO-2).
// Gradient norm: sum of squares of every parameter counted once
//   (ParamSpec::counted excludes replicas: TP copies of the norm gains,
//   replicated KV heads, the tied embedding's copy), summed over the
//   model-parallel group (ZeRO-0; data-parallel replicas hold equal sums) or
//   over the whole world (ZeRO-1/2; each replica holds a different slice).
// Weight decay applies to the tensors whose ParamSpec says so.
//
// Device. The master shard and the moments live where the ParameterSet does.
// On CUDA the norm and the update are one multi-tensor launch each over a
// table of this rank's segments (kernels/cuda/optimizer.h), enqueued on the
// parameters' stream; the update also writes the bf16 compute copy of the
// updated elements (ZeRO-0: all of them; ZeRO-1/2: the owned ones, which
// the all-gather then spreads). Only GradNorm() waits for the device (it needs
// the norm on the host to clip).
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
  Communicator* norm_group = nullptr;  // ranks whose norm sums add up: model-parallel (ZeRO-0) or world (ZeRO-1/2)
};

// Bytes one rank allocates for the weights and the optimizer state.
struct OptimizerMemory {
  int64_t weights = 0;  // full copies in the ParameterSet: f32 and / or the bf16 compute copy
  int64_t grads = 0;    // the f32 gradient arena (ZeRO-2: the bucket pool) and the owned shard (ZeRO-2)
  int64_t master = 0;   // the f32 master shard (ZeRO-1/2; ZeRO-0's master is in `weights`)
  int64_t moments = 0;  // exp_avg and exp_avg_sq
  int64_t total() const { return weights + grads + master + moments; }
};

class AdamWOptimizer {
 public:
  // What a ParameterSet of padded_numel() elements (padded for `dp`
  // replicas) and its optimizer allocate per rank under `zero_stage` (0, 1
  // or 2) with `compute_dtype` (kF32 or kBF16). ZeRO-2 needs the pooled
  // gradient arena's elements (ParameterSet::GradArenaElems).
  static OptimizerMemory MemoryPerRank(int64_t padded_numel, int dp, int zero_stage, DType compute_dtype,
                                       int64_t grad_arena_elems = -1);

  // The single-process optimizer (no data parallelism).
  AdamWOptimizer(ParameterSet* params, const config::OptimizerConfig& config);
  // params must be padded to a multiple of comms.dp->size() for ZeRO-1/2,
  // placed without f32 weights (ParameterPlacement::fp32_weights false) when
  // its compute dtype is bf16, and with pooled gradients exactly for ZeRO-2. The master shard starts as the owned part of
  // the set's weights when it has f32 weights, zero otherwise (then call
  // InitWeights or load a checkpoint).
  AdamWOptimizer(ParameterSet* params, const config::OptimizerConfig& config, int zero_stage, OptimizerComms comms);

  // Initialises the weights as ParameterSet::InitWeights draws them: ZeRO-0
  // the set's own; ZeRO-1 the master shard, then the compute copy (the
  // shard rounded to the compute dtype and all-gathered, so every replica
  // holds the same).
  void InitWeights(uint64_t seed);
  // After the master weights were written other than by Step() (checkpoint
  // load into StatePieces): refreshes the compute copy from them (ZeRO-0:
  // ParameterSet::SyncCompute; ZeRO-1: shard into the copy, all-gather) and
  // waits.
  void WeightsLoaded();
  // Waits for the parameter all-gathers of the buckets holding `tensors`
  // (ZeRO-1; a no-op otherwise or when they are complete).
  void WaitForWeights(const std::vector<size_t>& tensors);
  // Completes every parameter all-gather in flight.
  void FinishParameterGather();

  // Sums the gradients over data parallelism (ZeRO-1/2: into this rank's
  // shares), bucket by bucket as their tensors are declared final:
  //   BeginGradientReduction(); per micro-batch GradientsNeeded(...) before
  //   the model writes a tensor's gradient (ZeRO-2; a no-op otherwise) and
  //   GradientsFinal(..., last) once it is complete (ZeRO-0/1 act on the
  //   last micro-batch's declarations only); FinishGradientReduction().
  // Every replica must declare tensors in the same order (the same schedule
  // does). ReduceGradients() does all three at once (not for ZeRO-2, whose
  // gradients exist only bucket by bucket).
  void BeginGradientReduction();
  void GradientsNeeded(const std::vector<size_t>& tensors);
  void GradientsFinal(const std::vector<size_t>& tensors, bool last_micro_batch = true);
  void FinishGradientReduction();
  void ReduceGradients();
  // The global gradient norm (after ReduceGradients).
  double GradNorm();
  // Multiplies the (reduced) gradients by grad_factor, applies AdamW with
  // learning rate `lr`, and (ZeRO-1) writes the updated shard into the
  // compute copy and starts its all-gather (not waited for: see above).
  void Step(float lr, float grad_factor);
  int64_t step() const { return step_; }
  // Restores the step counter (bias correction) when resuming.
  void set_step(int64_t step) { step_ = step; }
  int zero_stage() const { return zero_stage_; }

  // The Adam moments this rank keeps, one entry per piece of a parameter
  // tensor: flat elements [begin, end) of the parameter arena (ZeRO-0: every
  // tensor whole; ZeRO-1: the pieces inside this rank's bucket shares) and
  // their exp_avg / exp_avg_sq storage, and (ZeRO-1) the master weights of
  // the piece (nullptr under ZeRO-0, whose master is the ParameterSet's).
  // Checkpoints save and restore them in place.
  struct MomentSlice {
    size_t tensor;
    int64_t begin, end;
    float* exp_avg;
    float* exp_avg_sq;
    float* master;
  };
  std::vector<MomentSlice> Moments() const;
  // Sets every moment to zero (a fresh optimizer).
  void ResetMoments();

  // Bytes of this optimizer's arenas: the master shard, the moments, the
  // owned gradient shard of ZeRO-2 (MemoryPerRank's master, moments, grads
  // beyond the ParameterSet's).
  size_t master_bytes() const { return master_.size(); }
  size_t moment_bytes() const { return exp_avg_.size() + exp_avg_sq_.size(); }
  size_t grad_shard_bytes() const { return owned_grads_.size(); }
  int64_t owned_size() const { return owned_size_; }

 private:
  // A piece of one tensor that this rank updates.
  struct Segment {
    size_t tensor;
    size_t bucket;
    int64_t begin, end;  // flat element range of the parameter arena
    int64_t owned_at;    // its first element in the master shard and moments
    int64_t grad_at;     // its first element in ReducedGrads()
  };
  void Init();
  // The summed gradients this rank updates from: the gradient arena
  // (ZeRO-0/1, in place) or the owned buffer (ZeRO-2); a segment's part.
  Tensor ReducedGrads() const;
  Tensor SegmentGrads(const Segment& s) const;
  // ZeRO-1: writes the master shard into the compute copy's owned ranges
  // (cast when bf16; `bf16_done`: the update kernel already wrote them).
  void WriteShardToCompute(bool bf16_done);
  Tensor Master() const;
  void BuildDeviceTable();  // CUDA only

  ParameterSet* params_;
  config::OptimizerConfig config_;
  int zero_stage_ = 0;
  std::unique_ptr<SelfCommunicator> self_dp_, self_norm_;
  OptimizerComms comms_;
  std::unique_ptr<GradientReducer> reducer_;  // owns the owned-element bookkeeping
  int64_t owned_size_ = 0;                    // elements this rank updates
  std::vector<Segment> segments_;
  Arena exp_avg_, exp_avg_sq_, owned_grads_;  // over the owned elements (owned_grads_: ZeRO-2 only)
  Arena master_;                               // ZeRO-1/2: f32 master weights of the owned elements
  Arena device_segments_, norm_scratch_;       // CUDA: segment table; norm partials and sum
  int64_t step_ = 0;
};

}  // namespace latam
