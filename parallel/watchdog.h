// Hang watchdog: what a rank reports, and how it waits, when a collective or
// a pipeline send/recv does not finish within train.collective_timeout_s.
//
// A lost peer (a stopped or wedged process, a dead link) otherwise leaves
// every other rank blocked forever in its next collective. With a timeout T
// > 0, a rank blocked on one operation for T seconds prints one line,
//   [rank 2] hang detected: all_reduce f32[1024]@cpu on group tp (rank 0 of
//   2) has not completed after 3.0 s (train.collective_timeout_s = 3); step
//   7, micro-batch 1; waiting on global ranks 3; ending the job with exit
//   code 4
// and ends the whole job with exit code 4 (kHangExitCode). The step and
// micro-batch come from the TrainingPosition that every communicator split
// from one world shares: the Engine sets the step at the start of each
// training step, the pipeline executor the micro-batch of each pass ("none"
// outside the pipeline's passes, "before the first step" at start-up).
//
// Both communicators use these pieces:
//   MpiCommunicator (host): Request::Wait() polls MPI_Test with
//     PollUntilDone on the calling (main) thread, so that it can call
//     MPI_Abort itself; T counts from the moment the rank starts waiting.
//   NcclCommunicator (device): operations are asynchronous, so a thread of
//     its own polls their completion events; T counts from the call that
//     issued the operation. It aborts the NCCL communicator and exits the
//     process with kHangExitCode (it is not MPI's thread, so it does not
//     call MPI_Abort); the launcher then ends the other ranks.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace latam {

// Exit code of a job ended by the watchdog.
inline constexpr int kHangExitCode = 4;

// Where training is, for the hang report. Written by the training thread,
// read by the NCCL watchdog thread: relaxed atomics (a report a micro-batch
// late is still right about where the job stopped).
class TrainingPosition {
 public:
  static constexpr int64_t kBeforeFirstStep = -1;
  static constexpr int kNoMicroBatch = -1;

  // `step` is the step as metrics number it (1 for the first).
  void BeginStep(int64_t step) {
    step_.store(step, std::memory_order_relaxed);
    micro_batch_.store(kNoMicroBatch, std::memory_order_relaxed);
  }
  void SetMicroBatch(int micro) { micro_batch_.store(micro, std::memory_order_relaxed); }
  void EndMicroBatches() { micro_batch_.store(kNoMicroBatch, std::memory_order_relaxed); }

  int64_t step() const { return step_.load(std::memory_order_relaxed); }
  int micro_batch() const { return micro_batch_.load(std::memory_order_relaxed); }

 private:
  std::atomic<int64_t> step_{kBeforeFirstStep};
  std::atomic<int> micro_batch_{kNoMicroBatch};
};

// Everything the report line says.
struct HangReport {
  std::string operation;  // "all_reduce", "send", "barrier", ...
  std::string detail;     // what it moves ("f32[1024]@cpu"); may be empty
  std::string group;      // the communicator's name: world, tp, pp, dp, ...
  int group_rank = 0;
  int group_size = 1;
  std::vector<int> peers;  // global (world) ranks this rank waits on
  int64_t step = TrainingPosition::kBeforeFirstStep;
  int micro_batch = TrainingPosition::kNoMicroBatch;
  double waited_s = 0;
  double timeout_s = 0;
};

// The report line (no rank prefix, no newline).
std::string FormatHangReport(const HangReport& report);

// Prints "[rank R] " + the report line to stderr and flushes it.
void PrintHangReport(const HangReport& report);

// The global ranks of a group other than its own rank `self`:
// world_ranks[r] is the world rank of group rank r.
std::vector<int> OtherRanks(const std::vector<int>& world_ranks, int self);

struct PollOutcome {
  bool done = false;      // false: the deadline passed first
  double waited_s = 0;    // from the first poll to the last
};

// Calls `poll` until it returns true or `timeout_s` seconds have passed
// (timeout_s <= 0: no deadline). The first kBusyPollS seconds poll back to
// back, as a blocking MPI wait does, so a short wait costs no latency; later
// polls yield the core between calls (a rank waiting long for a peer leaves
// the core to others on an oversubscribed node).
inline constexpr double kBusyPollS = 1e-3;
PollOutcome PollUntilDone(const std::function<bool()>& poll, double timeout_s);

}  // namespace latam
