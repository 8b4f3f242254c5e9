#include "kernels/swiglu.h"

#include "kernels/cpu/vec_math.h"

namespace latam::cpu {

namespace {

LATAM_CPU_CLONES
void ForwardRows(const float* gu, float* out, int64_t rows, int64_t f) {
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < rows; ++m) {
    const float* gate = gu + m * 2 * f;
    const float* up = gate + f;
    float* o = out + m * f;
    for (int64_t j = 0; j < f; ++j) o[j] = gate[j] * SigmoidF(gate[j]) * up[j];
  }
}

LATAM_CPU_CLONES
void BackwardRows(const float* dout, const float* gu, float* dgu, int64_t rows, int64_t f) {
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < rows; ++m) {
    const float* gate = gu + m * 2 * f;
    const float* up = gate + f;
    const float* d = dout + m * f;
    float* dgate = dgu + m * 2 * f;
    float* dup = dgate + f;
    for (int64_t j = 0; j < f; ++j) {
      const float g = gate[j];
      const float s = SigmoidF(g);
      const float silu = g * s;
      dgate[j] = d[j] * up[j] * s * (1.0f + g * (1.0f - s));
      dup[j] = d[j] * silu;
    }
  }
}

}  // namespace

void SwigluForward(const Tensor& gu, const Tensor& out) {
  LATAM_CHECK(gu.shape.cols() % 2 == 0, "swiglu gu must have an even width, got " << gu.str());
  const int64_t rows = gu.shape.rows(), f = gu.shape.cols() / 2;
  CheckTensor(gu, DType::kF32, Shape{rows, 2 * f}, Device::kCPU, "swiglu gu");
  CheckTensor(out, DType::kF32, Shape{rows, f}, Device::kCPU, "swiglu out");
  ForwardRows(gu.as<float>(), out.as<float>(), rows, f);
}

void SwigluBackward(const Tensor& dout, const Tensor& gu, const Tensor& dgu) {
  const int64_t rows = gu.shape.rows(), f = gu.shape.cols() / 2;
  CheckTensor(gu, DType::kF32, Shape{rows, 2 * f}, Device::kCPU, "swiglu gu");
  CheckTensor(dout, DType::kF32, Shape{rows, f}, Device::kCPU, "swiglu dout");
  CheckTensor(dgu, DType::kF32, Shape{rows, 2 * f}, Device::kCPU, "swiglu dgu");
  BackwardRows(dout.as<float>(), gu.as<float>(), dgu.as<float>(), rows, f);
}

}  // namespace latam::cpu
