// The training state one rank holds, described as plain pieces for
// checkpoints (core/block.h): parameters under their canonical names and the
// Adam moments under <name>.exp_avg and <name>.exp_avg_sq.
//
// Which blocks a rank holds. A parameter's block is its ParamSpec's place in
// the global tensor (a row or column range under tensor parallelism, the
// whole tensor otherwise). Its moments are the same block under ZeRO-0; under
// ZeRO-1 a rank keeps the moments and the f32 master weights of a flat slice
// of its parameter arena, so each piece of a tensor inside the slice is a
// flat element range of the local block, split into at most three
// rectangles (FlatRangeBlocks); the weights are then saved and loaded from
// the master shard this way (the format is the same: the pieces tile each
// tensor), never from the compute copy. After a load, call
// AdamWOptimizer::WeightsLoaded() to refresh the compute copy.
//
// Which copy is written. Every element is stored once: only the copy that
// counts in the gradient norm (ParamSpec::counted: tensor-parallel rank 0
// for the norm gains, the first replica of a replicated KV head, the first
// stage's tied embedding), and among data-parallel replicas only replica 0
// (ZeRO-0 parameters and moments) or the slice's owner (ZeRO-1 master
// weights and moments).
// Loading fills every copy a rank holds, replicas included.
#pragma once

#include <vector>

#include "core/block.h"
#include "model/optimizer.h"
#include "model/parameters.h"

namespace latam {

inline constexpr const char* kExpAvgSuffix = ".exp_avg";
inline constexpr const char* kExpAvgSqSuffix = ".exp_avg_sq";

// This rank's blocks of the parameters and (when `optimizer` is given) of
// the Adam moments, pointing at live memory; dp_rank is its index among
// the ranks holding the same parameter shard (ProcessGrid::replica_rank:
// data x context replicas), whose rank 0 saves what is replicated.
std::vector<StatePiece> StatePieces(const ParameterSet& params, const AdamWOptimizer* optimizer, int dp_rank);

// After loading a checkpoint into StatePieces: the optimizer continues from
// `step` when its moments were loaded, and starts fresh (zero moments, step
// 0) otherwise.
void FinishOptimizerLoad(AdamWOptimizer& optimizer, bool moments_loaded, int64_t step);

}  // namespace latam
