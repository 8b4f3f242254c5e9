// Pipeline schedules: every micro-batch passes forward then backward through
// every chunk exactly once, the whole pipeline can run them without waiting
// forever (simulated), and in-flight micro-batches stay within what the
// schedule needs (P - p on stage p for 1F1B). The executor tells the hang
// watchdog which micro-batch each pass belongs to.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <tuple>

#include "parallel/pipeline.h"

namespace latam {
namespace {

// Runs every rank's schedule as the executor would, in rounds: an action
// runs once its input exists (the previous chunk's forward, or the next
// chunk's backward, of the same micro-batch). Returns false on a deadlock.
bool SimulatePipeline(int stages, int virtual_stages, int micro) {
  std::vector<std::vector<PipelineAction>> schedules;
  for (int r = 0; r < stages; ++r) schedules.push_back(BuildSchedule(stages, r, virtual_stages, micro));
  const int total = stages * virtual_stages;
  std::set<std::tuple<int, int, int>> done;  // (kind, global chunk, micro)
  std::vector<size_t> next(static_cast<size_t>(stages), 0);
  size_t remaining = 0;
  for (const auto& s : schedules) remaining += s.size();
  while (remaining > 0) {
    bool progress = false;
    for (int r = 0; r < stages; ++r) {
      auto& i = next[static_cast<size_t>(r)];
      const auto& s = schedules[static_cast<size_t>(r)];
      while (i < s.size()) {
        const PipelineAction& a = s[i];
        const int g = a.chunk * stages + r;
        bool ready;
        if (a.kind == PipelineAction::kForward) {
          ready = g == 0 || done.count({PipelineAction::kForward, g - 1, a.micro});
        } else {
          ready = done.count({PipelineAction::kForward, g, a.micro}) &&
                  (g == total - 1 || done.count({PipelineAction::kBackward, g + 1, a.micro}));
        }
        if (!ready) break;
        done.insert({a.kind, g, a.micro});
        ++i;
        --remaining;
        progress = true;
      }
    }
    if (!progress) return false;
  }
  return true;
}

void CheckSchedule(int stages, int rank, int virtual_stages, int micro) {
  SCOPED_TRACE(::testing::Message() << "P=" << stages << " rank=" << rank << " V=" << virtual_stages << " m=" << micro);
  const auto s = BuildSchedule(stages, rank, virtual_stages, micro);
  ASSERT_EQ(s.size(), static_cast<size_t>(2 * micro * virtual_stages));
  std::map<std::pair<int, int>, int> forward_at;
  std::set<std::pair<int, int>> backward_done;
  std::vector<std::set<int>> live(static_cast<size_t>(virtual_stages));
  for (size_t i = 0; i < s.size(); ++i) {
    const auto& a = s[i];
    ASSERT_GE(a.chunk, 0);
    ASSERT_LT(a.chunk, virtual_stages);
    const auto key = std::make_pair(a.chunk, a.micro);
    auto& slots = live[static_cast<size_t>(a.chunk)];
    if (a.kind == PipelineAction::kForward) {
      ASSERT_EQ(forward_at.count(key), 0u) << "forward twice";
      forward_at[key] = static_cast<int>(i);
      ASSERT_EQ(slots.count(a.slot), 0u) << "slot " << a.slot << " still in use";
      slots.insert(a.slot);
    } else {
      ASSERT_EQ(forward_at.count(key), 1u) << "backward before forward";
      ASSERT_EQ(backward_done.count(key), 0u) << "backward twice";
      backward_done.insert(key);
      ASSERT_EQ(slots.count(a.slot), 1u);
      slots.erase(a.slot);
    }
  }
  EXPECT_EQ(backward_done.size(), static_cast<size_t>(micro * virtual_stages));
}

TEST(PipelineScheduleTest, OneFOneBKeepsAtMostPMinusPInFlight) {
  for (int stages : {1, 2, 3, 4}) {
    for (int micro : {1, 2, 3, 4, 7, 8}) {
      for (int rank = 0; rank < stages; ++rank) {
        CheckSchedule(stages, rank, 1, micro);
        const auto s = BuildSchedule(stages, rank, 1, micro);
        EXPECT_EQ(SlotsNeeded(s, 1)[0], std::min(stages - rank, micro))
            << "P=" << stages << " rank=" << rank << " m=" << micro;
      }
      EXPECT_TRUE(SimulatePipeline(stages, 1, micro)) << "deadlock P=" << stages << " m=" << micro;
    }
  }
  // With one stage it is plain gradient accumulation: F0 B0 F1 B1 ...
  const auto s = BuildSchedule(1, 0, 1, 3);
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_EQ(s[i].kind, i % 2 == 0 ? PipelineAction::kForward : PipelineAction::kBackward);
    EXPECT_EQ(s[i].micro, static_cast<int>(i / 2));
  }
}

TEST(PipelineScheduleTest, InterleavedRunsWithoutDeadlock) {
  for (int stages : {2, 3, 4}) {
    for (int v : {2, 3}) {
      for (int groups : {1, 2, 3}) {
        const int micro = stages * groups;
        for (int rank = 0; rank < stages; ++rank) CheckSchedule(stages, rank, v, micro);
        EXPECT_TRUE(SimulatePipeline(stages, v, micro)) << "deadlock P=" << stages << " V=" << v << " m=" << micro;
        // The first stage never holds more micro-batches per chunk than exist.
        for (int slots : SlotsNeeded(BuildSchedule(stages, 0, v, micro), v)) EXPECT_LE(slots, micro);
      }
    }
  }
}

TEST(PipelineScheduleDeathTest, InterleavedNeedsMicroBatchesInGroupsOfStages) {
  EXPECT_DEATH(BuildSchedule(4, 0, 2, 6), "divisible by 4 stages");
}

// One stage of one chunk that records, at each pass, the micro-batch that
// the pipeline group's TrainingPosition holds.
class PositionRecordingStage : public PipelineStages {
 public:
  explicit PositionRecordingStage(const Communicator* pp) : pp_(pp) {}
  int pipeline_stages() const override { return 1; }
  int pipeline_rank() const override { return 0; }
  int virtual_stages() const override { return 1; }
  int num_chunks() const override { return 1; }
  PipelineChunk chunk(int) const override { return {0, true, true}; }
  int slots(int) const override { return 1; }
  int64_t tokens_per_micro_batch() const override { return 4; }
  Tensor Input(int, int) const override { return Tensor(); }
  Tensor Output(int, int) const override { return Tensor(); }
  Tensor Grad(int, int) const override { return Tensor(); }
  void Forward(int, int, const int32_t*, const int32_t*, const int32_t*, float, bool, bool) override {
    seen.push_back(pp_->position().micro_batch());
  }
  void Backward(int, int, bool) override { seen.push_back(pp_->position().micro_batch()); }
  double TakeLoss() override { return 0.0; }

  std::vector<int> seen;

 private:
  const Communicator* pp_;
};

TEST(PipelineExecutorTest, SetsTheMicroBatchOfEachPassForTheHangReport) {
  SelfCommunicator pp("pp");
  pp.position().BeginStep(4);
  PositionRecordingStage stage(&pp);
  PipelineExecutor executor(&stage, &pp, 3);
  const auto fetch = [](int, int32_t*, int32_t*, int32_t*) {};
  executor.TrainStep(fetch, 1.0f);
  EXPECT_EQ(stage.seen, (std::vector<int>{0, 0, 1, 1, 2, 2}));
  EXPECT_EQ(pp.position().micro_batch(), TrainingPosition::kNoMicroBatch);  // cleared after the passes
  EXPECT_EQ(pp.position().step(), 4);
  stage.seen.clear();
  executor.EvalStep(2, fetch);
  EXPECT_EQ(stage.seen, (std::vector<int>{0, 1}));
  EXPECT_EQ(pp.position().micro_batch(), TrainingPosition::kNoMicroBatch);
}

}  // namespace
}  // namespace latam
