// Collectives, point-to-point and group splitting over NCCL on device
// buffers, against results known in advance (the nccl-tests approach, as in
// test_collectives.cc: every rank fills its buffers from its rank, so each
// output element has a closed form). Every check runs on f32 and bf16, on
// every group of a TENSOR x PIPELINE x DATA grid and on an explicit Split.
//
//   mpirun -np N test_nccl_collectives TENSOR PIPELINE DATA   (N = T x P x D <= 8)
//
// One GPU per rank: when some node sees fewer CUDA devices than it runs
// ranks, every rank exits 77 (ctest's skip code) before touching NCCL.
// Inputs are small integers chosen so that every partial sum of a reduction
// is an integer of at most 256, exact in bf16, for groups of up to 8 ranks.
// Buffers move to and from the device by asynchronous copies on the compute
// stream, so a collective that did not wait for the compute stream, or a
// Wait() that did not order the compute stream after the collective, reads
// or returns stale data.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/cuda_check.h"
#include "kernels/cuda/device.h"
#include "parallel/grid.h"
#include "parallel/mpi_env.h"
#include "parallel/nccl_communicator.h"
#include "tests/mpi/mpi_check.h"

namespace latam {
namespace {

constexpr int kSkipped = 77;

template <typename T>
T FromInt(int v);
template <>
float FromInt<float>(int v) {
  return static_cast<float>(v);
}
template <>
BF16 FromInt<BF16>(int v) {
  return BF16::FromFloat(static_cast<float>(v));
}
template <>
int32_t FromInt<int32_t>(int v) {
  return v;
}
float ToFloat(float v) { return v; }
float ToFloat(BF16 v) { return v.ToFloat(); }
float ToFloat(int32_t v) { return static_cast<float>(v); }

// n elements of T on the device, staged through pinned host memory; every
// transfer runs on `stream` (the compute stream).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer(int n, cudaStream_t stream)
      : n_(n), stream_(stream), device_(Device::kCUDA, static_cast<size_t>(n) * sizeof(T)) {
    CUDA_CHECK(cudaMallocHost(&host_, static_cast<size_t>(n) * sizeof(T)));
  }
  ~DeviceBuffer() { cudaFreeHost(host_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Element i <- value(i), by a copy enqueued on the stream (not waited for).
  template <typename F>
  void Fill(F value) {
    CUDA_CHECK(cudaStreamSynchronize(stream_));  // earlier copies out of host_ are done
    for (int i = 0; i < n_; ++i) host_[i] = FromInt<T>(value(i));
    CUDA_CHECK(cudaMemcpyAsync(device_.data(), host_, bytes(), cudaMemcpyHostToDevice, stream_));
  }
  // The contents once everything enqueued on the stream so far has run.
  std::vector<float> Read() {
    CUDA_CHECK(cudaMemcpyAsync(host_, device_.data(), bytes(), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<float> out(static_cast<size_t>(n_));
    for (int i = 0; i < n_; ++i) out[static_cast<size_t>(i)] = ToFloat(host_[i]);
    return out;
  }
  Tensor tensor() const { return Slice(0, n_); }
  Tensor Slice(int begin, int count) const {
    return device_.View(static_cast<size_t>(begin) * sizeof(T), DTypeOf<T>::value, {count});
  }

 private:
  size_t bytes() const { return static_cast<size_t>(n_) * sizeof(T); }
  int n_;
  cudaStream_t stream_;
  Arena device_;
  T* host_ = nullptr;
};

// True when v[i] == expected(i) for every i.
template <typename F>
bool AllEqual(const std::vector<float>& v, F expected) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != static_cast<float>(expected(static_cast<int>(i)))) return false;
  }
  return true;
}

template <typename T>
void CheckTyped(Communicator& c, testing::MpiChecks& t, cudaStream_t s) {
  const int n = c.size(), r = c.rank();
  const std::string g = c.name() + " " + DTypeName(DTypeOf<T>::value) + ": ";
  c.ResetStats();

  // all_reduce sum: element j of rank q holds (q + 1) * (j % 4 + 1).
  const int k = 37;
  DeviceBuffer<T> a(k, s);
  a.Fill([&](int j) { return (r + 1) * (j % 4 + 1); });
  c.AllReduceSync(a.tensor(), ReduceOp::kSum);
  t.Check(AllEqual(a.Read(), [&](int j) { return n * (n + 1) / 2 * (j % 4 + 1); }), g + "all_reduce sum");
  // all_reduce max: the last rank holds 100 + j % 50, the others j % 50.
  a.Fill([&](int j) { return (r == n - 1 ? 100 : 0) + j % 50; });
  c.AllReduceSync(a.tensor(), ReduceOp::kMax);
  t.Check(AllEqual(a.Read(), [](int j) { return 100 + j % 50; }), g + "all_reduce max");
  // A large buffer, its input copy still in flight on the compute stream
  // when the all-reduce is issued.
  const int large_n = 1 << 22;
  DeviceBuffer<T> large(large_n, s);
  large.Fill([&](int) { return r + 1; });
  c.AllReduce(large.tensor(), ReduceOp::kSum)->Wait();
  t.Check(AllEqual(large.Read(), [&](int) { return n * (n + 1) / 2; }), g + "large all_reduce, stream-ordered");

  // reduce_scatter: element i of rank q is q + 4 * (i % 5); rank r gets block r summed.
  const int block = 11;
  DeviceBuffer<T> in(block * n, s), out(block, s);
  in.Fill([&](int i) { return r + 4 * (i % 5); });
  c.ReduceScatter(in.tensor(), out.tensor())->Wait();
  t.Check(AllEqual(out.Read(), [&](int j) { return n * (n - 1) / 2 + 4 * n * ((r * block + j) % 5); }),
          g + "reduce_scatter");
  // In place: the output is this rank's slot of the input.
  in.Fill([&](int i) { return r + 4 * (i % 5); });
  c.ReduceScatter(in.tensor(), in.Slice(r * block, block))->Wait();
  {
    const std::vector<float> got = in.Read();
    bool same = true;
    for (int j = 0; j < block; ++j) {
      same &= got[r * block + j] == static_cast<float>(n * (n - 1) / 2 + 4 * n * ((r * block + j) % 5));
    }
    t.Check(same, g + "reduce_scatter in place");
  }

  // all_gather, out of place and in place (the input is this rank's slot of the output).
  DeviceBuffer<T> mine(block, s), gathered(block * n, s);
  mine.Fill([&](int j) { return r * 16 + j; });
  c.AllGather(mine.tensor(), gathered.tensor())->Wait();
  t.Check(AllEqual(gathered.Read(), [&](int i) { return i / block * 16 + i % block; }), g + "all_gather");
  DeviceBuffer<T> inplace(block * n, s);
  inplace.Fill([&](int i) { return i / block == r ? r * 7 + i % block : -1; });
  c.AllGather(inplace.Slice(r * block, block), inplace.tensor())->Wait();
  t.Check(AllEqual(inplace.Read(), [&](int i) { return i / block * 7 + i % block; }), g + "all_gather in place");

  // broadcast from the last rank.
  DeviceBuffer<T> b(9, s);
  b.Fill([&](int j) { return r * 10 + j; });
  c.Broadcast(b.tensor(), n - 1)->Wait();
  t.Check(AllEqual(b.Read(), [&](int j) { return (n - 1) * 10 + j; }), g + "broadcast");

  // A ring of send/recv: the receive is posted first and both are in flight
  // before either is waited for.
  if (n > 1) {
    const int next = (r + 1) % n, prev = (r + n - 1) % n;
    DeviceBuffer<T> to_next(13, s), from_prev(13, s);
    to_next.Fill([&](int j) { return r * 16 + j; });
    from_prev.Fill([](int) { return -1; });
    auto recv = c.Recv(from_prev.tensor(), prev, 7);
    auto send = c.Send(to_next.tensor(), next, 7);
    send->Wait();
    recv->Wait();
    t.Check(AllEqual(from_prev.Read(), [&](int j) { return prev * 16 + j; }), g + "ring send/recv");
  }

  // Four all-reduces in flight at once, waited for in reverse order.
  std::vector<std::unique_ptr<DeviceBuffer<T>>> many;
  std::vector<std::unique_ptr<Request>> requests;
  for (int m = 0; m < 4; ++m) {
    many.push_back(std::make_unique<DeviceBuffer<T>>(5, s));
    many.back()->Fill([&](int) { return m + 1; });
    requests.push_back(c.AllReduce(many.back()->tensor(), ReduceOp::kSum));
  }
  for (auto it = requests.rbegin(); it != requests.rend(); ++it) (*it)->Wait();
  for (int m = 0; m < 4; ++m) {
    t.Check(AllEqual(many[static_cast<size_t>(m)]->Read(), [&](int) { return (m + 1) * n; }),
            g + "concurrent all_reduce " + std::to_string(m));
  }

  // Byte counters: the payload each call hands over.
  const int64_t e = sizeof(T);
  const CommStats& st = c.stats();
  t.Eq(st.calls_of(CommOp::kAllReduce), 7, g + "all_reduce calls");
  t.Eq(st.bytes_of(CommOp::kAllReduce), e * (2 * k + large_n + 4 * 5), g + "all_reduce bytes");
  t.Eq(st.calls_of(CommOp::kReduceScatter), 2, g + "reduce_scatter calls");
  t.Eq(st.bytes_of(CommOp::kReduceScatter), 2 * e * block * n, g + "reduce_scatter bytes");
  t.Eq(st.calls_of(CommOp::kAllGather), 2, g + "all_gather calls");
  t.Eq(st.bytes_of(CommOp::kAllGather), 2 * e * block * n, g + "all_gather bytes");
  t.Eq(st.bytes_of(CommOp::kBroadcast), e * 9, g + "broadcast bytes");
  t.Eq(st.bytes_of(CommOp::kSend), n > 1 ? e * 13 : 0, g + "send bytes");
  t.Eq(st.bytes_of(CommOp::kRecv), n > 1 ? e * 13 : 0, g + "recv bytes");
}

void CheckGroup(Communicator& c, testing::MpiChecks& t, cudaStream_t s) {
  const int n = c.size(), r = c.rank();
  const std::string g = c.name() + ": ";
  CheckTyped<float>(c, t, s);
  CheckTyped<BF16>(c, t, s);

  c.ResetStats();
  DeviceBuffer<int32_t> ints(5, s);
  ints.Fill([&](int) { return r; });
  c.AllReduceSync(ints.tensor(), ReduceOp::kSum);
  t.Check(AllEqual(ints.Read(), [&](int) { return n * (n - 1) / 2; }), g + "all_reduce i32");
  // A request dropped without Wait() still orders the compute stream after it.
  DeviceBuffer<float> dropped(3, s);
  dropped.Fill([&](int) { return r + 1; });
  c.AllReduce(dropped.tensor(), ReduceOp::kSum);
  t.Check(AllEqual(dropped.Read(), [&](int) { return n * (n + 1) / 2; }), g + "dropped request");

  t.Near(c.AllReduceScalar(0.5 * (r + 1), ReduceOp::kSum), 0.25 * n * (n + 1), 1e-12, g + "scalar all_reduce sum");
  t.Near(c.AllReduceScalar(r, ReduceOp::kMax), n - 1, 0.0, g + "scalar all_reduce max");
  c.Barrier();
  // Scalar all-reduces and barriers are not counted.
  t.Eq(c.stats().calls_of(CommOp::kAllReduce), 2, g + "all_reduce calls with scalars");
  t.Eq(c.stats().total_bytes(), int64_t{4} * (5 + 3), g + "total bytes with scalars");
}

// World rank 0 joins no group; the others split by parity, ordered by
// descending world rank; each part is split again, whole.
void CheckSplit(Communicator& world, testing::MpiChecks& t, cudaStream_t s) {
  const int w = world.rank(), n = world.size();
  std::unique_ptr<Communicator> part = world.Split(w == 0 ? -1 : w % 2, -w, "parity");
  if (w == 0) {
    t.Check(part == nullptr, "split: a negative color joins no group");
    return;
  }
  if (!t.Check(part != nullptr, "split: a group")) return;
  int members = 0, above = 0, rank_sum = 0;
  for (int q = 1; q < n; ++q) {
    if (q % 2 != w % 2) continue;
    ++members;
    rank_sum += q;
    if (q > w) ++above;
  }
  t.Eq(part->size(), members, "split size");
  t.Eq(part->rank(), above, "split rank, ordered by key");
  t.Eq(part->name(), std::string("parity"), "split name");
  t.Eq(static_cast<int>(part->AllReduceScalar(w, ReduceOp::kSum)), rank_sum, "split members");
  CheckGroup(*part, t, s);
  std::unique_ptr<Communicator> again = part->Split(0, part->rank(), "parity_again");
  if (!t.Check(again != nullptr, "split of a split")) return;
  t.Eq(again->size(), members, "split of a split: size");
  t.Eq(again->rank(), part->rank(), "split of a split: rank");
  t.Eq(static_cast<int>(again->AllReduceScalar(w, ReduceOp::kSum)), rank_sum, "split of a split: members");
}

// LATAM_NCCL_TIMEOUT_S parsing (no GPU needed). Leaves the variable unset;
// the communicators below get their options explicitly.
void CheckOptions(testing::MpiChecks& t) {
  unsetenv("LATAM_NCCL_TIMEOUT_S");
  const auto timeout_from = [](const char* value) {
    setenv("LATAM_NCCL_TIMEOUT_S", value, 1);
    Result<NcclOptions> options = NcclOptionsFromEnvironment();
    unsetenv("LATAM_NCCL_TIMEOUT_S");
    return options.ok() ? options->timeout_s : -1.0;
  };
  t.Eq(NcclOptionsFromEnvironment()->timeout_s, NcclOptions::kDefaultTimeoutS, "default timeout");
  t.Eq(timeout_from("42.5"), 42.5, "LATAM_NCCL_TIMEOUT_S=42.5");
  t.Eq(timeout_from("0"), 0.0, "LATAM_NCCL_TIMEOUT_S=0 (off)");
  t.Eq(timeout_from("-3"), -1.0, "LATAM_NCCL_TIMEOUT_S=-3 is rejected");
  t.Eq(timeout_from("10m"), -1.0, "LATAM_NCCL_TIMEOUT_S=10m is rejected");
}

}  // namespace
}  // namespace latam

