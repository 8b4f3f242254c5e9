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
// dtype bytes, w = bytes per element of the weights' compute copy, L the
// stage's layers, N its parameters, k = 4 layer sums per micro-batch (6
// with FULL recompute); byte counts are those tests/mpi/test_layouts.cc
// checks on real runs):
//   compute      F_p / (peak x achievable_fraction), F_p the stage's training
//                FLOPs per micro-batch (6 x matmul parameters x r / T plus
//                attention, plus the recomputed forward under FULL).
//   TP           without sequence parallelism, per micro-batch all-reduces
//                of (k L + [embedding] + [head]) x r x d x a (the layers'
//                sums, the embedding output, the head's input gradient) and
//                the head's row statistics 3 r x 4 in two more:
//                k L + [embedding] + 3 [head] collectives. With sequence
//                parallelism each [r, d] all-reduce becomes a reduce-scatter
//                plus an all-gather of [r, d] (the same bus traffic),
//                SELECTIVE recompute all-gathers the two recomputed norm
//                outputs of each layer again (2 L x r x d x a more), the
//                final norm's output is all-gathered before the head, and
//                once per step the norm gains' gradients are all-reduced
//                ((2 L + [head]) x d x 4 bytes, one collective each):
//                2 (k L + [embedding] + [head]) + 2 L [SELECTIVE] + 2 [head]
//                collectives per micro-batch. Ring bus traffic: an
//                all-reduce of B bytes over n ranks takes 2 (n-1)/n x B /
//                bus_bw, a reduce-scatter or all-gather (n-1)/n x B / bus_bw,
//                plus the link latency per collective. Exposed in full: each
//                sits between two GEMMs of the same micro-batch.
//   PP           per micro-batch every chunk but the model's last sends its
//                output forward, every chunk but the first sends its input
//                gradient back: r x d x a each, r / T x d x a (the rank's
//                row shard) with sequence parallelism; B / p2p_bw + latency
//                each. A fraction pp_exposed_fraction of it is exposed (the
//                sends of the warm-up and cool-down phases, where no other
//                micro-batch's compute hides them); the rest overlaps.
//   pipelined    per micro-batch t_mb = compute + TP + exposed PP; the
//                slowest stage sets the pace: pipelined = m x max_p t_mb.
//   bubble       interleaved 1F1B idles (P-1)/(V m) of the pipelined time:
//                (P-1)/V x max_p t_mb (0 for P = 1).
//   windows      a micro-batch's forward pass is forward_fraction =
//                (F - R) / (3 F) of t_mb (a third of the FLOPs without the
//                recompute R: 2 of the 6 per parameter and token; 1/3
//                without recompute), its backward pass, the recomputed
//                forward included, backward_fraction = 1 - forward_fraction.
//                Collectives issued bucket by bucket behind a window of
//                compute expose the bucket that cannot overlap plus whatever
//                of the rest does not fit: min(C, c + max(0, C - c - window))
//                for C the whole collective, c its one bucket.
//   DP           gradients in fp32 (4 bytes x N), ring: (n-1)/n x B /
//                bus_bw per reduce-scatter or all-gather, twice that per
//                all-reduce, plus latency.
//                ZeRO-0 all-reduces them during the last micro-batch's
//                backward pass (window backward_fraction x t_mb; the bucket
//                finished last is exposed).
//                ZeRO-1 reduce-scatters them the same way, once per step.
//                ZeRO-2 reduce-scatters every micro-batch's gradients during
//                its own backward pass: m x 4 N bytes, m times the exposed
//                part of one.
//                ZeRO-1 and ZeRO-2 then all-gather the updated weights'
//                compute copy (w x N bytes: bf16 on GPUs), non-blocking; the
//                next step's first forward waits per bucket, so it runs in
//                the window forward_fraction x t_mb, its first bucket in
//                forward order exposed.
//                The bucket finished last in backward is the first in
//                forward order (StageLoad::last_bucket_parameters: the
//                embedding on the first stage, else the first layers').
//   CP           ring attention (parallel.context = C > 1): per micro-batch
//                and layer a rank sends its key/value block (K = r x kv_width
//                elements, r the rank's tokens; a bytes each) C - 1 times
//                forward (twice with FULL recompute) and C - 1 times
//                backward, plus the f32 gradient block (4 K bytes) C times;
//                B / p2p_bw + latency each. Each
//                send overlaps the block attention of the same ring step:
//                exposed is the part of the ring's time beyond the
//                micro-batch's attention compute, added to t_mb.
//                Context-parallel ranks are adjacent to their tensor-parallel
//                ones (parallel/grid.h): NVLink when T C <= G.
//   optimizer    the AdamW update reads and writes about 32 bytes per
//                parameter this rank updates (parameters / D under ZeRO-1
//                and ZeRO-2), at hbm_fraction of the HBM bandwidth.
//   step         pipelined + bubble + TP once per step (of the slowest
//                stage) + max_p (exposed DP + optimizer).
//   tokens/s/GPU tokens_per_step / step / world_size.
//   MFU          model FLOPs (without recompute) per step / (step x world x
//                peak).
//   days         300e9 tokens / (tokens_per_step / step) / 86400.
// Links: a group stays inside a node (NVLink) when its ranks' span in the
// world order (tensor fastest, then context, then pipeline, then data;
// parallel/grid.h) fits in gpus_per_node: TP when T <= G, CP when T C <= G,
// PP when T C P <= G, DP (over the D x C replicas) when T C P D <= G;
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
  // Attention's share of flops_per_micro_batch (recompute included): what
  // the context-parallel ring overlaps with.
  double attention_flops_per_micro_batch = 0;
  // The gradient bucket finished last in backward, which is also the first
  // in forward order: the first whose ZeRO all-gather the next forward waits
  // for.
  int64_t last_bucket_parameters = 0;
};

struct StepInput {
  // dp: the ranks gradients are reduced over (data x context replicas).
  int tp = 1, pp = 1, dp = 1, virtual_stages = 1;
  // parallel.context (C), and a tensor-parallel rank's key/value width
  // 2 Hkv hd: the ring's blocks are tokens_per_micro_batch x kv_width.
  int context = 1;
  int64_t kv_width = 0;
  int zero_stage = 0;                   // 0, 1 or 2
  int64_t micro_batches = 1;            // per data-parallel rank and step
  int64_t tokens_per_micro_batch = 1;   // r = b x seq_len
  int64_t dim = 1;
  double activation_bytes = 2;          // a: bytes per activation element
  double weight_bytes = 2;              // w: bytes per element of the weights' compute copy
  bool recompute_full = false;
  bool recompute_selective = false;
  bool sequence_parallel = false;       // parallel.sequence_parallel
  double model_flops_per_step = 0;      // whole model, no recompute, all tokens
  int64_t tokens_per_step = 0;
  std::vector<StageLoad> stages;        // at least one; the plan gives every stage
};

// Bytes one GPU of a stage moves per step in each group (as
// tests/mpi/test_layouts.cc counts them: the input buffer of each
// collective; p2p counts what it sends).
struct GroupBytes {
  int64_t tp_all_reduce = 0;
  int64_t tp_reduce_scatter = 0;  // sequence parallelism
  int64_t tp_all_gather = 0;      // sequence parallelism
  int64_t pp_send = 0;
  int64_t dp_all_reduce = 0;      // ZeRO-0
  int64_t dp_reduce_scatter = 0;  // ZeRO-1 and ZeRO-2
  int64_t dp_all_gather = 0;      // ZeRO-1 and ZeRO-2
  int64_t cp_send = 0;            // ring attention (context parallelism)
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
  GroupTime tp, pp, dp, cp;
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
