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
  explicit NcclInFlight(std::string what_in) : what(std::move(what_in)), since(NcclClock::now()) {}
  ~NcclInFlight() {
    if (done != nullptr) cudaEventDestroy(done);
  }
  NcclInFlight(const NcclInFlight&) = delete;
  NcclInFlight& operator=(const NcclInFlight&) = delete;

  const std::string what;  // "all_reduce bf16[4096]@cuda", "communicator creation", ...
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
  NcclWatchdog(const std::string& group, int rank, int size, int device, double timeout_s)
      : group_(group),
        rank_(rank),
        size_(size),
        device_(device),
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
      if (error != ncclSuccess && error != ncclInProgress) Fail(*ops_.front(), "failed: " + NcclErrorMessage(error));
    }
    const NcclClock::time_point now = NcclClock::now();
    std::erase_if(ops_, [&](const std::shared_ptr<NcclInFlight>& op) {
      if (op->done != nullptr) {
        const cudaError_t status = cudaEventQuery(op->done);
        if (status == cudaSuccess) return true;
        if (status != cudaErrorNotReady) {
          Fail(*op, std::string("failed: CUDA error ") + cudaGetErrorName(status) + ": " + cudaGetErrorString(status));
        }
      }
      if (timeout_.count() > 0 && now - op->since > timeout_) Fail(*op, "has not completed");
      return false;
    });
  }

  [[noreturn]] void Fail(const NcclInFlight& op, const std::string& what_happened) {
    const double elapsed = std::chrono::duration<double>(NcclClock::now() - op.since).count();
    char timeout[32] = "off";
    if (timeout_.count() > 0) std::snprintf(timeout, sizeof(timeout), "%.1f s", timeout_.count());
    std::fprintf(stderr,
                 "[rank %s] FATAL NCCL watchdog: %s on group '%s' (rank %d of %d, device %d) %s after %.1f s "
                 "(timeout %s, LATAM_NCCL_TIMEOUT_S); aborting the communicator and the process\n",
                 ProcessRankLabel().c_str(), op.what.c_str(), group_.c_str(), rank_, size_, device_,
                 what_happened.c_str(), elapsed, timeout);
    std::fflush(stderr);
    if (comm_ != nullptr) ncclCommAbort(comm_);
    std::abort();
  }

  const std::string group_;
  const int rank_, size_, device_;
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

std::string Describe(CommOp op, const Tensor& t) { return std::string(CommOpName(op)) + " " + t.str(); }

}  // namespace

Result<NcclOptions> NcclOptionsFromEnvironment() {
  NcclOptions options;
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

NcclCommunicator::NcclCommunicator(MPI_Comm comm, std::string name, cudaStream_t compute_stream, NcclOptions options)
    : mpi_comm_(comm), name_(std::move(name)), compute_stream_(compute_stream), options_(options) {
  MPI_CHECK(MPI_Comm_rank(mpi_comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(mpi_comm_, &size_));
  CUDA_CHECK(cudaGetDevice(&device_));
  ncclUniqueId id{};
  if (rank_ == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  MPI_CHECK(MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, mpi_comm_));

  watchdog_ = std::make_unique<NcclWatchdog>(name_, rank_, size_, device_, options_.timeout_s);
  const auto creation = std::make_shared<NcclInFlight>("communicator creation (ncclCommInitRankConfig)");
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
  const auto finalisation = std::make_shared<NcclInFlight>("communicator finalisation (ncclCommFinalize)");
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

std::shared_ptr<NcclInFlight> NcclCommunicator::Begin(std::string what) {
  FlushPointToPoint();
  WaitForCompute();
  return std::make_shared<NcclInFlight>(std::move(what));
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
  auto inflight = Begin(Describe(CommOp::kAllReduce, buf));
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
  auto inflight = Begin(Describe(CommOp::kReduceScatter, in));
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
  auto inflight = Begin(Describe(CommOp::kAllGather, out));
  NCCL_CHECK(ncclAllGather(in.data, out.data, Elements(in), NcclTypeOf(in), comm_, stream_));
  Launched(inflight);
  return std::make_unique<NcclRequest>(this, std::move(inflight));
}

std::unique_ptr<Request> NcclCommunicator::Broadcast(const Tensor& buf, int root) {
  CheckDevice(buf, name_);
  LATAM_CHECK(root >= 0 && root < size_, "broadcast root " << root << " in group " << name_ << " of " << size_);
  Count(CommOp::kBroadcast, buf);
  auto inflight = Begin(Describe(CommOp::kBroadcast, buf) + " from rank " + std::to_string(root));
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
  auto inflight =
      std::make_shared<NcclInFlight>(Describe(kind, buf) + (send ? " to rank " : " from rank ") + std::to_string(peer));
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
  auto inflight = Begin("barrier");
  NCCL_CHECK(ncclAllReduce(scratch_, scratch_, 1, ncclFloat64, ncclMax, comm_, stream_));
  Launched(inflight);
  CUDA_CHECK(cudaEventSynchronize(inflight->done));
}

double NcclCommunicator::AllReduceScalar(double value, ReduceOp op) {
  // The value comes from the host: no wait for the compute stream.
  FlushPointToPoint();
  auto inflight =
      std::make_shared<NcclInFlight>(op == ReduceOp::kSum ? "scalar all_reduce (sum)" : "scalar all_reduce (max)");
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
  return std::make_unique<NcclCommunicator>(sub, name, compute_stream_, options_);
}

}  // namespace latam
