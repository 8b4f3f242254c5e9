// Collectives, point-to-point and the process grid over MPI, against
// results known in advance (the nccl-tests approach: every rank fills its
// buffer from its rank, so each output element has a closed form).
//
//   mpirun -np N test_collectives TENSOR PIPELINE DATA     (N = T x P x D)
#include <cstdlib>
#include <string>
#include <vector>

#include "parallel/grid.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_env.h"
#include "tests/mpi/mpi_check.h"

namespace latam {
namespace {

void CheckCollectives(Communicator& c, testing::MpiChecks& t) {
  const int n = c.size(), r = c.rank();
  const std::string g = c.name() + ": ";
  c.ResetStats();

  // all_reduce sum and max: element j of rank r holds (r + 1) * (j + 1).
  const int k = 37;
  std::vector<float> buf(k);
  for (int j = 0; j < k; ++j) buf[j] = static_cast<float>((r + 1) * (j + 1));
  c.AllReduceSync(Tensor::Of(buf.data(), {k}), ReduceOp::kSum);
  bool ok = true;
  for (int j = 0; j < k; ++j) ok &= buf[j] == static_cast<float>(n * (n + 1) / 2 * (j + 1));
  t.Check(ok, g + "all_reduce sum");
  for (int j = 0; j < k; ++j) buf[j] = static_cast<float>(r == n - 1 ? 1000 + j : j);
  c.AllReduceSync(Tensor::Of(buf.data(), {k}), ReduceOp::kMax);
  ok = true;
  for (int j = 0; j < k; ++j) ok &= buf[j] == static_cast<float>(1000 + j);
  t.Check(ok, g + "all_reduce max");
  std::vector<int32_t> ints(5, r);
  c.AllReduceSync(Tensor::Of(ints.data(), {5}), ReduceOp::kSum);
  t.Eq(ints[4], n * (n - 1) / 2, g + "all_reduce i32");

  // reduce_scatter: element i of rank q is q * 1000 + i; rank r gets block r summed.
  const int block = 11;
  std::vector<float> in(static_cast<size_t>(block) * n), out(block);
  for (int i = 0; i < block * n; ++i) in[i] = static_cast<float>(r * 1000 + i);
  c.ReduceScatter(Tensor::Of(in.data(), {block * n}), Tensor::Of(out.data(), {block}))->Wait();
  ok = true;
  for (int j = 0; j < block; ++j) ok &= out[j] == static_cast<float>(1000 * n * (n - 1) / 2 + n * (r * block + j));
  t.Check(ok, g + "reduce_scatter");
  // In place: the output is this rank's slot of the input.
  for (int i = 0; i < block * n; ++i) in[i] = static_cast<float>(r * 1000 + i);
  c.ReduceScatter(Tensor::Of(in.data(), {block * n}), Tensor::Of(in.data() + r * block, {block}))->Wait();
  ok = true;
  for (int j = 0; j < block; ++j) {
    ok &= in[r * block + j] == static_cast<float>(1000 * n * (n - 1) / 2 + n * (r * block + j));
  }
  t.Check(ok, g + "reduce_scatter in place");

  // all_gather, out of place and in place.
  std::vector<float> mine(block), gathered(static_cast<size_t>(block) * n);
  for (int j = 0; j < block; ++j) mine[j] = static_cast<float>(r * 100 + j);
  c.AllGather(Tensor::Of(mine.data(), {block}), Tensor::Of(gathered.data(), {block * n}))->Wait();
  ok = true;
  for (int q = 0; q < n; ++q) {
    for (int j = 0; j < block; ++j) ok &= gathered[q * block + j] == static_cast<float>(q * 100 + j);
  }
  t.Check(ok, g + "all_gather");
  std::vector<float> inplace(static_cast<size_t>(block) * n, -1.0f);
  for (int j = 0; j < block; ++j) inplace[r * block + j] = static_cast<float>(r * 7 + j);
  c.AllGather(Tensor::Of(inplace.data() + r * block, {block}), Tensor::Of(inplace.data(), {block * n}))->Wait();
  ok = true;
  for (int q = 0; q < n; ++q) {
    for (int j = 0; j < block; ++j) ok &= inplace[q * block + j] == static_cast<float>(q * 7 + j);
  }
  t.Check(ok, g + "all_gather in place");

  // broadcast from the last rank.
  std::vector<float> b(9, static_cast<float>(r));
  c.Broadcast(Tensor::Of(b.data(), {9}), n - 1)->Wait();
  t.Eq(b[8], static_cast<float>(n - 1), g + "broadcast");

  // A ring of send/recv with both requests in flight before either waits.
  if (n > 1) {
    std::vector<float> to_next(13, static_cast<float>(r)), from_prev(13, -1.0f);
    auto recv = c.Recv(Tensor::Of(from_prev.data(), {13}), (r + n - 1) % n, 7);
    auto send = c.Send(Tensor::Of(to_next.data(), {13}), (r + 1) % n, 7);
    send->Wait();
    recv->Wait();
    t.Eq(from_prev[12], static_cast<float>((r + n - 1) % n), g + "ring send/recv");
  }
  // Several non-blocking all-reduces in flight at once.
  std::vector<std::vector<float>> many(4, std::vector<float>(5, 1.0f));
  std::vector<std::unique_ptr<Request>> reqs;
  for (auto& m : many) reqs.push_back(c.AllReduce(Tensor::Of(m.data(), {5}), ReduceOp::kSum));
  for (auto& q : reqs) q->Wait();
  t.Eq(many[3][4], static_cast<float>(n), g + "concurrent all_reduce");
  t.Near(c.AllReduceScalar(0.5 * (r + 1), ReduceOp::kSum), 0.25 * n * (n + 1), 1e-12, g + "scalar all_reduce");
  c.Barrier();

  // Byte counters: payload per call.
  const CommStats& s = c.stats();
  t.Eq(s.calls_of(CommOp::kAllReduce), 7, g + "all_reduce calls");
  t.Eq(s.bytes_of(CommOp::kAllReduce), int64_t{4} * (2 * k + 5 + 4 * 5), g + "all_reduce bytes");
  t.Eq(s.bytes_of(CommOp::kReduceScatter), int64_t{8} * block * n, g + "reduce_scatter bytes");
  t.Eq(s.bytes_of(CommOp::kAllGather), int64_t{8} * block * n, g + "all_gather bytes");
  t.Eq(s.bytes_of(CommOp::kBroadcast), int64_t{36}, g + "broadcast bytes");
  t.Eq(s.bytes_of(CommOp::kSend), n > 1 ? int64_t{52} : 0, g + "send bytes");
}

}  // namespace
}  // namespace latam

