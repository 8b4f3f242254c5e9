#include "kernels/grad_norm.h"

#include <algorithm>
#include <vector>

#include "kernels/cpu/vec_math.h"

namespace latam::cpu {

namespace {

constexpr int64_t kBlock = 1 << 14;

LATAM_CPU_CLONES
void BlockSums(const float* x, int64_t n, double* block_sums) {
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t end = std::min(n, (b + 1) * kBlock);
    // float partials over 16 lanes, then double: accurate and vectorised.
    double acc = 0.0;
    for (int64_t i0 = b * kBlock; i0 < end; i0 += 256) {
      const int64_t i1 = std::min(end, i0 + 256);
      float part = 0.0f;
#pragma omp simd reduction(+ : part)
      for (int64_t i = i0; i < i1; ++i) part += x[i] * x[i];
      acc += part;
    }
    block_sums[b] = acc;
  }
}

LATAM_CPU_CLONES
void ScaleAll(float* x, int64_t n, float factor) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

}  // namespace

double SumOfSquares(const Tensor& x) {
  LATAM_CHECK(x.dtype == DType::kF32 && x.device == Device::kCPU, "SumOfSquares needs f32 on cpu, got " << x.str());
  const int64_t n = x.numel();
  std::vector<double> sums(static_cast<size_t>((n + kBlock - 1) / kBlock));
  BlockSums(x.as<float>(), n, sums.data());
  double total = 0.0;
  for (double s : sums) total += s;
  return total;
}

void Scale(const Tensor& x, float factor) {
  LATAM_CHECK(x.dtype == DType::kF32 && x.device == Device::kCPU, "Scale needs f32 on cpu, got " << x.str());
  ScaleAll(x.as<float>(), x.numel(), factor);
}

}  // namespace latam::cpu
