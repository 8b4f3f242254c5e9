#include "kernels/cross_entropy.h"

#include <cmath>
#include <limits>

#include "kernels/cpu/vec_math.h"

namespace latam::cpu {

namespace {

LATAM_CPU_CLONES
void Rows(float* logits, const int32_t* targets, float* losses, int64_t rows, int64_t v, float grad_scale,
          bool compute_grad) {
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < rows; ++m) {
    float* row = logits + m * v;
    const int32_t t = targets[m];
    if (t < 0) {
      losses[m] = 0.0f;
      if (compute_grad) {
        for (int64_t j = 0; j < v; ++j) row[j] = 0.0f;
      }
      continue;
    }
    float mx = -std::numeric_limits<float>::infinity();
    // Written as a select, not std::max, so that GCC vectorises the reduction.
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < v; ++j) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < v; ++j) sum += ExpF(row[j] - mx);
    const float log_sum = std::log(sum);
    losses[m] = mx + log_sum - row[t];
    if (compute_grad) {
      // softmax_j = exp(x_j - mx) / sum = exp(x_j - (mx + log sum))
      const float shift = mx + log_sum;
      for (int64_t j = 0; j < v; ++j) row[j] = grad_scale * ExpF(row[j] - shift);
      row[t] -= grad_scale;
    }
  }
}

}  // namespace

void CrossEntropyForwardBackward(const Tensor& logits, const Tensor& targets, const Tensor& losses, float grad_scale,
                                 bool compute_grad) {
  const int64_t rows = logits.shape.rows(), v = logits.shape.cols();
  CheckTensor(logits, DType::kF32, Shape{rows, v}, Device::kCPU, "cross-entropy logits");
  CheckTensor(targets, DType::kI32, Shape{rows}, Device::kCPU, "cross-entropy targets");
  CheckTensor(losses, DType::kF32, Shape{rows}, Device::kCPU, "cross-entropy losses");
  const int32_t* t = targets.as<int32_t>();
  for (int64_t m = 0; m < rows; ++m) {
    LATAM_CHECK(t[m] < v, "target " << t[m] << " at row " << m << " is outside the vocabulary of " << v);
  }
  Rows(logits.as<float>(), t, losses.as<float>(), rows, v, grad_scale, compute_grad);
}

}  // namespace latam::cpu
