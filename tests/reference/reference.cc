#include "tests/reference/reference.h"

#include <cmath>
#include <limits>

namespace latam::ref {

Vec Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Vec& a, const Vec& b) {
  Vec c(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const double av = trans_a ? a[static_cast<size_t>(p * m + i)] : a[static_cast<size_t>(i * k + p)];
        const double bv = trans_b ? b[static_cast<size_t>(j * k + p)] : b[static_cast<size_t>(p * n + j)];
        s += av * bv;
      }
      c[static_cast<size_t>(i * n + j)] = s;
    }
  }
  return c;
}

void RmsNormForward(const Vec& x, const Vec& w, int64_t rows, int64_t d, double eps, Vec* y, Vec* rstd) {
  y->assign(static_cast<size_t>(rows * d), 0.0);
  rstd->assign(static_cast<size_t>(rows), 0.0);
  for (int64_t m = 0; m < rows; ++m) {
    double ss = 0.0;
    for (int64_t j = 0; j < d; ++j) ss += x[static_cast<size_t>(m * d + j)] * x[static_cast<size_t>(m * d + j)];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    (*rstd)[static_cast<size_t>(m)] = r;
    for (int64_t j = 0; j < d; ++j) {
      (*y)[static_cast<size_t>(m * d + j)] = x[static_cast<size_t>(m * d + j)] * r * w[static_cast<size_t>(j)];
    }
  }
}

void RmsNormBackward(const Vec& dy, const Vec& x, const Vec& w, int64_t rows, int64_t d, double eps, Vec* dx, Vec* dw) {
  dx->assign(static_cast<size_t>(rows * d), 0.0);
  dw->assign(static_cast<size_t>(d), 0.0);
  for (int64_t m = 0; m < rows; ++m) {
    double ss = 0.0;
    for (int64_t j = 0; j < d; ++j) ss += x[static_cast<size_t>(m * d + j)] * x[static_cast<size_t>(m * d + j)];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    // y_j = x_j r w_j, r = (mean x^2 + eps)^(-1/2), dr/dx_k = -r^3 x_k / d.
    double dot = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      dot += dy[static_cast<size_t>(m * d + j)] * w[static_cast<size_t>(j)] * x[static_cast<size_t>(m * d + j)];
    }
    for (int64_t k = 0; k < d; ++k) {
      const size_t i = static_cast<size_t>(m * d + k);
      (*dx)[i] = dy[i] * w[static_cast<size_t>(k)] * r - dot * r * r * r * x[i] / static_cast<double>(d);
      (*dw)[static_cast<size_t>(k)] += dy[i] * x[i] * r;
    }
  }
}

Vec Rope(const Vec& x, int64_t rows, int64_t width, int64_t seq_len, int64_t n_rot_heads, int64_t head_dim,
         const Vec& inv_freq, double direction) {
  Vec y = x;
  const int64_t half = head_dim / 2;
  for (int64_t m = 0; m < rows; ++m) {
    const double t = static_cast<double>(m % seq_len);
    for (int64_t h = 0; h < n_rot_heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = direction * t * inv_freq[static_cast<size_t>(i)];
        const size_t lo = static_cast<size_t>(m * width + h * head_dim + i);
        const size_t hi = lo + static_cast<size_t>(half);
        y[lo] = x[lo] * std::cos(angle) - x[hi] * std::sin(angle);
        y[hi] = x[hi] * std::cos(angle) + x[lo] * std::sin(angle);
      }
    }
  }
  return y;
}

