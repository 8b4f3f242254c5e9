// Ring attention's block kernels (cpu::AttentionBlockForward/Backward)
// against their exact oracle, the single-rank kernels on the whole sequence.
// A global sequence of T = 2 C L tokens is split as context parallelism does:
// rank r holds chunks r and 2C-1-r of L tokens (local rows 2L). Every rank
// merges the blocks of its two query halves against both halves of every
// rank's keys and values, in a random order; its out and lse must equal the
// global AttentionForward's rows of its chunks, and the gradients summed over
// the blocks (dQ into each rank's dqkv, dK/dV into each source rank's dkv)
// the global AttentionBackward's. With and without document masking (global
// document starts). Tolerance: 3e-5 absolute + 2e-4 relative. Also: rows
// that see no key are left bitwise unchanged, backward touches nothing
// outside its query rows' query columns and its key/value rows, and a
// key/value range beyond the local rows aborts.
#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "kernels/attention.h"
#include "tests/test_util.h"

namespace latam {
namespace {

constexpr double kAtol = 3e-5, kRtol = 2e-4;

Tensor View(std::vector<float>& v, Shape shape) { return Tensor::Of(v.data(), shape); }

std::vector<float> Workspace(const AttentionDims& d) {
  return std::vector<float>(static_cast<size_t>(cpu::AttentionWorkspaceElems(d, omp_get_max_threads())));
}

class AttentionBlockTest : public testing::RandomTest {
 protected:
  struct Case {
    int ranks;      // C, each holding 2 chunks
    int chunk_len;  // L
    int batch, hq, hkv, hd;
  };

  // Random document lengths summing to t: about a quarter one token long,
  // the rest up to 140; when t > 66 at least one document of one token and
  // one longer than a tile (64); with short chunks documents span chunks,
  // so a rank's query block sees document starts on other ranks.
  std::vector<int> DocumentLengths(int t) {
    for (;;) {
      std::vector<int> lengths;
      for (int left = t; left > 0;) {
        const int len = std::min(left, UniformInt(0, 3) == 0 ? 1 : UniformInt(1, 140));
        lengths.push_back(len);
        left -= len;
      }
      const bool has_one = std::count(lengths.begin(), lengths.end(), 1) > 0;
      const bool has_long = std::any_of(lengths.begin(), lengths.end(), [](int l) { return l > 64; });
      if (t <= 66 || (has_one && has_long)) return lengths;
    }
  }

