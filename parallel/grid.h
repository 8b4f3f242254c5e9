// ProcessGrid: the ranks of a job arranged as tensor x pipeline x data
// parallel groups (Megatron order: tensor-parallel ranks are adjacent, then
// pipeline stages, then data-parallel replicas):
//   world rank w:  tp_rank = w % T,  pp_rank = (w / T) % P,  dp_rank = w / (T P)
// Groups:
//   tp()   the T ranks of one pipeline stage of one replica (same pp, dp)
//   pp()   the P stages that pass activations to each other (same tp, dp)
//   dp()   the D replicas of one model shard (same tp, pp)
//   model_parallel()  the T x P ranks of one replica (same dp)
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace latam {

struct GridShape {
  int tensor = 1;
  int pipeline = 1;
  int data = 1;
  int world() const { return tensor * pipeline * data; }
};

class ProcessGrid {
 public:
  // Splits `world` (size must equal shape.world(); checked) into the groups.
  ProcessGrid(std::unique_ptr<Communicator> world, GridShape shape);
  // The grid of a single process: every group is a SelfCommunicator.
  static std::unique_ptr<ProcessGrid> Single();

  const GridShape& shape() const { return shape_; }
  int tp_rank() const { return tp_->rank(); }
  int pp_rank() const { return pp_->rank(); }
  int dp_rank() const { return dp_->rank(); }

  Communicator& world() const { return *world_; }
  Communicator& tp() const { return *tp_; }
  Communicator& pp() const { return *pp_; }
  Communicator& dp() const { return *dp_; }
  Communicator& model_parallel() const { return *model_parallel_; }

  // Sum of all groups' byte statistics (world included).
  CommStats TotalStats() const;
  void ResetStats();

 private:
  GridShape shape_;
  std::unique_ptr<Communicator> world_, tp_, pp_, dp_, model_parallel_;
};

}  // namespace latam
