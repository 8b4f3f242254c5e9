// Engine: one rank's part of a distributed training job. It owns the model
// shard, the pipeline executor and the optimizer, built from the config and
// the process grid, and runs optimizer steps and evaluations.
//
// A step (global batch G samples of seq_len tokens, D data-parallel ranks,
// micro-batches of b samples; with context parallelism the C ranks of a
// context group take the same samples, each its rows of every sequence,
// parallel/context_parallel.h):
//   1. data-parallel rank r takes samples [c + r G/D, c + (r+1) G/D) in
//      m = G / (D b) micro-batches, c = the samples consumed before the
//      step (s G when G never changed; data/sampler.h);
//   2. the pipeline schedule runs their forward and backward passes, every
//      gradient scaled by 1 / (G seq_len) so that the sum over all ranks is
//      the gradient of the mean token loss;
//   3. during the last micro-batch's backward pass, each layer's gradients,
//      once complete (replicated KV heads summed over their replicas), go to
//      the optimizer's bucketed data-parallel reduction, which overlaps with
//      the rest of the backward pass; a tied embedding split over the first
//      and last stages sums its two copies after the pipeline, then joins it;
//   4. the optimizer takes the global norm; the loss is all-reduced; the
//      bad-step detector (trainer/health.h) judges the two and the ranks
//      agree on its verdict; a bad step stops here (no update, see Step),
//      a good one is clipped and updated (model/optimizer.h); under ZeRO-1 it then starts all-gathering the
//      updated weights bucket by bucket, and the next step's forward waits
//      for each bucket when it reaches its weights (LlamaModel's
//      OnWeightsNeeded hook); Evaluate completes them first.
// Any layout therefore computes the same losses and parameters as one
// process, up to floating-point summation order.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/status.h"
#include "parallel/grid.h"
#include "trainer/config.h"
#include "trainer/health.h"
#include "model/model.h"
#include "model/optimizer.h"
#include "parallel/pipeline.h"

namespace latam {

struct StepResult {
  int64_t step = 0;  // steps completed, skipped ones included
  uint64_t first_sample = 0;
  // kUpdate, or why the step left the weights as they were.
  StepVerdict verdict = StepVerdict::kUpdate;
  double loss = 0.0;
  double grad_norm = 0.0;
  double lr = 0.0;
  double step_ms = 0.0;
  // This rank's part of step_ms: its forward, backward and gradient
  // reduction, before the world-wide reductions that end every step
  // (differs between ranks; the stragglers' measure).
  double rank_ms = 0.0;
  double tokens_per_s = 0.0;
  // The share of causal attention's (query, key) pairs the step computed:
  // with data.document_mask, sum over windows and documents of L (L + 1) / 2
  // over G T (T + 1) / 2 (block-causal attention costs the sum of squared
  // document lengths, not T^2); 1 without.
  double attention_fraction = 1.0;
};

class Engine {
 public:
  // Fills ids and targets (seq_len each) of global sample `index`.
  // Fills sample `index`'s ids and targets (seq_len each) and, when
  // doc_start is not null (data.document_mask), its document starts
  // (TokenDataset::ReadWindow).
  using SampleFn = std::function<Status(uint64_t index, int32_t* ids, int32_t* targets, int32_t* doc_start)>;

  // The grid's shape must match the config's layout (ValidateConfig first).
  // With train.device=cuda, `stream` is the rank's compute stream (a
  // cudaStream_t from ComputeDevice, bound to its GPU; the grid's
  // communicators must be NCCL ones ordered after it); otherwise nullptr.
  Engine(const Config& config, ProcessGrid* grid, Stream stream = Stream());

  // One optimizer step on global samples [first_sample, first_sample + G)
  // (step = the number of steps already taken: it sets the learning rate).
  // Every rank returns the same StepResult (rank_ms aside). A step whose
  // loss or gradient norm the detector rejects (health(): non-finite, or a
  // spike) returns its verdict and leaves the parameters, the Adam moments
  // and the optimizer's step counter untouched; its result still counts as
  // a step (r.step = step + 1).
  Result<StepResult> Step(int64_t step, uint64_t first_sample, const SampleFn& sample);
  // Mean token loss over samples [0, n) of `sample` (targets < 0 are
  // ignored), split over data-parallel ranks; every rank returns it.
  Result<double> Evaluate(int64_t n, const SampleFn& sample);

  LlamaModel& model() { return *model_; }
  // The optimizer of the trained parameters: the model's, or with a LoRA
  // adapter (config adapter { kind: LORA }) the adapter's only.
  AdamWOptimizer& optimizer() { return *optimizer_; }
  const Config& config() const { return config_; }
  ProcessGrid& grid() { return *grid_; }
  int micro_batches() const { return micro_batches_; }
  // The bad-step detector's window and skip count (checkpointed by the trainer).
  BadStepDetector& health() { return health_; }
  // After Step or Evaluate failed: true when this rank's own data was fine
  // and it stopped only because another rank's was not. Every rank fails the
  // same call together; the caller then agrees on the failing ranks' status
  // over MPI (AgreeOnStatus, passing Ok on the ranks where this is true), so
  // that the message of the rank that found the error reaches the user.
  bool stopped_by_other_rank() const { return stopped_by_other_rank_; }

 private:
  Config config_;
  ProcessGrid* grid_;
  std::unique_ptr<Communicator> kv_group_, embedding_group_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<PipelineExecutor> executor_;
  std::unique_ptr<AdamWOptimizer> optimizer_;
  int micro_batches_ = 0;
  BadStepDetector health_;
  bool stopped_by_other_rank_ = false;
  // With a LoRA adapter: every tensor index of the adapter's parameter set
  // (empty without one).
  std::vector<size_t> adapter_tensors_;
  // This rank's share of each sequence, and staging for whole windows
  // under context parallelism.
  ContextSplit context_;
  std::vector<int32_t> window_ids_, window_targets_, window_docs_;
  // Sample `index`'s rows this rank holds (all of them without context parallelism).
  Status FetchLocal(const SampleFn& sample, uint64_t index, int32_t* ids, int32_t* targets, int32_t* doc_start);
  size_t tied_embedding_ = 0;  // its parameter index, when embedding_group_ exists
};

}  // namespace latam
