// The hang watchdog's pieces that need no MPI (parallel/watchdog.h): the
// report line both communicators print, the deadline of the polling wait,
// and the training position shared by every group split from one world.
// tests/mpi/check-watchdog.sh runs the whole thing under mpirun.
#include <gtest/gtest.h>

#include <chrono>
#include <optional>

#include "parallel/grid.h"
#include "parallel/watchdog.h"

namespace latam {
namespace {

HangReport TensorParallelHang() {
  HangReport r;
  r.operation = "all_reduce";
  r.detail = "f32[1024]@cpu";
  r.group = "tp";
  r.group_rank = 0;
  r.group_size = 2;
  r.peers = {3};
  r.step = 7;
  r.micro_batch = 1;
  r.waited_s = 3.02;
  r.timeout_s = 3;
  return r;
}

TEST(HangReportTest, NamesOperationGroupStepMicroBatchAndPeers) {
  EXPECT_EQ(FormatHangReport(TensorParallelHang()),
            "hang detected: all_reduce f32[1024]@cpu on group tp (rank 0 of 2) has not completed after 3.0 s "
            "(train.collective_timeout_s = 3); step 7, micro-batch 1; waiting on global ranks 3; ending the job "
            "with exit code 4");
}

TEST(HangReportTest, OutsideMicroBatchesAndBeforeTraining) {
  HangReport r = TensorParallelHang();
  r.operation = "barrier";
  r.detail.clear();
  r.group = "world";
  r.group_rank = 1;
  r.group_size = 4;
  r.peers = {0, 2, 3};
  r.micro_batch = TrainingPosition::kNoMicroBatch;
  r.timeout_s = 0.5;
  EXPECT_EQ(FormatHangReport(r),
            "hang detected: barrier on group world (rank 1 of 4) has not completed after 3.0 s "
            "(train.collective_timeout_s = 0.5); step 7, micro-batch none; waiting on global ranks 0, 2, 3; ending "
            "the job with exit code 4");
  r.step = TrainingPosition::kBeforeFirstStep;
  EXPECT_NE(FormatHangReport(r).find("0.5); before the first step; waiting on global ranks 0, 2, 3;"),
            std::string::npos)
      << FormatHangReport(r);
}

TEST(HangReportTest, PeersAreTheOtherRanksOfTheGroup) {
  EXPECT_EQ(OtherRanks({4, 6, 5, 7}, 2), (std::vector<int>{4, 6, 7}));
  EXPECT_EQ(OtherRanks({9}, 0), std::vector<int>{});
}

TEST(PollUntilDoneTest, ReturnsOnTheFirstPollThatSucceeds) {
  int polls = 0;
  const PollOutcome outcome = PollUntilDone([&] { return ++polls == 1000; }, 10.0);
  EXPECT_TRUE(outcome.done);
  EXPECT_EQ(polls, 1000);
  EXPECT_LT(outcome.waited_s, 10.0);
}

TEST(PollUntilDoneTest, GivesUpAtTheDeadline) {
  int polls = 0;
  const auto start = std::chrono::steady_clock::now();
  const PollOutcome outcome = PollUntilDone([&] { return ++polls < 0; }, 0.2);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_FALSE(outcome.done);
  EXPECT_GE(outcome.waited_s, 0.2);
  EXPECT_GE(elapsed, 0.2);
  EXPECT_LT(elapsed, 2.0);  // a yield, not a long sleep, between polls
  EXPECT_GT(polls, 1);
}

TEST(PollUntilDoneTest, NoDeadlineWaitsPastAnyTimeout) {
  // timeout 0: waiting goes on until done, however long it takes. The
  // 50 ms count from the first poll, which comes after PollUntilDone
  // started its own clock, so waited_s cannot be shorter.
  std::optional<std::chrono::steady_clock::time_point> first;
  const PollOutcome outcome = PollUntilDone(
      [&] {
        const auto now = std::chrono::steady_clock::now();
        if (!first) first = now;
        return now - *first > std::chrono::milliseconds(50);
      },
      0.0);
  EXPECT_TRUE(outcome.done);
  EXPECT_GE(outcome.waited_s, 0.05);
}

TEST(TrainingPositionTest, StepClearsTheMicroBatch) {
  TrainingPosition p;
  EXPECT_EQ(p.step(), TrainingPosition::kBeforeFirstStep);
  EXPECT_EQ(p.micro_batch(), TrainingPosition::kNoMicroBatch);
  p.BeginStep(3);
  p.SetMicroBatch(2);
  EXPECT_EQ(p.micro_batch(), 2);
  p.EndMicroBatches();
  EXPECT_EQ(p.micro_batch(), TrainingPosition::kNoMicroBatch);
  p.SetMicroBatch(1);
  p.BeginStep(4);
  EXPECT_EQ(p.step(), 4);
  EXPECT_EQ(p.micro_batch(), TrainingPosition::kNoMicroBatch);
}

TEST(TrainingPositionTest, EveryGroupOfAGridSharesTheWorlds) {
  const auto grid = ProcessGrid::Single();
  grid->position().BeginStep(12);
  grid->pp().position().SetMicroBatch(5);
  for (Communicator* c : {&grid->world(), &grid->tp(), &grid->cp(), &grid->pp(), &grid->dp(), &grid->replicas(),
                          &grid->model_parallel()}) {
    EXPECT_EQ(&c->position(), &grid->position()) << c->name();
  }
  const auto kv = grid->tp().Split(0, 0, "kv");
  EXPECT_EQ(kv->position().step(), 12);
  EXPECT_EQ(kv->position().micro_batch(), 5);
}

}  // namespace
}  // namespace latam
