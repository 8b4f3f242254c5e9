// Fatal checks for programmer errors and broken invariants.
//
// LATAM_CHECK(cond, message) prints the failed expression, file:line, the
// process's rank (from the MPI launcher's environment) and the message to
// stderr, then aborts. It stays on in Release builds. The message is a stream
// expression: LATAM_CHECK(n > 0, "n=" << n). Use Status (status.h) for
// anything a user can cause.
#pragma once

#include <sstream>
#include <string>

namespace latam {

// The launcher-assigned rank of this process ("?" when not launched by MPI or
// Slurm). Read from the environment so that no global state is needed.
std::string ProcessRankLabel();

[[noreturn]] void FatalError(const char* expr, const char* file, int line, const std::string& message);

}  // namespace latam

#define LATAM_CHECK(cond, ...)                                               \
  do {                                                                       \
    if (!(cond)) [[unlikely]] {                                              \
      std::ostringstream latam_check_os_;                                    \
      latam_check_os_ << __VA_ARGS__;                                        \
      ::latam::FatalError(#cond, __FILE__, __LINE__, latam_check_os_.str()); \
    }                                                                        \
  } while (0)
