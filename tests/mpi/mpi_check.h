// A minimal check harness for tests launched with mpirun: every rank runs
// the checks; failures are printed with the rank; Finish() agrees on the
// result across ranks (so every rank exits with the same code) and returns
// the process exit code.
#pragma once

#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>

#include "parallel/grid.h"

namespace latam::testing {

class MpiChecks {
 public:
  explicit MpiChecks(const std::string& test) : test_(test) { MPI_Comm_rank(MPI_COMM_WORLD, &rank_); }

  bool Check(bool ok, const std::string& what) {
    ++checks_;
    if (!ok) {
      ++failures_;
      if (failures_ <= 20) std::fprintf(stderr, "[rank %d] FAIL %s: %s\n", rank_, test_.c_str(), what.c_str());
    }
    return ok;
  }
  template <typename A, typename B>
  bool Eq(const A& a, const B& b, const std::string& what) {
    std::ostringstream os;
    os << what << ": " << a << " != " << b;
    return Check(a == b, os.str());
  }
  bool Near(double a, double b, double tol, const std::string& what) {
    std::ostringstream os;
    os << what << ": " << a << " vs " << b << " (tolerance " << tol << ")";
    return Check(std::abs(a - b) <= tol, os.str());
  }

  // Collective: 0 when no rank failed, 1 otherwise.
  int Finish() {
    int failures = failures_, total = 0, checks = checks_, all_checks = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&checks, &all_checks, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank_ == 0) {
      std::printf("%s: %d checks on all ranks, %d failed\n", test_.c_str(), all_checks, total);
      std::fflush(stdout);
    }
    return total == 0 && all_checks > 0 ? 0 : 1;
  }
  int rank() const { return rank_; }

 private:
  std::string test_;
  int rank_ = 0;
  int checks_ = 0;
  int failures_ = 0;
};

// The grid shape of a collective test's arguments TENSOR PIPELINE DATA,
// which must multiply to the world size; nullopt (after printing why) if not.
inline std::optional<GridShape> GridShapeFromArgs(int argc, char** argv, const char* program, int world_size) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s TENSOR PIPELINE DATA\n", program);
    return std::nullopt;
  }
  const GridShape shape{std::atoi(argv[1]), std::atoi(argv[2]), std::atoi(argv[3])};
  if (shape.world() != world_size) {
    std::fprintf(stderr, "world %d != %d x %d x %d\n", world_size, shape.tensor, shape.pipeline, shape.data);
    return std::nullopt;
  }
  return shape;
}

}  // namespace latam::testing
