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
                                 Communicator* dp, int zero_stage, GradStorage storage)
    : buckets_(std::move(buckets)),
      names_(std::move(tensor_names)),
      dp_(dp),
      zero_stage_(zero_stage),
      storage_(std::move(storage)) {
  LATAM_CHECK(dp != nullptr, "no data-parallel communicator");
  LATAM_CHECK(zero_stage >= 0 && zero_stage <= 2, "ZeRO stage " << zero_stage);
  if (storage_.at.empty()) {
    for (const GradBucket& b : buckets_) storage_.at.push_back(b.begin);
  }
  if (storage_.whole_step.empty()) storage_.whole_step.assign(buckets_.size(), false);
  LATAM_CHECK(storage_.at.size() == buckets_.size() && storage_.whole_step.size() == buckets_.size(),
              "gradient storage for " << storage_.at.size() << " buckets, not " << buckets_.size());
  LATAM_CHECK(zero_stage != 2 || (storage_.zero && storage_.add), "ZeRO-2 needs the zero and add operations");
  const int d = dp->size();
  int64_t at = 0;
  for (const GradBucket& b : buckets_) {
    if (sharded()) {
      LATAM_CHECK((b.end - b.begin) % d == 0,
                  "gradient bucket of " << b.end - b.begin << " elements, not a multiple of " << d << " replicas");
    }
    owned_at_.push_back(at);
    at += sharded() ? (b.end - b.begin) / d : b.end - b.begin;
    bucket_of_.insert(bucket_of_.end(), b.end_tensor - b.first_tensor, owned_at_.size() - 1);
  }
  LATAM_CHECK(bucket_of_.size() == names_.size(),
              "buckets hold " << bucket_of_.size() << " tensors, not " << names_.size());
  owned_size_ = at;
  pending_.assign(buckets_.size(), 0);
  open_.assign(buckets_.size(), false);
  reductions_.assign(buckets_.size(), 0);
  in_flight_.resize(buckets_.size());
}

std::pair<int64_t, int64_t> GradientReducer::owned(size_t b) const {
  const GradBucket& k = buckets_[b];
  if (!sharded()) return {k.begin, k.end};
  const int64_t share = (k.end - k.begin) / dp_->size();
  const int64_t begin = k.begin + dp_->rank() * share;
  return {begin, begin + share};
}

int64_t GradientReducer::reduced_at(size_t b, int64_t flat) const {
  if (zero_stage_ == 2) return owned_at_[b] + (flat - owned(b).first);
  return storage_.at[b] + (flat - buckets_[b].begin);
}

Tensor GradientReducer::BucketGrads(size_t b) const {
  return grads_.Rows(storage_.at[b], storage_.at[b] + (buckets_[b].end - buckets_[b].begin));
}

Tensor GradientReducer::ShareGrads(size_t b) const {
  const int64_t share = (buckets_[b].end - buckets_[b].begin) / dp_->size();
  const int64_t begin = storage_.at[b] + dp_->rank() * share;
  return grads_.Rows(begin, begin + share);
}

void GradientReducer::Begin(const Tensor& grads, const Tensor& owned) {
  for (size_t b = 0; b < buckets_.size(); ++b) {
    LATAM_CHECK(in_flight_[b] == nullptr && !open_[b], "a gradient reduction is already in progress");
  }
  grads_ = grads;
  owned_ = owned;
  if (zero_stage_ == 2) {
    LATAM_CHECK(owned.numel() == owned_size_, "owned gradients " << owned.str() << " for " << owned_size_);
    storage_.zero(owned);
  }
  for (size_t b = 0; b < buckets_.size(); ++b) {
    pending_[b] = static_cast<int>(buckets_[b].end_tensor - buckets_[b].first_tensor);
  }
  final_.assign(bucket_of_.size(), false);
  reductions_.assign(buckets_.size(), 0);
}

void GradientReducer::TensorsNeeded(const std::vector<size_t>& tensors) {
  if (zero_stage_ != 2) return;
  for (size_t t : tensors) {
    const size_t b = bucket_of_[t];
    if (open_[b] || storage_.whole_step[b]) continue;
    // The slot's previous user (this bucket a micro-batch ago, or another
    // bucket sharing the slot) must be reduced first, and none may still be
    // filling it.
    const int64_t lo = storage_.at[b], hi = lo + (buckets_[b].end - buckets_[b].begin);
    for (size_t c = 0; c < buckets_.size(); ++c) {
      if (storage_.whole_step[c]) continue;
      const int64_t c_lo = storage_.at[c], c_hi = c_lo + (buckets_[c].end - buckets_[c].begin);
      if (c_lo >= hi || lo >= c_hi) continue;
      LATAM_CHECK(!open_[c], names_[t] << "'s gradient bucket shares its slot with the one holding "
                                       << names_[buckets_[c].first_tensor] << ", which is still being written");
      if (in_flight_[c] != nullptr) CompleteReduce(c);
    }
    storage_.zero(BucketGrads(b));
    open_[b] = true;
  }
}

void GradientReducer::TensorsFinal(const std::vector<size_t>& tensors, bool last_micro_batch) {
  for (size_t t : tensors) {
    const size_t b = bucket_of_[t];
    const bool every_micro_batch = zero_stage_ == 2 && !storage_.whole_step[b];
    if (!last_micro_batch && !every_micro_batch) continue;
    if (every_micro_batch) {
      LATAM_CHECK(open_[b], names_[t] << "'s gradient was declared final before its bucket was opened "
                                      << "(TensorsNeeded) in this micro-batch");
    }
    LATAM_CHECK(!final_.at(t), names_.at(t) << "'s gradient was declared final twice in one "
                                            << (every_micro_batch ? "micro-batch" : "step"));
    final_[t] = true;
    if (--pending_[b] > 0) continue;
    ReduceBucket(b);
    if (every_micro_batch && !last_micro_batch) {
      // The next micro-batch declares the bucket's tensors again.
      pending_[b] = static_cast<int>(buckets_[b].end_tensor - buckets_[b].first_tensor);
      for (size_t i = buckets_[b].first_tensor; i < buckets_[b].end_tensor; ++i) final_[i] = false;
    }
  }
}

void GradientReducer::ReduceBucket(size_t b) {
  LATAM_CHECK(in_flight_[b] == nullptr, names_[buckets_[b].first_tensor] << "'s bucket is reduced twice at once");
  if (sharded()) {
    in_flight_[b] = dp_->ReduceScatter(BucketGrads(b), ShareGrads(b));
  } else {
    in_flight_[b] = dp_->AllReduce(BucketGrads(b), ReduceOp::kSum);
  }
  open_[b] = false;
  ++reductions_[b];
}

void GradientReducer::CompleteReduce(size_t b) {
  in_flight_[b]->Wait();
  in_flight_[b].reset();
  if (zero_stage_ == 2) {
    const int64_t share = (buckets_[b].end - buckets_[b].begin) / dp_->size();
    storage_.add(owned_.Rows(owned_at_[b], owned_at_[b] + share), ShareGrads(b));
  }
}

void GradientReducer::Finish() {
  for (size_t t = 0; t < final_.size(); ++t) {
    LATAM_CHECK(final_[t], names_[t] << "'s gradient was never declared final on the step's last micro-batch");
  }
  for (size_t b = 0; b < buckets_.size(); ++b) {
    LATAM_CHECK(!open_[b], names_[buckets_[b].first_tensor] << "'s bucket was opened but never declared final");
    if (in_flight_[b] != nullptr) CompleteReduce(b);
  }
}

void GradientReducer::StartGather(const Tensor& params) {
  if (!sharded()) return;
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
