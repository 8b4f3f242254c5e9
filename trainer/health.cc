#include "trainer/health.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace latam {

const char* SkipReasonName(StepVerdict verdict) {
  switch (verdict) {
    case StepVerdict::kUpdate:
      return "";
    case StepVerdict::kLossSpike:
      return "loss_spike";
    case StepVerdict::kGradNormSpike:
      return "grad_norm_spike";
    case StepVerdict::kNonFiniteGradNorm:
      return "nonfinite_grad_norm";
    case StepVerdict::kNonFiniteLoss:
      return "nonfinite_loss";
  }
  return "";
}

BadStepDetector::BadStepDetector(double zscore, int window) : zscore_(zscore), window_(static_cast<size_t>(window)) {
  LATAM_CHECK(window >= 1, "spike window " << window);
}

bool BadStepDetector::IsSpike(double x, const std::deque<double>& recent) const {
  if (zscore_ <= 0 || recent.size() < window_) return false;
  double mean = 0.0;
  for (double v : recent) mean += v;
  mean /= static_cast<double>(recent.size());
  double var = 0.0;
  for (double v : recent) var += (v - mean) * (v - mean);
  const double std = std::sqrt(var / static_cast<double>(recent.size()));
  return std > 0 && x > mean + zscore_ * std;
}

StepVerdict BadStepDetector::Judge(double loss, double grad_norm) const {
  if (!std::isfinite(loss)) return StepVerdict::kNonFiniteLoss;
  if (!std::isfinite(grad_norm)) return StepVerdict::kNonFiniteGradNorm;
  if (IsSpike(loss, recent_loss_)) return StepVerdict::kLossSpike;
  if (IsSpike(grad_norm, recent_grad_norm_)) return StepVerdict::kGradNormSpike;
  return StepVerdict::kUpdate;
}

void BadStepDetector::Record(StepVerdict verdict, double loss, double grad_norm, uint64_t first_sample) {
  if (verdict != StepVerdict::kUpdate) {
    if (skipped_in_row_++ == 0) skipped_from_sample_ = first_sample;
    return;
  }
  skipped_in_row_ = 0;
  recent_loss_.push_back(loss);
  recent_grad_norm_.push_back(grad_norm);
  if (recent_loss_.size() > window_) recent_loss_.pop_front();
  if (recent_grad_norm_.size() > window_) recent_grad_norm_.pop_front();
}

ckpt::TrainingHealth BadStepDetector::State() const {
  ckpt::TrainingHealth h;
  for (double v : recent_loss_) h.add_recent_loss(v);
  for (double v : recent_grad_norm_) h.add_recent_grad_norm(v);
  h.set_skipped_in_row(skipped_in_row_);
  h.set_skipped_from_sample(skipped_from_sample_);
  h.set_rollbacks(rollbacks_);
  return h;
}

void BadStepDetector::Restore(const ckpt::TrainingHealth& state) {
  // A checkpoint saved with a longer window keeps its newest values.
  auto newest = [this](const google::protobuf::RepeatedField<double>& values) {
    const size_t n = static_cast<size_t>(values.size());
    const size_t from = n > window_ ? n - window_ : 0;
    return std::deque<double>(values.begin() + static_cast<int>(from), values.end());
  };
  recent_loss_ = newest(state.recent_loss());
  recent_grad_norm_ = newest(state.recent_grad_norm());
  skipped_in_row_ = state.skipped_in_row();
  skipped_from_sample_ = state.skipped_from_sample();
  rollbacks_ = state.rollbacks();
}

void BadStepDetector::RolledBack(const ckpt::TrainingHealth& restored) {
  const int64_t rollbacks = rollbacks_ + 1;
  Restore(restored);
  skipped_in_row_ = 0;
  rollbacks_ = rollbacks;
}

void SkippedSamples::Add(uint64_t begin, uint64_t end) {
  LATAM_CHECK(begin < end, "skipped samples [" << begin << ", " << end << ")");
  std::vector<ckpt::SampleRange> merged;
  bool placed = false;
  for (const ckpt::SampleRange& r : ranges_) {
    if (r.end() < begin) {
      merged.push_back(r);
    } else if (r.begin() > end) {
      if (!placed) {
        ckpt::SampleRange n;
        n.set_begin(begin);
        n.set_end(end);
        merged.push_back(n);
        placed = true;
      }
      merged.push_back(r);
    } else {
      begin = std::min<uint64_t>(begin, r.begin());
      end = std::max<uint64_t>(end, r.end());
    }
  }
  if (!placed) {
    ckpt::SampleRange n;
    n.set_begin(begin);
    n.set_end(end);
    merged.push_back(n);
  }
  ranges_ = std::move(merged);
}

uint64_t SkippedSamples::NextStart(uint64_t first_sample) const {
  for (const ckpt::SampleRange& r : ranges_) {
    if (first_sample >= r.begin() && first_sample < r.end()) return r.end();
  }
  return first_sample;
}

void SkippedSamples::ToProto(ckpt::DataState* data) const {
  data->clear_skipped();
  for (const ckpt::SampleRange& r : ranges_) *data->add_skipped() = r;
}

Status SkippedSamples::FromProto(const ckpt::DataState& data) {
  ranges_.clear();
  for (const ckpt::SampleRange& r : data.skipped()) {
    if (r.begin() >= r.end()) {
      return Status::InvalidInput("data.skipped: empty sample range [" + std::to_string(r.begin()) + ", " +
                                  std::to_string(r.end()) + ")");
    }
    Add(r.begin(), r.end());
  }
  return Status::Ok();
}

StragglerSummary SummarizeStepTimes(const std::vector<double>& step_ms) {
  LATAM_CHECK(!step_ms.empty(), "no step times");
  StragglerSummary s;
  s.rank = static_cast<int>(std::max_element(step_ms.begin(), step_ms.end()) - step_ms.begin());
  std::vector<double> sorted = step_ms;
  std::sort(sorted.begin(), sorted.end());
  const size_t n = sorted.size();
  s.median_ms = n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
  s.ratio = s.median_ms > 0 ? step_ms[static_cast<size_t>(s.rank)] / s.median_ms : 1.0;
  return s;
}

}  // namespace latam
