// Any parallel layout trains exactly like one process.
//
//   mpirun -np T*C*P*D test_layouts tp=T pp=P dp=D [cp=C] [vs=V] [zero=Z] [tied=0|1]
//       [recompute=none|selective|full] [sp=0|1] [first=N] [last=N] [doc=0|1]
//       [reset=0|1] [device=cpu|cuda]
//
// Unnamed options keep their defaults (cp=1 vs=1 zero=0 tied=0
// recompute=none sp=0 first=0 last=0 doc=0 reset=0 device=cpu); cp is
// parallel.context, sp is parallel.sequence_parallel, first and last are
// parallel.first_stage_layers / last_stage_layers, doc is
// data.document_mask and reset is data.reset_positions.
// device is cpu (the default: MPI communicators) or cuda: one GPU per rank,
// NCCL communicators, fp32 on the GPU, and the single-process reference on
// the same GPU (the GPU model against the CPU model is
// tests/cuda/test_cuda_model.cc). Without a GPU for every rank (or without
// NCCL in the build) every rank exits 77, ctest's skip code.
//
// Every rank trains a tiny model (8 layers, 4 query / 2 KV heads, so TP=4
// replicates KV heads) for 6 optimizer steps of 8 micro-batches' worth of
// samples with the given layout, and alongside, on its own, the same model
// on a single process (ProcessGrid::Single). Then:
//   - the per-step losses and gradient norms agree to 2e-5 (relative);
//   - every parameter block this rank holds equals the matching slice of the
//     single process's tensor to 1e-4 (relative to the tensor's scale);
//   - the tensor-, context-, pipeline- and data-parallel groups moved
//     exactly the bytes the layout implies (formulas below).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/random.h"
#include "core/threads.h"
#include "parallel/mpi_communicator.h"
#include "parallel/mpi_env.h"
#include "tests/mpi/mpi_check.h"
#include "tests/test_util.h"
#include "trainer/compute_device.h"
#include "trainer/config.h"
#include "trainer/engine.h"

#ifdef LATAM_HAVE_NCCL
#include "parallel/nccl_communicator.h"
#endif

namespace latam {
namespace {

constexpr int kSteps = 6;
constexpr int kLoraRank = 4;

// The layouts cycle through three gradient-bucket sizes: one bucket for the
// whole shard (0), about two layers per bucket (0.05 MB; a layer holds 31 KB
// of gradients before tensor parallelism), and one bucket per layer.
double BucketMb(int tp, int pp, int dp, int vs) {
  const double sizes[] = {0.0, 0.05, 1e-6};
  return sizes[(7 * tp + 3 * pp + dp + vs) % 3];
}

// One layout under test, from the command line.
struct LayoutArgs {
  int tp = 1, pp = 1, dp = 1, cp = 1, vs = 1, zero = 0;
  bool tied = false;
  config::TrainConfig::Recompute recompute = config::TrainConfig::NONE;
  bool sp = false;
  int first = 0, last = 0;
  bool doc = false;    // data.document_mask
  bool reset = false;  // data.reset_positions
  bool lora = false;   // adapter { kind: LORA } on every projection
  config::TrainConfig::Device device = config::TrainConfig::cpu;