  void Check(const Case& c, bool documents) {
    const int ranks = c.ranks, len = c.chunk_len, batch = c.batch;
    const int seq = 2 * ranks * len, rows = 2 * len;
    SCOPED_TRACE(::testing::Message() << "C=" << ranks << " L=" << len << " B=" << batch << " Hq=" << c.hq
                                      << " Hkv=" << c.hkv << " hd=" << c.hd << " documents=" << documents);
    const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.hd;
    const int64_t out_width = static_cast<int64_t>(c.hq) * c.hd, kv_width = 2 * static_cast<int64_t>(c.hkv) * c.hd;
    const int64_t global_rows = static_cast<int64_t>(batch) * seq, local_rows = static_cast<int64_t>(batch) * rows;

    // The global problem and its single-rank result.
    auto qkv = Normal(static_cast<size_t>(global_rows * width));
    auto dout = Normal(static_cast<size_t>(global_rows * out_width));
    std::vector<int32_t> doc(static_cast<size_t>(global_rows));
    AttentionDims gd{batch, seq, c.hq, c.hkv, c.hd};
    if (documents) {
      for (int b = 0; b < batch; ++b) {
        int at = 0;
        for (int l : DocumentLengths(seq)) {
          for (int t = at; t < at + l; ++t) doc[static_cast<size_t>(b) * seq + t] = at;
          at += l;
        }
      }
      gd.doc_start = doc.data();
    }
    std::vector<float> out_g(static_cast<size_t>(global_rows * out_width));
    std::vector<float> lse_g(static_cast<size_t>(batch) * c.hq * seq);
    std::vector<float> dqkv_g(static_cast<size_t>(global_rows * width));
    {
      auto ws = Workspace(gd);
      const Tensor ws_t = View(ws, {static_cast<int64_t>(ws.size())});
      cpu::AttentionForward(View(qkv, {global_rows, width}), gd, View(out_g, {global_rows, out_width}),
                            View(lse_g, {batch, c.hq, seq}), ws_t);
      cpu::AttentionBackward(View(qkv, {global_rows, width}), View(out_g, {global_rows, out_width}),
                             View(dout, {global_rows, out_width}), View(lse_g, {batch, c.hq, seq}), gd,
                             View(dqkv_g, {global_rows, width}), ws_t);
    }

    // Rank r's local row t (half a = t / L) is global position
    // chunk(r, a) L + t % L.
    auto chunk = [&](int r, int a) { return a == 0 ? r : 2 * ranks - 1 - r; };
    auto global_row = [&](int r, int b, int t) {
      return static_cast<int64_t>(b) * seq + static_cast<int64_t>(chunk(r, t / len)) * len + t % len;
    };
    struct Rank {
      std::vector<float> qkv, kv, dout, out, lse, dqkv, dkv;
      std::vector<int32_t> doc;
    };
    std::vector<Rank> rank(static_cast<size_t>(ranks));
    for (int r = 0; r < ranks; ++r) {
      Rank& k = rank[static_cast<size_t>(r)];
      k.qkv.resize(static_cast<size_t>(local_rows * width));
      k.kv.resize(static_cast<size_t>(local_rows * kv_width));
      k.dout.resize(static_cast<size_t>(local_rows * out_width));
      k.doc.resize(static_cast<size_t>(local_rows));
      k.out.assign(static_cast<size_t>(local_rows * out_width), 0.0f);
      k.lse.assign(static_cast<size_t>(batch) * c.hq * rows, -std::numeric_limits<float>::infinity());
      k.dqkv.assign(static_cast<size_t>(local_rows * width), 0.0f);
      k.dkv.assign(static_cast<size_t>(local_rows * kv_width), 0.0f);
      for (int b = 0; b < batch; ++b) {
        for (int t = 0; t < rows; ++t) {
          const int64_t g = global_row(r, b, t), l = static_cast<int64_t>(b) * rows + t;
          std::copy_n(qkv.begin() + g * width, width, k.qkv.begin() + l * width);
          std::copy_n(qkv.begin() + g * width + out_width, kv_width, k.kv.begin() + l * kv_width);
          std::copy_n(dout.begin() + g * out_width, out_width, k.dout.begin() + l * out_width);
          k.doc[static_cast<size_t>(l)] = doc[static_cast<size_t>(g)];
        }
      }
    }

    // Every (query half, source rank, key half) block of a rank, shuffled.
    auto blocks = [&]() {
      std::vector<std::tuple<int, int, int>> list;
      for (int s = 0; s < ranks; ++s) {
        for (int a = 0; a < 2; ++a) {
          for (int kb = 0; kb < 2; ++kb) list.emplace_back(s, a, kb);
        }
      }
      std::shuffle(list.begin(), list.end(), rng_);
      return list;
    };
    auto block_dims = [&](int r, int s, int a, int kb) {
      AttentionBlockDims d{batch, rows, c.hq, c.hkv, c.hd};
      d.q_row0 = a * len;
      d.q_rows = len;
      d.kv_row0 = kb * len;
      d.kv_rows = len;
      d.q_pos0 = static_cast<int64_t>(chunk(r, a)) * len;
      d.kv_pos0 = static_cast<int64_t>(chunk(s, kb)) * len;
      d.doc_start = documents ? rank[static_cast<size_t>(r)].doc.data() : nullptr;
      return d;
    };
    auto ws = Workspace(AttentionDims{batch, rows, c.hq, c.hkv, c.hd});
    const Tensor ws_t = View(ws, {static_cast<int64_t>(ws.size())});
    for (int r = 0; r < ranks; ++r) {
      Rank& k = rank[static_cast<size_t>(r)];
      for (const auto& [s, a, kb] : blocks()) {
        cpu::AttentionBlockForward(
            View(k.qkv, {local_rows, width}), View(rank[static_cast<size_t>(s)].kv, {local_rows, kv_width}),
            block_dims(r, s, a, kb), View(k.out, {local_rows, out_width}), View(k.lse, {batch, c.hq, rows}), ws_t);
      }
    }
    for (int r = 0; r < ranks; ++r) {
      Rank& k = rank[static_cast<size_t>(r)];
      for (const auto& [s, a, kb] : blocks()) {
        Rank& src = rank[static_cast<size_t>(s)];
        cpu::AttentionBlockBackward(View(k.qkv, {local_rows, width}), View(src.kv, {local_rows, kv_width}),
                                    View(k.out, {local_rows, out_width}), View(k.dout, {local_rows, out_width}),
                                    View(k.lse, {batch, c.hq, rows}), block_dims(r, s, a, kb),
                                    View(k.dqkv, {local_rows, width}), View(src.dkv, {local_rows, kv_width}), ws_t);
      }
    }

    // The global results at each rank's rows.
    for (int r = 0; r < ranks; ++r) {
      SCOPED_TRACE(::testing::Message() << "rank " << r);
      const Rank& k = rank[static_cast<size_t>(r)];
      std::vector<double> out_e, lse_e(k.lse.size()), dq_e, dkv_e;
      std::vector<float> dq;
      for (int b = 0; b < batch; ++b) {
        for (int t = 0; t < rows; ++t) {
          const int64_t g = global_row(r, b, t), l = static_cast<int64_t>(b) * rows + t;
          out_e.insert(out_e.end(), out_g.begin() + g * out_width, out_g.begin() + (g + 1) * out_width);
          dq_e.insert(dq_e.end(), dqkv_g.begin() + g * width, dqkv_g.begin() + g * width + out_width);
          dq.insert(dq.end(), k.dqkv.begin() + l * width, k.dqkv.begin() + l * width + out_width);
          dkv_e.insert(dkv_e.end(), dqkv_g.begin() + g * width + out_width, dqkv_g.begin() + (g + 1) * width);
          for (int h = 0; h < c.hq; ++h) {
            lse_e[(static_cast<size_t>(b) * c.hq + h) * rows + t] =
                lse_g[(static_cast<size_t>(b) * c.hq + h) * seq + (g - static_cast<int64_t>(b) * seq)];
          }
        }
      }
      EXPECT_TRUE(testing::AllClose(k.out, out_e, kAtol, kRtol)) << "out";
      EXPECT_TRUE(testing::AllClose(k.lse, lse_e, kAtol, kRtol)) << "lse";
      EXPECT_TRUE(testing::AllClose(dq, dq_e, kAtol, kRtol)) << "dq";
      EXPECT_TRUE(testing::AllClose(k.dkv, dkv_e, kAtol, kRtol)) << "dk, dv";
    }
  }
};

// C ranks in 1..4; chunk lengths under, at and over a tile (64) and not
// multiples of it; batch 1 and 2; GQA groups of 2 and 3; head dims 8..64.
const std::vector<std::tuple<int, int, int, int, int, int>> kCases = {
    {1, 1, 1, 4, 2, 8}, {1, 64, 2, 4, 2, 64}, {2, 5, 2, 3, 1, 16}, {2, 70, 1, 4, 2, 24},
    {3, 1, 2, 3, 1, 8}, {3, 64, 1, 4, 2, 32}, {4, 5, 1, 4, 2, 8},  {4, 70, 2, 3, 1, 64},
};

TEST_F(AttentionBlockTest, RingOfBlocksEqualsWholeSequence) {
  for (const auto& [cp, l, b, hq, hkv, hd] : kCases) Check({cp, l, b, hq, hkv, hd}, false);
}

TEST_F(AttentionBlockTest, RingOfBlocksEqualsWholeSequenceWithDocuments) {
  for (const auto& [cp, l, b, hq, hkv, hd] : kCases) Check({cp, l, b, hq, hkv, hd}, true);
}

TEST_F(AttentionBlockTest, RandomRings) {
  for (int trial = 0; trial < 4; ++trial) {
    const int hkv = UniformInt(1, 2), group = UniformInt(2, 3);
    Check({UniformInt(1, 4), UniformInt(1, 80), UniformInt(1, 2), hkv * group, hkv, 8 * UniformInt(1, 8)},
          trial % 2 == 1);
  }
}

// A block some rows of which see no key (keys after them, or before their
// document): those rows' out and lse stay bitwise as they were, as do the
// rows outside the query block. Backward adds to dqkv's query columns of the
// query rows that see keys and to dkv's key/value block rows only: everything
// else keeps its sentinel (7), and the added values equal a run from zero.
class AttentionBlockUntouchedTest : public testing::RandomTest {
 protected:
  static constexpr int kBatch = 2, kRows = 80, kHq = 4, kHkv = 2, kHd = 16;
  static constexpr int64_t kLocalRows = kBatch * kRows, kWidth = (kHq + 2 * kHkv) * kHd, kOutWidth = kHq * kHd,
                           kKvWidth = 2 * kHkv * kHd;

