// A double-precision reference for grouped-query attention, forward and
// backward, causal or not (the kernels/attention.h layouts), and the
// comparison the bf16 attention kernels' tests use. Shared by the GPU tests
// and the emulated-kernel tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace latam::testing {

struct AttentionCase {
  int batch, seq, hq, hkv, hd;
  bool causal;
};

// Reference forward and backward in double, in the qkv / out layouts.
struct AttentionReference {
  std::vector<double> out, lse, dqkv;
};

inline AttentionReference ReferenceAttention(const std::vector<float>& qkv, const std::vector<float>& dout,
                                             const AttentionCase& c) {
  const int T = c.seq, hd = c.hd, group = c.hq / c.hkv;
  const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * hd, out_width = static_cast<int64_t>(c.hq) * hd;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  AttentionReference r;
  r.out.assign(static_cast<size_t>(c.batch) * T * out_width, 0.0);
  r.lse.assign(static_cast<size_t>(c.batch) * c.hq * T, 0.0);
  r.dqkv.assign(static_cast<size_t>(c.batch) * T * width, 0.0);
  std::vector<double> p(static_cast<size_t>(T)), dp(static_cast<size_t>(T));
  for (int b = 0; b < c.batch; ++b) {
    for (int h = 0; h < c.hq; ++h) {
      const int kv = h / group;
      auto q = [&](int i, int e) { return static_cast<double>(qkv[(static_cast<size_t>(b) * T + i) * width + h * hd + e]); };
      auto k = [&](int j, int e) {
        return static_cast<double>(qkv[(static_cast<size_t>(b) * T + j) * width + (c.hq + kv) * hd + e]);
      };
      auto v = [&](int j, int e) {
        return static_cast<double>(qkv[(static_cast<size_t>(b) * T + j) * width + (c.hq + c.hkv + kv) * hd + e]);
      };
      auto go = [&](int i, int e) {
        return static_cast<double>(dout[(static_cast<size_t>(b) * T + i) * out_width + h * hd + e]);
      };
      for (int i = 0; i < T; ++i) {
        const int keys = c.causal ? i + 1 : T;
        double mx = -INFINITY;
        for (int j = 0; j < keys; ++j) {
          double s = 0.0;
          for (int e = 0; e < hd; ++e) s += q(i, e) * k(j, e);
          p[static_cast<size_t>(j)] = s * scale;
          mx = std::max(mx, p[static_cast<size_t>(j)]);
        }
        double sum = 0.0;
        for (int j = 0; j < keys; ++j) sum += std::exp(p[static_cast<size_t>(j)] - mx);
        r.lse[(static_cast<size_t>(b) * c.hq + h) * T + i] = mx + std::log(sum);
        for (int j = 0; j < keys; ++j) p[static_cast<size_t>(j)] = std::exp(p[static_cast<size_t>(j)] - mx) / sum;
        double* o = &r.out[(static_cast<size_t>(b) * T + i) * out_width + h * hd];
        for (int j = 0; j < keys; ++j) {
          for (int e = 0; e < hd; ++e) o[e] += p[static_cast<size_t>(j)] * v(j, e);
        }
        // Backward of row i: dP_j = dO_i . V_j, D = sum_j P_j dP_j,
        // dS_j = P_j (dP_j - D); dQ_i = scale sum_j dS_j K_j,
        // dK_j += scale dS_j Q_i, dV_j += P_j dO_i.
        double d = 0.0;
        for (int j = 0; j < keys; ++j) {
          double s = 0.0;
          for (int e = 0; e < hd; ++e) s += go(i, e) * v(j, e);
          dp[static_cast<size_t>(j)] = s;
          d += p[static_cast<size_t>(j)] * s;
        }
        double* dq = &r.dqkv[(static_cast<size_t>(b) * T + i) * width + h * hd];
        for (int j = 0; j < keys; ++j) {
          const double ds = p[static_cast<size_t>(j)] * (dp[static_cast<size_t>(j)] - d);
          double* dk = &r.dqkv[(static_cast<size_t>(b) * T + j) * width + (c.hq + kv) * hd];
          double* dv = &r.dqkv[(static_cast<size_t>(b) * T + j) * width + (c.hq + c.hkv + kv) * hd];
          for (int e = 0; e < hd; ++e) {
            dq[e] += scale * ds * k(j, e);
            dk[e] += scale * ds * q(i, e);
            dv[e] += p[static_cast<size_t>(j)] * go(i, e);
          }
        }
      }
    }
  }
  return r;
}

// Relative L2 error and element-wise error against max|ref|, over the
// elements for which pick(i) is true; every element must be finite. Both
// scales have a floor of 1e-3 (the inputs are O(1)): a gradient that is
// exactly zero in the reference (a single key: dS = P (dP - D) = 0) is
// computed as fp32 rounding noise by the kernels, which must pass.
inline ::testing::AssertionResult CloseAsBf16(const std::vector<float>& got, const std::vector<double>& ref,
                                       const std::function<bool(size_t)>& pick, const std::string& what) {
  double diff = 0.0, norm = 0.0, worst = 0.0, scale = 0.0;
  size_t non_finite = 0, n = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!pick(i)) continue;
    ++n;
    if (!std::isfinite(got[i])) ++non_finite;
    const double e = static_cast<double>(got[i]) - ref[i];
    diff += e * e;
    norm += ref[i] * ref[i];
    worst = std::max(worst, std::abs(e));
    scale = std::max(scale, std::abs(ref[i]));
  }
  constexpr double kFloor = 1e-3;
  const double rel = std::sqrt(diff / std::max(norm, static_cast<double>(n) * kFloor * kFloor));
  if (non_finite == 0 && rel < 1e-2 && worst <= 3e-2 * std::max(scale, kFloor)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << non_finite << " non-finite, relative L2 error " << rel
                                       << ", worst |err| " << worst << " vs max|ref| " << scale;
}

}  // namespace latam::testing
