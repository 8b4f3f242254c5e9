// MpiCommunicator: the Communicator interface over an MPI communicator, for
// host (CPU) buffers. Collectives use MPI's non-blocking calls
// (MPI_Iallreduce, ...) so several can be in flight; f32 buffers map to
// MPI_FLOAT, i32 to MPI_INT. The object owns the MPI_Comm it wraps.
//
// Hang watchdog (parallel/watchdog.h). With timeout_s > 0, Request::Wait(),
// Barrier() and AllReduceScalar() poll the operation (MPI_Test) instead of
// blocking in MPI_Wait; once one has waited timeout_s seconds, the rank
// prints the hang report (the operation, this group's name, the step and
// micro-batch of position(), the global ranks it waits on: the peer of a
// send/recv, every other rank of the group for a collective) and ends the
// job with MPI_Abort(MPI_COMM_WORLD, kHangExitCode). The clock starts when
// the rank starts waiting, not when it issued the operation: compute that
// overlaps a collective does not count. timeout_s = 0 waits in MPI_Wait.
// Split() passes the timeout and the position on.
#pragma once

#include <mpi.h>

#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace latam {

class MpiCommunicator : public Communicator {
 public:
  // Takes ownership of `comm` (freed in the destructor unless it is
  // MPI_COMM_WORLD or MPI_COMM_SELF).
  MpiCommunicator(MPI_Comm comm, std::string name, double timeout_s = 0,
                  std::shared_ptr<TrainingPosition> position = std::make_shared<TrainingPosition>());
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  MPI_Comm comm() const { return comm_; }

  std::unique_ptr<Request> AllReduce(const Tensor& buf, ReduceOp op) override;
  std::unique_ptr<Request> ReduceScatter(const Tensor& in, const Tensor& out) override;
  std::unique_ptr<Request> AllGather(const Tensor& in, const Tensor& out) override;
  std::unique_ptr<Request> Broadcast(const Tensor& buf, int root) override;
  std::unique_ptr<Request> Send(const Tensor& buf, int peer, int tag) override;
  std::unique_ptr<Request> Recv(const Tensor& buf, int peer, int tag) override;
  void Barrier() override;
  double AllReduceScalar(double value, ReduceOp op) override;
  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override;

  // Largest tag this communicator accepts (MPI_TAG_UB).
  int max_tag() const { return max_tag_; }
  double timeout_s() const { return timeout_s_; }

  // Completes `request`, under the watchdog when timeout_s > 0. The rest
  // names the operation in the report: `operation` (CommOpName, "barrier"),
  // its buffer (shown unless it has no data) and the group rank waited on
  // (-1: every other rank).
  void Complete(MPI_Request* request, const char* operation, const Tensor& buf, int peer) const;

 private:
  MPI_Comm comm_;
  std::string name_;
  int rank_ = 0;
  int size_ = 1;
  int max_tag_ = 32767;
  double timeout_s_ = 0;
  std::vector<int> world_ranks_;  // world rank of each group rank
};

}  // namespace latam
