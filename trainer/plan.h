// `latam-train --plan`: sizes, memory and FLOPs of a config, without data,
// MPI or any allocation; with a GPU kind, also whether it fits and a
// predicted step time (trainer/step_time.h).
//
// Parameter counts are exact. Per-rank numbers are for the largest rank
// over the pipeline stages (usually the first or the last, which also hold
// the vocab-parallel embedding and LM head; parameters and activations
// are each the largest over stages). With P = parameters of that rank, D data-parallel
// ranks, memory is (ParameterMemoryPerRank below, which is
// AdamWOptimizer::MemoryPerRank: what the optimizer and its ParameterSet
// allocate):
//   weights        ZeRO-0: the fp32 weights, P x 4, plus with bf16 the bf16
//                  copy the kernels read, P x 2; ZeRO-1/2: only the copy
//                  the kernels read, P x 2 (bf16) or P x 4 (fp32);
//   master_weights ZeRO-1/2: the fp32 master shard, P x 4 / D;
//   gradients      fp32: P x 4 (ZeRO-1 reduce-scatters in place); ZeRO-2:
//                  the bucket pool (two slots of the largest bucket, one
//                  layer's or the embedding's or the head's, plus a tied
//                  embedding's own), plus the owned shard, P x 4 / D;
//   optimizer      the Adam moments: P x 8, or P x 8 / D under ZeRO-1/2;
//   activations    what the rank's activation arena and kernel workspaces
//                  hold (ActivationBytes, model/model.h: its TP-local widths
//                  in the activation dtype, its chunks, one slot per
//                  micro-batch its pipeline schedule keeps in flight; the
//                  CUDA workspaces, cuBLASLt's included, only for cuda).
// memory_bytes_per_rank is their sum: on the CPU exactly what the rank's
// host arenas hold at their peak, up to the per-bucket padding
// (tests/mpi/test_plan_memory.cc measures it). Not counted there: the CUDA
// context, NCCL's buffers; with a GPU kind the plan adds an allowance for
// them (Hardware::reserved_bytes) before comparing with the GPU's memory:
//   fits               memory_bytes_per_rank + reserved <= capacity
//   headroom_fraction  1 - (memory_bytes_per_rank + reserved) / capacity
// flops_per_token is training FLOPs: 6 x (matmul parameters) plus causal
// attention 6 x n_layers x seq_len x (n_heads x head_dim) (QK^T and PV,
// forward and backward, half the positions masked) x attention_fraction
// (PlanOptions; block-causal attention over documents costs the sum of
// squared document lengths, not T^2); recompute is not in it
// (step_time counts it separately). recompute_choices gives, for NONE,
// SELECTIVE and FULL with everything else unchanged, the largest rank's
// activations and memory and the model's extra forward FLOPs per token
// (RecomputeFlopsPerToken summed over every rank of one model replica), also
// as a fraction of flops_per_token.
#pragma once

#include <string>

#include "core/status.h"
#include "trainer/config.h"
#include "model/parameters.h"
#include "trainer/step_time.h"

namespace latam {

// The machine a plan predicts for: no step time when gpu is empty.
struct PlanOptions {
  std::string gpu;  // "", "h100" or "h200"
  int gpus_per_node = 8;
  std::string network = "ib";  // "ib" or "efa"
  // The share of causal attention's (query, key) pairs a step computes
  // (StepResult::attention_fraction): 1 for plain causal attention; with
  // data.document_mask, what the data gives (EstimateAttentionFraction).
  // Scales the attention FLOPs of flops_per_token and of the step time.
  double attention_fraction = 1.0;
};

// The attention fraction of `samples` training samples drawn as the run
// would draw them (data.train, data.seed, data.seq_len): sum over windows
// and documents of L (L + 1) / 2 over samples x T (T + 1) / 2. Opens the
// shards; errors name the file.
Result<double> EstimateAttentionFraction(const Config& config, int samples);

// The plan as a one-line JSON object.
Result<std::string> PlanJson(const Config& config, const PlanOptions& options = {});

// The step-time model's input for the config (trainer/step_time.h): every
// pipeline stage's load.
Result<StepInput> PlanStepInput(const Config& config);

// Training FLOPs per token of `shape` at sequence length `seq_len`, with
// `attention_fraction` of causal attention's (query, key) pairs computed
// (document masking: sum of L (L + 1) / 2 over the documents of a window,
// over T (T + 1) / 2; 1 for plain causal attention).
double TrainingFlopsPerToken(const ModelShape& shape, int64_t seq_len, double attention_fraction = 1.0);

// Bytes per rank of the weights, gradients and optimizer state of a rank
// holding `parameters` parameters (the formula above). grad_arena_elems is
// ZeRO-2's pooled gradient arena (ParameterSet::GradArenaElemsFor; ignored
// for ZeRO-0/1).
struct ParameterMemory {
  double weights = 0, master_weights = 0, gradients = 0, optimizer = 0;
  double total() const { return weights + master_weights + gradients + optimizer; }
};
ParameterMemory ParameterMemoryPerRank(int64_t parameters, bool bf16, int zero_stage, int64_t data_parallel,
                                       int64_t grad_arena_elems);

}  // namespace latam
