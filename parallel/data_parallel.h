// Data parallelism: gradient buckets and their reduction over the
// data-parallel group, with ZeRO-1/2 sharding of the reduced gradients.
//
// Buckets. The gradients of a rank form one flat array of tensors. A bucket
// is a run of whole, consecutive tensors whose gradients are reduced by one
// collective as soon as all of them are final. PlanBuckets decides where the
// runs end: tensors of one group (a layer) always share a bucket, a group
// that is not mergeable (the embedding, the head) gets a bucket of its own,
// and consecutive mergeable groups share one until it holds at least
// `bucket_elems` elements (0: everything is one bucket). The owner of the
// flat array (ParameterSet, model/parameters.h) pads every bucket to a
// multiple of the data-parallel size, so ZeRO-1/2 split each evenly, and
// says where each bucket's gradients live (GradStorage::at: its place in the
// flat array, or with ZeRO-2 a slot of a two-slot pool).
//
// Reduction (GradientReducer; D replicas, this one r, bucket [b, e) with
// share s = (e - b) / D, replica r owning elements [b + r s, b + (r+1) s)):
//   ZeRO-0  each bucket is all-reduced in place once per step: every
//           replica holds the summed gradients of every element.
//   ZeRO-1  each bucket is reduce-scattered in place once per step: the
//           sum of replica r's share lands where its own gradients were
//           (the rest of the bucket is left undefined), so no second
//           gradient buffer exists.
//   ZeRO-2  each bucket is reduce-scattered in place after every
//           micro-batch that fills it, and replica r adds the reduced
//           share into its owned buffer (owned_size() elements, zeroed by
//           Begin), which accumulates the step; the bucket's slot is then
//           free for another bucket. Before the model writes a bucket's
//           gradients (TensorsNeeded) its slot is zeroed, after waiting for
//           the reduction of the bucket that used the slot before. A
//           whole-step bucket (GradStorage::whole_step: a tied embedding)
//           keeps its own storage and is reduced once, on the step's last
//           micro-batch, like ZeRO-1's.
//   ZeRO-1/2 after the update the owner has written its share of the
//           weights' compute copy, and StartGather all-gathers every bucket
//           of that copy (in the compute dtype: bf16 on GPUs) non-blocking,
//           in bucket order (the forward order); WaitGather(b) completes
//           one bucket (the next forward waits there, bucket by bucket),
//           FinishGather() all.
// The owned elements of all buckets, in bucket order, index one buffer of
// owned_size() elements (ZeRO-0: the whole padded array), where bucket b's
// owned range starts at owned_at(b).
// Collectives are issued non-blocking as tensors are declared final
// (TensorsFinal), so they overlap the rest of the backward pass; Finish()
// waits for all. Every replica must declare the tensors in the same order.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "parallel/communicator.h"

namespace latam {

struct GradBucket {
  int64_t begin = 0, end = 0;                // flat elements [begin, end), padding included
  size_t first_tensor = 0, end_tensor = 0;  // tensor indices [first_tensor, end_tensor)
};

// One tensor as bucket planning sees it.
struct BucketItem {
  std::string group;       // tensors of one group share a bucket
  bool mergeable = false;  // whether its group may share a bucket with neighbouring groups
  int64_t numel = 0;
};

// The tensor index at which each bucket ends (the last one is items.size()).
std::vector<size_t> PlanBuckets(const std::vector<BucketItem>& items, int64_t bucket_elems);

// Where the bucket gradients live, and (ZeRO-2) the device operations the
// reducer needs on them.
struct GradStorage {
  // Element offset of each bucket's gradients in the `grads` tensor given
  // to Begin (empty: each bucket's own begin, the flat array).
  std::vector<int64_t> at;
  // ZeRO-2: buckets reduced once per step, on the last micro-batch (empty:
  // none).
  std::vector<bool> whole_step;
  // ZeRO-2: zero(t) sets t to zero; add(acc, t) does acc += t. Enqueued in
  // order with the model's own work (the compute stream on GPUs).
  std::function<void(const Tensor&)> zero;
  std::function<void(const Tensor& acc, const Tensor& t)> add;
};

class GradientReducer {
 public:
  // `buckets` tile the flat gradients back to back and hold the tensors
  // named in `tensor_names` (for error messages). ZeRO-1/2 need every
  // bucket's size to be a multiple of dp->size() (checked). `dp` must
  // outlive the reducer.
  GradientReducer(std::vector<GradBucket> buckets, std::vector<std::string> tensor_names, Communicator* dp,
                  int zero_stage, GradStorage storage = {});

