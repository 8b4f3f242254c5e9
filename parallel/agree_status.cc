#include "parallel/agree_status.h"

#include <string>

#include "parallel/mpi_env.h"

namespace latam {

namespace {

// Status codes travel as their enum values.
Status MakeStatus(StatusCode code, std::string message) {
  switch (code) {
    case StatusCode::kOk:
      return Status::Ok();
    case StatusCode::kInvalidInput:
      return Status::InvalidInput(std::move(message));
    case StatusCode::kIoError:
      return Status::IoError(std::move(message));
    case StatusCode::kPreempted:
      return Status::Preempted(std::move(message));
    case StatusCode::kInternal:
      break;
  }
  return Status::Internal(std::move(message));
}

}  // namespace

Status AgreeOnStatus(const Status& local, MPI_Comm comm) {
  int rank = 0, size = 1;
  MPI_CHECK(MPI_Comm_rank(comm, &rank));
  MPI_CHECK(MPI_Comm_size(comm, &size));
  const int mine = local.ok() ? 0 : 1;
  int failed = 0;
  MPI_CHECK(MPI_Allreduce(&mine, &failed, 1, MPI_INT, MPI_SUM, comm));
  if (failed == 0) return Status::Ok();
  const int candidate = local.ok() ? size : rank;
  int first = size;
  MPI_CHECK(MPI_Allreduce(&candidate, &first, 1, MPI_INT, MPI_MIN, comm));

  // The first failing rank sends its code and message to every rank.
  int code = static_cast<int>(local.code());
  MPI_CHECK(MPI_Bcast(&code, 1, MPI_INT, first, comm));
  std::string message = rank == first ? local.message() : std::string();
  int length = static_cast<int>(message.size());
  MPI_CHECK(MPI_Bcast(&length, 1, MPI_INT, first, comm));
  message.resize(static_cast<size_t>(length));
  if (length > 0) MPI_CHECK(MPI_Bcast(message.data(), length, MPI_CHAR, first, comm));

  std::string text = size > 1 ? "rank " + std::to_string(first) + ": " + message : message;
  if (failed > 1) {
    text.append(" (and ").append(std::to_string(failed - 1)).append(failed == 2 ? " other rank" : " other ranks");
    text.append(" failed too)");
  }
  return MakeStatus(static_cast<StatusCode>(code), std::move(text));
}

}  // namespace latam
