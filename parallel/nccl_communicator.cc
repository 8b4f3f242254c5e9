#include "parallel/nccl_communicator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "core/cuda_check.h"
#include "parallel/mpi_env.h"
#include "parallel/nccl_check.h"

namespace latam {

using NcclClock = std::chrono::steady_clock;

// One operation as the watchdog sees it.
struct NcclInFlight {
  NcclInFlight(std::string operation_in, std::string detail_in, int peer_in)
      : operation(std::move(operation_in)), detail(std::move(detail_in)), peer(peer_in), since(NcclClock::now()) {}
  ~NcclInFlight() {
    if (done != nullptr) cudaEventDestroy(done);
  }
  NcclInFlight(const NcclInFlight&) = delete;
  NcclInFlight& operator=(const NcclInFlight&) = delete;

  const std::string operation;  // "all_reduce", "send", "communicator creation (ncclCommInitRankConfig)", ...
  const std::string detail;     // the buffer, "bf16[4096]@cuda"; may be empty
  const int peer;               // group rank of a send/recv's peer; -1: every other rank
  const NcclClock::time_point since;
  // Recorded on the communication stream after the operation. nullptr for a
  // send/recv still held, and for host-side steps (creation, finalisation),
  // which the communicator removes from the watchdog itself.
  cudaEvent_t done = nullptr;
};

// The watchdog thread (contract in the header). Every member is guarded by
// mu_; the thread holds mu_ while it polls (cudaEventQuery and
// ncclCommGetAsyncError return at once), so the communicator never has to
// worry about an event or the NCCL communicator being used while it frees
// them.
class NcclWatchdog {
 public:
  NcclWatchdog(const std::string& group, int rank, int size, std::vector<int> world_ranks, int device,
               double timeout_s, std::shared_ptr<const TrainingPosition> position)
      : group_(group),
        rank_(rank),
        size_(size),
        world_ranks_(std::move(world_ranks)),
        device_(device),
        position_(std::move(position)),
        timeout_(timeout_s),
        poll_(timeout_s > 0 ? std::clamp(timeout_s / 4, 0.001, 0.1) : 0.1),
        thread_([this] { Run(); }) {}

  ~NcclWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  NcclWatchdog(const NcclWatchdog&) = delete;
  NcclWatchdog& operator=(const NcclWatchdog&) = delete;

  void Track(std::shared_ptr<NcclInFlight> op) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ops_.push_back(std::move(op));
    }
    cv_.notify_all();
  }
  // Ends the watch of a host-side step (no completion event).
  void Untrack(const NcclInFlight* op) {
    std::lock_guard<std::mutex> lock(mu_);
    std::erase_if(ops_, [op](const std::shared_ptr<NcclInFlight>& o) { return o.get() == op; });
  }
  // The NCCL communicator to poll and to abort; nullptr before it exists.
  void Watch(ncclComm_t comm) {
    std::lock_guard<std::mutex> lock(mu_);
    comm_ = comm;
  }

 private:
  void Run() {
    // Events are queried (and destroyed, when the watchdog drops the last
    // reference) on the communicator's device.
    CUDA_CHECK(cudaSetDevice(device_));
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [this] { return stop_ || !ops_.empty(); });
      if (cv_.wait_for(lock, poll_, [this] { return stop_; })) return;
      Poll();
    }
  }

  // Drops the completed operations; fails on an error or a timeout.
  void Poll() {
    if (ops_.empty()) return;
    if (comm_ != nullptr) {
      ncclResult_t async = ncclSuccess;
      const ncclResult_t queried = ncclCommGetAsyncError(comm_, &async);
      const ncclResult_t error = queried != ncclSuccess ? queried : async;
      if (error != ncclSuccess && error != ncclInProgress) Fail(*ops_.front(), NcclErrorMessage(error));
    }
    const NcclClock::time_point now = NcclClock::now();
    std::erase_if(ops_, [&](const std::shared_ptr<NcclInFlight>& op) {
      if (op->done != nullptr) {
        const cudaError_t status = cudaEventQuery(op->done);
        if (status == cudaSuccess) return true;
        if (status != cudaErrorNotReady) {
          Fail(*op, std::string("CUDA error ") + cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
        }
      }
      if (timeout_.count() > 0 && now - op->since > timeout_) Hang(*op, now);
      return false;
    });
  }

  // NCCL or CUDA reported an error: not a hang, so the process aborts
  // (exit code 1 class: a core dump, the launcher restarts the job).
  [[noreturn]] void Fail(const NcclInFlight& op, const std::string& error) {
    std::fprintf(stderr,
                 "[rank %s] FATAL NCCL watchdog: %s%s%s on group %s (rank %d of %d, device %d) failed: %s; "
                 "aborting the communicator and the process\n",
                 ProcessRankLabel().c_str(), op.operation.c_str(), op.detail.empty() ? "" : " ", op.detail.c_str(),
                 group_.c_str(), rank_, size_, device_, error.c_str());
    std::fflush(stderr);
    if (comm_ != nullptr) ncclCommAbort(comm_);
    std::abort();
  }

  // The operation outlived the timeout: the hang report the MPI path prints
  // (parallel/watchdog.h), then exit code 4. This thread is not MPI's, so
  // it exits the process and leaves ending the other ranks to the launcher.
  [[noreturn]] void Hang(const NcclInFlight& op, NcclClock::time_point now) {
    HangReport report;
    report.operation = op.operation;
    report.detail = op.detail;
    report.group = group_;
    report.group_rank = rank_;
    report.group_size = size_;
    report.peers =
        op.peer >= 0 ? std::vector<int>{world_ranks_[static_cast<size_t>(op.peer)]} : OtherRanks(world_ranks_, rank_);
    report.step = position_->step();
    report.micro_batch = position_->micro_batch();
    report.waited_s = std::chrono::duration<double>(now - op.since).count();
    report.timeout_s = timeout_.count();
    PrintHangReport(report);
    if (comm_ != nullptr) ncclCommAbort(comm_);
    std::_Exit(kHangExitCode);
  }

  const std::string group_;
  const int rank_, size_;
  const std::vector<int> world_ranks_;  // world rank of each group rank
  const int device_;
  const std::shared_ptr<const TrainingPosition> position_;
  const std::chrono::duration<double> timeout_;
  const std::chrono::duration<double> poll_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<NcclInFlight>> ops_;  // oldest first
  ncclComm_t comm_ = nullptr;
  bool stop_ = false;
  std::thread thread_;  // last: it starts once everything above exists
};

