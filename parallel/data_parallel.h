// Data parallelism: gradient buckets and their reduction over the
// data-parallel group, with ZeRO-1 sharding of the reduced gradients.
//
// Buckets. The gradients of a rank form one flat array of tensors. A bucket
// is a run of whole, consecutive tensors whose gradients are reduced by one
// collective as soon as all of them are final. PlanBuckets decides where the
// runs end: tensors of one group (a layer) always share a bucket, a group
// that is not mergeable (the embedding, the head) gets a bucket of its own,
// and consecutive mergeable groups share one until it holds at least
// `bucket_elems` elements (0: everything is one bucket). The owner of the
// flat array (ParameterSet, model/parameters.h) pads every bucket to a
// multiple of the data-parallel size, so ZeRO-1 splits each evenly.
//
// Reduction (GradientReducer; D replicas, this one r):
//   ZeRO-0  each bucket is all-reduced in place: every replica holds the
//           summed gradients of every element and updates all of them.
//   ZeRO-1  each bucket [b, e) is reduce-scattered: replica r receives the
//           sum of share r, elements [b + r s, b + (r+1) s) with
//           s = (e - b) / D, into its owned buffer; after the update the
//           owner has written its share of the weights' compute copy, and
//           StartGather all-gathers every bucket of that copy (in the
//           compute dtype: bf16 on GPUs) non-blocking, in bucket order (the
//           forward order); WaitGather(b) completes one bucket (the next
//           forward waits there, bucket by bucket), FinishGather() all.
// The owned elements of all buckets, in bucket order, form one buffer of
// owned_size() elements (ZeRO-0: the whole padded array), where bucket b's
// owned range starts at owned_at(b).
// Collectives are issued non-blocking as tensors are declared final
// (TensorsFinal), so they overlap the rest of the backward pass; Finish()
// waits for all. Every replica must declare the tensors in the same order.
#pragma once

#include <cstdint>
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

class GradientReducer {
 public:
  // `buckets` tile the flat gradients back to back and hold the tensors
  // named in `tensor_names` (for error messages). ZeRO-1 needs every
  // bucket's size to be a multiple of dp->size() (checked). `dp` must
  // outlive the reducer.
  GradientReducer(std::vector<GradBucket> buckets, std::vector<std::string> tensor_names, Communicator* dp,
                  int zero_stage);

  int zero_stage() const { return zero_stage_; }
  const std::vector<GradBucket>& buckets() const { return buckets_; }
  size_t bucket_of(size_t tensor) const { return bucket_of_[tensor]; }
  // The flat elements [first, second) of bucket b this replica owns.
  std::pair<int64_t, int64_t> owned(size_t b) const;
  int64_t owned_at(size_t b) const { return owned_at_[b]; }
  int64_t owned_size() const { return owned_size_; }

  // One step's reduction: Begin(); TensorsFinal(...) for every tensor exactly
  // once; Finish(). `grads` is the flat gradient array (all buckets), `owned`
  // the owned buffer (ZeRO-1; unused for ZeRO-0); both must stay valid until
  // Finish(). Declaring a tensor twice, or Finish() before every tensor was
  // declared, is a programmer error naming the tensor.
  void Begin();
  void TensorsFinal(const std::vector<size_t>& tensors, const Tensor& grads, const Tensor& owned);
  void Finish();
  // ZeRO-1: every replica's updated share of every bucket of `params` (a
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
  void ReduceBucket(size_t b, const Tensor& grads, const Tensor& owned);

  std::vector<GradBucket> buckets_;
  std::vector<std::string> names_;
  std::vector<size_t> bucket_of_;
  Communicator* dp_;
  int zero_stage_;
  std::vector<int64_t> owned_at_;
  int64_t owned_size_ = 0;
  // The reduction in progress: tensors still to be declared per bucket,
  // which tensors were, and the collectives issued.
  std::vector<int> pending_;
  std::vector<bool> final_;
  std::vector<std::unique_ptr<Request>> in_flight_;
  // The parameter gathers in flight, per bucket (nullptr: none).
  std::vector<std::unique_ptr<Request>> gathers_;
};

}  // namespace latam
