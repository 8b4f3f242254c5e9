// SwiGLU, embedding, cross-entropy and the vectorised exp against double
// references.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/vec_math.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/swiglu.h"
#include "tests/reference/reference.h"
#include "tests/test_util.h"

namespace latam {
namespace {

class ElementwiseTest : public testing::RandomTest {};

// ExpF: relative error <= 4e-7 wherever the result is a normal float; exactly
// 0 for x < -87.34 and -inf.
TEST_F(ElementwiseTest, ExpMatchesStdExp) {
  auto x = Uniform(200000, -87.3f, 88.3f);
  x.push_back(0.0f);
  x.push_back(-1e-8f);
  x.push_back(1e-8f);
  for (float v : x) {
    const double expected = std::exp(static_cast<double>(v));
    ASSERT_NEAR(cpu::ExpF(v), expected, 4e-7 * expected) << "x=" << v;
  }
  EXPECT_EQ(cpu::ExpF(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(cpu::ExpF(-100.0f), 0.0f);
  EXPECT_TRUE(std::isfinite(cpu::ExpF(1000.0f)));
}

// SwiGLU tolerance: 1e-6 absolute + 2e-6 relative.
TEST_F(ElementwiseTest, SwigluMatchesReference) {
  const int64_t rows = 23, f = 77;
  auto gu = Uniform(rows * 2 * f, -8.0f, 8.0f), dout = Normal(rows * f);
  std::vector<float> out(rows * f), dgu(rows * 2 * f);
  cpu::SwigluForward(Tensor::Of(gu.data(), {rows, 2 * f}), Tensor::Of(out.data(), {rows, f}));
  EXPECT_TRUE(testing::AllClose(out, ref::SwigluForward(testing::ToDouble(gu), rows, f), 1e-6, 2e-6));
  cpu::SwigluBackward(Tensor::Of(dout.data(), {rows, f}), Tensor::Of(gu.data(), {rows, 2 * f}),
                      Tensor::Of(dgu.data(), {rows, 2 * f}));
  EXPECT_TRUE(
      testing::AllClose(dgu, ref::SwigluBackward(testing::ToDouble(dout), testing::ToDouble(gu), rows, f), 1e-6, 2e-6));
}

// Embedding lookups are copies: exact. The backward sums per id in token
// order: compared to double sums with 1e-6 tolerance.
TEST_F(ElementwiseTest, EmbeddingForwardBackwardWithVocabShard) {
  const int64_t vocab = 50, d = 12, m = 200, begin = 20, v_local = 15;  // shard holds ids [20, 35)
  auto table = Normal(v_local * d);
  std::vector<int32_t> ids(m);
  for (auto& id : ids) id = UniformInt(0, vocab - 1);
  ids[0] = 20;
  ids[1] = 34;
  ids[2] = 35;  // first id past the shard
  std::vector<float> out(m * d, 7.0f);
  cpu::EmbeddingForward(Tensor::Of(ids.data(), {m}), Tensor::Of(table.data(), {v_local, d}), begin,
                        Tensor::Of(out.data(), {m, d}));
  for (int64_t r = 0; r < m; ++r) {
    const int64_t local = ids[r] - begin;
    for (int64_t c = 0; c < d; ++c) {
      ASSERT_EQ(out[r * d + c], (local >= 0 && local < v_local) ? table[local * d + c] : 0.0f) << r << "," << c;
    }
  }
  auto dout = Normal(m * d);
  const auto dtable0 = Normal(v_local * d);
  std::vector<float> dtable = dtable0;
  cpu::EmbeddingBackward(Tensor::Of(ids.data(), {m}), Tensor::Of(dout.data(), {m, d}), begin,
                         Tensor::Of(dtable.data(), {v_local, d}));
  ref::Vec expected(dtable0.begin(), dtable0.end());
  for (int64_t r = 0; r < m; ++r) {
    const int64_t local = ids[r] - begin;
    if (local < 0 || local >= v_local) continue;
    for (int64_t c = 0; c < d; ++c) expected[local * d + c] += dout[r * d + c];
  }
  EXPECT_TRUE(testing::AllClose(dtable, expected, 1e-5, 1e-6));
}

// Vocab-parallel cross-entropy: the vocabulary is cut into 1, 2 or 3 shards
// (uneven), each shard's statistics are combined as the tensor-parallel
// all-reduces would (max, then sums), and the per-shard gradients put side by
// side must equal the reference over the whole vocabulary.
// Tolerance: losses 2e-5 absolute + 1e-5 relative; gradients 1e-6 absolute
// + 1e-4 relative (they are scaled probabilities).
TEST_F(ElementwiseTest, VocabParallelCrossEntropyMatchesReference) {
  for (const int64_t v : {int64_t{7}, int64_t{1000}, int64_t{4099}}) {
    for (const int shards : {1, 2, 3}) {
      SCOPED_TRACE(::testing::Message() << "V=" << v << " shards=" << shards);
      const int64_t rows = 31;
      auto logits = Normal(rows * v, 4.0f);
      logits[5] = 80.0f;  // an extreme logit must not overflow
      std::vector<int32_t> targets(rows);
      for (auto& t : targets) t = UniformInt(0, static_cast<int>(v) - 1);
      targets[3] = -1;  // ignored row
      const double scale = 1.0 / 29.0;
      ref::Vec loss_ref, grad_ref;
      ref::CrossEntropy(testing::ToDouble(logits), targets, v, scale, &loss_ref, &grad_ref);

      // Shard k holds columns [begin[k], begin[k+1]) as its own [rows, width] buffer.
      std::vector<int64_t> begin;
      for (int k = 0; k <= shards; ++k) begin.push_back(v * k / shards);
      std::vector<std::vector<float>> part(static_cast<size_t>(shards));
      for (int k = 0; k < shards; ++k) {
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = begin[k]; c < begin[k + 1]; ++c) part[static_cast<size_t>(k)].push_back(logits[r * v + c]);
        }
      }
      auto shard = [&](int k) {
        return Tensor::Of(part[static_cast<size_t>(k)].data(), {rows, begin[k + 1] - begin[k]});
      };
      const Tensor tgt = Tensor::Of(targets.data(), {rows});
      std::vector<float> gmax(rows, -1e30f), stat(rows), sumexp(rows, 0.0f), tlogit(rows, 0.0f), t2(rows);
      for (int k = 0; k < shards; ++k) {
        cpu::LogitsRowMax(shard(k), Tensor::Of(stat.data(), {rows}));
        for (int64_t r = 0; r < rows; ++r) gmax[r] = std::max(gmax[r], stat[r]);
      }
      for (int k = 0; k < shards; ++k) {
        cpu::LogitsRowSumExp(shard(k), Tensor::Of(gmax.data(), {rows}), tgt, begin[k], v,
                             Tensor::Of(stat.data(), {rows}), Tensor::Of(t2.data(), {rows}));
        for (int64_t r = 0; r < rows; ++r) {
          sumexp[r] += stat[r];
          tlogit[r] += t2[r];
        }
      }
      std::vector<float> lse(rows), loss(rows);
      for (int64_t r = 0; r < rows; ++r) {
        lse[r] = gmax[r] + std::log(sumexp[r]);
        loss[r] = targets[r] < 0 ? 0.0f : lse[r] - tlogit[r];
      }
      EXPECT_TRUE(testing::AllClose(loss, loss_ref, 2e-5, 1e-5));
      std::vector<float> grad(static_cast<size_t>(rows * v));
      for (int k = 0; k < shards; ++k) {
        cpu::SoftmaxCrossEntropyBackward(shard(k), tgt, begin[k], Tensor::Of(lse.data(), {rows}),
                                         static_cast<float>(scale));
        const int64_t w = begin[k + 1] - begin[k];
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < w; ++c) grad[r * v + begin[k] + c] = part[static_cast<size_t>(k)][r * w + c];
        }
      }
      EXPECT_TRUE(testing::AllClose(grad, grad_ref, 1e-6, 1e-4));
    }
  }
}

}  // namespace
}  // namespace latam
