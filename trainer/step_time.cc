#include "trainer/step_time.h"

#include <algorithm>

namespace latam {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// Which link a group of `ranks` ranks with world-order span `span` uses.
std::string LinkOf(int ranks, int64_t span, const Hardware& hw) {
  if (ranks <= 1) return "none";
  return span <= hw.gpus_per_node ? "nvlink" : "network";
}

double Bandwidth(const std::string& link, const Hardware& hw) {
  return link == "nvlink" ? hw.nvlink_bus_bytes_per_s : hw.network_bus_bytes_per_s;
}

double Latency(const std::string& link, const Hardware& hw) {
  return link == "nvlink" ? hw.nvlink_latency_s : hw.network_latency_s;
}

// The tensor-parallel collectives of one GPU of a stage, as
// tests/mpi/test_layouts.cc counts them: bytes per micro-batch of each kind
// (all-reduce and reduce-scatter at their input, all-gather at its output),
// the bytes all-reduced once per step, and how many collectives of each.
struct TpTraffic {
  double all_reduce_mb = 0, reduce_scatter_mb = 0, all_gather_mb = 0, all_reduce_step = 0;
  double collectives_mb = 0, collectives_step = 0;
};

TpTraffic TensorParallelTraffic(const StepInput& in, const StageLoad& s) {
  TpTraffic t;
  if (in.tp <= 1) return t;
  const double r = static_cast<double>(in.tokens_per_micro_batch);
  const double rda = r * static_cast<double>(in.dim) * in.activation_bytes;
  const double layers = static_cast<double>(s.layers);
  // [r, d] sums per layer: 2 forward (o_proj, down_proj), 2 more when FULL
  // recompute re-runs the forward, 2 backward (QKV and gate/up input
  // gradients).
  const double per_layer = in.recompute_full ? 6.0 : 4.0;
  const double emb = s.embedding ? 1.0 : 0.0, head = s.head ? 1.0 : 0.0;
  // The head's row statistics (max, then sum-exp and target logit): 3 r
  // floats in two all-reduces, with or without sequence parallelism.
  t.all_reduce_mb = head * 3.0 * r * 4.0;
  if (!in.sequence_parallel) {
    // Every [r, d] sum is an all-reduce: the layers', the embedding's
    // output and the head's input gradient.
    t.all_reduce_mb += (per_layer * layers + emb + head) * rda;
    t.collectives_mb = per_layer * layers + emb + 3.0 * head;
    return t;
  }
  // Sequence parallelism: each of those sums is a reduce-scatter to the row
  // shards, and each is matched by an all-gather of [r, d] rows (before QKV
  // and gate/up, of the gradient before the o_proj and down_proj input
  // gradients, of the gradient before the embedding's backward, of the final
  // norm's output before the head). SELECTIVE recompute all-gathers the two
  // recomputed norm outputs of each layer again before its backward.
  t.reduce_scatter_mb = (per_layer * layers + emb + head) * rda;
  t.all_gather_mb = (per_layer * layers + (in.recompute_selective ? 2.0 : 0.0) * layers + emb + head) * rda;
  t.collectives_mb = 2.0 * (per_layer * layers + emb + head) + (in.recompute_selective ? 2.0 : 0.0) * layers +
                     2.0 * head;
  // Each rank's norm-gain gradients cover its rows only: the two gains of
  // every layer and the final norm's are all-reduced once per step (f32,
  // d elements each).
  t.all_reduce_step = (2.0 * layers + head) * static_cast<double>(in.dim) * 4.0;
  t.collectives_step = 2.0 * layers + head;
  return t;
}

// Of `total` seconds of bucketed collectives running behind `window`
// seconds of compute, the exposed part: the bucket that cannot start before
// the window ends (`bucket` seconds) plus whatever of the rest does not fit.
double ExposedBehind(double total, double bucket, double window) {
  return std::min(total, bucket + std::max(0.0, total - bucket - window));
}

// What one GPU of one stage spends per micro-batch and per step.
struct StageTime {
  double compute_mb = 0, recompute_mb = 0, tp_mb = 0, pp_mb = 0, cp_mb = 0, cp_exposed_mb = 0;
  double t_mb = 0;     // compute + TP + exposed PP
  double tp_step = 0;  // TP collectives once per step (the norm gains' under SP)
  double dp_total = 0, dp_exposed = 0, optimizer = 0;
  GroupBytes bytes;
};

}  // namespace

