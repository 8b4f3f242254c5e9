// AdamW over a ParameterSet, the learning-rate schedule, and global
// gradient-norm clipping.
//
// The optimizer keeps exp_avg and exp_avg_sq in two arenas laid out like the
// parameters (one flat buffer each, same offsets). Weight decay applies to
// the tensors whose ParamSpec says so (matrices), not to norm gains.
#pragma once

#include <cstdint>

#include "kernels/arena.h"
#include "trainer/config.pb.h"
#include "trainer/parameters.h"

namespace latam {

// Learning rate for optimizer step `step` (0-based) of `total_steps`:
// linear warmup from lr/warmup_steps to lr over warmup_steps steps, then a
// cosine decay from lr to min_lr, reaching min_lr at the last step.
double LearningRate(const config::OptimizerConfig& o, int64_t step, int64_t total_steps);

// Factor that scales gradients of global norm `grad_norm` down to
// `max_norm` (1 when already below it, or when max_norm is 0).
float ClipFactor(double grad_norm, double max_norm);

class AdamWOptimizer {
 public:
  AdamWOptimizer(ParameterSet* params, const config::OptimizerConfig& config);

  // One update with learning rate `lr`, after multiplying every gradient by
  // grad_factor (the clipping factor). Increments step().
  void Step(float lr, float grad_factor);
  int64_t step() const { return step_; }

  Tensor exp_avg(size_t i) const { return params_->table().Get(exp_avg_, i); }
  Tensor exp_avg_sq(size_t i) const { return params_->table().Get(exp_avg_sq_, i); }

 private:
  ParameterSet* params_;
  config::OptimizerConfig config_;
  Arena exp_avg_;
  Arena exp_avg_sq_;
  int64_t step_ = 0;
};

}  // namespace latam
