// Communicator: collective and point-to-point operations on one group of
// ranks, with asynchronous handles and per-operation byte counters.
//
// Every operation is issued by all ranks of the group in the same order
// (send/recv excepted) and returns a Request; Wait() completes it. Buffers
// must stay alive and untouched until then. The MPI implementation works on
// host buffers; the NCCL one (GPU backend) implements the same interface on
// device buffers. SelfCommunicator is the group of one process: every
// collective is the identity, and it needs no MPI, so single-process code
// (tests, tools) runs the same model code as a distributed job.
//
// Semantics (n = group size, all tensors f32 unless stated):
//   AllReduce(buf, op)          buf <- op over ranks of buf            (in place)
//   ReduceScatter(in, out)      out <- sum over ranks of in[rank*k .. (rank+1)*k), k = out.numel()
//                               (out may be in's own slot in[rank*k ..): in-place,
//                               the rest of in is then left undefined)
//   AllGather(in, out)          out[r*k .. (r+1)*k) <- in of rank r,   k = in.numel()
//                               (in may alias out's own slot: in-place)
//   Broadcast(buf, root)        buf <- buf of root
//   Send(buf, peer, tag) / Recv(buf, peer, tag): point to point
// Byte counters record the payload each call hands to the operation: the
// buffer for all-reduce, broadcast, send and recv, the full input for
// reduce-scatter, the full output for all-gather.
//
// Every communicator carries a TrainingPosition (parallel/watchdog.h), the
// step and micro-batch the job is at, shared with every communicator split
// from it: the hang watchdog reports it, the Engine and the pipeline
// executor set it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "core/tensor.h"
#include "parallel/watchdog.h"

namespace latam {

enum class ReduceOp { kSum, kMax };

enum class CommOp { kAllReduce, kReduceScatter, kAllGather, kBroadcast, kSend, kRecv, kCount };
const char* CommOpName(CommOp op);

struct CommStats {
  std::array<int64_t, static_cast<size_t>(CommOp::kCount)> calls{};
  std::array<int64_t, static_cast<size_t>(CommOp::kCount)> bytes{};
  int64_t calls_of(CommOp op) const { return calls[static_cast<size_t>(op)]; }
  int64_t bytes_of(CommOp op) const { return bytes[static_cast<size_t>(op)]; }
  int64_t total_bytes() const;
};

class Request {
 public:
  virtual ~Request() = default;
  virtual void Wait() = 0;
};

class Communicator {
 public:
  explicit Communicator(std::shared_ptr<TrainingPosition> position) : position_(std::move(position)) {}
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // A short name for messages ("tp", "pp", "dp", ...).
  virtual const std::string& name() const = 0;

  virtual std::unique_ptr<Request> AllReduce(const Tensor& buf, ReduceOp op) = 0;
  virtual std::unique_ptr<Request> ReduceScatter(const Tensor& in, const Tensor& out) = 0;
  virtual std::unique_ptr<Request> AllGather(const Tensor& in, const Tensor& out) = 0;
  virtual std::unique_ptr<Request> Broadcast(const Tensor& buf, int root) = 0;
  virtual std::unique_ptr<Request> Send(const Tensor& buf, int peer, int tag) = 0;
  virtual std::unique_ptr<Request> Recv(const Tensor& buf, int peer, int tag) = 0;
  virtual void Barrier() = 0;

  // A new communicator over the ranks that pass the same `color`, ordered by
  // `key` (collective over this group, like MPI_Comm_split). Ranks passing a
  // negative color join no group and get nullptr.
  virtual std::unique_ptr<Communicator> Split(int color, int key, const std::string& name) = 0;

  // Blocking all-reduce of one double (losses, squared norms keep their
  // precision). Not counted in the byte statistics.
  virtual double AllReduceScalar(double value, ReduceOp op) = 0;

  // Blocking convenience.
  void AllReduceSync(const Tensor& buf, ReduceOp op) { AllReduce(buf, op)->Wait(); }

  const CommStats& stats() const { return stats_; }
  void ResetStats() { stats_ = CommStats(); }

  // Where training is; the same object for this communicator and every one
  // split from it.
  TrainingPosition& position() const { return *position_; }
  const std::shared_ptr<TrainingPosition>& shared_position() const { return position_; }

 protected:
  void Count(CommOp op, const Tensor& t) {
    ++stats_.calls[static_cast<size_t>(op)];
    stats_.bytes[static_cast<size_t>(op)] += static_cast<int64_t>(t.bytes());
  }
  CommStats stats_;
  std::shared_ptr<TrainingPosition> position_;
};

// The group of one process. Collectives copy or do nothing; send/recv abort
// (there is no peer).
class SelfCommunicator : public Communicator {
 public:
  explicit SelfCommunicator(std::string name = "self",
                            std::shared_ptr<TrainingPosition> position = std::make_shared<TrainingPosition>())
      : Communicator(std::move(position)), name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  const std::string& name() const override { return name_; }
  std::unique_ptr<Request> AllReduce(const Tensor& buf, ReduceOp op) override;
  std::unique_ptr<Request> ReduceScatter(const Tensor& in, const Tensor& out) override;
  std::unique_ptr<Request> AllGather(const Tensor& in, const Tensor& out) override;
  std::unique_ptr<Request> Broadcast(const Tensor& buf, int root) override;
  std::unique_ptr<Request> Send(const Tensor& buf, int peer, int tag) override;
  std::unique_ptr<Request> Recv(const Tensor& buf, int peer, int tag) override;
  void Barrier() override {}
  double AllReduceScalar(double value, ReduceOp) override { return value; }
  std::unique_ptr<Communicator> Split(int color, int, const std::string& name) override {
    return color < 0 ? nullptr : std::make_unique<SelfCommunicator>(name, position_);
  }

 private:
  std::string name_;
};

}  // namespace latam
