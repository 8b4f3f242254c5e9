// `latam-train --plan`: sizes, memory and FLOPs of a config, without data,
// MPI or any allocation.
//
// Parameter counts are exact. Per-rank numbers are for the largest rank
// (the first or last pipeline stage, which also hold the vocab-parallel
// embedding and LM head). Memory is:
//   weights     parameters_per_rank x (4 bytes fp32 | 2 bytes bf16)
//   gradients   parameters_per_rank x 4 (fp32 accumulation)
//   optimizer   parameters_per_rank x (8 Adam moments + 4 fp32 master for
//               bf16), divided by the data-parallel size under ZeRO-1
//   activations what the rank's activation arena holds (ActivationBytes:
//               its TP-local widths, its chunks, and one slot per
//               micro-batch its pipeline schedule keeps in flight), halved
//               for bf16
// flops_per_token is training FLOPs: 6 x (matmul parameters) plus causal
// attention 6 x n_layers x seq_len x (n_heads x head_dim) (QK^T and PV,
// forward and backward, half the positions masked).
#pragma once

#include <string>

#include "kernels/status.h"
#include "trainer/config.h"

namespace latam {

// The plan as a one-line JSON object.
Result<std::string> PlanJson(const Config& config);

}  // namespace latam
