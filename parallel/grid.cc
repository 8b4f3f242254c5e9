#include "parallel/grid.h"

namespace latam {

ProcessGrid::ProcessGrid(std::unique_ptr<Communicator> world, GridShape shape)
    : shape_(shape), world_(std::move(world)) {
  LATAM_CHECK(world_->size() == shape.world(), "world of " << world_->size() << " ranks is not tensor " << shape.tensor
                                                           << " x pipeline " << shape.pipeline << " x data "
                                                           << shape.data);
  const int w = world_->rank(), t = shape.tensor, p = shape.pipeline;
  const int tp_rank = w % t, pp_rank = (w / t) % p, dp_rank = w / (t * p);
  tp_ = world_->Split(dp_rank * p + pp_rank, tp_rank, "tp");
  pp_ = world_->Split(dp_rank * t + tp_rank, pp_rank, "pp");
  dp_ = world_->Split(pp_rank * t + tp_rank, dp_rank, "dp");
  model_parallel_ = world_->Split(dp_rank, pp_rank * t + tp_rank, "model_parallel");
}

std::unique_ptr<ProcessGrid> ProcessGrid::Single() {
  return std::make_unique<ProcessGrid>(std::make_unique<SelfCommunicator>("world"), GridShape{});
}

CommStats ProcessGrid::TotalStats() const {
  CommStats total;
  for (const Communicator* c : {world_.get(), tp_.get(), pp_.get(), dp_.get(), model_parallel_.get()}) {
    for (size_t k = 0; k < total.calls.size(); ++k) {
      total.calls[k] += c->stats().calls[k];
      total.bytes[k] += c->stats().bytes[k];
    }
  }
  return total;
}

void ProcessGrid::ResetStats() {
  for (Communicator* c : {world_.get(), tp_.get(), pp_.get(), dp_.get(), model_parallel_.get()}) c->ResetStats();
}

}  // namespace latam
