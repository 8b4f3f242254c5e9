#include "trainer/signals.h"

#include <pthread.h>

#include <atomic>
#include <csignal>
#include <thread>

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

}  // namespace latam
