// ProcessGrid: the ranks of a job arranged as tensor x context x pipeline x
// data parallel groups (Megatron order: tensor-parallel ranks are adjacent,
// then context-parallel ranks, then pipeline stages, then data-parallel
// replicas):
//   world rank w:  tp_rank = w % T,  cp_rank = (w / T) % C,
//                  pp_rank = (w / (T C)) % P,  dp_rank = w / (T C P)
// Groups:
//   tp()   the T ranks of one pipeline stage of one sequence share (same cp, pp, dp)
//   cp()   the C ranks splitting the same sequences (same tp, pp, dp): ring attention
//   pp()   the P stages that pass activations to each other (same tp, cp, dp)
//   dp()   the D replicas that read different samples (same tp, cp, pp)
//   replicas()  the D x C ranks holding the same parameter shard (same tp,
//          pp), rank dp_rank x C + cp_rank: gradients are summed over them
//          and ZeRO shards the optimizer over them (context-parallel ranks
//          compute gradients of different tokens of the same samples);
//          the data-parallel group itself when C = 1
//   model_parallel()  the T x P ranks of one replica (same dp, cp)
// Every group shares the world's TrainingPosition (position()), which the
// hang watchdog reports (parallel/watchdog.h).
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace latam {

struct GridShape {
  int tensor = 1;
  int pipeline = 1;
  int data = 1;
  int context = 1;
  int world() const { return tensor * context * pipeline * data; }
};

class ProcessGrid {
 public:
  // Splits `world` (size must equal shape.world(); checked) into the groups.
  ProcessGrid(std::unique_ptr<Communicator> world, GridShape shape);
  // The grid of a single process: every group is a SelfCommunicator.
  static std::unique_ptr<ProcessGrid> Single();

  const GridShape& shape() const { return shape_; }
  int tp_rank() const { return tp_->rank(); }
  int cp_rank() const { return cp_->rank(); }
  int pp_rank() const { return pp_->rank(); }
  int dp_rank() const { return dp_->rank(); }
  int replica_rank() const { return replicas_->rank(); }

  Communicator& world() const { return *world_; }
  Communicator& tp() const { return *tp_; }
  Communicator& cp() const { return *cp_; }
  Communicator& pp() const { return *pp_; }
  Communicator& dp() const { return *dp_; }
  Communicator& replicas() const { return *replicas_; }
  Communicator& model_parallel() const { return *model_parallel_; }
  // The step and micro-batch the job is at: the Engine sets the step.
  TrainingPosition& position() const { return world_->position(); }

  // Sum of all groups' byte statistics (world included).
  CommStats TotalStats() const;
  void ResetStats();

 private:
  GridShape shape_;
  std::unique_ptr<Communicator> world_, tp_, cp_, pp_, dp_, own_replicas_, model_parallel_;
  Communicator* replicas_ = nullptr;  // own_replicas_, or dp_ without context parallelism
};

}  // namespace latam
