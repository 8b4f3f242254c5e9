#include "kernels/embedding.h"

#include <algorithm>
#include <cstring>

#include <omp.h>

namespace latam::cpu {

void EmbeddingForward(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out) {
  const int64_t m = ids.numel(), v_local = table.shape[0], d = table.shape.cols();
  CheckTensor(ids, DType::kI32, Shape{m}, Device::kCPU, "embedding ids");
  CheckTensor(table, DType::kF32, Shape{v_local, d}, Device::kCPU, "embedding table");
  CheckTensor(out, DType::kF32, Shape{m, d}, Device::kCPU, "embedding out");
  const int32_t* id = ids.as<int32_t>();
  const float* w = table.as<float>();
  float* o = out.as<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r) {
    const int64_t local = static_cast<int64_t>(id[r]) - vocab_begin;
    if (local >= 0 && local < v_local) {
      std::memcpy(o + r * d, w + local * d, static_cast<size_t>(d) * sizeof(float));
    } else {
      std::memset(o + r * d, 0, static_cast<size_t>(d) * sizeof(float));
    }
  }
}

void EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin, const Tensor& dtable) {
  const int64_t m = ids.numel(), v_local = dtable.shape[0], d = dtable.shape.cols();
  CheckTensor(ids, DType::kI32, Shape{m}, Device::kCPU, "embedding ids");
  CheckTensor(dout, DType::kF32, Shape{m, d}, Device::kCPU, "embedding dout");
  CheckTensor(dtable, DType::kF32, Shape{v_local, d}, Device::kCPU, "embedding dtable");
  const int32_t* id = ids.as<int32_t>();
  const float* g = dout.as<float>();
  float* dw = dtable.as<float>();
  // Each thread owns a band of columns and walks all tokens in order: no
  // races, and every sum is accumulated in token order.
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t band = (d + nt - 1) / nt;
    const int64_t c0 = std::min(d, t * band), c1 = std::min(d, c0 + band);
    for (int64_t r = 0; r < m; ++r) {
      const int64_t local = static_cast<int64_t>(id[r]) - vocab_begin;
      if (local < 0 || local >= v_local) continue;
      float* dst = dw + local * d;
      const float* src = g + r * d;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

}  // namespace latam::cpu
