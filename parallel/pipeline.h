// Pipeline schedules and their execution on one rank.
//
// A schedule is the ordered list of forward (F) and backward (B) passes of
// (local chunk, micro-batch) that one pipeline rank runs in a step:
//   1F1B (virtual_stages = 1): rank p of P runs min(P - p - 1, m) warm-up
//     forwards, then alternates F and B, then drains the remaining B; at most
//     P - p micro-batches are in flight on rank p (P on the first stage).
//   Interleaved 1F1B (V > 1, Megatron-LM's order): the m micro-batches pass
//     through the rank's V chunks in groups of P; warm-up is
//     (P - p - 1) * 2 + (V - 1) * P forwards (all of them when m == P);
//     requires m % P == 0.
// Every F/B pass is given an activation slot of its chunk, reused once the
// micro-batch's backward is done; SlotsNeeded() is the most a chunk ever
// holds at once, which is what the model allocates.
//
// PipelineExecutor runs a schedule: a forward receives its input activation
// from the previous pipeline rank (unless the chunk is the first), runs the
// chunk and sends its output on (unless the chunk is the last); a backward
// receives the output gradient from the next rank (unless last), runs the
// chunk's backward and sends the input gradient back (unless first).
// Sends are non-blocking; a receive blocks only when its data is needed, and
// a slot's buffers are reused only after their sends completed. Messages are
// tagged by (micro-batch, receiving chunk, direction). Each pass sets its
// micro-batch on the pipeline group's TrainingPosition (parallel/watchdog.h)
// before it communicates, and a step's end clears it, so a hang report names
// the micro-batch a rank was stuck in.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace latam {

struct PipelineAction {
  enum Kind { kForward, kBackward } kind;
  int chunk;  // local chunk index on this rank
  int micro;  // micro-batch index in the step
  int slot;   // activation slot of the chunk
};

// The schedule of pipeline rank `rank` of `stages`, with `virtual_stages`
// chunks per rank and `micro_batches` micro-batches (m % stages == 0 when
// virtual_stages > 1; checked).
std::vector<PipelineAction> BuildSchedule(int stages, int rank, int virtual_stages, int micro_batches);

// Peak number of micro-batches each local chunk holds at once.
std::vector<int> SlotsNeeded(const std::vector<PipelineAction>& schedule, int virtual_stages);

// Where a pipeline chunk sits: its global index g in [0, P V) and whether it
// is the first (reads token ids) or the last (computes the loss).
struct PipelineChunk {
  int global_index = 0;
  bool first = false;
  bool last = false;
};

// What the executor drives: the chunks one pipeline rank holds. The model
// implements it (model/model.h); tests can implement it with toy stages.
//   Forward(chunk, slot) reads token ids (first chunk) or Input(chunk, slot)
//   and leaves its output in Output(chunk, slot); Backward(chunk, slot)
//   turns the gradient in Grad(chunk, slot) into the gradient of the chunk's
//   input, left in the same buffer. TakeLoss() returns the summed token
//   losses since its last call.
class PipelineStages {
 public:
  virtual ~PipelineStages() = default;
  virtual int pipeline_stages() const = 0;  // P
  virtual int pipeline_rank() const = 0;    // p
  virtual int virtual_stages() const = 0;   // V
  virtual int num_chunks() const = 0;       // local chunks, in pipeline order
  virtual PipelineChunk chunk(int c) const = 0;
  virtual int slots(int chunk) const = 0;
  virtual int64_t tokens_per_micro_batch() const = 0;
  virtual Tensor Input(int chunk, int slot) const = 0;
  virtual Tensor Output(int chunk, int slot) const = 0;
  virtual Tensor Grad(int chunk, int slot) const = 0;
  // Whether every chunk's forward needs the micro-batch's document starts
  // (document-masked attention): then every stage fetches them.
  virtual bool needs_documents() const { return false; }
  virtual void Forward(int chunk, int slot, const int32_t* ids, const int32_t* targets, const int32_t* doc_start,
                       float grad_scale, bool with_grads, bool last_micro_batch) = 0;
  virtual void Backward(int chunk, int slot, bool last_micro_batch) = 0;
  virtual double TakeLoss() = 0;
};

class PipelineExecutor {
 public:
  // Fills ids and targets (micro_batch x seq_len each) of micro-batch `micro`.
  // Fills micro-batch `micro`'s ids and targets and, when doc_start is not
  // null (the stages mask documents), its document starts (as
  // AttentionDims::doc_start).
  using FetchFn = std::function<void(int micro, int32_t* ids, int32_t* targets, int32_t* doc_start)>;

  // Checks that the model has the activation slots that the training
  // schedule of `micro_batches` micro-batches needs.
  PipelineExecutor(PipelineStages* model, Communicator* pp, int micro_batches);

  // Runs forward and backward of every micro-batch; returns the sum of the
  // token losses computed on this rank (non-zero only on the last stage).
  double TrainStep(const FetchFn& fetch, float grad_scale);
  // Forward only, no gradients, of `micro_batches` micro-batches, one at a
  // time through the pipeline (evaluation; one slot per chunk is enough).
  double EvalStep(int micro_batches, const FetchFn& fetch);

  const std::vector<PipelineAction>& schedule() const { return schedule_; }

 private:
  double Run(const std::vector<PipelineAction>& schedule, const FetchFn& fetch, float grad_scale, bool with_grads);
  int Tag(int micro, int global_chunk, int direction) const;
  void WaitSends(int chunk, int slot);

  PipelineStages* model_;
  Communicator* pp_;
  std::vector<PipelineAction> schedule_;
  std::vector<std::vector<std::vector<std::unique_ptr<Request>>>> pending_;  // [chunk][slot] sends in flight
  std::vector<int32_t> ids_, targets_, doc_start_;
};

}  // namespace latam
