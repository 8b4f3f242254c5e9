// Naive double-precision reference implementations of every CPU kernel, for
// the tests only. They follow the formulas in the kernels' headers
// literally (full matrices, no tiling, no fusion) so they are easy to read
// and to check; the references' own backward passes are checked against
// finite differences in tests/unit/test_reference.cc.
#pragma once

#include <cstdint>
#include <vector>

namespace latam::ref {

using Vec = std::vector<double>;

// C[m,n] = op(A) op(B), row-major.
Vec Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Vec& a, const Vec& b);

void RmsNormForward(const Vec& x, const Vec& w, int64_t rows, int64_t d, double eps, Vec* y, Vec* rstd);
void RmsNormBackward(const Vec& dy, const Vec& x, const Vec& w, int64_t rows, int64_t d, double eps, Vec* dx, Vec* dw);

// x[rows, width]; rotates the first n_rot_heads heads of each row; row m is
// at position m % seq_len. inv_freq has head_dim/2 entries.
Vec Rope(const Vec& x, int64_t rows, int64_t width, int64_t seq_len, int64_t n_rot_heads, int64_t head_dim,
         const Vec& inv_freq, double direction);

struct AttnDims {
  int64_t batch, seq_len, n_heads, n_kv_heads, head_dim;
};
void AttentionForward(const Vec& qkv, const AttnDims& d, Vec* out, Vec* lse);
Vec AttentionBackward(const Vec& qkv, const Vec& dout, const AttnDims& d);

Vec SwigluForward(const Vec& gu, int64_t rows, int64_t f);
Vec SwigluBackward(const Vec& dout, const Vec& gu, int64_t rows, int64_t f);

// Per-row losses and d(sum_m scale * loss_m)/dlogits; negative targets ignored.
void CrossEntropy(const Vec& logits, const std::vector<int32_t>& targets, int64_t v, double scale, Vec* losses,
                  Vec* dlogits);

void AdamW(Vec* p, const Vec& g, Vec* m, Vec* v, double lr, double beta1, double beta2, double eps, double wd,
           int64_t step);

}  // namespace latam::ref
