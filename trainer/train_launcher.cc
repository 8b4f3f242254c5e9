// build/bin/latam-train: blocks SIGTERM and SIGUSR1, then execs the trainer,
// latam-train-main in the same directory, with the same arguments.
//
// The trainer's pre-emption signals are collected by a watcher thread
// (trainer/signals.h), which starts only once main runs; loading the
// trainer's libraries before that (MPI, the GEMM library, CUDA) takes about
// a second, and a SIGUSR1 or SIGTERM in that window would kill the rank
// (SIGUSR1's default action). This program links libc alone, so it starts
// in about a millisecond; the signal mask and any signal already pending
// survive execv, and the watcher collects them. (Open MPI's launcher unblocks
// every signal of the process it starts, so the block must come from here.)
// Exit code 1 when the trainer cannot be started.
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  (void)argc;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  sigprocmask(SIG_BLOCK, &set, nullptr);

  static const char kSuffix[] = "-main";
  char path[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - sizeof(kSuffix));
  if (n <= 0) {
    fprintf(stderr, "latam-train: cannot find its own path in /proc/self/exe: %s\n", strerror(errno));
    return 1;
  }
  memcpy(path + n, kSuffix, sizeof(kSuffix));
  execv(path, argv);
  fprintf(stderr, "latam-train: cannot start %s: %s\n", path, strerror(errno));
  return 1;
}
