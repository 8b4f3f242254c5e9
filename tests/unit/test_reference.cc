// The double-precision references' backward passes against central finite
// differences of their own forward passes: the oracle is checked before it
// judges the kernels. f(x) = sum_i r_i * forward(x)_i for random r, so the
// exact gradient is backward(r). Tolerance: 1e-6 relative (h = 1e-5 in double
// gives O(h^2) = 1e-10 truncation error).
#include <gtest/gtest.h>

#include <functional>

#include "kernels/rope.h"
#include "tests/reference/reference.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using ref::Vec;

class ReferenceGradients : public testing::RandomTest {
 protected:
  Vec RandomDouble(size_t n, double scale = 1.0) {
    const auto f = Normal(n, static_cast<float>(scale));
    return Vec(f.begin(), f.end());
  }
  // Checks grad against d/dx of sum(r * f(x)) at a sample of coordinates.
  void CheckGradient(const std::function<Vec(const Vec&)>& f, const Vec& x, const Vec& r, const Vec& grad) {
    const double h = 1e-5;
    const size_t stride = std::max<size_t>(1, x.size() / 40);
    for (size_t i = 0; i < x.size(); i += stride) {
      Vec xp = x, xm = x;
      xp[i] += h;
      xm[i] -= h;
      const Vec yp = f(xp), ym = f(xm);
      double fd = 0.0;
      for (size_t j = 0; j < yp.size(); ++j) fd += r[j] * (yp[j] - ym[j]);
      fd /= 2 * h;
      EXPECT_NEAR(grad[i], fd, 1e-6 * (1.0 + std::abs(fd))) << "coordinate " << i;
    }
  }
};

TEST_F(ReferenceGradients, RmsNorm) {
  const int64_t rows = 3, d = 7;
  const Vec x = RandomDouble(rows * d), w = RandomDouble(d), r = RandomDouble(rows * d);
  Vec dx, dw;
  ref::RmsNormBackward(r, x, w, rows, d, 1e-5, &dx, &dw);
  CheckGradient(
      [&](const Vec& xx) {
        Vec y, rstd;
        ref::RmsNormForward(xx, w, rows, d, 1e-5, &y, &rstd);
        return y;
      },
      x, r, dx);
  CheckGradient(
      [&](const Vec& ww) {
        Vec y, rstd;
        ref::RmsNormForward(x, ww, rows, d, 1e-5, &y, &rstd);
        return y;
      },
      w, r, dw);
}

TEST_F(ReferenceGradients, Attention) {
  const ref::AttnDims d{2, 5, 4, 2, 4};
  const int64_t width = (d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  const Vec qkv = RandomDouble(d.batch * d.seq_len * width);
  const Vec r = RandomDouble(d.batch * d.seq_len * d.n_heads * d.head_dim);
  const Vec grad = ref::AttentionBackward(qkv, r, d);
  CheckGradient(
      [&](const Vec& x) {
        Vec out, lse;
        ref::AttentionForward(x, d, &out, &lse);
        return out;
      },
      qkv, r, grad);
}

TEST_F(ReferenceGradients, Swiglu) {
  const int64_t rows = 3, f = 5;
  const Vec gu = RandomDouble(rows * 2 * f, 3.0), r = RandomDouble(rows * f);
  CheckGradient([&](const Vec& x) { return ref::SwigluForward(x, rows, f); }, gu, r,
                ref::SwigluBackward(r, gu, rows, f));
}

TEST_F(ReferenceGradients, CrossEntropy) {
  const int64_t rows = 4, v = 9;
  const Vec logits = RandomDouble(rows * v, 3.0);
  const std::vector<int32_t> targets = {0, 8, -1, 3};
  Vec losses, dlogits;
  ref::CrossEntropy(logits, targets, v, 1.0, &losses, &dlogits);
  // f = sum of losses: r = ones over rows.
  CheckGradient(
      [&](const Vec& x) {
        Vec l, g;
        ref::CrossEntropy(x, targets, v, 1.0, &l, &g);
        return l;
      },
      logits, Vec(rows, 1.0), dlogits);
}

TEST_F(ReferenceGradients, RopeBackwardIsTheAdjoint) {
  const int64_t rows = 6, seq = 3, hd = 8, heads = 2, width = 3 * hd;
  const Vec inv_freq = [&] {
    const auto f = RopeInverseFrequencies(10000.0, hd, RopeScaling{});
    return Vec(f.begin(), f.end());
  }();
  const Vec x = RandomDouble(rows * width), r = RandomDouble(rows * width);
  const Vec grad = ref::Rope(r, rows, width, seq, heads, hd, inv_freq, -1.0);
  CheckGradient([&](const Vec& xx) { return ref::Rope(xx, rows, width, seq, heads, hd, inv_freq, 1.0); }, x, r, grad);
}

}  // namespace
}  // namespace latam