namespace {
struct Idx {
  const AttnDims& d;
  int64_t width() const { return (d.n_heads + 2 * d.n_kv_heads) * d.head_dim; }
  size_t q(int64_t b, int64_t t, int64_t h, int64_t e) const {
    return static_cast<size_t>((b * d.seq_len + t) * width() + h * d.head_dim + e);
  }
  size_t k(int64_t b, int64_t t, int64_t g, int64_t e) const {
    return static_cast<size_t>((b * d.seq_len + t) * width() + (d.n_heads + g) * d.head_dim + e);
  }
  size_t v(int64_t b, int64_t t, int64_t g, int64_t e) const {
    return static_cast<size_t>((b * d.seq_len + t) * width() + (d.n_heads + d.n_kv_heads + g) * d.head_dim + e);
  }
  size_t o(int64_t b, int64_t t, int64_t h, int64_t e) const {
    return static_cast<size_t>((b * d.seq_len + t) * d.n_heads * d.head_dim + h * d.head_dim + e);
  }
};

// Softmax probabilities P[i][j] (j <= i) of one (batch, head).
std::vector<Vec> Probabilities(const Vec& qkv, const AttnDims& d, const Idx& ix, int64_t b, int64_t h, Vec* lse) {
  const int64_t g = h / (d.n_heads / d.n_kv_heads);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.head_dim));
  std::vector<Vec> p(static_cast<size_t>(d.seq_len), Vec(static_cast<size_t>(d.seq_len), 0.0));
  for (int64_t i = 0; i < d.seq_len; ++i) {
    double mx = -std::numeric_limits<double>::infinity();
    Vec s(static_cast<size_t>(i + 1));
    for (int64_t j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (int64_t e = 0; e < d.head_dim; ++e) dot += qkv[ix.q(b, i, h, e)] * qkv[ix.k(b, j, g, e)];
      s[static_cast<size_t>(j)] = dot * scale;
      mx = std::max(mx, dot * scale);
    }
    double sum = 0.0;
    for (int64_t j = 0; j <= i; ++j) sum += std::exp(s[static_cast<size_t>(j)] - mx);
    for (int64_t j = 0; j <= i; ++j)
      p[static_cast<size_t>(i)][static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - mx) / sum;
    if (lse != nullptr) (*lse)[static_cast<size_t>((b * d.n_heads + h) * d.seq_len + i)] = mx + std::log(sum);
  }
  return p;
}
}  // namespace

void AttentionForward(const Vec& qkv, const AttnDims& d, Vec* out, Vec* lse) {
  const Idx ix{d};
  out->assign(static_cast<size_t>(d.batch * d.seq_len * d.n_heads * d.head_dim), 0.0);
  lse->assign(static_cast<size_t>(d.batch * d.n_heads * d.seq_len), 0.0);
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t h = 0; h < d.n_heads; ++h) {
      const int64_t g = h / (d.n_heads / d.n_kv_heads);
      const auto p = Probabilities(qkv, d, ix, b, h, lse);
      for (int64_t i = 0; i < d.seq_len; ++i) {
        for (int64_t e = 0; e < d.head_dim; ++e) {
          double acc = 0.0;
          for (int64_t j = 0; j <= i; ++j)
            acc += p[static_cast<size_t>(i)][static_cast<size_t>(j)] * qkv[ix.v(b, j, g, e)];
          (*out)[ix.o(b, i, h, e)] = acc;
        }
      }
    }
  }
}

Vec AttentionBackward(const Vec& qkv, const Vec& dout, const AttnDims& d) {
  const Idx ix{d};
  const double scale = 1.0 / std::sqrt(static_cast<double>(d.head_dim));
  Vec dqkv(qkv.size(), 0.0);
  for (int64_t b = 0; b < d.batch; ++b) {
    for (int64_t h = 0; h < d.n_heads; ++h) {
      const int64_t g = h / (d.n_heads / d.n_kv_heads);
      const auto p = Probabilities(qkv, d, ix, b, h, nullptr);
      for (int64_t i = 0; i < d.seq_len; ++i) {
        // dP_ij = dO_i . V_j ; dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik)
        Vec dp(static_cast<size_t>(i + 1), 0.0);
        double weighted = 0.0;
        for (int64_t j = 0; j <= i; ++j) {
          for (int64_t e = 0; e < d.head_dim; ++e)
            dp[static_cast<size_t>(j)] += dout[ix.o(b, i, h, e)] * qkv[ix.v(b, j, g, e)];
          weighted += p[static_cast<size_t>(i)][static_cast<size_t>(j)] * dp[static_cast<size_t>(j)];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const double pij = p[static_cast<size_t>(i)][static_cast<size_t>(j)];
          const double ds = pij * (dp[static_cast<size_t>(j)] - weighted);
          for (int64_t e = 0; e < d.head_dim; ++e) {
            dqkv[ix.q(b, i, h, e)] += ds * qkv[ix.k(b, j, g, e)] * scale;
            dqkv[ix.k(b, j, g, e)] += ds * qkv[ix.q(b, i, h, e)] * scale;
            dqkv[ix.v(b, j, g, e)] += pij * dout[ix.o(b, i, h, e)];
          }
        }
      }
    }
  }
  return dqkv;
}