int main(int argc, char** argv) {
  latam::MpiSession mpi(&argc, &argv);
  latam::testing::MpiChecks t("collectives");
  const auto parsed = latam::testing::GridShapeFromArgs(argc, argv, "test_collectives", mpi.world_size());
  if (!parsed) return 2;
  const latam::GridShape shape = *parsed;
  // Every check runs twice: blocking in MPI_Wait (no timeout), then polling
  // under the hang watchdog (a timeout no healthy check comes near).
  for (const double timeout_s : {0.0, 120.0}) {
    const std::string mode = timeout_s > 0 ? " (watchdog on)" : "";
    latam::ProcessGrid grid(std::make_unique<latam::MpiCommunicator>(MPI_COMM_WORLD, "world", timeout_s), shape);
    const int w = mpi.world_rank();
    // Megatron order: tensor innermost, then pipeline, then data.
    t.Eq(grid.tp_rank(), w % shape.tensor, "tp rank" + mode);
    t.Eq(grid.pp_rank(), (w / shape.tensor) % shape.pipeline, "pp rank" + mode);
    t.Eq(grid.dp_rank(), w / (shape.tensor * shape.pipeline), "dp rank" + mode);
    t.Eq(grid.tp().size(), shape.tensor, "tp size" + mode);
    t.Eq(grid.pp().size(), shape.pipeline, "pp size" + mode);
    t.Eq(grid.dp().size(), shape.data, "dp size" + mode);
    // Each group's members, identified by the sum of their world ranks.
    const auto sum_of_world_ranks = [&](latam::Communicator& c) {
      return static_cast<int>(c.AllReduceScalar(w, latam::ReduceOp::kSum));
    };
    const int t0 = w - grid.tp_rank();  // first world rank of my tp group
    t.Eq(sum_of_world_ranks(grid.tp()), shape.tensor * t0 + shape.tensor * (shape.tensor - 1) / 2,
         "tp members" + mode);
    const int p0 = w - grid.pp_rank() * shape.tensor;
    t.Eq(sum_of_world_ranks(grid.pp()),
         shape.pipeline * p0 + shape.tensor * shape.pipeline * (shape.pipeline - 1) / 2, "pp members" + mode);
    const int d0 = w - grid.dp_rank() * shape.tensor * shape.pipeline;
    t.Eq(sum_of_world_ranks(grid.dp()),
         shape.data * d0 + shape.tensor * shape.pipeline * shape.data * (shape.data - 1) / 2, "dp members" + mode);
    // The groups share the world's training position and its timeout.
    grid.position().BeginStep(3);
    for (latam::Communicator* c : {&grid.world(), &grid.tp(), &grid.pp(), &grid.dp(), &grid.model_parallel()}) {
      t.Check(&c->position() == &grid.position(), c->name() + ": shares the world's position" + mode);
      t.Eq(static_cast<latam::MpiCommunicator*>(c)->timeout_s(), timeout_s, c->name() + ": timeout" + mode);
      latam::CheckCollectives(*c, t);
    }
    grid.world().Barrier();
  }
  return t.Finish();
}
