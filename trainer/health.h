// Training health: which steps may update the weights, which samples a
// roll-back skips, and which rank is slowest. Pure bookkeeping, no
// communication: the engine and the trainer feed it values every rank
// already agrees on.
//
// BadStepDetector (train.spike_zscore, spike_window): a step is judged from
// its loss and global gradient norm before the optimizer runs.
//   - a loss or gradient norm that is NaN or infinite: skip, always;
//   - with spike_zscore z > 0, once the window holds spike_window updated
//     steps: skip when x > mean + z * std for the loss or for the gradient
//     norm (mean and population standard deviation over the window, oldest
//     first; a window with std 0 judges nothing);
//   - otherwise update.
// Only updated steps enter the window (a spike must not raise the bar for
// the next one). Skipped steps in a row are counted, with the first sample
// of the first of them, for the trainer's roll-back.
//
// SkippedSamples: the sorted, disjoint sample ranges a roll-back marked
// (DataState.skipped): a step whose first sample falls in [begin, end)
// starts at end instead.
//
// Stragglers: SummarizeStepTimes reduces the ranks' step times to the
// slowest rank, its ratio to the median, and the median.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "checkpoint/checkpoint.pb.h"
#include "core/status.h"

namespace latam {

// Why a step did (not) update. Ordered by severity: ranks agree on the
// maximum of their verdicts.
enum class StepVerdict : int {
  kUpdate = 0,
  kLossSpike = 1,
  kGradNormSpike = 2,
  kNonFiniteGradNorm = 3,
  kNonFiniteLoss = 4,
};
// "loss_spike", "grad_norm_spike", "nonfinite_grad_norm", "nonfinite_loss"
// ("" for kUpdate): the skip_reason of metrics.jsonl.
const char* SkipReasonName(StepVerdict verdict);

class BadStepDetector {
 public:
  // zscore <= 0 turns spike detection off (non-finite values are still
  // skipped); window >= 1.
  BadStepDetector(double zscore, int window);

  StepVerdict Judge(double loss, double grad_norm) const;
  // Records the step that started at `first_sample` with the verdict every
  // rank agreed on: an update joins the window and ends a run of skips; a
  // skip extends it.
  void Record(StepVerdict verdict, double loss, double grad_norm, uint64_t first_sample);

  // Skipped steps in a row, and the first sample of the first of them
  // (meaningful while skipped_in_row() > 0).
  int skipped_in_row() const { return skipped_in_row_; }
  uint64_t skipped_from_sample() const { return skipped_from_sample_; }
  int64_t rollbacks() const { return rollbacks_; }

  // The checkpointed state (Checkpoint.health) and back.
  ckpt::TrainingHealth State() const;
  void Restore(const ckpt::TrainingHealth& state);
  // After a roll-back to a checkpoint whose state was `restored`: its window,
  // no skips in a row, one more roll-back than before.
  void RolledBack(const ckpt::TrainingHealth& restored);

 private:
  // Whether x lies more than zscore_ standard deviations above the mean of `recent`.
  bool IsSpike(double x, const std::deque<double>& recent) const;

  double zscore_;
  size_t window_;
  std::deque<double> recent_loss_, recent_grad_norm_;  // oldest first
  int skipped_in_row_ = 0;
  uint64_t skipped_from_sample_ = 0;
  int64_t rollbacks_ = 0;
};

class SkippedSamples {
 public:
  // Adds [begin, end) (begin < end), merging it with ranges it touches.
  void Add(uint64_t begin, uint64_t end);
  // Where a step that would start at `first_sample` starts.
  uint64_t NextStart(uint64_t first_sample) const;

  void ToProto(ckpt::DataState* data) const;
  // Fails on an empty range (a damaged checkpoint).
  Status FromProto(const ckpt::DataState& data);
  const std::vector<ckpt::SampleRange>& ranges() const { return ranges_; }

 private:
  std::vector<ckpt::SampleRange> ranges_;  // sorted, disjoint, not touching
};

struct StragglerSummary {
  int rank = 0;           // the slowest rank (the lowest such rank on a tie)
  double ratio = 1.0;     // its time over the median (1 when the median is 0)
  double median_ms = 0.0; // the median (the mean of the middle two for an even count)
};
// step_ms[r]: rank r's step time; at least one entry.
StragglerSummary SummarizeStepTimes(const std::vector<double>& step_ms);

}  // namespace latam
