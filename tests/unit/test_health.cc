// The bad-step detector (z-score window, non-finite values, warm-up, its
// checkpointed state), the skipped sample ranges, the straggler summary and
// metrics.jsonl's text labels (trainer/health.h, trainer/metrics.h).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"
#include "trainer/health.h"
#include "trainer/metrics.h"

namespace latam {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Window {1, 2, 1, 2}: mean 1.5, population std 0.5; grad norms 10 x that.
BadStepDetector FilledDetector(double zscore) {
  BadStepDetector d(zscore, 4);
  for (int i = 0; i < 4; ++i) d.Record(StepVerdict::kUpdate, 1.0 + i % 2, 10.0 * (1.0 + i % 2), 0);
  return d;
}

TEST(BadStepDetectorTest, NonFiniteValuesAreAlwaysSkipped) {
  const BadStepDetector off(0.0, 4);  // spike detection off
  EXPECT_EQ(off.Judge(kNaN, 1.0), StepVerdict::kNonFiniteLoss);
  EXPECT_EQ(off.Judge(kInf, 1.0), StepVerdict::kNonFiniteLoss);
  EXPECT_EQ(off.Judge(1.0, kNaN), StepVerdict::kNonFiniteGradNorm);
  EXPECT_EQ(off.Judge(1.0, -kInf), StepVerdict::kNonFiniteGradNorm);
  EXPECT_EQ(off.Judge(kNaN, kNaN), StepVerdict::kNonFiniteLoss);
  EXPECT_EQ(off.Judge(1e30, 1e30), StepVerdict::kUpdate);
  EXPECT_STREQ(SkipReasonName(StepVerdict::kNonFiniteLoss), "nonfinite_loss");
  EXPECT_STREQ(SkipReasonName(StepVerdict::kGradNormSpike), "grad_norm_spike");
}

TEST(BadStepDetectorTest, JudgesSpikesOnlyOnceTheWindowIsFull) {
  BadStepDetector d(3.0, 4);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(d.Judge(1e6, 1e6), StepVerdict::kUpdate) << "warm-up, " << i << " steps seen";
    d.Record(StepVerdict::kUpdate, 1.0 + i % 2, 10.0 * (1.0 + i % 2), 0);
  }
  d.Record(StepVerdict::kUpdate, 2.0, 20.0, 0);
  EXPECT_EQ(d.Judge(1e6, 15.0), StepVerdict::kLossSpike);
}

TEST(BadStepDetectorTest, ZScoreThresholdOnLossAndGradNorm) {
  const BadStepDetector d = FilledDetector(3.0);
  EXPECT_EQ(d.Judge(3.0, 15.0), StepVerdict::kUpdate);  // exactly mean + 3 std is not above it
  EXPECT_EQ(d.Judge(3.001, 15.0), StepVerdict::kLossSpike);
  EXPECT_EQ(d.Judge(1.5, 30.0), StepVerdict::kUpdate);
  EXPECT_EQ(d.Judge(1.5, 30.01), StepVerdict::kGradNormSpike);
  EXPECT_EQ(d.Judge(-100.0, 0.0), StepVerdict::kUpdate);  // far below is fine
  EXPECT_EQ(FilledDetector(0.0).Judge(1e6, 1e6), StepVerdict::kUpdate);
}

TEST(BadStepDetectorTest, ConstantWindowJudgesNothing) {
  BadStepDetector d(3.0, 2);
  d.Record(StepVerdict::kUpdate, 1.0, 1.0, 0);
  d.Record(StepVerdict::kUpdate, 1.0, 1.0, 0);
  EXPECT_EQ(d.Judge(5.0, 5.0), StepVerdict::kUpdate);
}

TEST(BadStepDetectorTest, WindowSlidesOverUpdatedStepsOnly) {
  BadStepDetector d = FilledDetector(3.0);
  // Skipped steps neither enter the window nor raise the bar.
  d.Record(StepVerdict::kLossSpike, 100.0, 15.0, 64);
  d.Record(StepVerdict::kNonFiniteLoss, kNaN, kNaN, 80);
  EXPECT_EQ(d.skipped_in_row(), 2);
  EXPECT_EQ(d.skipped_from_sample(), 64u);
  EXPECT_EQ(d.Judge(3.001, 15.0), StepVerdict::kLossSpike);
  // An update ends the run of skips; four of them replace the window.
  for (int i = 0; i < 4; ++i) d.Record(StepVerdict::kUpdate, 10.0 + i % 2, 15.0, 96);
  EXPECT_EQ(d.skipped_in_row(), 0);
  EXPECT_EQ(d.Judge(3.001, 15.0), StepVerdict::kUpdate);  // window {10, 11, 10, 11}
  EXPECT_EQ(d.Judge(12.0, 15.0), StepVerdict::kUpdate);   // mean 10.5 + 3 x 0.5
  EXPECT_EQ(d.Judge(12.01, 15.0), StepVerdict::kLossSpike);
  EXPECT_EQ(d.State().recent_loss_size(), 4);
}

