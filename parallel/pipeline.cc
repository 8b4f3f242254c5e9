#include "parallel/pipeline.h"

#include <algorithm>
#include <map>

namespace latam {

std::vector<PipelineAction> BuildSchedule(int stages, int rank, int virtual_stages, int micro_batches) {
  LATAM_CHECK(stages >= 1 && rank >= 0 && rank < stages && virtual_stages >= 1 && micro_batches >= 1,
              "schedule for rank " << rank << " of " << stages << ", " << virtual_stages << " virtual stages, "
                                   << micro_batches << " micro-batches");
  std::vector<PipelineAction> s;
  if (virtual_stages == 1) {
    const int warmup = std::min(stages - rank - 1, micro_batches);
    int next_f = 0, next_b = 0;
    for (int i = 0; i < warmup; ++i) s.push_back({PipelineAction::kForward, 0, next_f++, 0});
    while (next_f < micro_batches) {
      s.push_back({PipelineAction::kForward, 0, next_f++, 0});
      s.push_back({PipelineAction::kBackward, 0, next_b++, 0});
    }
    while (next_b < micro_batches) s.push_back({PipelineAction::kBackward, 0, next_b++, 0});
  } else {
    LATAM_CHECK(micro_batches % stages == 0, "interleaved schedule needs micro-batches ("
                                                 << micro_batches << ") divisible by " << stages << " stages");
    const int total = micro_batches * virtual_stages;
    const int warmup =
        micro_batches == stages ? total : std::min(total, (stages - rank - 1) * 2 + (virtual_stages - 1) * stages);
    // Virtual micro-batch k goes through chunk (k / P) % V (forward order;
    // backward visits the chunks in reverse) with micro-batch (k / (P V)) P + k % P.
    auto chunk_of = [&](int k, bool forward) {
      const int c = (k % (stages * virtual_stages)) / stages;
      return forward ? c : virtual_stages - 1 - c;
    };
    auto micro_of = [&](int k) { return (k / (stages * virtual_stages)) * stages + k % stages; };
    auto forward = [&](int k) { s.push_back({PipelineAction::kForward, chunk_of(k, true), micro_of(k), 0}); };
    auto backward = [&](int k) { s.push_back({PipelineAction::kBackward, chunk_of(k, false), micro_of(k), 0}); };
    for (int k = 0; k < warmup; ++k) forward(k);
    for (int k = 0; k < total - warmup; ++k) {
      forward(k + warmup);
      backward(k);
    }
    for (int k = total - warmup; k < total; ++k) backward(k);
  }
  // Slots: the lowest free one of the chunk at each forward, released by the backward.
  std::map<std::pair<int, int>, int> slot_of;
  std::vector<std::vector<bool>> used(static_cast<size_t>(virtual_stages));
  for (PipelineAction& a : s) {
    auto& u = used[static_cast<size_t>(a.chunk)];
    if (a.kind == PipelineAction::kForward) {
      size_t free_slot = 0;
      while (free_slot < u.size() && u[free_slot]) ++free_slot;
      if (free_slot == u.size()) u.push_back(false);
      u[free_slot] = true;
      a.slot = static_cast<int>(free_slot);
      slot_of[{a.chunk, a.micro}] = a.slot;
    } else {
      a.slot = slot_of.at({a.chunk, a.micro});
      u[static_cast<size_t>(a.slot)] = false;
    }
  }
  return s;
}

std::vector<int> SlotsNeeded(const std::vector<PipelineAction>& schedule, int virtual_stages) {
  std::vector<int> peak(static_cast<size_t>(virtual_stages), 0);
  for (const PipelineAction& a : schedule) {
    peak[static_cast<size_t>(a.chunk)] = std::max(peak[static_cast<size_t>(a.chunk)], a.slot + 1);
  }
  return peak;
}

PipelineExecutor::PipelineExecutor(PipelineStages* model, Communicator* pp, int micro_batches)
    : model_(model), pp_(pp) {
  const int stages = model->pipeline_stages();
  LATAM_CHECK(pp->size() == stages, "pipeline group of " << pp->size() << " ranks for a layout of " << stages);
  schedule_ = BuildSchedule(stages, model->pipeline_rank(), model->virtual_stages(), micro_batches);
  const std::vector<int> needed = SlotsNeeded(schedule_, model->virtual_stages());
  pending_.resize(static_cast<size_t>(model->num_chunks()));
  for (int c = 0; c < model->num_chunks(); ++c) {
    LATAM_CHECK(model->slots(c) >= needed[static_cast<size_t>(c)], "chunk " << c << " has " << model->slots(c)
                                                                            << " activation slots, the schedule needs "
                                                                            << needed[static_cast<size_t>(c)]);
    pending_[static_cast<size_t>(c)].resize(static_cast<size_t>(model->slots(c)));
  }
  ids_.resize(static_cast<size_t>(model->tokens_per_micro_batch()));
  targets_.resize(ids_.size());
  doc_start_.resize(ids_.size());
}

int PipelineExecutor::Tag(int micro, int global_chunk, int direction) const {
  return (micro * model_->pipeline_stages() * model_->virtual_stages() + global_chunk) * 2 + direction;
}

void PipelineExecutor::WaitSends(int chunk, int slot) {
  auto& list = pending_[static_cast<size_t>(chunk)][static_cast<size_t>(slot)];
  for (auto& r : list) r->Wait();
  list.clear();
}

double PipelineExecutor::Run(const std::vector<PipelineAction>& schedule, const FetchFn& fetch, float grad_scale,
                             bool with_grads) {
  const int stages = model_->pipeline_stages(), rank = model_->pipeline_rank();
  const int next = (rank + 1) % stages, prev = (rank + stages - 1) % stages;
  // Every chunk runs the micro-batches in order, so the last one's passes
  // complete the step's gradients.
  int last = 0;
  for (const PipelineAction& a : schedule) last = std::max(last, a.micro);
  TrainingPosition& position = pp_->position();
  for (const PipelineAction& a : schedule) {
    const PipelineChunk info = model_->chunk(a.chunk);
    const int g = info.global_index;
    position.SetMicroBatch(a.micro);
    WaitSends(a.chunk, a.slot);
    if (a.kind == PipelineAction::kForward) {
      // With document masking every chunk's attention needs the
      // micro-batch's document starts, so every stage fetches.
      const bool docs = model_->needs_documents();
      int32_t* doc_start = docs ? doc_start_.data() : nullptr;
      if (info.first || info.last || docs) fetch(a.micro, ids_.data(), targets_.data(), doc_start);
      if (!info.first) pp_->Recv(model_->Input(a.chunk, a.slot), prev, Tag(a.micro, g, 0))->Wait();
      model_->Forward(a.chunk, a.slot, ids_.data(), targets_.data(), doc_start, grad_scale, with_grads,
                      a.micro == last);
      if (!info.last) {
        pending_[static_cast<size_t>(a.chunk)][static_cast<size_t>(a.slot)].push_back(
            pp_->Send(model_->Output(a.chunk, a.slot), next, Tag(a.micro, g + 1, 0)));
      }
    } else {
      if (!info.last) pp_->Recv(model_->Grad(a.chunk, a.slot), next, Tag(a.micro, g, 1))->Wait();
      model_->Backward(a.chunk, a.slot, a.micro == last);
      if (!info.first) {
        pending_[static_cast<size_t>(a.chunk)][static_cast<size_t>(a.slot)].push_back(
            pp_->Send(model_->Grad(a.chunk, a.slot), prev, Tag(a.micro, g - 1, 1)));
      }
    }
  }
  for (int c = 0; c < model_->num_chunks(); ++c) {
    for (int s = 0; s < model_->slots(c); ++s) WaitSends(c, s);
  }
  position.EndMicroBatches();
  return model_->TakeLoss();
}

double PipelineExecutor::TrainStep(const FetchFn& fetch, float grad_scale) {
  return Run(schedule_, fetch, grad_scale, true);
}

double PipelineExecutor::EvalStep(int micro_batches, const FetchFn& fetch) {
  // Every micro-batch through the rank's chunks in pipeline order, one slot.
  std::vector<PipelineAction> forwards;
  for (int m = 0; m < micro_batches; ++m) {
    for (int c = 0; c < model_->num_chunks(); ++c) forwards.push_back({PipelineAction::kForward, c, m, 0});
  }
  return Run(forwards, fetch, 0.0f, false);
}

}  // namespace latam
