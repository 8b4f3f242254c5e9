// KV-cache decode attention on the CPU (kernels/decode_attention.h) against a
// naive double-precision reference on fresh random inputs: one new row and
// several, at the start of the cache and after earlier positions, GQA groups
// of 1, 2 and 4; the cache append writes exactly its positions; RoPE at
// positions (RopeForwardAt) against the sequence kernel (RopeForward).
//
// Tolerances. Decode attention: 1e-5 abs + 1e-5 rel against the double
// reference (fp32 GEMMs over at most 64 positions of hd <= 32 products, and
// an fp32 softmax: errors near 1e-6 on outputs of size ~0.5). RoPE: the
// decode rotation rounds each product (no FMA) while the sequence kernel may
// fuse them, so the two agree to 1e-6 abs + 1e-6 rel on inputs in [-1, 1].
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/decode_attention.h"
#include "kernels/rope.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::AllClose;

class DecodeAttentionTest : public testing::RandomTest {};

// out[i, h] = softmax_j(q_{i,h} . K_g[j] / sqrt(hd)) V_g[j] over j <= p0 + i,
// in double, reading the new rows' keys and values at positions >= p0 from
// qkv and the earlier ones from the cache.
std::vector<double> NaiveDecode(const std::vector<float>& qkv, int64_t n, const DecodeAttentionDims& d, int64_t p0,
                                const std::vector<float>& k_cache, const std::vector<float>& v_cache) {
  const int64_t hq = d.n_heads, hkv = d.n_kv_heads, hd = d.head_dim, w = (hq + 2 * hkv) * hd;
  auto key = [&](int64_t g, int64_t j, int64_t e) {
    return j >= p0 ? qkv[static_cast<size_t>((j - p0) * w + (hq + g) * hd + e)]
                   : k_cache[static_cast<size_t>((g * d.max_context + j) * hd + e)];
  };
  auto value = [&](int64_t g, int64_t j, int64_t e) {
    return j >= p0 ? qkv[static_cast<size_t>((j - p0) * w + (hq + hkv + g) * hd + e)]
                   : v_cache[static_cast<size_t>((g * d.max_context + j) * hd + e)];
  };
  std::vector<double> out(static_cast<size_t>(n * hq * hd), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t g = h / (hq / hkv), visible = p0 + i + 1;
      std::vector<double> s(static_cast<size_t>(visible));
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < visible; ++j) {
        double dot = 0.0;
        for (int64_t e = 0; e < hd; ++e) dot += static_cast<double>(qkv[static_cast<size_t>(i * w + h * hd + e)]) * key(g, j, e);
        s[static_cast<size_t>(j)] = dot / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, s[static_cast<size_t>(j)]);
      }
      double sum = 0.0;
      for (double& x : s) sum += x = std::exp(x - mx);
      for (int64_t j = 0; j < visible; ++j) {
        for (int64_t e = 0; e < hd; ++e) {
          out[static_cast<size_t>(i * hq * hd + h * hd + e)] += s[static_cast<size_t>(j)] / sum * value(g, j, e);
        }
      }
    }
  }
  return out;
}

