#include "kernels/cross_entropy.h"

#include <limits>

#include "kernels/cpu/vec_math.h"

namespace latam::cpu {

namespace {

LATAM_CPU_CLONES
void RowMax(const float* logits, float* out, int64_t rows, int64_t v) {
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = logits + m * v;
    float mx = -std::numeric_limits<float>::infinity();
    // Written as a select, not std::max, so that GCC vectorises the reduction.
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < v; ++j) mx = row[j] > mx ? row[j] : mx;
    out[m] = mx;
  }
}

LATAM_CPU_CLONES
void RowSumExp(const float* logits, const float* gmax, const int32_t* targets, int64_t vocab_begin, float* sumexp,
               float* tlogit, int64_t rows, int64_t v) {
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = logits + m * v;
    const float mx = gmax[m];
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < v; ++j) sum += ExpF(row[j] - mx);
    sumexp[m] = sum;
    const int64_t local = static_cast<int64_t>(targets[m]) - vocab_begin;
    tlogit[m] = (targets[m] >= 0 && local >= 0 && local < v) ? row[local] : 0.0f;
  }
}

LATAM_CPU_CLONES
void Backward(float* logits, const int32_t* targets, int64_t vocab_begin, const float* lse, float grad_scale,
              int64_t rows, int64_t v) {
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < rows; ++m) {
    float* row = logits + m * v;
    if (targets[m] < 0) {
      for (int64_t j = 0; j < v; ++j) row[j] = 0.0f;
      continue;
    }
    const float shift = lse[m];
    for (int64_t j = 0; j < v; ++j) row[j] = grad_scale * ExpF(row[j] - shift);
    const int64_t local = static_cast<int64_t>(targets[m]) - vocab_begin;
    if (local >= 0 && local < v) row[local] -= grad_scale;
  }
}

void CheckRows(const Tensor& logits, const Tensor& t, DType dtype, const char* what) {
  CheckTensor(t, dtype, Shape{logits.shape.rows()}, Device::kCPU, what);
}

}  // namespace

void LogitsRowMax(const Tensor& logits, const Tensor& row_max) {
  CheckTensor(logits, DType::kF32, logits.shape, Device::kCPU, "cross-entropy logits");
  CheckRows(logits, row_max, DType::kF32, "cross-entropy row_max");
  RowMax(logits.as<float>(), row_max.as<float>(), logits.shape.rows(), logits.shape.cols());
}

void LogitsRowSumExp(const Tensor& logits, const Tensor& global_max, const Tensor& targets, int64_t vocab_begin,
                     int64_t vocab, const Tensor& row_sumexp, const Tensor& target_logit) {
  CheckTensor(logits, DType::kF32, logits.shape, Device::kCPU, "cross-entropy logits");
  CheckRows(logits, global_max, DType::kF32, "cross-entropy global_max");
  CheckRows(logits, targets, DType::kI32, "cross-entropy targets");
  CheckRows(logits, row_sumexp, DType::kF32, "cross-entropy row_sumexp");
  CheckRows(logits, target_logit, DType::kF32, "cross-entropy target_logit");
  const int32_t* t = targets.as<int32_t>();
  for (int64_t m = 0; m < targets.numel(); ++m) {
    LATAM_CHECK(t[m] < vocab, "target " << t[m] << " at row " << m << " is outside the vocabulary of " << vocab);
  }
  RowSumExp(logits.as<float>(), global_max.as<float>(), t, vocab_begin, row_sumexp.as<float>(),
            target_logit.as<float>(), logits.shape.rows(), logits.shape.cols());
}

void SoftmaxCrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin, const Tensor& lse,
                                 float grad_scale) {
  CheckTensor(logits, DType::kF32, logits.shape, Device::kCPU, "cross-entropy logits");
  CheckRows(logits, targets, DType::kI32, "cross-entropy targets");
  CheckRows(logits, lse, DType::kF32, "cross-entropy lse");
  Backward(logits.as<float>(), targets.as<int32_t>(), vocab_begin, lse.as<float>(), grad_scale, logits.shape.rows(),
           logits.shape.cols());
}

}  // namespace latam::cpu
