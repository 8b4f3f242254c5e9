#include "kernels/rmsnorm.h"

#include <cmath>
#include <vector>

#include "kernels/cpu/vec_math.h"

namespace latam::cpu {

namespace {

// Rows per block of the dw reduction; fixed so results do not depend on the
// thread count.
constexpr int64_t kRowBlock = 32;

LATAM_CPU_CLONES
void ForwardRows(const float* x, const float* w, float eps, float* y, float* rstd, int64_t rows, int64_t d) {
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < rows; ++m) {
    const float* xr = x + m * d;
    float* yr = y + m * d;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t j = 0; j < d; ++j) ss += xr[j] * xr[j];
    const float r = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    rstd[m] = r;
    for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * r * w[j];
  }
}

LATAM_CPU_CLONES
void BackwardRows(const float* dy, const float* x, const float* w, const float* rstd, float* dx, bool accumulate,
                  float* dw_blocks, int64_t rows, int64_t d) {
  const int64_t n_blocks = (rows + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n_blocks; ++b) {
    float* dwb = dw_blocks + b * d;
    for (int64_t j = 0; j < d; ++j) dwb[j] = 0.0f;
    const int64_t end = std::min(rows, (b + 1) * kRowBlock);
    for (int64_t m = b * kRowBlock; m < end; ++m) {
      const float* dyr = dy + m * d;
      const float* xr = x + m * d;
      float* dxr = dx + m * d;
      const float r = rstd[m];
      float dot = 0.0f;  // sum_k (dy w)_k x_k
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < d; ++j) dot += dyr[j] * w[j] * xr[j];
      const float c = dot * r * r * r / static_cast<float>(d);
      if (accumulate) {
        for (int64_t j = 0; j < d; ++j) dxr[j] += r * dyr[j] * w[j] - xr[j] * c;
      } else {
        for (int64_t j = 0; j < d; ++j) dxr[j] = r * dyr[j] * w[j] - xr[j] * c;
      }
      for (int64_t j = 0; j < d; ++j) dwb[j] += dyr[j] * xr[j] * r;
    }
  }
}

}  // namespace

void RmsNormForward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd) {
  const int64_t d = x.shape.cols(), rows = x.shape.rows();
  CheckTensor(w, DType::kF32, Shape{d}, Device::kCPU, "rmsnorm w");
  CheckTensor(y, DType::kF32, x.shape, Device::kCPU, "rmsnorm y");
  CheckTensor(rstd, DType::kF32, Shape{rows}, Device::kCPU, "rmsnorm rstd");
  ForwardRows(x.as<float>(), w.as<float>(), eps, y.as<float>(), rstd.as<float>(), rows, d);
}

void RmsNormBackward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dx,
                     bool accumulate_dx, const Tensor& dw) {
  const int64_t d = x.shape.cols(), rows = x.shape.rows();
  CheckTensor(dy, DType::kF32, x.shape, Device::kCPU, "rmsnorm dy");
  CheckTensor(w, DType::kF32, Shape{d}, Device::kCPU, "rmsnorm w");
  CheckTensor(rstd, DType::kF32, Shape{rows}, Device::kCPU, "rmsnorm rstd");
  CheckTensor(dx, DType::kF32, x.shape, Device::kCPU, "rmsnorm dx");
  CheckTensor(dw, DType::kF32, Shape{d}, Device::kCPU, "rmsnorm dw");
  const int64_t n_blocks = (rows + kRowBlock - 1) / kRowBlock;
  std::vector<float> dw_blocks(static_cast<size_t>(n_blocks * d));
  BackwardRows(dy.as<float>(), x.as<float>(), w.as<float>(), rstd.as<float>(), dx.as<float>(), accumulate_dx,
               dw_blocks.data(), rows, d);
  float* dwp = dw.as<float>();
  for (int64_t b = 0; b < n_blocks; ++b) {
    const float* src = dw_blocks.data() + b * d;
    for (int64_t j = 0; j < d; ++j) dwp[j] += src[j];
  }
}

}  // namespace latam::cpu
