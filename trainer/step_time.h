// The step-time model of `latam-train --plan --gpu ...`: a prediction, from
// the layout and the machine's published peaks, of how long one optimizer
// step takes on GPUs, split into compute, communication per parallel group
// (exposed or overlapped), the pipeline bubble and the optimizer update.
// Nothing here is measured; every constant is an assumption stated in the
// plan's output and justified in docs/performance.md.
//
// Inputs. The plan (trainer/plan.cc) describes every pipeline stage (the
// first holds the embedding, the last the LM head; with uneven stages the
// middle ones may hold the most layers) as a StageLoad: its layers,
// chunks, training FLOPs per micro-batch on one GPU (recompute included),
// and the parameters it reduces over data parallelism. StepModel() turns
// them into a StepTime. All times are seconds, all sizes bytes.
//
// Terms, for one GPU of stage p (T tensor, P pipeline, D data-parallel
// ranks, V virtual stages, m micro-batches per step and data-parallel rank,
// r = b x seq_len tokens per micro-batch, d = model dim, a = activation
// dtype bytes):
//   compute      F_p / (peak x achievable_fraction), F_p the stage's training
//                FLOPs per micro-batch (6 x matmul parameters x r / T plus
//                attention, plus the recomputed forward under FULL).
//   TP           per micro-batch the all-reduces tests/mpi/test_layouts.cc
//                counts: (4, or 6 with FULL recompute) x layers x r x d x a,
//                the embedding output r x d x a on the first stage, the
//                head's row statistics 3 r x 4 and input gradient r x d x a
//                on the last. A ring all-reduce of B bytes over n ranks takes
//                2 (n-1)/n x B / bus_bw + latency per collective. Exposed in
//                full: each sits between two GEMMs of the same micro-batch.
//                (Sequence parallelism replaces each all-reduce by a
//                reduce-scatter and an all-gather: the same bus traffic.)
//   PP           per micro-batch every chunk but the model's last sends its
//                output (r x d x a) forward, every chunk but the first sends
//                its input gradient back: B / p2p_bw + latency each. A
//                fraction pp_exposed_fraction of it is exposed (the sends of
//                the warm-up and cool-down phases, where no other
//                micro-batch's compute hides them); the rest overlaps.
//   pipelined    per micro-batch t_mb = compute + TP + exposed PP; the
//                slowest stage sets the pace: pipelined = m x max_p t_mb.
//   bubble       interleaved 1F1B idles (P-1)/(V m) of the pipelined time:
//                (P-1)/V x max_p t_mb (0 for P = 1).
//   DP           ZeRO-0 all-reduces the stage's fp32 gradients (4 bytes x
//                parameters); ZeRO-1 reduce-scatters them and all-gathers
//                the updated fp32 parameters (4 bytes x parameters each;
//                ring: (n-1)/n x B / bus_bw). The gradient reduction runs
//                bucket by bucket during the last micro-batch's backward
//                pass: exposed is the last bucket's collective plus whatever
//                of the rest does not fit in that backward pass
//                (backward_fraction x t_mb); the ZeRO-1 all-gather follows
//                the update and is exposed in full.
//   optimizer    the AdamW update reads and writes about 32 bytes per
//                parameter this rank updates (parameters / D under ZeRO-1),
//                at hbm_fraction of the HBM bandwidth.
//   step         pipelined + bubble + max_p (exposed DP + optimizer).
//   tokens/s/GPU tokens_per_step / step / world_size.
//   MFU          model FLOPs (without recompute) per step / (step x world x
//                peak).
//   days         300e9 tokens / (tokens_per_step / step) / 86400.
// Links: a group stays inside a node (NVLink) when its ranks' span in the
// world order (tensor fastest, then pipeline, then data; parallel/grid.h)
// fits in gpus_per_node: TP when T <= G, PP when T P <= G, DP when T P D <= G;
// otherwise it crosses nodes over the network, where each GPU has its own
// 400 Gb/s NIC (NDR InfiniBand) or its eighth of the node's 3200 Gb/s (EFA).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace latam {

