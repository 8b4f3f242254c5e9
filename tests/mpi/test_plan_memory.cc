// The plan's memory per rank against what the ranks really allocate.
//
//   mpirun -np 8 test_plan_memory
//
// A 99.6M-parameter Llama (dim 768, 8 layers, 12 query / 4 KV heads, FFN
// 2048, vocabulary 32000) is built by the Engine on 8 CPU ranks in five
// layouts: TP 2 x PP 2 x DP 2 with ZeRO-1, TP 1 x PP 4 x DP 2 with ZeRO-0,
// TP 2 x PP 1 x DP 4 with ZeRO-1, TP 2 x PP 2 x DP 2 with ZeRO-2, and TP 2
// x CP 2 x DP 2 with ZeRO-1 and document masking (ring buffers, positions
// and document starts; ZeRO shards over the 4 data x context replicas). After
// one optimizer step (sequence 32, micro-batches of 1, two per data-parallel
// rank) the peak of every rank's host arenas (core/arena.h: parameters,
// gradients (ZeRO-2: the bucket pool and the owned shard), Adam moments,
// activations and kernel workspaces) is taken; the
// largest over ranks must be within 10% of `memory_bytes_per_rank` of
// PlanJson on the same config. Each layout's engine is freed before the
// next one is built. At most 4.5 GB of host memory over the 8 ranks (TP 2
// x DP 4: 558 MB each); about 110 s of CPU time, most of it initialising
// the weights (every data-parallel replica draws its own copy).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "core/arena.h"
#include "core/threads.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_env.h"
#include "tests/mpi/mpi_check.h"
#include "trainer/config.h"
#include "trainer/engine.h"
#include "trainer/plan.h"

namespace latam {
namespace {

Config HundredMillionConfig(int tp, int pp, int dp, int zero, int cp) {
  Config c;
  auto* m = c.mutable_model();
  m->set_vocab_size(32000);
  m->set_dim(768);
  m->set_n_layers(8);
  m->set_n_heads(12);
  m->set_n_kv_heads(4);
  m->set_ffn_dim(2048);
  m->set_max_seq_len(32);
  auto* p = c.mutable_parallel();
  p->set_tensor(tp);
  p->set_pipeline(pp);
  p->set_data(dp);
  p->set_context(cp);
  p->set_zero_stage(zero);
  p->set_grad_bucket_mb(16);
  c.mutable_data()->set_seq_len(32);
  c.mutable_data()->set_document_mask(cp > 1);
  auto* t = c.mutable_train();
  t->set_steps(1);
  t->set_micro_batch_size(1);
  t->set_global_batch_size(2 * dp);
  t->set_seed(5);
  return c;
}

Status Sample(uint64_t index, int32_t* ids, int32_t* targets, int32_t* doc_start) {
  for (int i = 0; i < 32; ++i) {
    if (doc_start != nullptr) doc_start[i] = i < 20 ? 0 : 20;  // two documents
    ids[i] = static_cast<int32_t>((index * 131 + static_cast<uint64_t>(i) * 17) % 32000);
    targets[i] = static_cast<int32_t>((index * 131 + static_cast<uint64_t>(i + 1) * 17) % 32000);
  }
  return Status::Ok();
}

}  // namespace
}  // namespace latam

int main(int argc, char** argv) {
  using namespace latam;
  MpiSession mpi(&argc, &argv);
  ConfigureCpuThreads(mpi.local_size());
  testing::MpiChecks t("plan memory");
  if (!t.Eq(mpi.world_size(), 8, "world size")) return t.Finish();
  struct Layout {
    int tp, pp, dp, zero, cp;
  };
  for (const Layout& l : {Layout{2, 2, 2, 1, 1}, Layout{1, 4, 2, 0, 1}, Layout{2, 1, 4, 1, 1}, Layout{2, 2, 2, 2, 1},
                          Layout{2, 1, 2, 1, 2}}) {
    const std::string name = "tp" + std::to_string(l.tp) + " cp" + std::to_string(l.cp) + " pp" +
                             std::to_string(l.pp) + " dp" + std::to_string(l.dp) + " zero" + std::to_string(l.zero);
    const Config config = HundredMillionConfig(l.tp, l.pp, l.dp, l.zero, l.cp);
    auto plan = PlanJson(config);
    if (!t.Check(plan.ok(), name + ": plan: " + (plan.ok() ? "" : plan.status().message()))) continue;
    const auto j = nlohmann::json::parse(*plan);
    const double planned = static_cast<double>(j["memory_bytes_per_rank"].get<int64_t>());

    double measured = 0.0;
    {
      ProcessGrid grid(std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world"), GridShape{l.tp, l.pp, l.dp, l.cp});
      ResetHostArenaPeak();
      const size_t before = HostArenaLiveBytes();
      const auto t0 = std::chrono::steady_clock::now();
      Engine engine(config, &grid);
      const auto t1 = std::chrono::steady_clock::now();
      auto r = engine.Step(0, 0, Sample);
      const auto t2 = std::chrono::steady_clock::now();
      if (mpi.world_rank() == 0) {
        std::printf("%s: engine built in %.1f s, one step in %.1f s\n", name.c_str(),
                    std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count());
      }
      t.Check(r.ok() && std::isfinite(r->loss), name + ": step failed");
      const double mine = static_cast<double>(HostArenaPeakBytes() - before);
      measured = grid.world().AllReduceScalar(mine, ReduceOp::kMax);
    }
    if (mpi.world_rank() == 0) {
      std::printf("%s: %lld parameters, planned %.1f MB per rank, measured peak %.1f MB (%+.2f%%)\n", name.c_str(),
                  static_cast<long long>(j["parameters"].get<int64_t>()), planned / 1e6, measured / 1e6,
                  100.0 * (planned - measured) / measured);
    }
    t.Near(planned, measured, 0.10 * measured, name + ": planned vs measured memory per rank");
  }
  return t.Finish();
}
