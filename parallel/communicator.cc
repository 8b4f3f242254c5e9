#include "parallel/communicator.h"

#include "core/arena.h"

namespace latam {

namespace {
class DoneRequest : public Request {
 public:
  void Wait() override {}
};
}  // namespace

const char* CommOpName(CommOp op) {
  switch (op) {
    case CommOp::kAllReduce:
      return "all_reduce";
    case CommOp::kReduceScatter:
      return "reduce_scatter";
    case CommOp::kAllGather:
      return "all_gather";
    case CommOp::kBroadcast:
      return "broadcast";
    case CommOp::kSend:
      return "send";
    case CommOp::kRecv:
      return "recv";
    case CommOp::kCount:
      break;
  }
  return "?";
}

int64_t CommStats::total_bytes() const {
  int64_t t = 0;
  for (int64_t b : bytes) t += b;
  return t;
}

std::unique_ptr<Request> SelfCommunicator::AllReduce(const Tensor& buf, ReduceOp) {
  Count(CommOp::kAllReduce, buf);
  return std::make_unique<DoneRequest>();
}

std::unique_ptr<Request> SelfCommunicator::ReduceScatter(const Tensor& in, const Tensor& out) {
  LATAM_CHECK(in.bytes() == out.bytes(), "reduce-scatter of one rank: " << in.str() << " -> " << out.str());
  Count(CommOp::kReduceScatter, in);
  if (in.data != out.data) CopyTensor(out, in);
  return std::make_unique<DoneRequest>();
}

std::unique_ptr<Request> SelfCommunicator::AllGather(const Tensor& in, const Tensor& out) {
  LATAM_CHECK(in.bytes() == out.bytes(), "all-gather of one rank: " << in.str() << " -> " << out.str());
  Count(CommOp::kAllGather, out);
  if (in.data != out.data) CopyTensor(out, in);
  return std::make_unique<DoneRequest>();
}

std::unique_ptr<Request> SelfCommunicator::Broadcast(const Tensor& buf, int root) {
  LATAM_CHECK(root == 0, "broadcast root " << root << " in a group of one");
  Count(CommOp::kBroadcast, buf);
  return std::make_unique<DoneRequest>();
}

std::unique_ptr<Request> SelfCommunicator::Send(const Tensor&, int peer, int) {
  LATAM_CHECK(false, "send to rank " << peer << " in a group of one (" << name_ << ")");
}

std::unique_ptr<Request> SelfCommunicator::Recv(const Tensor&, int peer, int) {
  LATAM_CHECK(false, "recv from rank " << peer << " in a group of one (" << name_ << ")");
}

}  // namespace latam