class NcclRequest : public Request {
 public:
  NcclRequest(NcclCommunicator* comm, std::shared_ptr<NcclInFlight> op) : comm_(comm), op_(std::move(op)) {}
  ~NcclRequest() override { Wait(); }
  NcclRequest(const NcclRequest&) = delete;
  NcclRequest& operator=(const NcclRequest&) = delete;

  void Wait() override {
    if (op_ == nullptr) return;
    comm_->MakeComputeWait(*op_);
    op_.reset();
  }

 private:
  NcclCommunicator* comm_;
  std::shared_ptr<NcclInFlight> op_;
};

namespace {

ncclDataType_t NcclTypeOf(const Tensor& t) {
  switch (t.dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kI32:
      return ncclInt32;
  }
  LATAM_CHECK(false, "no NCCL type for " << t.str());
}

ncclRedOp_t NcclOpOf(ReduceOp op) { return op == ReduceOp::kSum ? ncclSum : ncclMax; }

size_t Elements(const Tensor& t) { return static_cast<size_t>(t.numel()); }

void CheckDevice(const Tensor& t, const std::string& comm) {
  LATAM_CHECK(t.device == Device::kCUDA, "NCCL communicator " << comm << " needs device buffers, got " << t.str());
}

}  // namespace

Result<NcclOptions> NcclOptionsFromEnvironment(NcclOptions defaults) {
  NcclOptions options = defaults;
  const char* value = std::getenv("LATAM_NCCL_TIMEOUT_S");
  if (value == nullptr || value[0] == '\0') return options;
  char* end = nullptr;
  const double seconds = std::strtod(value, &end);
  if (end == value || *end != '\0' || !std::isfinite(seconds) || seconds < 0) {
    return Status::InvalidInput(std::string("LATAM_NCCL_TIMEOUT_S=") + value +
                                ": expected a number of seconds >= 0 (0 turns the NCCL timeout off)");
  }
  options.timeout_s = seconds;
  return options;
}

NcclCommunicator::NcclCommunicator(MPI_Comm comm, std::string name, cudaStream_t compute_stream, NcclOptions options,
                                   std::shared_ptr<TrainingPosition> position)
    : Communicator(std::move(position)),
      mpi_comm_(comm),
      name_(std::move(name)),
      compute_stream_(compute_stream),
      options_(options) {
  MPI_CHECK(MPI_Comm_rank(mpi_comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(mpi_comm_, &size_));
  CUDA_CHECK(cudaGetDevice(&device_));
  ncclUniqueId id{};
  if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, mpi_comm_));

  watchdog_ = std::make_unique<NcclWatchdog>(name_, rank_, size_, WorldRanks(mpi_comm_), device_, options_.timeout_s,
                                             position_);
  const auto creation = std::make_shared<NcclInFlight>("communicator creation (ncclCommInitRankConfig)", "", -1);
  watchdog_->Track(creation);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.commName = name_.c_str();  // names the group in NCCL_DEBUG output
  NCCL_CHECK(ncclCommInitRankConfig(&comm_, size_, id, rank_, &config));
  watchdog_->Untrack(creation.get());
  watchdog_->Watch(comm_);

  // Communication kernels get the device's highest priority, so that they
  // start as soon as they are ready instead of queueing behind compute.
  int least_priority = 0, greatest_priority = 0;
  CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least_priority, &greatest_priority));
  CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest_priority));
  CUDA_CHECK(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming));
  CUDA_CHECK(cudaMalloc(&scratch_, sizeof(double)));
  CUDA_CHECK(cudaMemsetAsync(scratch_, 0, sizeof(double), stream_));
  CUDA_CHECK(cudaMallocHost(&host_scalar_, sizeof(double)));
}

