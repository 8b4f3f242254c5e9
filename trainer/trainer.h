// The training loop.
//
// Step s consumes samples [s*G, (s+1)*G) of the mixture sampler
// (data/sampler.h; G = train.global_batch_size) in micro-batches of
// train.micro_batch_size,
// accumulating gradients; the reported loss is the mean over all G*seq_len
// tokens. Then: global gradient norm, clipping to optimizer.grad_clip,
// AdamW with the warmup + cosine learning rate. Rank 0 writes metrics.jsonl,
// the TensorBoard file and one log line per train.log_every steps; every
// train.eval_every steps the mean loss on train.eval_samples windows of each
// data.eval dataset is logged as eval_loss/<name> (and their token-weighted
// mean as eval_loss).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "data/dataset.h"
#include "data/sampler.h"
#include "kernels/status.h"
#include "parallel/mpi_env.h"
#include "trainer/config.h"
#include "trainer/metrics.h"
#include "trainer/model.h"
#include "trainer/optimizer.h"

namespace latam {

struct StepResult {
  int64_t step = 0;  // optimizer steps completed
  double loss = 0.0;
  double grad_norm = 0.0;
  double lr = 0.0;
  double step_ms = 0.0;
  double tokens_per_s = 0.0;
};

class Trainer {
 public:
  // Validates the config against the world, opens the data, creates the run
  // directory and builds the model. Errors are kInvalidInput naming the field
  // or file.
  static Result<std::unique_ptr<Trainer>> Create(const Config& config, const MpiSession& mpi);

  // Trains for train.steps steps.
  Status Run();
  // One optimizer step (exposed for tests).
  Result<StepResult> Step();
  // Mean loss per eval dataset (in config order) and their token-weighted mean.
  Result<std::vector<double>> Evaluate();

  LlamaModel& model() { return *model_; }

 private:
  Trainer(const Config& config, const MpiSession& mpi) : config_(config), mpi_(mpi) {}
  Status Init();
  void Log(const StepResult& r);

  Config config_;
  const MpiSession& mpi_;
  std::vector<std::unique_ptr<data::TokenDataset>> train_data_;
  std::unique_ptr<data::MixtureSampler> sampler_;
  std::vector<std::unique_ptr<data::TokenDataset>> eval_data_;
  std::unique_ptr<LlamaModel> model_;
  std::unique_ptr<AdamWOptimizer> optimizer_;
  std::unique_ptr<MetricsWriter> metrics_;
  std::vector<int32_t> inputs_, targets_;
  int64_t step_ = 0;
};

}  // namespace latam
