#include "parallel/data_parallel.h"

#include "core/check.h"

namespace latam {

std::vector<size_t> PlanBuckets(const std::vector<BucketItem>& items, int64_t bucket_elems) {
  std::vector<size_t> ends;
  int64_t in_bucket = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0 && bucket_elems > 0) {
      // A new group closes the bucket when either group may not share one,
      // or when the bucket is full.
      const BucketItem &item = items[i], &prev = items[i - 1];
      if (item.group != prev.group && (!item.mergeable || !prev.mergeable || in_bucket >= bucket_elems)) {
        ends.push_back(i);
        in_bucket = 0;
      }
    }
    in_bucket += items[i].numel;
  }
  ends.push_back(items.size());
  return ends;
}

GradientReducer::GradientReducer(std::vector<GradBucket> buckets, std::vector<std::string> tensor_names,
                                 Communicator* dp, int zero_stage)
    : buckets_(std::move(buckets)), names_(std::move(tensor_names)), dp_(dp), zero_stage_(zero_stage) {
  LATAM_CHECK(dp != nullptr, "no data-parallel communicator");
  LATAM_CHECK(zero_stage == 0 || zero_stage == 1, "ZeRO stage " << zero_stage);
  const int d = dp->size();
  int64_t at = 0;
  for (const GradBucket& b : buckets_) {
    if (zero_stage_ == 1) {
      LATAM_CHECK((b.end - b.begin) % d == 0,
                  "gradient bucket of " << b.end - b.begin << " elements, not a multiple of " << d << " replicas");
    }
    owned_at_.push_back(at);
    at += zero_stage_ == 1 ? (b.end - b.begin) / d : b.end - b.begin;
    bucket_of_.insert(bucket_of_.end(), b.end_tensor - b.first_tensor, owned_at_.size() - 1);
  }
  LATAM_CHECK(bucket_of_.size() == names_.size(),
              "buckets hold " << bucket_of_.size() << " tensors, not " << names_.size());
  owned_size_ = at;
  pending_.assign(buckets_.size(), 0);
}

std::pair<int64_t, int64_t> GradientReducer::owned(size_t b) const {
  const GradBucket& k = buckets_[b];
  if (zero_stage_ == 0) return {k.begin, k.end};
  const int64_t share = (k.end - k.begin) / dp_->size();
  const int64_t begin = k.begin + dp_->rank() * share;
  return {begin, begin + share};
}

void GradientReducer::Begin() {
  LATAM_CHECK(in_flight_.empty(), "a gradient reduction is already in progress");
  for (size_t b = 0; b < buckets_.size(); ++b) {
    pending_[b] = static_cast<int>(buckets_[b].end_tensor - buckets_[b].first_tensor);
  }
  final_.assign(bucket_of_.size(), false);
}

void GradientReducer::TensorsFinal(const std::vector<size_t>& tensors, const Tensor& grads, const Tensor& owned) {
  for (size_t t : tensors) {
    LATAM_CHECK(!final_.at(t), names_.at(t) << "'s gradient was declared final twice in one step");
    final_[t] = true;
    const size_t b = bucket_of_[t];
    if (--pending_[b] == 0) ReduceBucket(b, grads, owned);
  }
}

void GradientReducer::ReduceBucket(size_t b, const Tensor& grads, const Tensor& owned) {
  const GradBucket& bucket = buckets_[b];
  const Tensor in = grads.Rows(bucket.begin, bucket.end);
  if (zero_stage_ == 1) {
    const int64_t share = (bucket.end - bucket.begin) / dp_->size();
    in_flight_.push_back(dp_->ReduceScatter(in, owned.Rows(owned_at_[b], owned_at_[b] + share)));
  } else {
    in_flight_.push_back(dp_->AllReduce(in, ReduceOp::kSum));
  }
}

void GradientReducer::Finish() {
  for (size_t t = 0; t < final_.size(); ++t) {
    LATAM_CHECK(final_[t], names_[t] << "'s gradient was never declared final in this step");
  }
  for (auto& request : in_flight_) request->Wait();
  in_flight_.clear();
}

void GradientReducer::StartGather(const Tensor& params) {
  if (zero_stage_ != 1) return;
  FinishGather();
  gathers_.resize(buckets_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const auto [begin, end] = owned(b);
    gathers_[b] = dp_->AllGather(params.Rows(begin, end), params.Rows(buckets_[b].begin, buckets_[b].end));
  }
}

void GradientReducer::WaitGather(size_t b) {
  if (!gathering(b)) return;
  gathers_[b]->Wait();
  gathers_[b].reset();
}

void GradientReducer::FinishGather() {
  for (size_t b = 0; b < gathers_.size(); ++b) WaitGather(b);
}

void GradientReducer::AllGatherParameters(const Tensor& params) {
  StartGather(params);
  FinishGather();
}

}  // namespace latam