NcclCommunicator::~NcclCommunicator() {
  FlushPointToPoint();
  CUDA_CHECK(cudaStreamSynchronize(stream_));
  const auto finalisation = std::make_shared<NcclInFlight>("communicator finalisation (ncclCommFinalize)", "", -1);
  watchdog_->Track(finalisation);
  NCCL_CHECK(ncclCommFinalize(comm_));
  watchdog_->Untrack(finalisation.get());
  watchdog_.reset();  // joined before the NCCL communicator is freed
  NCCL_CHECK(ncclCommDestroy(comm_));
  CUDA_CHECK(cudaFreeHost(host_scalar_));
  CUDA_CHECK(cudaFree(scratch_));
  CUDA_CHECK(cudaEventDestroy(compute_ready_));
  CUDA_CHECK(cudaStreamDestroy(stream_));
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && mpi_comm_ != MPI_COMM_WORLD && mpi_comm_ != MPI_COMM_SELF && mpi_comm_ != MPI_COMM_NULL) {
    MPI_Comm_free(&mpi_comm_);
  }
}

void NcclCommunicator::WaitForCompute() {
  CUDA_CHECK(cudaEventRecord(compute_ready_, compute_stream_));
  CUDA_CHECK(cudaStreamWaitEvent(stream_, compute_ready_, 0));
}

std::shared_ptr<NcclInFlight> NcclCommunicator::Begin(CommOp op, const Tensor& buf, std::string detail_suffix) {
  FlushPointToPoint();
  WaitForCompute();
  return std::make_shared<NcclInFlight>(CommOpName(op), buf.str() + detail_suffix, -1);
}