Vec SwigluForward(const Vec& gu, int64_t rows, int64_t f) {
  Vec out(static_cast<size_t>(rows * f));
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t j = 0; j < f; ++j) {
      const double g = gu[static_cast<size_t>(m * 2 * f + j)], u = gu[static_cast<size_t>(m * 2 * f + f + j)];
      out[static_cast<size_t>(m * f + j)] = g / (1.0 + std::exp(-g)) * u;
    }
  }
  return out;
}

Vec SwigluBackward(const Vec& dout, const Vec& gu, int64_t rows, int64_t f) {
  Vec dgu(static_cast<size_t>(rows * 2 * f));
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t j = 0; j < f; ++j) {
      const double g = gu[static_cast<size_t>(m * 2 * f + j)], u = gu[static_cast<size_t>(m * 2 * f + f + j)];
      const double s = 1.0 / (1.0 + std::exp(-g));
      const double d = dout[static_cast<size_t>(m * f + j)];
      dgu[static_cast<size_t>(m * 2 * f + j)] = d * u * (s + g * s * (1.0 - s));
      dgu[static_cast<size_t>(m * 2 * f + f + j)] = d * g * s;
    }
  }
  return dgu;
}

void CrossEntropy(const Vec& logits, const std::vector<int32_t>& targets, int64_t v, double scale, Vec* losses,
                  Vec* dlogits) {
  const int64_t rows = static_cast<int64_t>(targets.size());
  losses->assign(static_cast<size_t>(rows), 0.0);
  dlogits->assign(logits.size(), 0.0);
  for (int64_t m = 0; m < rows; ++m) {
    const int32_t t = targets[static_cast<size_t>(m)];
    if (t < 0) continue;
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < v; ++j) mx = std::max(mx, logits[static_cast<size_t>(m * v + j)]);
    double sum = 0.0;
    for (int64_t j = 0; j < v; ++j) sum += std::exp(logits[static_cast<size_t>(m * v + j)] - mx);
    const double lse = mx + std::log(sum);
    (*losses)[static_cast<size_t>(m)] = lse - logits[static_cast<size_t>(m * v + t)];
    for (int64_t j = 0; j < v; ++j) {
      (*dlogits)[static_cast<size_t>(m * v + j)] =
          scale * (std::exp(logits[static_cast<size_t>(m * v + j)] - lse) - (j == t ? 1.0 : 0.0));
    }
  }
}

void AdamW(Vec* p, const Vec& g, Vec* m, Vec* v, double lr, double beta1, double beta2, double eps, double wd,
           int64_t step) {
  const double b1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double b2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  for (size_t i = 0; i < p->size(); ++i) {
    (*m)[i] = beta1 * (*m)[i] + (1.0 - beta1) * g[i];
    (*v)[i] = beta2 * (*v)[i] + (1.0 - beta2) * g[i] * g[i];
    (*p)[i] -= lr * (((*m)[i] / b1) / (std::sqrt((*v)[i] / b2) + eps) + wd * (*p)[i]);
  }
}

}  // namespace latam::ref