TEST_F(DecodeAttentionTest, MatchesNaiveReference) {
  struct Case {
    int hq, hkv, hd;
    int64_t max_context, p0, n;
  };
  for (const Case& c : {Case{4, 2, 8, 40, 0, 1}, Case{4, 2, 8, 40, 17, 1}, Case{4, 1, 16, 64, 30, 1},
                        Case{2, 2, 32, 64, 0, 19}, Case{8, 2, 16, 64, 9, 33}, Case{4, 4, 8, 24, 23, 1},
                        Case{6, 3, 16, 50, 12, 7}}) {
    SCOPED_TRACE("Hq " + std::to_string(c.hq) + " Hkv " + std::to_string(c.hkv) + " hd " + std::to_string(c.hd) +
                 " p0 " + std::to_string(c.p0) + " n " + std::to_string(c.n));
    const DecodeAttentionDims d{c.hq, c.hkv, c.hd, c.max_context};
    const int64_t w = (c.hq + 2 * c.hkv) * c.hd, cache_elems = c.hkv * c.max_context * c.hd;
    std::vector<float> qkv = Uniform(static_cast<size_t>(c.n * w));
    // Earlier positions hold random keys and values; the rest is garbage
    // (NaN past the new rows) that must never be read.
    std::vector<float> k_cache = Uniform(static_cast<size_t>(cache_elems)), v_cache = Uniform(k_cache.size());
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t g = 0; g < c.hkv; ++g) {
      for (int64_t j = c.p0 + c.n; j < c.max_context; ++j) {
        for (int64_t e = 0; e < c.hd; ++e) {
          k_cache[static_cast<size_t>((g * c.max_context + j) * c.hd + e)] = nan;
          v_cache[static_cast<size_t>((g * c.max_context + j) * c.hd + e)] = nan;
        }
      }
    }
    const std::vector<double> want = NaiveDecode(qkv, c.n, d, c.p0, k_cache, v_cache);
    const std::vector<float> k_before = k_cache, v_before = v_cache;

    const Tensor qkv_t = Tensor::Of(qkv.data(), Shape{c.n, w});
    const Tensor k_t = Tensor::Of(k_cache.data(), Shape{c.hkv, c.max_context, c.hd});
    const Tensor v_t = Tensor::Of(v_cache.data(), Shape{c.hkv, c.max_context, c.hd});
    cpu::KvCacheAppend(qkv_t, d, c.p0, k_t, v_t);
    // The append wrote the new rows' keys and values at p0 .. p0 + n - 1 and
    // nothing else.
    for (int64_t g = 0; g < c.hkv; ++g) {
      for (int64_t j = 0; j < c.max_context; ++j) {
        for (int64_t e = 0; e < c.hd; ++e) {
          const size_t at = static_cast<size_t>((g * c.max_context + j) * c.hd + e);
          const bool fresh = j >= c.p0 && j < c.p0 + c.n;
          const float k_want = fresh ? qkv[static_cast<size_t>((j - c.p0) * w + (c.hq + g) * c.hd + e)] : k_before[at];
          const float v_want =
              fresh ? qkv[static_cast<size_t>((j - c.p0) * w + (c.hq + c.hkv + g) * c.hd + e)] : v_before[at];
          ASSERT_EQ(std::memcmp(&k_cache[at], &k_want, sizeof(float)), 0) << "k at head " << g << " position " << j;
          ASSERT_EQ(std::memcmp(&v_cache[at], &v_want, sizeof(float)), 0) << "v at head " << g << " position " << j;
        }
      }
    }

    std::vector<float> out(static_cast<size_t>(c.n * c.hq * c.hd), nan);
    std::vector<float> workspace(static_cast<size_t>(cpu::DecodeAttentionWorkspaceElems(d, c.n)));
    cpu::DecodeAttention(qkv_t, d, c.p0, k_t, v_t, Tensor::Of(out.data(), Shape{c.n, c.hq * c.hd}),
                         Tensor::Of(workspace.data(), Shape{static_cast<int64_t>(workspace.size())}));
    EXPECT_TRUE(AllClose(out.data(), want, 1e-5, 1e-5));
  }
}

// Row m at position p0 + m: the rotation RopeForward gives row p0 + m of a
// sequence starting at position 0.
TEST_F(DecodeAttentionTest, RopeAtPositionsMatchesSequenceRope) {
  const int hd = 16, n_rot = 3, width = 5 * hd;
  const int64_t p0 = 21, n = 6, seq = p0 + n;
  RopeScaling scaling;
  scaling.factor = 8.0;
  scaling.original_max_position = 16.0;
  const RopeTable table = BuildRopeTable(10000.0, hd, 40, scaling);
  std::vector<float> sequence = Uniform(static_cast<size_t>(seq * width));
  std::vector<float> rows(sequence.begin() + p0 * width, sequence.end());
  const std::vector<float> before = rows;
  cpu::RopeForward(Tensor::Of(sequence.data(), Shape{seq, width}), static_cast<int>(seq), n_rot, table);
  cpu::RopeForwardAt(Tensor::Of(rows.data(), Shape{n, width}), p0, n_rot, table);
  const std::vector<double> want(sequence.begin() + p0 * width, sequence.end());
  EXPECT_TRUE(AllClose(rows.data(), want, 1e-6, 1e-6));
  // The unrotated heads are untouched, and the rotation moved the others.
  for (int64_t m = 0; m < n; ++m) {
    for (int64_t col = n_rot * hd; col < width; ++col) {
      EXPECT_EQ(rows[static_cast<size_t>(m * width + col)], before[static_cast<size_t>(m * width + col)]);
    }
  }
  EXPECT_NE(rows[1], before[1]);
}

}  // namespace
}  // namespace latam