void NcclCommunicator::Launched(const std::shared_ptr<NcclInFlight>& op) {
  CUDA_CHECK(cudaEventCreateWithFlags(&op->done, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(op->done, stream_));
  watchdog_->Track(op);
}

void NcclCommunicator::MakeComputeWait(NcclInFlight& op) {
  if (op.done == nullptr) FlushPointToPoint();
  CUDA_CHECK(cudaStreamWaitEvent(compute_stream_, op.done, 0));
}

std::unique_ptr<Request> NcclCommunicator::AllReduce(const Tensor& buf, ReduceOp op) {
  CheckDevice(buf, name_);
  Count(CommOp::kAllReduce, buf);
  auto inflight = Begin(CommOp::kAllReduce, buf);
  NCCL_CHECK(ncclAllReduce(buf.data, buf.data, Elements(buf), NcclTypeOf(buf), NcclOpOf(op), comm_, stream_));
  Launched(inflight);
  return std::make_unique<NcclRequest>(this, std::move(inflight));
}

// out (k elements) <- sum over ranks of in[rank*k .. (rank+1)*k).
std::unique_ptr<Request> NcclCommunicator::ReduceScatter(const Tensor& in, const Tensor& out) {
  CheckDevice(in, name_);
  CheckDevice(out, name_);
  LATAM_CHECK(in.dtype == out.dtype && in.numel() == out.numel() * size_,
              "reduce-scatter " << in.str() << " -> " << out.str() << " over " << size_ << " ranks");
  Count(CommOp::kReduceScatter, in);
  auto inflight = Begin(CommOp::kReduceScatter, in);
  NCCL_CHECK(ncclReduceScatter(in.data, out.data, Elements(out), NcclTypeOf(out), ncclSum, comm_, stream_));
  Launched(inflight);
  return std::make_unique<NcclRequest>(this, std::move(inflight));
}

// out[r*k .. (r+1)*k) <- in of rank r. NCCL runs in place by itself when `in`
// is this rank's slot of `out`.
std::unique_ptr<Request> NcclCommunicator::AllGather(const Tensor& in, const Tensor& out) {
  CheckDevice(in, name_);
  CheckDevice(out, name_);
  LATAM_CHECK(in.dtype == out.dtype && in.numel() * size_ == out.numel(),
              "all-gather " << in.str() << " -> " << out.str() << " over " << size_ << " ranks");
  Count(CommOp::kAllGather, out);
  auto inflight = Begin(CommOp::kAllGather, out);
  NCCL_CHECK(ncclAllGather(in.data, out.data, Elements(in), NcclTypeOf(in), comm_, stream_));
  Launched(inflight);
  return std::make_unique<NcclRequest>(this, std::move(inflight));
}

std::unique_ptr<Request> NcclCommunicator::Broadcast(const Tensor& buf, int root) {
  CheckDevice(buf, name_);
  LATAM_CHECK(root >= 0 && root < size_, "broadcast root " << root << " in group " << name_ << " of " << size_);
  Count(CommOp::kBroadcast, buf);
  auto inflight = Begin(CommOp::kBroadcast, buf, " from group rank " + std::to_string(root));
  NCCL_CHECK(ncclBroadcast(buf.data, buf.data, Elements(buf), NcclTypeOf(buf), root, comm_, stream_));
  Launched(inflight);
  return std::make_unique<NcclRequest>(this, std::move(inflight));
}

std::unique_ptr<Request> NcclCommunicator::Send(const Tensor& buf, int peer, int tag) {
  return Hold(CommOp::kSend, buf, peer, tag);
}

std::unique_ptr<Request> NcclCommunicator::Recv(const Tensor& buf, int peer, int tag) {
  return Hold(CommOp::kRecv, buf, peer, tag);
}

std::unique_ptr<Request> NcclCommunicator::Hold(CommOp kind, const Tensor& buf, int peer, int tag) {
  CheckDevice(buf, name_);
  LATAM_CHECK(peer >= 0 && peer < size_, CommOpName(kind)
                                             << " peer " << peer << " in group " << name_ << " of " << size_);
  LATAM_CHECK(tag >= 0, CommOpName(kind) << " tag " << tag << " is negative");
  Count(kind, buf);
  WaitForCompute();
  const bool send = kind == CommOp::kSend;
  auto inflight = std::make_shared<NcclInFlight>(CommOpName(kind), buf.str(), peer);
  held_.push_back(HeldPointToPoint{send, buf, peer, inflight});
  return std::make_unique<NcclRequest>(this, std::move(inflight));
}

void NcclCommunicator::FlushPointToPoint() {
  if (held_.empty()) return;
  NCCL_CHECK(ncclGroupStart());
  for (const HeldPointToPoint& p : held_) {
    if (p.send) {
      NCCL_CHECK(ncclSend(p.buf.data, Elements(p.buf), NcclTypeOf(p.buf), p.peer, comm_, stream_));
    } else {
      NCCL_CHECK(ncclRecv(p.buf.data, Elements(p.buf), NcclTypeOf(p.buf), p.peer, comm_, stream_));
    }
  }
  NCCL_CHECK(ncclGroupEnd());
  for (const HeldPointToPoint& p : held_) Launched(p.op);
  held_.clear();
}

void NcclCommunicator::Barrier() {
  // The maximum keeps the scratch word finite however many barriers run.
  FlushPointToPoint();
  WaitForCompute();
  auto inflight = std::make_shared<NcclInFlight>("barrier", "", -1);
  NCCL_CHECK(ncclAllReduce(scratch_, scratch_, 1, ncclFloat64, ncclMax, comm_, stream_));
  Launched(inflight);
  CUDA_CHECK(cudaEventSynchronize(inflight->done));
}

double NcclCommunicator::AllReduceScalar(double value, ReduceOp op) {
  // The value comes from the host: no wait for the compute stream.
  FlushPointToPoint();
  auto inflight = std::make_shared<NcclInFlight>("all_reduce", op == ReduceOp::kSum ? "f64 scalar (sum)" : "f64 scalar (max)", -1);
  *host_scalar_ = value;
  CUDA_CHECK(cudaMemcpyAsync(scratch_, host_scalar_, sizeof(double), cudaMemcpyHostToDevice, stream_));
  NCCL_CHECK(ncclAllReduce(scratch_, scratch_, 1, ncclFloat64, NcclOpOf(op), comm_, stream_));
  CUDA_CHECK(cudaMemcpyAsync(host_scalar_, scratch_, sizeof(double), cudaMemcpyDeviceToHost, stream_));
  Launched(inflight);
  CUDA_CHECK(cudaEventSynchronize(inflight->done));
  return *host_scalar_;
}

// A fresh MPI communicator and NCCL bootstrap per sub-group (rather than
// ncclCommSplit): one creation path for every group, and the sub-group keeps
// an MPI communicator of its own for its own splits.
std::unique_ptr<Communicator> NcclCommunicator::Split(int color, int key, const std::string& name) {
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split(mpi_comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub));
  if (sub == MPI_COMM_NULL) return nullptr;
  return std::make_unique<NcclCommunicator>(sub, name, compute_stream_, options_, position_);
}

}  // namespace latam