  // Query rows [10, 80) at positions 100..169 (local row t at 90 + t) and
  // key/value rows [5, 75) at kv_pos0 + j. Sequence 0 is one document;
  // sequence 1's documents start at 50 and at 130. Returns how many rows
  // of out saw keys.
  int Check(int64_t kv_pos0) {
    SCOPED_TRACE(::testing::Message() << "kv_pos0=" << kv_pos0);
    AttentionBlockDims d{kBatch, kRows, kHq, kHkv, kHd};
    d.q_row0 = 10;
    d.q_rows = 70;
    d.kv_row0 = 5;
    d.kv_rows = 70;
    d.q_pos0 = 100;
    d.kv_pos0 = kv_pos0;
    std::vector<int32_t> doc(static_cast<size_t>(kLocalRows));
    for (int t = 0; t < kRows; ++t) {
      doc[static_cast<size_t>(t)] = 0;
      doc[static_cast<size_t>(kRows + t)] = 90 + t < 130 ? 50 : 130;
    }
    d.doc_start = doc.data();
    // Row t sees the keys at positions [max(doc, kv_pos0), min(pos, last key)].
    auto sees_key = [&](int b, int t) {
      if (t < d.q_row0 || t >= d.q_row0 + d.q_rows) return false;
      const int64_t pos = d.q_pos0 + (t - d.q_row0);
      const int64_t first = std::max<int64_t>(doc[static_cast<size_t>(b * kRows + t)], d.kv_pos0);
      return first <= std::min<int64_t>(pos, d.kv_pos0 + d.kv_rows - 1);
    };

    auto qkv = Normal(static_cast<size_t>(kLocalRows * kWidth));
    auto kv = Normal(static_cast<size_t>(kLocalRows * kKvWidth));
    auto dout = Normal(static_cast<size_t>(kLocalRows * kOutWidth));
    auto out = Normal(static_cast<size_t>(kLocalRows * kOutWidth));
    auto lse = Normal(static_cast<size_t>(kBatch * kHq * kRows));
    const auto out0 = out, lse0 = lse;
    auto ws = Workspace(AttentionDims{kBatch, kRows, kHq, kHkv, kHd});
    const Tensor ws_t = View(ws, {static_cast<int64_t>(ws.size())});
    const Tensor qkv_t = View(qkv, {kLocalRows, kWidth}), kv_t = View(kv, {kLocalRows, kKvWidth});
    const Tensor out_t = View(out, {kLocalRows, kOutWidth}), lse_t = View(lse, {kBatch, kHq, kRows});
    cpu::AttentionBlockForward(qkv_t, kv_t, d, out_t, lse_t, ws_t);
    int changed_rows = 0;
    for (int b = 0; b < kBatch; ++b) {
      for (int t = 0; t < kRows; ++t) {
        const int64_t row = static_cast<int64_t>(b) * kRows + t;
        bool same =
            std::memcmp(out.data() + row * kOutWidth, out0.data() + row * kOutWidth, kOutWidth * sizeof(float)) == 0;
        for (int h = 0; h < kHq; ++h) {
          const size_t i = (static_cast<size_t>(b) * kHq + h) * kRows + t;
          same = same && testing::BitsOf(lse[i]) == testing::BitsOf(lse0[i]);
        }
        EXPECT_EQ(same, !sees_key(b, t)) << "sequence " << b << " row " << t;
        changed_rows += same ? 0 : 1;
      }
    }

    // Backward from zero and from the sentinel.
    const float kSentinel = 7.0f;
    std::vector<float> dqkv0(static_cast<size_t>(kLocalRows * kWidth), 0.0f);
    std::vector<float> dkv0(static_cast<size_t>(kLocalRows * kKvWidth), 0.0f);
    std::vector<float> dqkv7(dqkv0.size(), kSentinel), dkv7(dkv0.size(), kSentinel);
    const Tensor dout_t = View(dout, {kLocalRows, kOutWidth});
    cpu::AttentionBlockBackward(qkv_t, kv_t, out_t, dout_t, lse_t, d, View(dqkv0, {kLocalRows, kWidth}),
                                View(dkv0, {kLocalRows, kKvWidth}), ws_t);
    cpu::AttentionBlockBackward(qkv_t, kv_t, out_t, dout_t, lse_t, d, View(dqkv7, {kLocalRows, kWidth}),
                                View(dkv7, {kLocalRows, kKvWidth}), ws_t);
    std::vector<float> added_dqkv(dqkv7.size()), added_dkv(dkv7.size());
    for (size_t i = 0; i < dqkv7.size(); ++i) added_dqkv[i] = dqkv7[i] - kSentinel;
    for (size_t i = 0; i < dkv7.size(); ++i) added_dkv[i] = dkv7[i] - kSentinel;
    EXPECT_TRUE(testing::AllClose(added_dqkv, testing::ToDouble(dqkv0), kAtol, kRtol));
    EXPECT_TRUE(testing::AllClose(added_dkv, testing::ToDouble(dkv0), kAtol, kRtol));
    int bad_dqkv = 0, bad_dkv = 0;
    for (int b = 0; b < kBatch; ++b) {
      for (int t = 0; t < kRows; ++t) {
        const int64_t row = static_cast<int64_t>(b) * kRows + t;
        for (int64_t e = 0; e < kWidth; ++e) {
          const bool untouched = e >= kOutWidth || !sees_key(b, t);
          const float v = dqkv7[static_cast<size_t>(row * kWidth + e)];
          if (untouched && testing::BitsOf(v) != testing::BitsOf(kSentinel)) ++bad_dqkv;
        }
        if (t >= d.kv_row0 && t < d.kv_row0 + d.kv_rows) continue;
        for (int64_t e = 0; e < kKvWidth; ++e) {
          if (testing::BitsOf(dkv7[static_cast<size_t>(row * kKvWidth + e)]) != testing::BitsOf(kSentinel)) ++bad_dkv;
        }
      }
    }
    EXPECT_EQ(bad_dqkv, 0) << "dqkv elements changed outside the query columns of rows that see keys";
    EXPECT_EQ(bad_dkv, 0) << "dkv elements changed outside the key/value block";
    return changed_rows;
  }
};

TEST_F(AttentionBlockUntouchedTest, RowsThatSeeNoKeyAndOtherRows) {
  // Keys at 103..172: positions 100..102 see none (causal).
  EXPECT_EQ(Check(103), 2 * 70 - 2 * 3);
  // Keys at 20..89: sequence 1's document from 130 sees none of them.
  EXPECT_EQ(Check(20), 70 + 30);
  // Keys at 170..239, after every query: nothing changes.
  EXPECT_EQ(Check(170), 0);
}

TEST(AttentionBlockDeathTest, KeyRowsBeyondLocalRowsAbort) {
  AttentionBlockDims d{1, 8, 2, 1, 8};
  d.q_rows = 8;
  d.kv_row0 = 4;
  d.kv_rows = 8;
  std::vector<float> qkv(8 * 32), kv(8 * 16), out(8 * 16), lse(16),
      ws(cpu::AttentionWorkspaceElems(AttentionDims{1, 8, 2, 1, 8}, omp_get_max_threads()));
  EXPECT_DEATH(cpu::AttentionBlockForward(View(qkv, {8, 32}), View(kv, {8, 16}), d, View(out, {8, 16}),
                                          View(lse, {1, 2, 8}), View(ws, {static_cast<int64_t>(ws.size())})),
               "key/value rows \\[4, 12\\) outside the 8 rows");
}

}  // namespace
}  // namespace latam