  int zero_stage() const { return zero_stage_; }
  const std::vector<GradBucket>& buckets() const { return buckets_; }
  size_t bucket_of(size_t tensor) const { return bucket_of_[tensor]; }
  // The flat elements [first, second) of bucket b this replica owns.
  std::pair<int64_t, int64_t> owned(size_t b) const;
  int64_t owned_at(size_t b) const { return owned_at_[b]; }
  int64_t owned_size() const { return owned_size_; }
  // Where the reduced gradient of the owned flat element `flat` of bucket b
  // is: an element offset into `grads` (ZeRO-0/1, in place) or into `owned`
  // (ZeRO-2).
  int64_t reduced_at(size_t b, int64_t flat) const;

  // One step's reduction: Begin(grads, owned); per micro-batch
  // TensorsNeeded(...) before the model writes a tensor's gradient (ZeRO-2;
  // a no-op otherwise) and TensorsFinal(..., last_micro_batch) once it is
  // complete for that micro-batch; Finish(). `grads` holds the bucket
  // gradients (at GradStorage::at), `owned` the ZeRO-2 accumulation buffer
  // (owned_size() elements; unused otherwise); both stay valid until
  // Finish(). ZeRO-0/1 reduce only on the last micro-batch's declarations
  // (earlier ones are ignored). Declaring a tensor twice in one micro-batch,
  // or Finish() before every tensor was declared on the last micro-batch, is
  // a programmer error naming the tensor.
  void Begin(const Tensor& grads, const Tensor& owned);
  void TensorsNeeded(const std::vector<size_t>& tensors);
  void TensorsFinal(const std::vector<size_t>& tensors, bool last_micro_batch = true);
  void Finish();
  // ZeRO-1/2: every replica's updated share of every bucket of `params` (a
  // flat array laid out like the gradients, of any dtype: the compute copy)
  // to every replica, one non-blocking all-gather per bucket in bucket
  // order. `params` must stay valid and its shares untouched until the
  // bucket's WaitGather (or FinishGather). A no-op for ZeRO-0. Starting
  // while gathers are in flight completes those first.
  void StartGather(const Tensor& params);
  // Completes bucket b's gather if it is in flight (a no-op otherwise).
  void WaitGather(size_t b);
  // Completes every gather in flight.
  void FinishGather();
  // Whether bucket b's gather is in flight.
  bool gathering(size_t b) const { return b < gathers_.size() && gathers_[b] != nullptr; }
  // StartGather then FinishGather.
  void AllGatherParameters(const Tensor& params);

 private:
  bool sharded() const { return zero_stage_ >= 1; }
  Tensor BucketGrads(size_t b) const;
  Tensor ShareGrads(size_t b) const;  // this replica's share of the bucket, in place
  void ReduceBucket(size_t b);
  // ZeRO-2: waits for bucket b's reduce-scatter and adds the share to `owned`.
  void CompleteReduce(size_t b);

  std::vector<GradBucket> buckets_;
  std::vector<std::string> names_;
  std::vector<size_t> bucket_of_;
  Communicator* dp_;
  int zero_stage_;
  GradStorage storage_;
  std::vector<int64_t> owned_at_;
  int64_t owned_size_ = 0;
  // The reduction in progress: its buffers, tensors still to be declared
  // per bucket (this micro-batch), which tensors were, and the collectives.
  Tensor grads_, owned_;
  std::vector<int> pending_;
  std::vector<bool> final_;
  std::vector<bool> open_;       // ZeRO-2: slot zeroed, gradients being written
  std::vector<int> reductions_;  // reductions issued per bucket this step
  std::vector<std::unique_ptr<Request>> in_flight_;  // per bucket (nullptr: none)
  // The parameter gathers in flight, per bucket (nullptr: none).
  std::vector<std::unique_ptr<Request>> gathers_;
};

}  // namespace latam
