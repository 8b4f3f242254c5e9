// The measurement behind the CPU GEMM choice: OpenBLAS's cblas_sgemm against
// oneDNN's dnnl_sgemm on a 2048^3 product and on the 7M benchmark model's
// training GEMMs (forward NT, input-gradient NN, weight-gradient TN).
//
//   bench_gemm_libraries
//
// Built only when OpenBLAS is installed (it is not a project dependency).
// Prints one JSON object per shape. OpenBLAS picks its kernel from CPUID (or
// OPENBLAS_CORETYPE); run it with and without that variable to see whether
// it detects the CPU; dnnl dispatches by itself.
#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>

#include <cstdio>
#include <vector>

#include "bench/timing.h"

extern "C" char* openblas_get_corename(void);

int main() {
  struct Shape {
    char ta, tb;
    int64_t m, n, k;
  };
  const std::vector<Shape> shapes = {
      {'N', 'N', 2048, 2048, 2048}, {'N', 'T', 2048, 512, 256},  {'N', 'T', 2048, 1376, 256},
      {'N', 'T', 2048, 256, 688},   {'N', 'T', 2048, 8192, 256}, {'N', 'N', 2048, 256, 512},
      {'T', 'N', 512, 256, 2048},   {'T', 'N', 1376, 256, 2048}, {'T', 'N', 8192, 256, 2048}};
  std::printf("{\"openblas_core\": \"%s\"}\n", openblas_get_corename());
  for (const Shape& s : shapes) {
    std::vector<float> a(static_cast<size_t>(s.m * s.k), 0.5f), b(static_cast<size_t>(s.k * s.n), 0.25f);
    std::vector<float> c(static_cast<size_t>(s.m * s.n));
    const int64_t lda = s.ta == 'N' ? s.k : s.m, ldb = s.tb == 'N' ? s.n : s.k;
    const double flops = 2.0 * static_cast<double>(s.m * s.n * s.k);
    const double openblas =
        flops / 1e9 /
        latam::bench::SecondsPerCall(
            [&] {
              cblas_sgemm(CblasRowMajor, s.ta == 'N' ? CblasNoTrans : CblasTrans,
                          s.tb == 'N' ? CblasNoTrans : CblasTrans, static_cast<int>(s.m), static_cast<int>(s.n),
                          static_cast<int>(s.k), 1.0f, a.data(), static_cast<int>(lda), b.data(), static_cast<int>(ldb),
                          0.0f, c.data(), static_cast<int>(s.n));
            },
            1.0);
    const double onednn =
        flops / 1e9 /
        latam::bench::SecondsPerCall(
            [&] { dnnl_sgemm(s.ta, s.tb, s.m, s.n, s.k, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), s.n); },
            1.0);
    std::printf(
        "{\"op\": \"%c%c\", \"M\": %lld, \"N\": %lld, \"K\": %lld, \"openblas_gflops\": %.1f, "
        "\"onednn_gflops\": %.1f}\n",
        s.ta, s.tb, static_cast<long long>(s.m), static_cast<long long>(s.n), static_cast<long long>(s.k), openblas,
        onednn);
  }
  return 0;
}
