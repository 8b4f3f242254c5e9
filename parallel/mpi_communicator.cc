#include "parallel/mpi_communicator.h"

#include <cstdlib>
#include <cstring>
#include <functional>

#include "parallel/mpi_env.h"

namespace latam {

namespace {

class MpiRequest : public Request {
 public:
  MpiRequest(const MpiCommunicator* comm, CommOp op, const Tensor& buf, int peer)
      : comm_(comm), op_(op), buf_(buf), peer_(peer) {}
  ~MpiRequest() override {
    // A request must be completed before it is dropped: MPI still owns the buffer.
    if (request_ != MPI_REQUEST_NULL) Wait();
  }
  void Wait() override {
    comm_->Complete(&request_, CommOpName(op_), buf_, peer_);
    if (then_) {
      then_();
      then_ = nullptr;
    }
  }
  MPI_Request* get() { return &request_; }
  // Runs once, on the first Wait() that completes the operation.
  void Then(std::function<void()> fn) { then_ = std::move(fn); }

 private:
  const MpiCommunicator* comm_;
  const CommOp op_;
  const Tensor buf_;  // for the hang report
  const int peer_;    // -1: a collective
  MPI_Request request_ = MPI_REQUEST_NULL;
  std::function<void()> then_;
};

MPI_Datatype TypeOf(const Tensor& t) {
  switch (t.dtype) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kI32:
      return MPI_INT;
    case DType::kBF16:
      return MPI_UINT16_T;
  }
  return MPI_BYTE;
}

int Count32(int64_t n) {
  LATAM_CHECK(n >= 0 && n <= 0x7fffffff, "MPI message of " << n << " elements exceeds int32");
  return static_cast<int>(n);
}

void CheckHost(const Tensor& t, const std::string& comm) {
  LATAM_CHECK(t.device == Device::kCPU, "MPI communicator " << comm << " needs host buffers, got " << t.str());
}

}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::string name, double timeout_s,
                                 std::shared_ptr<TrainingPosition> position)
    : Communicator(std::move(position)), comm_(comm), name_(std::move(name)), timeout_s_(timeout_s) {
  MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  MPI_CHECK(MPI_Comm_size(comm_, &size_));
  world_ranks_ = WorldRanks(comm_);
  int* tag_ub = nullptr;
  int found = 0;
  MPI_CHECK(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &found));
  if (found && tag_ub != nullptr) max_tag_ = *tag_ub;
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_SELF && comm_ != MPI_COMM_NULL) {
    MPI_Comm_free(&comm_);
  }
}

std::unique_ptr<Request> MpiCommunicator::AllReduce(const Tensor& buf, ReduceOp op) {
  CheckHost(buf, name_);
  LATAM_CHECK(buf.dtype != DType::kBF16, "MPI all-reduce of bf16 is not supported");
  Count(CommOp::kAllReduce, buf);
  auto r = std::make_unique<MpiRequest>(this, CommOp::kAllReduce, buf, -1);
  MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf.data, Count32(buf.numel()), TypeOf(buf),
                           op == ReduceOp::kSum ? MPI_SUM : MPI_MAX, comm_, r->get()));
  return r;
}

std::unique_ptr<Request> MpiCommunicator::ReduceScatter(const Tensor& in, const Tensor& out) {
  CheckHost(in, name_);
  CheckHost(out, name_);
  LATAM_CHECK(in.dtype == out.dtype && in.numel() == out.numel() * size_,
              "reduce-scatter " << in.str() << " -> " << out.str() << " over " << size_ << " ranks");
  Count(CommOp::kReduceScatter, in);
  auto r = std::make_unique<MpiRequest>(this, CommOp::kReduceScatter, in, -1);
  char* own_slot = static_cast<char*>(in.data) + static_cast<size_t>(rank_) * out.bytes();
  if (out.data != own_slot) {
    MPI_CHECK(
        MPI_Ireduce_scatter_block(in.data, out.data, Count32(out.numel()), TypeOf(out), MPI_SUM, comm_, r->get()));
    return r;
  }
  // In place (out is this rank's slot of in, as NCCL defines it). MPI's
  // MPI_IN_PLACE reads the whole input from the receive buffer but leaves
  // the result at its start, so the share moves to its slot once complete.
  MPI_CHECK(MPI_Ireduce_scatter_block(MPI_IN_PLACE, in.data, Count32(out.numel()), TypeOf(out), MPI_SUM, comm_,
                                      r->get()));
  if (rank_ != 0) {
    void* dst = out.data;
    const void* src = in.data;
    const size_t bytes = out.bytes();
    r->Then([dst, src, bytes] { std::memmove(dst, src, bytes); });
  }
  return r;
}

