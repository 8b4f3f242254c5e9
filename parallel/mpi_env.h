// The MPI process environment: initialisation, world rank/size, and how many
// ranks share this node (for CPU thread sizing).
//
// MpiSession is created once at the top of main() and passed down; nothing
// reads MPI state through globals. MPI_CHECK aborts with the expression,
// MPI's error string, file:line and the rank.
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

#include "core/check.h"

#define MPI_CHECK(expr)                                                                            \
  do {                                                                                             \
    const int latam_mpi_err_ = (expr);                                                             \
    if (latam_mpi_err_ != MPI_SUCCESS) [[unlikely]] {                                              \
      char latam_mpi_msg_[MPI_MAX_ERROR_STRING];                                                   \
      int latam_mpi_len_ = 0;                                                                      \
      MPI_Error_string(latam_mpi_err_, latam_mpi_msg_, &latam_mpi_len_);                           \
      ::latam::FatalError(#expr, __FILE__, __LINE__, std::string(latam_mpi_msg_, latam_mpi_len_)); \
    }                                                                                              \
  } while (0)

namespace latam {

// The MPI_COMM_WORLD rank of each rank of `comm` (collective-free).
std::vector<int> WorldRanks(MPI_Comm comm);

class MpiSession {
 public:
  // Calls MPI_Init_thread (MPI_THREAD_FUNNELED: only the main thread calls
  // MPI; OpenMP workers never do).
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  // Ranks on this node (MPI_COMM_TYPE_SHARED).
  int local_size() const { return local_size_; }
  int local_rank() const { return local_rank_; }

  // Ends the job from any rank with `code` (MPI_Abort): used when an error is
  // found on some ranks only, so that no rank is left waiting in a collective.
  [[noreturn]] void Abort(int code) const;

 private:
  int world_rank_ = 0;
  int world_size_ = 1;
  int local_rank_ = 0;
  int local_size_ = 1;
};

}  // namespace latam
