#include "model/state.h"

namespace latam {

namespace {

std::vector<int64_t> Dims(const Shape& s) {
  std::vector<int64_t> d;
  for (int i = 0; i < s.rank(); ++i) d.push_back(s[i]);
  return d;
}

// The block of the global tensor that a parameter's local copy is.
Block ParamBlock(const ParamSpec& p) {
  Block b{std::vector<int64_t>(static_cast<size_t>(p.global_shape.rank()), 0), Dims(p.shape)};
  if (p.shard_dim >= 0) b.offset[static_cast<size_t>(p.shard_dim)] = p.shard_offset;
  return b;
}

}  // namespace

std::vector<StatePiece> StatePieces(const ParameterSet& params, const AdamWOptimizer* optimizer, int dp_rank) {
  std::vector<StatePiece> pieces;
  // ZeRO-1/2: the f32 weights are the optimizer's master shard, saved and
  // loaded as flat-range pieces like the moments; otherwise the set's own.
  const bool zero1 = optimizer != nullptr && optimizer->zero_stage() >= 1;
  if (!zero1) {
    for (size_t i = 0; i < params.size(); ++i) {
      const ParamSpec& p = params.spec(i);
      pieces.push_back({p.name, Dims(p.global_shape), ParamBlock(p), params.param(i).as<float>(),
                        p.counted && dp_rank == 0, false, params.device()});
    }
  }
  if (optimizer == nullptr) return pieces;
  for (const AdamWOptimizer::MomentSlice& m : optimizer->Moments()) {
    const ParamSpec& p = params.spec(m.tensor);
    const int64_t tensor_begin = static_cast<int64_t>(params.table().entry(m.tensor).offset / sizeof(float));
    const bool saved = p.counted && (zero1 || dp_rank == 0);
    for (const auto& [block, first] : FlatRangeBlocks(ParamBlock(p), m.begin - tensor_begin, m.end - tensor_begin)) {
      const int64_t at = first - (m.begin - tensor_begin);
      if (zero1) {
        pieces.push_back({p.name, Dims(p.global_shape), block, m.master + at, saved, false, params.device()});
      }
      pieces.push_back({p.name + kExpAvgSuffix, Dims(p.global_shape), block, m.exp_avg + at, saved, true,
                        params.device()});
      pieces.push_back({p.name + kExpAvgSqSuffix, Dims(p.global_shape), block, m.exp_avg_sq + at, saved, true,
                        params.device()});
    }
  }
  return pieces;
}

void FinishOptimizerLoad(AdamWOptimizer& optimizer, bool moments_loaded, int64_t step) {
  if (moments_loaded) {
    optimizer.set_step(step);
  } else {
    optimizer.ResetMoments();
  }
}

}  // namespace latam
