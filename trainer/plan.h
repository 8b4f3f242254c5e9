// `latam-train --plan`: sizes, memory and FLOPs of a config, without data,
// MPI or any allocation.
//
// Parameter counts are exact. Per-rank numbers are for the largest rank
// (the first or last pipeline stage, which also hold the vocab-parallel
// embedding and LM head). Memory is:
//   weights     parameters_per_rank x (4 bytes of fp32 master weights,
//               + 2 for the bf16 compute copy with train.precision=bf16)
//   gradients   parameters_per_rank x 4 (fp32 accumulation)
//   optimizer   parameters_per_rank x 8 (Adam moments), divided by the
//               data-parallel size under ZeRO-1
//   activations what the rank's activation arena and kernel workspaces
//               hold (ActivationBytes: its TP-local widths in the
//               activation dtype, its chunks, one slot per micro-batch its
//               pipeline schedule keeps in flight; the CUDA workspaces,
//               cuBLASLt's included, only in builds with CUDA)
// Not counted: the CUDA context, NCCL's buffers, allocator slack.
// flops_per_token is training FLOPs: 6 x (matmul parameters) plus causal
// attention 6 x n_layers x seq_len x (n_heads x head_dim) (QK^T and PV,
// forward and backward, half the positions masked).
#pragma once

#include <string>

#include "core/status.h"
#include "trainer/config.h"
#include "model/parameters.h"

namespace latam {

// The plan as a one-line JSON object.
Result<std::string> PlanJson(const Config& config);

// Training FLOPs per token of `shape` at sequence length `seq_len`.
double TrainingFlopsPerToken(const ModelShape& shape, int64_t seq_len);

}  // namespace latam
