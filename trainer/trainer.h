// The training loop of latam-train.
//
// Every rank builds the process grid (parallel/grid.h) and its Engine
// (trainer/engine.h) from the validated config, opens the datasets, and runs
// train.steps steps. Step s consumes samples [s*G, (s+1)*G) of the mixture
// sampler (data/sampler.h; G = train.global_batch_size); the reported loss
// is the mean over all G*seq_len tokens. Rank 0 writes metrics.jsonl, the
// TensorBoard file and one log line per train.log_every steps; every
// train.eval_every steps the mean loss on train.eval_samples windows of each
// data.eval dataset is logged as eval_loss/<name> (and their token-weighted
// mean as eval_loss).
//
// Checkpoints (checkpoint/state.h): every train.save_every steps and at the
// end the state is saved asynchronously to run_dir/checkpoints/step_XXXXXXXX;
// on SIGTERM or SIGUSR1 the loop finishes its step, saves, and Run returns
// a Preempted status (exit code 3). At start the run resumes from its own
// checkpoints/latest (--resume auto), a given checkpoint (--resume DIR), or
// starts from train.init_from (continued pretraining).
//
// Bad steps (trainer/health.h): a step the engine skipped is logged with
// its reason; after train.max_skipped_steps skips in a row the run reloads
// its newest checkpoint in place, marks the skipped steps' samples, and
// goes on from the checkpoint's step (a step starting inside a marked range
// starts at its end). Every train.straggler_every steps rank 0 logs the
// slowest rank's step time against the median.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "checkpoint/state.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "core/status.h"
#include "parallel/grid.h"
#include "parallel/mpi_env.h"
#include "trainer/config.h"
#include "trainer/compute_device.h"
#include "trainer/engine.h"
#include "trainer/health.h"
#include "trainer/metrics.h"

namespace latam {

class Trainer {
 public:
  // Validates the config against the world, builds the grid and the engine,
  // opens the data, loads the checkpoint it resumes from and then (rank 0)
  // opens the run directory: nothing is written there before every check
  // passed. Collective: when any rank found an error, every rank returns the
  // lowest failing rank's (parallel/agree_status.h).
  // `resume` is "auto", "none" or a checkpoint directory (latam-train --resume).
  static Result<std::unique_ptr<Trainer>> Create(const Config& config, const MpiSession& mpi,
                                                 const std::string& resume = "auto");

  // Trains up to step train.steps. Returns a Preempted status (after saving)
  // when a signal was noted by WatchPreemptionSignals (trainer/signals.h).
  Status Run();
  // Mean loss per eval dataset (in config order) and their token-weighted mean.
  Result<std::vector<double>> Evaluate();
  // The error Engine::Step or Evaluate returned, agreed over every rank.
  Status AgreeOnEngineError(const Status& status);
  // What a checkpoint holds of this rank: the model's parameters and moments;
  // with a LoRA adapter the base's parameters, then (with_adapter) the
  // adapter's parameters and moments.
  std::vector<StatePiece> Pieces(bool with_adapter);

  Engine& engine() { return *engine_; }
  // The step training starts from (after a resume) and the samples consumed.
  int64_t start_step() const { return start_step_; }
  uint64_t consumed_samples() const { return consumed_; }

 private:
  Trainer(const Config& config, const MpiSession& mpi) : config_(config), mpi_(mpi) {}
  Status Init(const std::string& resume);
  // Opens the datasets; writes nothing.
  Status OpenData();
  // Rank 0 creates run_dir and writes config.textproto, metrics.jsonl and
  // the TensorBoard file: only once the config, data and checkpoint passed.
  Status OpenRunDir();
  // The world communicator: MPI for the CPU; for CUDA, binds the rank's GPU
  // (device_) and returns an NCCL communicator ordered after its stream.
  Result<std::unique_ptr<Communicator>> OpenWorld();
  Status Restore(const std::string& resume);
  // Collective: loads `reader`'s state into the engine as it stands (the
  // parameters, and with kAll the optimizer state).
  Result<ckpt::LoadResult> LoadInPlace(ckpt::CheckpointReader& reader, ckpt::LoadWhat what);
  // After train.max_skipped_steps bad steps in a row ending with `last`:
  // reloads the newest checkpoint this run saved or resumed from, marks the
  // bad steps' samples as skipped, and returns the step to go on from.
  // Fails without a checkpoint, and on a fourth roll-back in a row to the
  // same checkpoint step.
  Result<int64_t> RollBack(const StepResult& last);
  void LogSkipped(const StepResult& r);
  // Collective: gathers every rank's rank_ms; rank 0 logs the slowest.
  void ReportStragglers(const StepResult& r);
  Status StartSave(int64_t step);
  Status PollSave(bool wait);
  void Log(const StepResult& r);

  Config config_;
  const MpiSession& mpi_;
  std::unique_ptr<ComputeDevice> device_;  // train.device=cuda; outlives the grid and the engine
  std::unique_ptr<ProcessGrid> grid_;
  std::unique_ptr<Engine> engine_;
  std::vector<std::unique_ptr<data::TokenDataset>> train_data_;
  std::unique_ptr<data::MixtureSampler> sampler_;
  std::vector<std::unique_ptr<data::TokenDataset>> eval_data_;
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<ckpt::CheckpointSaver> saver_;
  int64_t start_step_ = 0;
  int64_t last_saved_step_ = -1;
  uint64_t consumed_ = 0;
  SkippedSamples skipped_;
  std::string rollback_dir_;  // "" until the run resumes (everything) or saves
  // With train.max_skipped_steps 0: skipped steps in a row that stop the run.
  static constexpr int kSkippedStepsWithoutRollBack = 10;
  // Roll-backs to one checkpoint step (in a row, in this process) before
  // the run stops instead.
  static constexpr int kRollBacksPerCheckpoint = 3;
  int64_t rollback_target_step_ = -1;
  int rollbacks_to_target_ = 0;
};

}  // namespace latam
