// Agreeing on an error across ranks.
//
// An input error (a corrupt checkpoint shard, a missing data file, a full
// disk) is often found by some ranks only. AgreeOnStatus is collective over
// `comm`: every rank passes its own status and every rank gets back the same
// one, so that all ranks stop together, with the same exit code, and no rank
// is left waiting in a collective the others skip:
//   - Ok when every rank passed Ok;
//   - otherwise the status of the lowest failing rank, its code unchanged
//     and its message prefixed with "rank R: " (and, when other ranks
//     failed too, followed by how many), on every rank. Rank 0 prints it, so
//     the message found by rank 5 reaches the user.
// It uses MPI directly (host memory), whatever the job's communicators are.
#pragma once

#include <mpi.h>

#include "core/status.h"

namespace latam {

Status AgreeOnStatus(const Status& local, MPI_Comm comm);

}  // namespace latam