  std::string Name() const {
    std::string n = "layout tp" + std::to_string(tp) + " pp" + std::to_string(pp) + " dp" + std::to_string(dp) +
                    " vs" + std::to_string(vs) + " zero" + std::to_string(zero);
    if (cp > 1) n.append(" cp").append(std::to_string(cp));
    if (tied) n += " tied";
    if (recompute != config::TrainConfig::NONE) n += " recompute=" + config::TrainConfig::Recompute_Name(recompute);
    if (sp) n += " sp";
    if (first > 0 || last > 0) n += " stages " + std::to_string(first) + "/" + std::to_string(last);
    if (doc) n += " document_mask";
    if (reset) n += " reset_positions";
    if (lora) n += " lora";
    n += " buckets " + std::to_string(BucketMb(tp, pp, dp, vs)) + " MB";
    if (device == config::TrainConfig::cuda) n += " cuda";
    return n;
  }
};

// Parses key=value arguments; false (after a message) on a bad one.
bool ParseLayoutArgs(int argc, char** argv, LayoutArgs* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string key = arg.substr(0, eq), value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    bool ok = eq != std::string::npos && !value.empty();
    auto number = [&](int* out) {
      char* end = nullptr;
      const long v = std::strtol(value.c_str(), &end, 10);
      ok = ok && *end == '\0' && v >= 0;
      *out = static_cast<int>(v);
    };
    int flag = 0;
    if (key == "tp") number(&a->tp);
    else if (key == "pp") number(&a->pp);
    else if (key == "dp") number(&a->dp);
    else if (key == "cp") number(&a->cp);
    else if (key == "vs") number(&a->vs);
    else if (key == "zero") number(&a->zero);
    else if (key == "first") number(&a->first);
    else if (key == "last") number(&a->last);
    else if (key == "tied") { number(&flag); a->tied = flag != 0; }
    else if (key == "sp") { number(&flag); a->sp = flag != 0; }
    else if (key == "doc") { number(&flag); a->doc = flag != 0; }
    else if (key == "reset") { number(&flag); a->reset = flag != 0; }
    else if (key == "lora") { number(&flag); a->lora = flag != 0; }
    else if (key == "recompute") {
      std::string upper = value;
      for (char& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      ok = ok && config::TrainConfig::Recompute_Parse(upper, &a->recompute);
    } else if (key == "device") {
      ok = ok && config::TrainConfig::Device_Parse(value, &a->device);
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "test_layouts: bad argument '%s'\n", arg.c_str());
      return false;
    }
  }
  return true;
}

Config TinyConfig(const LayoutArgs& a) {
  Config c;
  *c.mutable_model() = testing::TinyModelConfig(a.tied);
  c.mutable_model()->set_rope_theta(10000);
  auto* p = c.mutable_parallel();
  p->set_tensor(a.tp);
  p->set_pipeline(a.pp);
  p->set_data(a.dp);
  p->set_context(a.cp);
  p->set_virtual_stages(a.vs);
  p->set_zero_stage(a.zero);
  p->set_sequence_parallel(a.sp);
  p->set_first_stage_layers(a.first);
  p->set_last_stage_layers(a.last);
  p->set_grad_bucket_mb(BucketMb(a.tp, a.pp, a.dp, a.vs));
  auto* o = c.mutable_optimizer();
  o->set_lr(1e-2);
  o->set_min_lr(1e-3);
  o->set_warmup_steps(2);
  o->set_weight_decay(0.1);
  o->set_grad_clip(0.5);  // small enough that clipping happens
  // A larger epsilon keeps Adam from amplifying rounding noise in gradients
  // that are almost zero (their sign would otherwise decide the update).
  o->set_eps(1e-5);
  c.mutable_data()->set_seq_len(16);
  c.mutable_data()->set_document_mask(a.doc);
  c.mutable_data()->set_reset_positions(a.reset);
  auto* t = c.mutable_train();
  t->set_steps(kSteps);
  t->set_micro_batch_size(2);
  t->set_global_batch_size(16);
  t->set_recompute(a.recompute);
  t->set_device(a.device);
  t->set_seed(77);
  if (a.lora) {
    auto* adapter = c.mutable_adapter();
    adapter->set_kind(config::AdapterConfig::LORA);
    adapter->set_rank(kLoraRank);
    adapter->set_alpha(8);
    for (const char* target : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}) {
      adapter->add_targets(target);
    }
  }
  return c;
}

// Sample `index`: tokens drawn from a fixed random first-order chain, so
// the model has something to learn and gradients are not noise.
Status Sample(uint64_t index, int32_t* ids, int32_t* targets, int32_t* doc_start) {
  int32_t cur = static_cast<int32_t>(Mix64(index * 7919 + 1) % 64);
  for (int t = 0; t <= 16; ++t) {
    const int32_t next = static_cast<int32_t>((Mix64(static_cast<uint64_t>(cur) * 3 + Mix64(index ^ t) % 3)) % 64);
    if (t < 16) ids[t] = cur;
    if (t > 0) targets[t - 1] = cur;
    cur = next;
  }
  // A few targets do not count (as at document boundaries with
  // data.mask_cross_document_loss): a different number per sample, so the
  // loss's mean over the counted targets needs every rank's count.
  for (int t = static_cast<int>(index % 5); t < 16; t += 6) targets[t] = -1;
  // Packed documents of 1 to 9 tokens, a different mix per sample.
  if (doc_start != nullptr) {
    int start = 0;
    for (int t = 0; t < 16; ++t) {
      if (t > 0 && Mix64(index * 131 + static_cast<uint64_t>(t)) % 4 == 0) start = t;
      doc_start[t] = start;
    }
  }
  return Status::Ok();
}

using testing::HostCopy;