// One GPU kind and network, with the model's assumptions.
struct Hardware {
  std::string gpu;      // "h100" or "h200"
  std::string network;  // "ib" or "efa"
  int gpus_per_node = 8;
  double peak_flops = 0;           // dense bf16 FLOP/s
  double achievable_fraction = 0;  // of peak_flops, for the whole step's compute
  double capacity_bytes = 0;       // GPU memory
  double reserved_bytes = 0;       // CUDA context, cuBLAS and NCCL buffers
  double hbm_bytes_per_s = 0;
  double hbm_fraction = 0;             // achievable share of hbm_bytes_per_s
  double nvlink_bus_bytes_per_s = 0;   // achievable NCCL bus bandwidth in a node
  double network_bus_bytes_per_s = 0;  // achievable per GPU across nodes
  double nvlink_latency_s = 0;         // per collective or p2p transfer
  double network_latency_s = 0;
  double pp_exposed_fraction = 0;  // of the pipeline p2p time
  double optimizer_bytes_per_parameter = 0;
};

// The machine for `gpu` (h100|h200), `network` (ib|efa); bad names are
// InvalidInput naming the flag.
Result<Hardware> MakeHardware(const std::string& gpu, int gpus_per_node, const std::string& network);

// What one GPU of one pipeline stage does per step.
struct StageLoad {
  int stage = 0;
  int64_t layers = 0;        // layers on this rank, all chunks together
  int64_t sends_forward = 0;   // chunks whose output goes to another stage
  int64_t sends_backward = 0;  // chunks whose input gradient goes back
  bool embedding = false;    // holds the embedding (first stage)
  bool head = false;         // holds the LM head (last stage)
  double flops_per_micro_batch = 0;            // training FLOPs on this GPU, recompute included
  double recompute_flops_per_micro_batch = 0;  // the recompute share of it
  int64_t parameters = 0;    // elements this rank reduces over data parallelism
  int64_t last_bucket_parameters = 0;  // the gradient bucket finished last
};

struct StepInput {
  int tp = 1, pp = 1, dp = 1, virtual_stages = 1, zero_stage = 0;
  int64_t micro_batches = 1;            // per data-parallel rank and step
  int64_t tokens_per_micro_batch = 1;   // r = b x seq_len
  int64_t dim = 1;
  double activation_bytes = 2;          // a: bytes per activation element
  bool recompute_full = false;
  double model_flops_per_step = 0;      // whole model, no recompute, all tokens
  int64_t tokens_per_step = 0;
  std::vector<StageLoad> stages;        // at least one; the plan gives every stage
};

// Bytes one GPU of a stage moves per step in each group (as
// tests/mpi/test_layouts.cc counts them: the input buffer of each
// collective; p2p counts what it sends).
struct GroupBytes {
  int64_t tp_all_reduce = 0;
  int64_t pp_send = 0;
  int64_t dp_all_reduce = 0;      // ZeRO-0
  int64_t dp_reduce_scatter = 0;  // ZeRO-1
  int64_t dp_all_gather = 0;      // ZeRO-1
};
GroupBytes StepGroupBytes(const StepInput& in, const StageLoad& stage);

// The bubble's share of the pipelined time: (P-1) / (V m).
double BubbleFraction(int pp, int virtual_stages, int64_t micro_batches);

// Time of one collective (bus-bandwidth convention: a ring all-reduce moves
// 2 (n-1)/n of the buffer per rank, reduce-scatter and all-gather (n-1)/n).
enum class Collective { kAllReduce, kReduceScatter, kAllGather, kSend };
double CollectiveSeconds(Collective op, double bytes, int ranks, double bus_bytes_per_s, double latency_s);

struct GroupTime {
  std::string link;    // "nvlink" or "network"; "none" for a group of one
  int64_t bytes = 0;   // per GPU and step (GroupBytes, summed)
  double seconds = 0;  // all of it, as if nothing overlapped
  double exposed_s = 0;
  double overlapped_s = 0;
};

struct StepTime {
  int slowest_stage = 0;
  double compute_s = 0;    // m x compute per micro-batch of the slowest stage
  double recompute_s = 0;  // the recompute part of compute_s
  GroupTime tp, pp, dp;
  double bubble_s = 0;
  double optimizer_s = 0;
  double step_s = 0;
  double tokens_per_s_per_gpu = 0;
  double mfu = 0;
  double days_for_300b_tokens = 0;
};

StepTime StepModel(const StepInput& in, const Hardware& hw);

// The step time and the hardware's assumptions as the plan's "step_time"
// object.
nlohmann::ordered_json StepTimeJson(const StepTime& t, const Hardware& hw);

}  // namespace latam
