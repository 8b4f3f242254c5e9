#include "parallel/grid.h"

namespace latam {

ProcessGrid::ProcessGrid(std::unique_ptr<Communicator> world, GridShape shape)
    : shape_(shape), world_(std::move(world)) {
  LATAM_CHECK(world_->size() == shape.world(), "world of " << world_->size() << " ranks is not tensor " << shape.tensor
                                                           << " x context " << shape.context << " x pipeline "
                                                           << shape.pipeline << " x data " << shape.data);
  const int w = world_->rank(), t = shape.tensor, c = shape.context, p = shape.pipeline;
  const int tp_rank = w % t, cp_rank = (w / t) % c, pp_rank = (w / (t * c)) % p, dp_rank = w / (t * c * p);
  // Colors number the other coordinates; keys order the group.
  // Without context parallelism (the same choice on every rank) the
  // context group is this rank alone and the replicas are the data-parallel
  // group: no extra communicators (an NCCL one costs device memory).
  tp_ = world_->Split((dp_rank * p + pp_rank) * c + cp_rank, tp_rank, "tp");
  cp_ = c > 1 ? world_->Split((dp_rank * p + pp_rank) * t + tp_rank, cp_rank, "cp")
              : std::make_unique<SelfCommunicator>("cp", world_->shared_position());
  pp_ = world_->Split((dp_rank * c + cp_rank) * t + tp_rank, pp_rank, "pp");
  dp_ = world_->Split((pp_rank * c + cp_rank) * t + tp_rank, dp_rank, "dp");
  if (c > 1) own_replicas_ = world_->Split(pp_rank * t + tp_rank, dp_rank * c + cp_rank, "replicas");
  replicas_ = c > 1 ? own_replicas_.get() : dp_.get();
  model_parallel_ = world_->Split(dp_rank * c + cp_rank, pp_rank * t + tp_rank, "model_parallel");
}

std::unique_ptr<ProcessGrid> ProcessGrid::Single() {
  return std::make_unique<ProcessGrid>(std::make_unique<SelfCommunicator>("world"), GridShape{});
}

CommStats ProcessGrid::TotalStats() const {
  CommStats total;
  for (const Communicator* g : {world_.get(), tp_.get(), cp_.get(), pp_.get(), dp_.get(), own_replicas_.get(),
                                model_parallel_.get()}) {
    if (g == nullptr) continue;
    for (size_t k = 0; k < total.calls.size(); ++k) {
      total.calls[k] += g->stats().calls[k];
      total.bytes[k] += g->stats().bytes[k];
    }
  }
  return total;
}

void ProcessGrid::ResetStats() {
  for (Communicator* g : {world_.get(), tp_.get(), cp_.get(), pp_.get(), dp_.get(), own_replicas_.get(),
                          model_parallel_.get()}) {
    if (g != nullptr) g->ResetStats();
  }
}

}  // namespace latam