TEST(BadStepDetectorTest, StateRoundTripsAndRollBackKeepsTheCount) {
  BadStepDetector d = FilledDetector(3.0);
  d.Record(StepVerdict::kGradNormSpike, 1.0, 99.0, 32);
  const ckpt::TrainingHealth saved = d.State();
  EXPECT_EQ(saved.skipped_in_row(), 1);
  EXPECT_EQ(saved.skipped_from_sample(), 32u);

  BadStepDetector restored(3.0, 4);
  restored.Restore(saved);
  EXPECT_EQ(restored.State().SerializeAsString(), saved.SerializeAsString());
  EXPECT_EQ(restored.Judge(3.001, 15.0), StepVerdict::kLossSpike);

  // A shorter window keeps the newest values ({1, 2} of {1, 2, 1, 2}).
  BadStepDetector shorter(3.0, 2);
  shorter.Restore(saved);
  EXPECT_EQ(shorter.State().recent_loss_size(), 2);
  EXPECT_EQ(shorter.State().recent_loss(1), 2.0);

  d.Record(StepVerdict::kGradNormSpike, 1.0, 99.0, 48);
  BadStepDetector fresh(3.0, 4);
  d.RolledBack(fresh.State());
  EXPECT_EQ(d.rollbacks(), 1);
  EXPECT_EQ(d.skipped_in_row(), 0);
  EXPECT_EQ(d.State().recent_loss_size(), 0);
  EXPECT_EQ(d.Judge(1e6, 1e6), StepVerdict::kUpdate);  // warming up again
}

TEST(SkippedSamplesTest, MergesRangesAndJumpsOverThem) {
  SkippedSamples s;
  s.Add(64, 96);
  s.Add(16, 32);
  s.Add(200, 210);
  s.Add(32, 40);  // touches [16, 32)
  ASSERT_EQ(s.ranges().size(), 3u);
  EXPECT_EQ(s.ranges()[0].begin(), 16u);
  EXPECT_EQ(s.ranges()[0].end(), 40u);
  s.Add(90, 205);  // bridges [64, 96) and [200, 210)
  ASSERT_EQ(s.ranges().size(), 2u);
  EXPECT_EQ(s.ranges()[1].begin(), 64u);
  EXPECT_EQ(s.ranges()[1].end(), 210u);

  EXPECT_EQ(s.NextStart(0), 0u);
  EXPECT_EQ(s.NextStart(16), 40u);
  EXPECT_EQ(s.NextStart(39), 40u);
  EXPECT_EQ(s.NextStart(40), 40u);
  EXPECT_EQ(s.NextStart(64), 210u);

  ckpt::DataState data;
  s.ToProto(&data);
  SkippedSamples back;
  ASSERT_TRUE(back.FromProto(data).ok());
  EXPECT_EQ(back.ranges().size(), 2u);
  EXPECT_EQ(back.NextStart(100), 210u);

  ckpt::SampleRange* empty = data.add_skipped();
  empty->set_begin(7);
  empty->set_end(7);
  const Status bad = back.FromProto(data);
  EXPECT_EQ(bad.code(), StatusCode::kInvalidInput);
  EXPECT_NE(bad.message().find("data.skipped"), std::string::npos) << bad.message();
}

TEST(StragglerTest, SlowestRankAndRatioToTheMedian) {
  StragglerSummary s = SummarizeStepTimes({10.0, 30.0, 12.0});
  EXPECT_EQ(s.rank, 1);
  EXPECT_DOUBLE_EQ(s.median_ms, 12.0);
  EXPECT_DOUBLE_EQ(s.ratio, 2.5);
  s = SummarizeStepTimes({10.0, 10.0, 20.0, 40.0});
  EXPECT_EQ(s.rank, 3);
  EXPECT_DOUBLE_EQ(s.median_ms, 15.0);
  EXPECT_DOUBLE_EQ(s.ratio, 40.0 / 15.0);
  s = SummarizeStepTimes({5.0, 5.0});
  EXPECT_EQ(s.rank, 0);
  EXPECT_DOUBLE_EQ(s.ratio, 1.0);
}

TEST(MetricsWriterTest, WritesTextLabelsAfterTheValues) {
  const std::filesystem::path dir = testing::FreshTestDir("latam_metrics_labels");
  {
    auto w = MetricsWriter::Create(dir.string());
    ASSERT_TRUE(w.ok()) << w.status().message();
    (*w)->Write(7, {{"skipped_step", 1.0}, {"loss", 9.5}}, {{"skip_reason", "loss_spike"}});
    (*w)->Write(8, {{"loss", 2.0}});
  }
  std::ifstream in(dir / "metrics.jsonl");
  std::string first, second;
  ASSERT_TRUE(std::getline(in, first) && std::getline(in, second));
  EXPECT_EQ(first, R"({"step":7,"loss":9.5,"skipped_step":1.0,"skip_reason":"loss_spike"})");
  EXPECT_EQ(nlohmann::json::parse(second)["loss"].get<double>(), 2.0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace latam