std::unique_ptr<Request> MpiCommunicator::AllGather(const Tensor& in, const Tensor& out) {
  CheckHost(in, name_);
  CheckHost(out, name_);
  LATAM_CHECK(in.dtype == out.dtype && in.numel() * size_ == out.numel(),
              "all-gather " << in.str() << " -> " << out.str() << " over " << size_ << " ranks");
  Count(CommOp::kAllGather, out);
  auto r = std::make_unique<MpiRequest>(this, CommOp::kAllGather, out, -1);
  const char* own_slot = static_cast<const char*>(out.data) + static_cast<size_t>(rank_) * in.bytes();
  const void* send = in.data == own_slot ? MPI_IN_PLACE : in.data;
  MPI_CHECK(MPI_Iallgather(send, Count32(in.numel()), TypeOf(in), out.data, Count32(in.numel()), TypeOf(out), comm_,
                           r->get()));
  return r;
}

std::unique_ptr<Request> MpiCommunicator::Broadcast(const Tensor& buf, int root) {
  CheckHost(buf, name_);
  Count(CommOp::kBroadcast, buf);
  auto r = std::make_unique<MpiRequest>(this, CommOp::kBroadcast, buf, -1);
  MPI_CHECK(MPI_Ibcast(buf.data, Count32(buf.numel()), TypeOf(buf), root, comm_, r->get()));
  return r;
}

std::unique_ptr<Request> MpiCommunicator::Send(const Tensor& buf, int peer, int tag) {
  CheckHost(buf, name_);
  LATAM_CHECK(tag >= 0 && tag <= max_tag_, "tag " << tag << " outside [0, " << max_tag_ << "]");
  Count(CommOp::kSend, buf);
  auto r = std::make_unique<MpiRequest>(this, CommOp::kSend, buf, peer);
  MPI_CHECK(MPI_Isend(buf.data, Count32(buf.numel()), TypeOf(buf), peer, tag, comm_, r->get()));
  return r;
}

std::unique_ptr<Request> MpiCommunicator::Recv(const Tensor& buf, int peer, int tag) {
  CheckHost(buf, name_);
  LATAM_CHECK(tag >= 0 && tag <= max_tag_, "tag " << tag << " outside [0, " << max_tag_ << "]");
  Count(CommOp::kRecv, buf);
  auto r = std::make_unique<MpiRequest>(this, CommOp::kRecv, buf, peer);
  MPI_CHECK(MPI_Irecv(buf.data, Count32(buf.numel()), TypeOf(buf), peer, tag, comm_, r->get()));
  return r;
}

void MpiCommunicator::Complete(MPI_Request* request, const char* operation, const Tensor& buf, int peer) const {
  if (timeout_s_ <= 0) {
    MPI_CHECK(MPI_Wait(request, MPI_STATUS_IGNORE));
    return;
  }
  const PollOutcome outcome = PollUntilDone(
      [request] {
        int done = 0;
        MPI_CHECK(MPI_Test(request, &done, MPI_STATUS_IGNORE));
        return done != 0;
      },
      timeout_s_);
  if (outcome.done) return;
  HangReport report;
  report.operation = operation;
  if (buf.data != nullptr) report.detail = buf.str();
  report.group = name_;
  report.group_rank = rank_;
  report.group_size = size_;
  report.peers = peer >= 0 ? std::vector<int>{world_ranks_[static_cast<size_t>(peer)]} : OtherRanks(world_ranks_, rank_);
  report.step = position().step();
  report.micro_batch = position().micro_batch();
  report.waited_s = outcome.waited_s;
  report.timeout_s = timeout_s_;
  PrintHangReport(report);
  MPI_Abort(MPI_COMM_WORLD, kHangExitCode);
  std::_Exit(kHangExitCode);
}

void MpiCommunicator::Barrier() {
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_CHECK(MPI_Ibarrier(comm_, &request));
  Complete(&request, "barrier", Tensor(), -1);
}

double MpiCommunicator::AllReduceScalar(double value, ReduceOp op) {
  double out = 0.0;
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_CHECK(MPI_Iallreduce(&value, &out, 1, MPI_DOUBLE, op == ReduceOp::kSum ? MPI_SUM : MPI_MAX, comm_, &request));
  Complete(&request, "all_reduce", Tensor(), -1);
  return out;
}

std::unique_ptr<Communicator> MpiCommunicator::Split(int color, int key, const std::string& name) {
  MPI_Comm sub = MPI_COMM_NULL;
  MPI_CHECK(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, &sub));
  if (sub == MPI_COMM_NULL) return nullptr;
  return std::make_unique<MpiCommunicator>(sub, name, timeout_s_, position_);
}

}  // namespace latam
