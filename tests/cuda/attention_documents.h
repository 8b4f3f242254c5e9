// Document masking tests for the CUDA attention kernels (kernels/attention.h,
// AttentionDims::doc_start): packed-document layouts and the oracle they are
// checked against, "document-masked attention over a packed sequence equals
// running each document alone as its own sequence". The oracle needs nothing
// but the kernel under test run without doc_start on each document's rows.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/attention.h"

namespace latam::testing {

// Per sequence of a batch, the lengths of its documents in order (each list
// sums to seq_len).
using DocumentLengths = std::vector<std::vector<int>>;

// doc_start[b * seq_len + t] for the layout (kernels/attention.h).
// The sequence length (the first sequence's) and " [ l l ] [ l ]" for
// test traces.
inline std::pair<int, std::string> DescribeDocuments(const DocumentLengths& lengths) {
  int seq = 0;
  for (const int len : lengths[0]) seq += len;
  std::string docs;
  for (const auto& s : lengths) {
    docs += " [";
    for (const int len : s) {
      docs.push_back(' ');
      docs.append(std::to_string(len));
    }
    docs += " ]";
  }
  return {seq, docs};
}

inline std::vector<int32_t> DocStarts(const DocumentLengths& lengths) {
  std::vector<int32_t> starts;
  for (const std::vector<int>& seq : lengths) {
    int start = 0;
    for (const int len : seq) {
      for (int t = 0; t < len; ++t) starts.push_back(start);
      start += len;
    }
  }
  return starts;
}

// Random document lengths summing to seq_len: a mix of one-token documents,
// short ones and long ones (up to 90 tokens, past a 64-key tile).
// uniform_int(lo, hi) draws from [lo, hi].
inline std::vector<int> RandomDocumentLengths(int seq_len, const std::function<int(int, int)>& uniform_int) {
  std::vector<int> lengths;
  for (int left = seq_len; left > 0;) {
    const int kind = uniform_int(0, 3);
    const int want = kind == 0 ? 1 : kind == 1 ? uniform_int(2, 8) : uniform_int(9, 90);
    const int len = std::min(want, left);
    lengths.push_back(len);
    left -= len;
  }
  return lengths;
}

// Forward and backward results in the kernels' layouts: out[B*T, Hq*hd],
// lse[B, Hq, T], dqkv[B*T, (Hq + 2 Hkv) hd].
struct AttentionResult {
  std::vector<float> out, lse, dqkv;
};

// Runs the kernel under test on host data for `dims` (doc_start, if set,
// pointing at host memory; the runner moves it to the device): the forward
// on qkv gives out and lse; the backward runs on qkv, dout and the given
// backward_out / backward_lse (so that the backward is checked on the same
// forward results as the run it is compared with).
using AttentionRunner = std::function<AttentionResult(
    const AttentionDims& dims, const std::vector<float>& qkv, const std::vector<float>& dout,
    const std::vector<float>& backward_out, const std::vector<float>& backward_lse)>;

// The oracle: every document of `lengths` run alone (batch 1, its own
// length, no doc_start), its results placed where the packed run has them.
// `packed` is the document-masked run whose out and lse each document's
// backward takes (the rows of that document).
inline AttentionResult RunDocumentsAlone(const AttentionDims& d, const DocumentLengths& lengths,
                                         const std::vector<float>& qkv, const std::vector<float>& dout,
                                         const AttentionResult& packed, const AttentionRunner& run) {
  const int64_t T = d.seq_len, width = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  const int64_t out_width = static_cast<int64_t>(d.n_heads) * d.head_dim;
  AttentionResult all;
  all.out.assign(static_cast<size_t>(d.batch * T * out_width), 0.0f);
  all.lse.assign(static_cast<size_t>(d.batch) * d.n_heads * T, 0.0f);
  all.dqkv.assign(static_cast<size_t>(d.batch * T * width), 0.0f);
  auto rows = [](const std::vector<float>& v, int64_t stride, int64_t row0, int64_t n) {
    return std::vector<float>(v.begin() + row0 * stride, v.begin() + (row0 + n) * stride);
  };
  for (int b = 0; b < d.batch; ++b) {
    int64_t start = 0;
    for (const int len : lengths[static_cast<size_t>(b)]) {
      const int64_t row0 = b * T + start;
      AttentionDims one{1, len, d.n_heads, d.n_kv_heads, d.head_dim};
      std::vector<float> lse_in(static_cast<size_t>(d.n_heads) * len);
      for (int h = 0; h < d.n_heads; ++h) {
        for (int t = 0; t < len; ++t) {
          lse_in[static_cast<size_t>(h) * len + t] =
              packed.lse[(static_cast<size_t>(b) * d.n_heads + h) * T + start + t];
        }
      }
      const AttentionResult r = run(one, rows(qkv, width, row0, len), rows(dout, out_width, row0, len),
                                    rows(packed.out, out_width, row0, len), lse_in);
      std::copy(r.out.begin(), r.out.end(), all.out.begin() + row0 * out_width);
      std::copy(r.dqkv.begin(), r.dqkv.end(), all.dqkv.begin() + row0 * width);
      for (int h = 0; h < d.n_heads; ++h) {
        for (int t = 0; t < len; ++t) {
          all.lse[(static_cast<size_t>(b) * d.n_heads + h) * T + start + t] = r.lse[static_cast<size_t>(h) * len + t];
        }
      }
      start += len;
    }
  }
  return all;
}

}  // namespace latam::testing