Result<Hardware> MakeHardware(const std::string& gpu, int gpus_per_node, const std::string& network) {
  Hardware hw;
  hw.gpu = gpu;
  hw.network = network;
  if (gpus_per_node < 1) return Status::InvalidInput("--gpus-per-node must be at least 1");
  hw.gpus_per_node = gpus_per_node;
  // H100 SXM and H200 share the compute die: 989 TFLOP/s dense bf16.
  hw.peak_flops = 989e12;
  hw.achievable_fraction = 0.55;
  if (gpu == "h100") {
    hw.capacity_bytes = 80e9;
    hw.hbm_bytes_per_s = 3.35e12;
  } else if (gpu == "h200") {
    hw.capacity_bytes = 141e9;
    hw.hbm_bytes_per_s = 4.8e12;
  } else {
    return Status::InvalidInput("--gpu must be h100 or h200 (got '" + gpu + "')");
  }
  hw.reserved_bytes = 2.5 * kGiB;
  hw.hbm_fraction = 0.8;
  // NVLink 4: 900 GB/s per GPU in both directions together, 450 GB/s each
  // way; NCCL reaches about 80% of it as bus bandwidth.
  hw.nvlink_bus_bytes_per_s = 360e9;
  hw.nvlink_latency_s = 15e-6;
  // One 400 Gb/s (50 GB/s) port per GPU: NDR InfiniBand, or an eighth of a
  // p5's 3200 Gb/s EFA.
  if (network == "ib") {
    hw.network_bus_bytes_per_s = 40e9;
    hw.network_latency_s = 25e-6;
  } else if (network == "efa") {
    hw.network_bus_bytes_per_s = 35e9;
    hw.network_latency_s = 40e-6;
  } else {
    return Status::InvalidInput("--network must be ib or efa (got '" + network + "')");
  }
  hw.pp_exposed_fraction = 0.5;
  hw.optimizer_bytes_per_parameter = 32;
  return hw;
}

GroupBytes StepGroupBytes(const StepInput& in, const StageLoad& s) {
  GroupBytes b;
  if (in.tp > 1) {
    const TpTraffic t = TensorParallelTraffic(in, s);
    b.tp_all_reduce = static_cast<int64_t>(t.all_reduce_mb) * in.micro_batches + static_cast<int64_t>(t.all_reduce_step);
    b.tp_reduce_scatter = static_cast<int64_t>(t.reduce_scatter_mb) * in.micro_batches;
    b.tp_all_gather = static_cast<int64_t>(t.all_gather_mb) * in.micro_batches;
  }
  if (in.pp > 1) {
    // Under sequence parallelism a chunk boundary carries the rank's row
    // shard, r / T rows.
    const double rows = static_cast<double>(in.tokens_per_micro_batch) / (in.sequence_parallel ? in.tp : 1);
    b.pp_send = static_cast<int64_t>(static_cast<double>(s.sends_forward + s.sends_backward) * rows *
                                     static_cast<double>(in.dim) * in.activation_bytes) *
                in.micro_batches;
  }
  if (in.context > 1) {
    // Key/value blocks in the activation dtype, their gradients in f32.
    const int64_t c = in.context, forward_passes = in.recompute_full ? 2 : 1;
    const double block = static_cast<double>(in.tokens_per_micro_batch) * static_cast<double>(in.kv_width);
    const double per_layer =
        static_cast<double>(forward_passes * (c - 1) + (c - 1)) * block * in.activation_bytes + 4.0 * c * block;
    b.cp_send = static_cast<int64_t>(static_cast<double>(s.layers) * per_layer) * in.micro_batches;
  }
  if (in.dp > 1) {
    if (in.zero_stage == 0) {
      b.dp_all_reduce = 4 * s.parameters;
    } else {
      // ZeRO-2 reduce-scatters every micro-batch's gradients, ZeRO-1 the
      // step's sum once; both all-gather the compute copy once.
      b.dp_reduce_scatter = 4 * s.parameters * (in.zero_stage == 2 ? in.micro_batches : 1);
      b.dp_all_gather = static_cast<int64_t>(in.weight_bytes * static_cast<double>(s.parameters));
    }
  }
  return b;
}

