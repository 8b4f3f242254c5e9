#include "parallel/watchdog.h"

#include <chrono>
#include <cstdio>
#include <thread>

#include "core/check.h"

namespace latam {

namespace {

std::string Seconds(double s, const char* format) {
  char text[64];
  std::snprintf(text, sizeof(text), format, s);
  return text;
}

}  // namespace

std::string FormatHangReport(const HangReport& r) {
  std::string line = "hang detected: " + r.operation;
  if (!r.detail.empty()) line.append(" ").append(r.detail);
  line.append(" on group ").append(r.group);
  line.append(" (rank ").append(std::to_string(r.group_rank));
  line.append(" of ").append(std::to_string(r.group_size)).append(")");
  line.append(" has not completed after ").append(Seconds(r.waited_s, "%.1f s"));
  line.append(" (train.collective_timeout_s = ").append(Seconds(r.timeout_s, "%g")).append("); ");
  if (r.step == TrainingPosition::kBeforeFirstStep) {
    line.append("before the first step");
  } else {
    line.append("step ").append(std::to_string(r.step)).append(", micro-batch ");
    line.append(r.micro_batch == TrainingPosition::kNoMicroBatch ? "none" : std::to_string(r.micro_batch));
  }
  line.append("; waiting on global ranks ");
  for (size_t i = 0; i < r.peers.size(); ++i) {
    if (i > 0) line.append(", ");
    line.append(std::to_string(r.peers[i]));
  }
  line.append("; ending the job with exit code ").append(std::to_string(kHangExitCode));
  return line;
}

void PrintHangReport(const HangReport& report) {
  std::fprintf(stderr, "[rank %s] %s\n", ProcessRankLabel().c_str(), FormatHangReport(report).c_str());
  std::fflush(stderr);
}

std::vector<int> OtherRanks(const std::vector<int>& world_ranks, int self) {
  std::vector<int> others;
  for (size_t r = 0; r < world_ranks.size(); ++r) {
    if (static_cast<int>(r) != self) others.push_back(world_ranks[r]);
  }
  return others;
}

PollOutcome PollUntilDone(const std::function<bool()>& poll, double timeout_s) {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  const auto busy = std::chrono::duration<double>(kBusyPollS);
  const auto timeout = std::chrono::duration<double>(timeout_s);
  PollOutcome outcome;
  while (true) {
    outcome.done = poll();
    const Clock::duration waited = Clock::now() - start;
    outcome.waited_s = std::chrono::duration<double>(waited).count();
    if (outcome.done || (timeout_s > 0 && waited >= timeout)) return outcome;
    if (waited > busy) std::this_thread::yield();
  }
}

}  // namespace latam
