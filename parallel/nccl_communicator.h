// NcclCommunicator: the Communicator interface over NCCL, for device
// buffers. Tensors must have device kCUDA and live on this process's GPU;
// f32 maps to ncclFloat32, bf16 to ncclBfloat16, i32 to ncclInt32.
//
// Creation. The group is an MPI communicator: its rank 0 calls
// ncclGetUniqueId and broadcasts the id over MPI, then every rank calls
// ncclCommInitRank(Config) with the group's size and rank on its *current*
// CUDA device, so bind the device (cudaSetDevice(local rank)) before creating
// the world communicator. Split(color, key) splits the MPI communicator
// (MPI_Comm_split) and creates a new NcclCommunicator on the sub-group the
// same way, with the parent's compute stream and options. Creation and Split
// are collective over the group and block the host.
//
// Streams and ordering. A communicator owns one communication stream (the
// device's highest priority, non-blocking with respect to the legacy default
// stream) and is given a compute stream (constructor, set_compute_stream;
// nullptr is the legacy default stream). Every operation on tensors makes the
// communication stream wait for the work already enqueued on the compute
// stream (cudaEventRecord on the compute stream + cudaStreamWaitEvent on the
// communication stream), enqueues the NCCL call on the communication stream
// and records a completion event after it. Nothing on that path blocks the
// host, so the host runs ahead of the GPU through collectives as it does
// through kernels. Operations of one communicator run in issue order; several
// may be in flight. Operations of different communicators (tp, pp, dp) run on
// different streams and may overlap on the device, which NCCL supports when
// every rank issues them in the same order, as a program that issues every
// collective in program order does.
//
// Request::Wait() is stream-ordered, UNLIKE MpiCommunicator's (which blocks
// the host until the buffer is ready): it makes the compute stream (the one
// set when Wait() is called) wait for the operation's completion event, and
// returns at once. Kernels enqueued on the compute stream after Wait() see
// the result; the host sees it only after synchronising that stream (for
// example a device-to-host cudaMemcpy on it). Dropping a Request without
// Wait() performs the same wait; Wait() twice is a no-op. AllReduceSync() is
// therefore stream-ordered too. Only AllReduceScalar(), Barrier(), creation,
// Split and destruction block the host.
//
// Point to point. NCCL has no tags: the messages from one rank to another
// match in issue order (tags are checked to be >= 0 and otherwise ignored),
// so both ends must issue the Send/Recv between them in the same order. Send
// and Recv are held when called (the compute-stream dependency is taken then)
// and enqueued together as one NCCL group (ncclGroupStart/ncclGroupEnd) at the
// first Wait() or drop of any held request, or before the next collective,
// AllReduceScalar or Barrier of this communicator. A rank may therefore post
// a Recv and a Send (a ring; a pipeline stage's send-activation and
// receive-gradient) and then wait for both without deadlock, as with MPI.
//
// AllReduceScalar(value) copies the double to a device scratch word, reduces
// it (ncclFloat64) on the communication stream, copies it back and blocks the
// host until done: for losses, norms and flags, outside the inner loop. Its
// input is on the host, so it does not wait for the compute stream (it does
// run after this communicator's earlier operations).
// Barrier() waits for the compute stream, all-reduces the scratch word and
// blocks the host until that completes: on return every rank of the group
// has reached the barrier and every operation of this communicator issued
// before it (with the compute work it waited for) has completed on this rank.
// MPI_Barrier would line up only the hosts, which run ahead of their GPUs.
// Neither is counted in the byte statistics, as with MPI.
//
// Byte counters: exactly as MpiCommunicator (communicator.h), counted when
// an operation is issued.
//
// Memory. Buffers belong to the caller and must stay allocated and untouched
// (inputs not written, outputs not read) until the operation is complete in
// stream order, that is, by work enqueued on the compute stream after Wait().
// The communicator owns its NCCL communicator, its MPI communicator (unless
// MPI_COMM_WORLD or MPI_COMM_SELF), its stream, events and scratch memory.
// Requests must be waited for or dropped before their communicator is
// destroyed. Destruction synchronises the communication stream and finalises
// the NCCL communicator, which is collective over the group: every rank
// destroys its communicators in the same order (as ProcessGrid does).
//
// Threads. One host thread uses a communicator. Creation, Split and
// destruction call MPI and so run on MPI's main thread (FUNNELED). The
// watchdog thread never calls MPI.
//
// Watchdog. Each communicator has a background thread that, while an
// operation (or the communicator's creation or finalisation) is in flight,
// polls ncclCommGetAsyncError and the operations' completion events
// (cudaEventQuery). When an operation has been in flight longer than
// NcclOptions::timeout_s, it prints the hang report that MpiCommunicator
// prints (parallel/watchdog.h: the operation, the group's name, the step and
// micro-batch of position(), the global ranks waited on), aborts the NCCL
// communicator (ncclCommAbort) and exits the process with kHangExitCode (4),
// so that a lost peer ends the job instead of hanging it. When NCCL reports
// an asynchronous error or a CUDA error surfaces, it prints the operation,
// group, rank, device and error, aborts the NCCL communicator and then the
// process (std::abort). The elapsed time counts from the call that issued
// the operation, including its wait for the preceding compute work, so the
// timeout must exceed the longest compute stretch that can precede a
// collective in stream order.
#pragma once

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "parallel/communicator.h"

