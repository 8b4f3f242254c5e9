// Preemption signals. Slurm sends SIGTERM (or the signal of
// `--signal=B:USR1@...`, forwarded by the sbatch scripts) before it
// preempts a job or its time runs out. The training loop reads the flag
// between steps, agrees with the other ranks, saves a checkpoint and exits
// with code 3 ("requeue me").
//
// The signals are blocked in every thread and collected by one watcher
// thread with sigwait, instead of being handled on whichever thread they
// interrupt: oneDNN's sgemm kernels keep live data below the stack pointer,
// beyond the red zone a signal frame respects, so a handler that runs on a
// compute thread corrupts the GEMM's results or the heap (measured: about
// 3% wrong sgemm results under a stream of signals, and heap corruption).
#pragma once

namespace latam {

// Blocks SIGTERM and SIGUSR1 and starts the watcher thread. Call it first in
// main, before MPI or OpenMP start threads (threads inherit the mask).
void WatchPreemptionSignals();
// Whether one of those signals arrived.
bool PreemptionRequested();
// The signal that arrived (0 if none), for the log.
int PreemptionSignal();

}  // namespace latam
