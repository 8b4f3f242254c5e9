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
//
// build/bin/latam-train is a launcher (trainer/train_launcher.cc) that
// blocks both signals before it execs the trainer, build/bin/latam-train-main:
// the mask and a signal already pending survive exec, so a signal sent while
// the trainer's libraries load (about a second with CUDA) waits for the
// watcher instead of killing the rank.
//
// LATAM_STATUS_FILE: when set (launch/latam-run sets it), rank 0 records
// there, as `key=value` lines replaced atomically, what a launcher cannot
// learn from mpirun's exit code: `state=running` and `run_dir=DIR` once
// every rank has started with the signals blocked (a signal sent to the
// launcher from then on reaches a rank that saves), and `state=exited` with
// `exit_code=N` when latam-train returns N (3: the pre-emption checkpoint
// is complete, even when mpirun then reports 1 because it was sent SIGTERM).
#pragma once

#include <string>

namespace latam {

// Blocks SIGTERM and SIGUSR1 and starts the watcher thread. Call it first in
// main, before MPI or OpenMP start threads (threads inherit the mask).
void WatchPreemptionSignals();
// Whether one of those signals arrived.
bool PreemptionRequested();
// The signal that arrived (0 if none), for the log.
int PreemptionSignal();

// Writes LATAM_STATUS_FILE (nothing when it is unset): `state` ("running"
// or "exited"), `run_dir`, and `exit_code` when `exit_code` >= 0. A failure
// to write is a warning on stderr; it never stops the run.
void WriteLauncherStatus(const std::string& state, const std::string& run_dir, int exit_code);

}  // namespace latam