int main(int argc, char** argv) {
  latam::MpiSession mpi(&argc, &argv);
  latam::testing::MpiChecks t("nccl_collectives");
  const auto parsed = latam::testing::GridShapeFromArgs(argc, argv, "test_nccl_collectives", mpi.world_size());
  if (!parsed) return 2;
  const latam::GridShape shape = *parsed;
  latam::CheckOptions(t);

  // Every rank agrees before any rank touches NCCL: all run, or all skip.
  const int devices = latam::cuda::DeviceCount();
  const int local_ok = devices >= mpi.local_size() ? 1 : 0;
  int all_ok = 0;
  MPI_CHECK(MPI_Allreduce(&local_ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
  if (all_ok == 0) {
    const int result = t.Finish();
    if (!local_ok && mpi.local_rank() == 0) {
      std::printf(
          "SKIP nccl_collectives: the node of rank %d sees %d CUDA device(s) for %d rank(s); "
          "one GPU per rank is needed\n",
          mpi.world_rank(), devices, mpi.local_size());
      std::fflush(stdout);
    }
    return result != 0 ? result : latam::kSkipped;
  }

  CUDA_CHECK(cudaSetDevice(mpi.local_rank()));
  cudaStream_t compute = nullptr;
  CUDA_CHECK(cudaStreamCreate(&compute));
  latam::NcclOptions options;
  options.timeout_s = 120;  // well inside ctest's limit, so a hang ends with the watchdog's message
  {
    latam::ProcessGrid grid(std::make_unique<latam::NcclCommunicator>(MPI_COMM_WORLD, "world", compute, options),
                            shape);
    const int w = mpi.world_rank();
    t.Eq(grid.tp_rank(), w % shape.tensor, "tp rank");
    t.Eq(grid.pp_rank(), (w / shape.tensor) % shape.pipeline, "pp rank");
    t.Eq(grid.dp_rank(), w / (shape.tensor * shape.pipeline), "dp rank");
    t.Eq(grid.tp().size(), shape.tensor, "tp size");
    t.Eq(grid.pp().size(), shape.pipeline, "pp size");
    t.Eq(grid.dp().size(), shape.data, "dp size");
    for (latam::Communicator* c : {&grid.world(), &grid.tp(), &grid.pp(), &grid.dp(), &grid.model_parallel()}) {
      latam::CheckGroup(*c, t, compute);
    }
    latam::CheckSplit(grid.world(), t, compute);
    grid.world().Barrier();
  }  // every communicator finalised here, in the same order on every rank
  CUDA_CHECK(cudaStreamDestroy(compute));
  return t.Finish();
}