double BubbleFraction(int pp, int virtual_stages, int64_t micro_batches) {
  return static_cast<double>(pp - 1) / (static_cast<double>(virtual_stages) * static_cast<double>(micro_batches));
}

double CollectiveSeconds(Collective op, double bytes, int ranks, double bus_bytes_per_s, double latency_s) {
  if (ranks <= 1 || bytes <= 0) return 0.0;
  const double n = static_cast<double>(ranks);
  double factor = 1.0;
  switch (op) {
    case Collective::kAllReduce: factor = 2.0 * (n - 1.0) / n; break;
    case Collective::kReduceScatter:
    case Collective::kAllGather: factor = (n - 1.0) / n; break;
    case Collective::kSend: factor = 1.0; break;
  }
  return factor * bytes / bus_bytes_per_s + latency_s;
}

StepTime StepModel(const StepInput& in, const Hardware& hw) {
  const std::string tp_link = LinkOf(in.tp, in.tp, hw);
  // in.dp counts the D x C replicas: T x P x in.dp is the world.
  const std::string cp_link = LinkOf(in.context, static_cast<int64_t>(in.tp) * in.context, hw);
  const std::string pp_link = LinkOf(in.pp, static_cast<int64_t>(in.tp) * in.context * in.pp, hw);
  const std::string dp_link = LinkOf(in.dp, static_cast<int64_t>(in.tp) * in.pp * in.dp, hw);
  const double m = static_cast<double>(in.micro_batches);
  const double gemm_flops = hw.peak_flops * hw.achievable_fraction;

  std::vector<StageTime> times;
  for (const StageLoad& s : in.stages) {
    StageTime t;
    t.bytes = StepGroupBytes(in, s);
    t.compute_mb = s.flops_per_micro_batch / gemm_flops;
    t.recompute_mb = s.recompute_flops_per_micro_batch / gemm_flops;
    if (in.tp > 1) {
      const TpTraffic tp = TensorParallelTraffic(in, s);
      const double bw = Bandwidth(tp_link, hw), lat = Latency(tp_link, hw);
      t.tp_mb = CollectiveSeconds(Collective::kAllReduce, tp.all_reduce_mb, in.tp, bw, 0.0) +
                CollectiveSeconds(Collective::kReduceScatter, tp.reduce_scatter_mb, in.tp, bw, 0.0) +
                CollectiveSeconds(Collective::kAllGather, tp.all_gather_mb, in.tp, bw, 0.0) +
                tp.collectives_mb * lat;
      t.tp_step = CollectiveSeconds(Collective::kAllReduce, tp.all_reduce_step, in.tp, bw, 0.0) +
                  tp.collectives_step * lat;
    }
    if (in.pp > 1) {
      const double sends = static_cast<double>(s.sends_forward + s.sends_backward);
      t.pp_mb = static_cast<double>(t.bytes.pp_send) / m / Bandwidth(pp_link, hw) + sends * Latency(pp_link, hw);
    }
    if (in.context > 1) {
      const int64_t c = in.context, forward_passes = in.recompute_full ? 2 : 1;
      const double sends = static_cast<double>(s.layers * (forward_passes * (c - 1) + (c - 1) + c));
      t.cp_mb = static_cast<double>(t.bytes.cp_send) / m / Bandwidth(cp_link, hw) + sends * Latency(cp_link, hw);
      t.cp_exposed_mb = std::max(0.0, t.cp_mb - s.attention_flops_per_micro_batch / gemm_flops);
    }
    t.t_mb = t.compute_mb + t.tp_mb + hw.pp_exposed_fraction * t.pp_mb + t.cp_exposed_mb;
    if (in.dp > 1) {
      const double bw = Bandwidth(dp_link, hw), lat = Latency(dp_link, hw);
      const double n = static_cast<double>(s.parameters), bucket = static_cast<double>(s.last_bucket_parameters);
      // A micro-batch's forward pass is a third of its FLOPs without the
      // recompute (2 of the 6 per parameter and token); its backward pass,
      // the recomputed forward included, the rest.
      const double f = s.flops_per_micro_batch, r = s.recompute_flops_per_micro_batch;
      const double forward_share = f > 0 ? (f - r) / (3.0 * f) : 0.0;
      const double backward_share = f > 0 ? 1.0 - forward_share : 0.0;
      const double backward_window = backward_share * t.t_mb, forward_window = forward_share * t.t_mb;
      if (in.zero_stage == 0) {
        // All-reduced bucket by bucket during the last micro-batch's
        // backward pass; its last bucket is exposed.
        const double reduce_s = CollectiveSeconds(Collective::kAllReduce, 4.0 * n, in.dp, bw, lat);
        const double last_s = CollectiveSeconds(Collective::kAllReduce, 4.0 * bucket, in.dp, bw, lat);
        t.dp_total = reduce_s;
        t.dp_exposed = ExposedBehind(reduce_s, last_s, backward_window);
      } else {
        // Reduce-scatter: ZeRO-1 once, during the last micro-batch's
        // backward pass; ZeRO-2 during every micro-batch's.
        const double reductions = in.zero_stage == 2 ? m : 1.0;
        const double reduce_s = CollectiveSeconds(Collective::kReduceScatter, 4.0 * n, in.dp, bw, lat);
        const double last_s = CollectiveSeconds(Collective::kReduceScatter, 4.0 * bucket, in.dp, bw, lat);
        // All-gather of the compute copy, in the compute dtype, after the
        // update: the next step's first forward waits only for the buckets
        // still in flight. Its first bucket (the one reduced last) cannot
        // be hidden; the rest runs behind that forward pass.
        const double gather_s = CollectiveSeconds(Collective::kAllGather, in.weight_bytes * n, in.dp, bw, lat);
        const double first_s = CollectiveSeconds(Collective::kAllGather, in.weight_bytes * bucket, in.dp, bw, lat);
        t.dp_total = reductions * reduce_s + gather_s;
        t.dp_exposed = reductions * ExposedBehind(reduce_s, last_s, backward_window) +
                       ExposedBehind(gather_s, first_s, forward_window);
      }
    }
    const double updated =
        static_cast<double>(s.parameters) / static_cast<double>(in.zero_stage == 0 ? 1 : in.dp);
    t.optimizer = updated * hw.optimizer_bytes_per_parameter / (hw.hbm_bytes_per_s * hw.hbm_fraction);
    times.push_back(t);
  }

  StepTime out;
  size_t slow = 0, tail = 0;
  for (size_t i = 1; i < times.size(); ++i) {
    if (times[i].t_mb > times[slow].t_mb) slow = i;
    if (times[i].dp_exposed + times[i].optimizer > times[tail].dp_exposed + times[tail].optimizer) tail = i;
  }
  const StageTime& s = times[slow];
  out.slowest_stage = in.stages[slow].stage;
  out.compute_s = m * s.compute_mb;
  out.recompute_s = m * s.recompute_mb;
  out.bubble_s = in.pp > 1 ? BubbleFraction(in.pp, in.virtual_stages, in.micro_batches) * m * s.t_mb : 0.0;

  out.tp.link = tp_link;
  out.tp.bytes = s.bytes.tp_all_reduce + s.bytes.tp_reduce_scatter + s.bytes.tp_all_gather;
  out.tp.seconds = m * s.tp_mb + s.tp_step;
  out.tp.exposed_s = out.tp.seconds;
  out.pp.link = pp_link;
  out.pp.bytes = s.bytes.pp_send;
  out.pp.seconds = m * s.pp_mb;
  out.pp.exposed_s = hw.pp_exposed_fraction * out.pp.seconds;
  out.pp.overlapped_s = out.pp.seconds - out.pp.exposed_s;
  out.cp.link = in.context > 1 ? cp_link : "none";
  out.cp.bytes = s.bytes.cp_send;
  out.cp.seconds = m * s.cp_mb;
  out.cp.exposed_s = m * s.cp_exposed_mb;
  out.cp.overlapped_s = out.cp.seconds - out.cp.exposed_s;
  const StageTime& d = times[tail];
  out.dp.link = dp_link;
  out.dp.bytes = d.bytes.dp_all_reduce + d.bytes.dp_reduce_scatter + d.bytes.dp_all_gather;
  out.dp.seconds = d.dp_total;
  out.dp.exposed_s = d.dp_exposed;
  out.dp.overlapped_s = d.dp_total - d.dp_exposed;
  out.optimizer_s = d.optimizer;

  out.step_s = out.compute_s + out.tp.exposed_s + out.pp.exposed_s + out.cp.exposed_s + out.bubble_s +
               out.dp.exposed_s + out.optimizer_s;
  const double world = static_cast<double>(in.tp) * in.pp * in.dp;
  const double tokens = static_cast<double>(in.tokens_per_step);
  out.tokens_per_s_per_gpu = tokens / out.step_s / world;
  out.mfu = in.model_flops_per_step / (out.step_s * world * hw.peak_flops);
  out.days_for_300b_tokens = 300e9 / (tokens / out.step_s) / 86400.0;
  return out;
}

