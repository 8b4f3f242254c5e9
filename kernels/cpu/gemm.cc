#include "kernels/gemm.h"

#include <oneapi/dnnl/dnnl.h>

namespace latam::cpu {

void Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  // dnnl_sgemm is row-major, like cblas_sgemm(CblasRowMajor, ...).
  const dnnl_status_t status =
      dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  LATAM_CHECK(status == dnnl_success, "dnnl_sgemm(" << (trans_a ? 'T' : 'N') << (trans_b ? 'T' : 'N') << ", M=" << m
                                                    << ", N=" << n << ", K=" << k << ") returned status "
                                                    << static_cast<int>(status));
}

namespace {
void CheckMatrix(const Tensor& t, const char* what) {
  LATAM_CHECK(t.dtype == DType::kF32 && t.device == Device::kCPU && t.shape.rank() >= 1,
              what << " must be an f32 CPU tensor, got " << t.str());
}
}  // namespace

void LinearForward(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) {
  CheckMatrix(x, "linear x");
  CheckMatrix(w, "linear W");
  CheckMatrix(y, "linear y");
  const int64_t m = x.shape.rows(), in = x.shape.cols(), out = w.shape.rows();
  LATAM_CHECK(w.shape.cols() == in && y.shape.rows() == m && y.shape.cols() == out,
              "linear forward shapes x" << x.shape.str() << " W" << w.shape.str() << " y" << y.shape.str());
  Gemm(false, true, m, out, in, 1.0f, x.as<float>(), in, w.as<float>(), in, accumulate ? 1.0f : 0.0f, y.as<float>(),
       out);
}

void LinearBackwardInput(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate) {
  CheckMatrix(dy, "linear dy");
  CheckMatrix(w, "linear W");
  CheckMatrix(dx, "linear dx");
  const int64_t m = dy.shape.rows(), out = dy.shape.cols(), in = w.shape.cols();
  LATAM_CHECK(w.shape.rows() == out && dx.shape.rows() == m && dx.shape.cols() == in,
              "linear backward shapes dy" << dy.shape.str() << " W" << w.shape.str() << " dx" << dx.shape.str());
  Gemm(false, false, m, in, out, 1.0f, dy.as<float>(), out, w.as<float>(), in, accumulate ? 1.0f : 0.0f, dx.as<float>(),
       in);
}

void LinearBackwardWeight(const Tensor& dy, const Tensor& x, const Tensor& dw) {
  CheckMatrix(dy, "linear dy");
  CheckMatrix(x, "linear x");
  CheckMatrix(dw, "linear dW");
  const int64_t m = dy.shape.rows(), out = dy.shape.cols(), in = x.shape.cols();
  LATAM_CHECK(x.shape.rows() == m && dw.shape.rows() == out && dw.shape.cols() == in,
              "linear weight-gradient shapes dy" << dy.shape.str() << " x" << x.shape.str() << " dW" << dw.shape.str());
  Gemm(true, false, out, in, m, 1.0f, dy.as<float>(), out, x.as<float>(), in, 1.0f, dw.as<float>(), in);
}

}  // namespace latam::cpu