// The block of `full` (a tensor of the single-process model) that spec covers.
std::vector<float> Slice(const Tensor& full_tensor, const ParamSpec& spec) {
  std::vector<float> out;
  std::vector<float> host = HostCopy(full_tensor);
  const Tensor full = Tensor::Of(host.data(), full_tensor.shape);
  const float* f = full.as<float>();
  const int64_t rows = spec.shape.rows(), cols = spec.shape.cols(), full_cols = full.shape.cols();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t fr = spec.shard_dim == 0 ? r + spec.shard_offset : r;
      const int64_t fc = spec.shard_dim == 1 ? c + spec.shard_offset : c;
      out.push_back(spec.shape.rank() == 1 ? f[c] : f[fr * full_cols + fc]);
    }
  }
  return out;
}

}  // namespace
}  // namespace latam

int main(int argc, char** argv) {
  using namespace latam;
  MpiSession mpi(&argc, &argv);
  // As latam-train does: split the node's cores between its ranks (with more
  // ranks than cores, one thread each; spinning OpenMP teams would starve the
  // ranks they share a core with).
  ConfigureCpuThreads(mpi.local_size());
  LayoutArgs args;
  if (argc < 2 || !ParseLayoutArgs(argc, argv, &args)) {
    std::fprintf(stderr,
                 "usage: test_layouts tp=T pp=P dp=D [cp=C] [vs=V] [zero=Z] [tied=0|1] "
                 "[recompute=none|selective|full] [sp=0|1] [first=N] [last=N] [doc=0|1] [reset=0|1] "
                 "[device=cpu|cuda]\n");
    return 2;
  }
  const bool cuda = args.device == config::TrainConfig::cuda;
  const int tp = args.tp, pp = args.pp, dp = args.dp, cp = args.cp;
  const int zero = args.zero;
  const bool recompute_full = args.recompute == config::TrainConfig::FULL;
  const std::string name = args.Name();
  latam::testing::MpiChecks t(name);
  Config config = TinyConfig(args);
  LayoutArgs single_args;
  single_args.tied = args.tied;
  single_args.doc = args.doc;
  single_args.reset = args.reset;
  single_args.lora = args.lora;
  single_args.device = args.device;
  Config single_config = TinyConfig(single_args);
  ValidationOptions vo;
  vo.world_size = mpi.world_size();
  vo.check_files = false;
  if (Status s = ValidateConfig(config, vo); !s.ok()) {
    std::fprintf(stderr, "%s: %s\n", name.c_str(), s.message().c_str());
    return 2;
  }

  std::unique_ptr<ComputeDevice> device;
  std::unique_ptr<Communicator> world = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world");
  if (cuda) {
    Result<std::unique_ptr<ComputeDevice>> opened =
        ComputeDevice::Open(mpi.local_rank(), mpi.local_size(), mpi.world_rank(), ComputeSettingsOf(config).attention);
#ifndef LATAM_HAVE_NCCL
    opened = Status::InvalidInput("this build has no NCCL");
#endif
    if (world->AllReduceScalar(opened.ok() ? 0.0 : 1.0, ReduceOp::kSum) > 0) {
      if (mpi.world_rank() == 0) {
        std::printf("%s: skipped (%s)\n", name.c_str(),
                    opened.ok() ? "another rank has no GPU" : opened.status().message().c_str());
      }
      return 77;
    }
    device = std::move(opened).value();
#ifdef LATAM_HAVE_NCCL
    world = std::make_unique<NcclCommunicator>(MPI_COMM_WORLD, "world", device->stream().cuda());
#endif
  }
  const Stream stream = device != nullptr ? device->stream() : Stream();
  ProcessGrid grid(std::move(world), GridShape{tp, pp, dp, cp});
  Engine engine(config, &grid, stream);
  auto single_grid = ProcessGrid::Single();
  Engine single(single_config, single_grid.get(), stream);

  const ModelShape shape = ModelShape::FromConfig(config.model());
  const ModelLayout& layout = engine.model().layout();
  // m: the tokens of a micro-batch this rank holds (its 1/C of each sequence).
  const int64_t m = 2 * 16 / cp, dim = shape.dim, micro_batches = engine.micro_batches();
  // Stage p of a 1F1B pipeline keeps at most P - p micro-batches' activations.
  if (args.vs == 1) {
    t.Eq(engine.model().slots(0), static_cast<int>(std::min<int64_t>(pp - grid.pp_rank(), micro_batches)),
         "activation slots");
  }
  for (int64_t step = 0; step < kSteps; ++step) {
    grid.ResetStats();
    auto r = engine.Step(step, static_cast<uint64_t>(step) * 16, Sample);
    auto ref = single.Step(step, static_cast<uint64_t>(step) * 16, Sample);
    if (!t.Check(r.ok() && ref.ok(), "step " + std::to_string(step) + " failed")) break;
    const std::string at = " at step " + std::to_string(step + 1);
    t.Near(r->loss, ref->loss, 2e-5 * std::abs(ref->loss), "loss" + at);
    t.Near(r->grad_norm, ref->grad_norm, 2e-5 * ref->grad_norm, "grad norm" + at);

    // Communication of one step, in bytes (f32 = 4 bytes).
    int64_t layers = 0, non_first = 0, non_last = 0;
    for (const ChunkInfo& c : layout.chunks) {
      layers += c.layer_end - c.layer_begin;
      non_first += c.first ? 0 : 1;
      non_last += c.last ? 0 : 1;
    }
    // TP all-reduces per micro-batch: 2 in each layer's forward (o_proj,
    // down_proj; twice more when recompute=full re-runs the forward, none
    // more for recompute=selective, whose element-wise ops communicate
    // nothing) and 2 in its
    // backward (the QKV and gate/up input gradients), [m, dim] each; the
    // embedding's output; on the last stage the head's row statistics (max,
    // then sum-exp and target logit: 3 m floats) and its input gradient.
    // Sequence parallelism replaces each [m, dim] all-reduce by a
    // reduce-scatter (counted at its [m, dim] input) and adds the matching
    // all-gathers (counted at their [m, dim] output): before QKV and gate/up
    // (again when recomputed), of the gradient before the o_proj and
    // down_proj input gradients, of the final norm's output before the head,
    // and of the gradient before the embedding's backward. The norm gains'
    // gradients are then all-reduced once per step (each rank's covers its
    // rows only): 2 per layer and the final norm, dim floats each. Selective
    // recompute with sequence parallelism all-gathers each recomputed norm
    // output again: 2 more all-gathers per layer. ZeRO-2 reduces gradients
    // after every micro-batch, so the norm gains' sums run every micro-batch.
    const int64_t layer_passes = recompute_full ? 3 : 2;  // forward passes + backward of each layer
    int64_t tp_bytes = 0, rs_bytes = 0, ag_bytes = 0, per_step_bytes = 0;
    if (!args.sp) {
      tp_bytes = 2 * layer_passes * layers * m * dim;
      if (layout.holds_embedding()) tp_bytes += m * dim;
      if (layout.holds_head()) tp_bytes += 3 * m + m * dim;
    } else {
      rs_bytes = ag_bytes = 2 * layer_passes * layers * m * dim;
      if (args.recompute == config::TrainConfig::SELECTIVE) ag_bytes += 2 * layers * m * dim;
      if (layout.holds_embedding()) rs_bytes += m * dim, ag_bytes += m * dim;
      if (layout.holds_head()) tp_bytes += 3 * m, rs_bytes += m * dim, ag_bytes += m * dim;
      per_step_bytes = (2 * layers + (layout.holds_head() ? 1 : 0)) * dim;
    }
    if (zero == 2) per_step_bytes *= micro_batches;
    // LoRA on all seven projections (model/lora.h): per layer and step, the
    // partial gradients of the five column-parallel targets' A [r, dim] and
    // of the two row-parallel targets' B [dim, r] are summed over the group.
    if (args.lora && tp > 1) per_step_bytes += 7 * layers * kLoraRank * dim;
    t.Eq(grid.tp().stats().bytes_of(CommOp::kAllReduce), 4 * (micro_batches * tp_bytes + per_step_bytes),
         "tensor-parallel all-reduce bytes" + at);
    t.Eq(grid.tp().stats().bytes_of(CommOp::kReduceScatter), 4 * micro_batches * rs_bytes,
         "tensor-parallel reduce-scatter bytes" + at);
    t.Eq(grid.tp().stats().bytes_of(CommOp::kAllGather), 4 * micro_batches * ag_bytes,
         "tensor-parallel all-gather bytes" + at);
    // PP: every chunk but the last sends its output forward, every chunk but
    // the first sends its input gradient back, [m, dim] per micro-batch
    // ([m / T, dim] under sequence parallelism).
    const int64_t rows = args.sp ? m / tp : m;
    const int64_t pp_bytes = 4 * micro_batches * (non_first + non_last) * rows * dim;
    t.Eq(grid.pp().stats().bytes_of(CommOp::kSend), pp_bytes, "pipeline send bytes" + at);
    t.Eq(grid.pp().stats().bytes_of(CommOp::kRecv), pp_bytes, "pipeline recv bytes" + at);
    // CP: ring attention sends each layer's key/value block, [m, 2 Hkv hd]
    // with the rank's Hkv, C - 1 times in the forward (again when
    // recompute=full re-runs it) and C - 1 times in the backward, plus its
    // gradient C times in the backward (model/ring_attention.h); receives
    // match sends. 4 bytes each: these layouts compute in f32, and the
    // gradient blocks are f32 always.
    const int64_t kv_block = m * 2 * layout.kv_heads * shape.head_dim;
    const int64_t ring_blocks = cp > 1 ? (layer_passes - 1) * (cp - 1) + (cp - 1) + cp : 0;
    const int64_t cp_bytes = 4 * micro_batches * layers * ring_blocks * kv_block;
    t.Eq(grid.cp().stats().bytes_of(CommOp::kSend), cp_bytes, "context-parallel send bytes" + at);
    t.Eq(grid.cp().stats().bytes_of(CommOp::kRecv), cp_bytes, "context-parallel recv bytes" + at);
    // DP: ZeRO-0 all-reduces the f32 gradients; ZeRO-1 reduce-scatters them
    // and, after the update, all-gathers the weights' compute copy (not the
    // f32 master weights, which stay sharded): compute-dtype bytes per
    // element, 4 for the f32 compute of these layouts (2 with bf16). Both
    // collectives span the buffer padded to D slices. The all-gathers issued
    // by a step complete in the next forward, but the counters record them
    // when issued, so each step counts its own. ZeRO-2 reduce-scatters every
    // bucket after every micro-batch, except a tied embedding's (whole-step)
    // bucket, reduced once. All of it runs over the D x C replicas (the
    // data-parallel group itself when C = 1).
    // With an adapter only its parameters are trained, reduced and gathered.
    const ParameterSet& params =
        args.lora ? *engine.model().adapter_parameters() : engine.model().parameters();
    const Communicator& replicas = grid.replicas();
    t.Eq(replicas.size(), dp * cp, "replicas");
    if (zero == 0) {
      t.Eq(replicas.stats().bytes_of(CommOp::kAllReduce), 4 * params.numel(), "data-parallel all-reduce bytes" + at);
    } else {
      const int64_t compute_bytes = static_cast<int64_t>(DTypeSize(params.placement().compute_dtype));
      t.Eq(params.padded_numel() % (dp * cp), int64_t{0}, "padding");
      int64_t reduced = params.padded_numel();
      if (zero == 2) {
        reduced = 0;
        for (size_t b = 0; b < params.buckets().size(); ++b) {
          const int64_t n = params.buckets()[b].end - params.buckets()[b].begin;
          reduced += params.whole_step_bucket(b) ? n : micro_batches * n;
        }
      }
      t.Eq(replicas.stats().bytes_of(CommOp::kReduceScatter), 4 * reduced, "reduce-scatter bytes" + at);
      t.Eq(replicas.stats().bytes_of(CommOp::kAllGather), compute_bytes * params.padded_numel(),
           "all-gather bytes" + at);
    }
  }

  // Evaluation over more micro-batches than a training step has, split over
  // data-parallel ranks with a short last micro-batch, gives the single
  // process's mean loss.
  auto eval = engine.Evaluate(41, Sample);
  auto eval_ref = single.Evaluate(41, Sample);
  if (t.Check(eval.ok() && eval_ref.ok(), "evaluation failed")) {
    t.Near(*eval, *eval_ref, 2e-5 * std::abs(*eval_ref), "eval loss");
  }

  // Every block of this rank equals the single process's slice of it.
  std::vector<std::pair<const ParameterSet*, const ParameterSet*>> sets = {
      {&engine.model().parameters(), &single.model().parameters()}};
  if (args.lora) {
    t.Check(engine.model().adapter_parameters() != nullptr && single.model().adapter_parameters() != nullptr,
            "adapter parameters");
    sets.emplace_back(engine.model().adapter_parameters(), single.model().adapter_parameters());
  }
  for (const auto& [mine_set, whole_set] : sets) {
  const ParameterSet& mine = *mine_set;
  const ParameterSet& whole = *whole_set;
  for (size_t i = 0; i < mine.size(); ++i) {
    const ParamSpec& spec = mine.spec(i);
    const Tensor full = whole.param(spec.name);
    if (!t.Eq(full.shape.str(), spec.global_shape.str(), spec.name + " global shape")) continue;
    const std::vector<float> expected = Slice(full, spec);
    const std::vector<float> got = HostCopy(mine.param(i));
    double scale = 0.0, worst = 0.0;
    for (float v : expected) scale = std::max(scale, static_cast<double>(std::abs(v)));
    for (size_t k = 0; k < expected.size(); ++k)
      worst = std::max(worst, std::abs(static_cast<double>(got[k]) - expected[k]));
    t.Check(worst <= 1e-4 * scale,
            spec.name + ": max difference " + std::to_string(worst) + " vs scale " + std::to_string(scale));
  }
  }
  return t.Finish();
}