nlohmann::ordered_json StepTimeJson(const StepTime& t, const Hardware& hw) {
  auto group = [](const GroupTime& g) {
    return nlohmann::ordered_json{{"link", g.link},
                                  {"bytes", g.bytes},
                                  {"seconds", g.seconds},
                                  {"exposed_s", g.exposed_s},
                                  {"overlapped_s", g.overlapped_s}};
  };
  nlohmann::ordered_json j;
  j["gpu"] = hw.gpu;
  j["network"] = hw.network;
  j["gpus_per_node"] = hw.gpus_per_node;
  j["assumptions"] = {{"peak_bf16_flops", hw.peak_flops},
                      {"achievable_fraction", hw.achievable_fraction},
                      {"nvlink_bus_bytes_per_s", hw.nvlink_bus_bytes_per_s},
                      {"network_bus_bytes_per_s_per_gpu", hw.network_bus_bytes_per_s},
                      {"nvlink_latency_s", hw.nvlink_latency_s},
                      {"network_latency_s", hw.network_latency_s},
                      {"pp_exposed_fraction", hw.pp_exposed_fraction},
                      {"hbm_bytes_per_s", hw.hbm_bytes_per_s},
                      {"hbm_fraction", hw.hbm_fraction},
                      {"optimizer_bytes_per_parameter", hw.optimizer_bytes_per_parameter}};
  j["step_s"] = t.step_s;
  j["slowest_stage"] = t.slowest_stage;
  j["compute_s"] = t.compute_s;
  j["recompute_s"] = t.recompute_s;
  j["bubble_s"] = t.bubble_s;
  j["optimizer_s"] = t.optimizer_s;
  j["communication"] = {{"tp", group(t.tp)}, {"cp", group(t.cp)}, {"pp", group(t.pp)}, {"dp", group(t.dp)}};
  j["exposed_communication_s"] = t.tp.exposed_s + t.cp.exposed_s + t.pp.exposed_s + t.dp.exposed_s;
  j["overlapped_communication_s"] = t.tp.overlapped_s + t.cp.overlapped_s + t.pp.overlapped_s + t.dp.overlapped_s;
  j["tokens_per_s_per_gpu"] = t.tokens_per_s_per_gpu;
  j["mfu"] = t.mfu;
  j["days_for_300b_tokens"] = t.days_for_300b_tokens;
  return j;
}

}  // namespace latam
