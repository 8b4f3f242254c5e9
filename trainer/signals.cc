#include "trainer/signals.h"

#include <pthread.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "core/env.h"

namespace latam {

namespace {

std::atomic<int> g_signal{0};

}  // namespace

void WatchPreemptionSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::thread([set] {
    for (;;) {
      int signal = 0;
      if (sigwait(&set, &signal) == 0) g_signal = signal;
    }
  }).detach();
}

bool PreemptionRequested() { return g_signal.load() != 0; }

int PreemptionSignal() { return g_signal.load(); }

void WriteLauncherStatus(const std::string& state, const std::string& run_dir, int exit_code) {
  const char* path = std::getenv("LATAM_STATUS_FILE");
  if (path == nullptr || *path == '\0') return;
  std::string text = "state=" + state + "\nrun_dir=" + run_dir + "\n";
  if (exit_code >= 0) text.append("exit_code=").append(std::to_string(exit_code)).append("\n");
  const Status s = WriteFileAtomically(Env::Default(), path, text);
  if (!s.ok()) std::fprintf(stderr, "latam-train: warning: LATAM_STATUS_FILE not written: %s\n", s.message().c_str());
}

}  // namespace latam