namespace latam {

struct NcclOptions {
  static constexpr double kDefaultTimeoutS = 600.0;
  // Seconds an operation may stay in flight before the watchdog aborts the
  // job; 0 turns the timeout off (asynchronous errors are still watched).
  double timeout_s = kDefaultTimeoutS;
};

// `defaults` (latam-train: timeout_s = train.collective_timeout_s), with
// timeout_s read from LATAM_NCCL_TIMEOUT_S when it is set (seconds, a number
// >= 0). InvalidInput names the variable otherwise.
Result<NcclOptions> NcclOptionsFromEnvironment(NcclOptions defaults = NcclOptions());

// Implementation types (nccl_communicator.cc).
struct NcclInFlight;
class NcclWatchdog;
class NcclRequest;

class NcclCommunicator : public Communicator {
 public:
  // Collective over `comm`; takes ownership of it (freed in the destructor
  // unless it is MPI_COMM_WORLD or MPI_COMM_SELF). The NCCL communicator is
  // created on the current CUDA device. Split() passes the options and the
  // position on.
  NcclCommunicator(MPI_Comm comm, std::string name, cudaStream_t compute_stream = nullptr,
                   NcclOptions options = NcclOptions(),
                   std::shared_ptr<TrainingPosition> position = std::make_shared<TrainingPosition>());
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  MPI_Comm mpi_comm() const { return mpi_comm_; }
  ncclComm_t nccl_comm() const { return comm_; }
  int device() const { return device_; }
  const NcclOptions& options() const { return options_; }

  // The communication stream (owned).
  cudaStream_t stream() const { return stream_; }
  // The stream operations wait for and Wait() makes wait. Changing it affects
  // operations issued and Wait()s called afterwards; it is not inherited by
  // communicators already split from this one.
  cudaStream_t compute_stream() const { return compute_stream_; }
  void set_compute_stream(cudaStream_t stream) { compute_stream_ = stream; }

  std::unique_ptr<Request> AllReduce(const Tensor& buf, ReduceOp op) override;
  std::unique_ptr<Request> ReduceScatter(const Tensor& in, const Tensor& out) override;
  std::unique_ptr<Request> AllGather(const Tensor& in, const Tensor& out) override;
  std::unique_ptr<Request> Broadcast(const Tensor& buf, int root) override;
  std::unique_ptr<Request> Send(const Tensor& buf, int peer, int tag) override;
  std::unique_ptr<Request> Recv(const Tensor& buf, int peer, int tag) override;
  void Barrier() override;
  double AllReduceScalar(double value, ReduceOp op) override;
  std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) override;

 private:
  friend class NcclRequest;

  // A Send or Recv issued but not yet enqueued.
  struct HeldPointToPoint {
    bool send = true;
    Tensor buf;
    int peer = 0;
    std::shared_ptr<NcclInFlight> op;
  };

  // Enqueues the held send/recv, then makes the communication stream wait for
  // the compute stream; returns the record of the collective `op` on `buf`
  // about to be enqueued (detail_suffix completes its description).
  std::shared_ptr<NcclInFlight> Begin(CommOp op, const Tensor& buf, std::string detail_suffix = "");
  // Records `op`'s completion event on the communication stream and hands it
  // to the watchdog.
  void Launched(const std::shared_ptr<NcclInFlight>& op);
  std::unique_ptr<Request> Hold(CommOp kind, const Tensor& buf, int peer, int tag);
  void FlushPointToPoint();
  void WaitForCompute();
  // Request::Wait(): the compute stream waits for `op` (enqueuing it first if
  // it is a held send/recv).
  void MakeComputeWait(NcclInFlight& op);

  MPI_Comm mpi_comm_;
  std::string name_;
  cudaStream_t compute_stream_;
  NcclOptions options_;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t compute_ready_ = nullptr;
  double* scratch_ = nullptr;      // device word for AllReduceScalar and Barrier
  double* host_scalar_ = nullptr;  // pinned host word for AllReduceScalar
  std::vector<HeldPointToPoint> held_;
  std::unique_ptr<NcclWatchdog> watchdog_;
};

}  // namespace latam
