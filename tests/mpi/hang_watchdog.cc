// A job whose rank 1 stops taking part, for tests/mpi/check-watchdog.sh:
//
//   mpirun -np 3 hang_watchdog OPERATION TIMEOUT_S
//
// Every rank builds the world (MpiCommunicator with the watchdog's timeout)
// and a group "reversed" of the three ranks in reverse order (group rank
// 2 - w, so group and global ranks differ), and sets the training position
// to step 2, micro-batch 1. Then rank 1 sleeps, and rank 0 (with rank 2
// where the operation is a collective) runs OPERATION, which can never
// complete:
//   all_reduce   an all-reduce over "reversed"
//   scalar       AllReduceScalar over the world
//   barrier      Barrier over the world
//   recv         rank 0 receives from rank 1
//   send         rank 0 sends 16 MiB to rank 1 (past any eager limit)
// The watchdog must end the job with exit code 4; returning from the
// operation exits 1.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "parallel/mpi_communicator.h"
#include "parallel/mpi_env.h"

int main(int argc, char** argv) {
  latam::MpiSession mpi(&argc, &argv);
  if (argc != 3 || mpi.world_size() != 3) {
    std::fprintf(stderr, "usage: mpirun -np 3 hang_watchdog OPERATION TIMEOUT_S\n");
    return 2;
  }
  const std::string op = argv[1];
  latam::MpiCommunicator world(MPI_COMM_WORLD, "world", std::atof(argv[2]));
  const int w = mpi.world_rank();
  const auto reversed = world.Split(0, 2 - w, "reversed");
  world.position().BeginStep(2);
  world.position().SetMicroBatch(1);
  if (w == 1) {
    sleep(60);
    return 0;
  }
  std::vector<float> buf(4u << 20, 1.0f);
  const latam::Tensor t = latam::Tensor::Of(buf.data(), {static_cast<int64_t>(buf.size())});
  if (op == "all_reduce") {
    reversed->AllReduceSync(latam::Tensor::Of(buf.data(), {1024}), latam::ReduceOp::kSum);
  } else if (op == "scalar") {
    world.AllReduceScalar(1.0, latam::ReduceOp::kSum);
  } else if (op == "barrier") {
    world.Barrier();
  } else if (op == "recv") {
    if (w == 0) world.Recv(t, 1, 0)->Wait();
    if (w == 2) sleep(60);
  } else if (op == "send") {
    if (w == 0) world.Send(t, 1, 0)->Wait();
    if (w == 2) sleep(60);
  } else {
    std::fprintf(stderr, "hang_watchdog: unknown operation %s\n", op.c_str());
    return 2;
  }
  std::fprintf(stderr, "hang_watchdog: rank %d: %s completed without rank 1\n", w, op.c_str());
  return 1;
}
