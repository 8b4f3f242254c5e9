// MpiCommunicator: the Communicator interface over an MPI communicator, for
// host (CPU) buffers. Collectives use MPI's non-blocking calls
// (MPI_Iallreduce, ...) so several can be in flight; f32 buffers map to
// MPI_FLOAT, i32 to MPI_INT. The object owns the MPI_Comm it wraps.
#pragma once

#include <mpi.h>

#include <string>

#include "parallel/communicator.h"

namespace latam {

class MpiCommunicator : public Communicator {
 public:
  // Takes ownership of `comm` (freed in the destructor unless it is
  // MPI_COMM_WORLD or MPI_COMM_SELF).
  MpiCommunicator(MPI_Comm comm, std::string name);
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

 private:
  MPI_Comm comm_;
  std::string name_;
  int rank_ = 0;
  int size_ = 1;
  int max_tag_ = 32767;
};

}  // namespace latam
