// Preemption signals. Slurm sends SIGTERM (or the signal of
// `--signal=B:USR1@...`, forwarded by the sbatch scripts) before it
// preempts a job or its time runs out. The handlers only set a flag; the
// training loop reads it between steps, agrees with the other ranks, saves a
// checkpoint and exits with code 3 ("requeue me").
#pragma once

namespace latam {

// Installs handlers for SIGTERM and SIGUSR1.
void InstallPreemptionHandlers();
// Whether one of those signals arrived.
bool PreemptionRequested();
// The signal that arrived (0 if none), for the log.
int PreemptionSignal();

}  // namespace latam
