// The tensor-core attention kernels (kernels/cuda/flash_attention.h) against
// a double-precision reference computed on the host from the same
// bf16-rounded inputs: causal and not, GQA groups and plain multi-head, head
// dims 64 and 128, sequence lengths that are not tile multiples (1, 37, 130,
// 513), batch x heads from 1 to 2048. Outputs start poisoned (NaN), so an
// element a kernel leaves unwritten fails.
//
// Tolerances. Q K^T and the other products are exact in fp32 (bf16 x bf16)
// and summed in fp32, so the scores and lse carry only fp32 summation error:
// lse within 1e-4 abs + 1e-4 rel. The kernels round P and dS to bf16 as MMA
// operands and write out, dq, dk, dv in bf16 (relative step 2^-8), so each
// of out, dq, dk, dv is compared as a whole (relative L2 error below 1e-2)
// and element-wise against the tensor's scale (|err| <= 3e-2 max|ref|).
//
// Document masking (AttentionDims::doc_start, mma.sync kernels) is checked
// against running each document alone as its own sequence
// (tests/cuda/attention_documents.h), both with the flash kernels
// themselves and with the double reference: batch 2, 4 query / 2 KV heads,
// head dim 64, T = 160 (a partial last tile), document mixes with one-token
// documents, documents longer than a 64-key tile and a document starting on
// a tile boundary. Same tolerances as above (lse 1e-4 abs + 1e-4 rel; out,
// dq, dk, dv by CloseAsBf16): the packed and per-document runs differ in
// tiling, so in fp32 summation order and in where P is rounded to bf16.
// Each document's backward is given the packed run's out and lse. One
// document per sequence must give the same bits as doc_start == nullptr,
// and the wgmma paths must refuse doc_start.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/cuda/flash_attention.h"
#include "tests/attention_reference.h"
#include "tests/cuda/attention_documents.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/test_util.h"

namespace latam {
namespace {

using testing::FromFloats;
using testing::Poison;
using testing::RoundTo;
using testing::ToDevice;
using testing::ToFloats;
using testing::ToHost;
using testing::View;

using testing::AttentionCase;
using testing::CloseAsBf16;
using testing::ReferenceAttention;

class CudaFlashAttentionTest : public testing::RandomTest {
 protected:
  void Check(const AttentionCase& c, cuda::FlashForwardPath path = cuda::FlashForwardPath::kMmaSync,
             cuda::FlashBackwardPath backward = cuda::FlashBackwardPath::kMmaSync) {
    SCOPED_TRACE(::testing::Message() << "B=" << c.batch << " T=" << c.seq << " Hq=" << c.hq << " Hkv=" << c.hkv
                                      << " hd=" << c.hd << (c.causal ? " causal" : " full")
                                      << (path == cuda::FlashForwardPath::kWgmma      ? " wgmma"
                                          : path == cuda::FlashForwardPath::kWgmmaTma ? " wgmma+TMA"
                                                                                      : " mma.sync")
                                      << (backward == cuda::FlashBackwardPath::kWgmma ? ", wgmma backward" : ""));
    const AttentionDims d{c.batch, c.seq, c.hq, c.hkv, c.hd};
    ASSERT_TRUE(cuda::FlashAttentionSupports(d, DType::kBF16));
    const int64_t rows = static_cast<int64_t>(c.batch) * c.seq;
    const int64_t width = static_cast<int64_t>(c.hq + 2 * c.hkv) * c.hd, out_width = static_cast<int64_t>(c.hq) * c.hd;
    const int64_t lse_elems = static_cast<int64_t>(c.batch) * c.hq * c.seq;
    const std::vector<float> qkv = RoundTo<BF16>(Normal(static_cast<size_t>(rows * width)));
    const std::vector<float> dout = RoundTo<BF16>(Normal(static_cast<size_t>(rows * out_width)));

    Arena qkv_mem = ToDevice(FromFloats<BF16>(qkv)), dout_mem = ToDevice(FromFloats<BF16>(dout));
    Arena out_mem(Device::kCUDA, static_cast<size_t>(rows * out_width) * 2);
    Arena lse_mem(Device::kCUDA, static_cast<size_t>(lse_elems) * 4);
    Arena dqkv_mem(Device::kCUDA, static_cast<size_t>(rows * width) * 2);
    const int64_t ws_elems = cuda::FlashAttentionBackwardWorkspaceElems(d);
    Arena ws_mem(Device::kCUDA, static_cast<size_t>(ws_elems) * 4);
    for (Arena* a : {&out_mem, &lse_mem, &dqkv_mem, &ws_mem}) Poison(*a);
    const Tensor qkv_t = View<BF16>(qkv_mem, {rows, width}), out_t = View<BF16>(out_mem, {rows, out_width});
    const Tensor lse_t = View<float>(lse_mem, {c.batch, c.hq, c.seq});

    cuda::FlashAttentionForward(qkv_t, d, c.causal, out_t, lse_t, nullptr, path);
    CUDA_CHECK(cudaDeviceSynchronize());
    const testing::AttentionReference ref = ReferenceAttention(qkv, dout, c);
    const std::vector<float> out = ToFloats(ToHost<BF16>(out_mem, static_cast<size_t>(rows * out_width)));
    const std::vector<float> lse = ToHost<float>(lse_mem, static_cast<size_t>(lse_elems));
    EXPECT_TRUE(CloseAsBf16(out, ref.out, [](size_t) { return true; }, "out"));
    EXPECT_TRUE(testing::AllClose(lse, ref.lse, 1e-4, 1e-4)) << "lse";

    cuda::FlashAttentionBackward(qkv_t, out_t, View<BF16>(dout_mem, {rows, out_width}), lse_t, d, c.causal,
                                 View<BF16>(dqkv_mem, {rows, width}), View<float>(ws_mem, {ws_elems}), nullptr,
                                 backward);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> dqkv = ToFloats(ToHost<BF16>(dqkv_mem, static_cast<size_t>(rows * width)));
    const int64_t q_end = static_cast<int64_t>(c.hq) * c.hd, k_end = q_end + static_cast<int64_t>(c.hkv) * c.hd;
    auto column = [width](size_t i) { return static_cast<int64_t>(i) % width; };
    EXPECT_TRUE(CloseAsBf16(dqkv, ref.dqkv, [&](size_t i) { return column(i) < q_end; }, "dq"));
    EXPECT_TRUE(CloseAsBf16(dqkv, ref.dqkv, [&](size_t i) { return column(i) >= q_end && column(i) < k_end; }, "dk"));
    EXPECT_TRUE(CloseAsBf16(dqkv, ref.dqkv, [&](size_t i) { return column(i) >= k_end; }, "dv"));

    // Deterministic: a second backward over poisoned outputs gives the same bits.
    Poison(dqkv_mem);
    Poison(ws_mem);
    cuda::FlashAttentionBackward(qkv_t, out_t, View<BF16>(dout_mem, {rows, out_width}), lse_t, d, c.causal,
                                 View<BF16>(dqkv_mem, {rows, width}), View<float>(ws_mem, {ws_elems}), nullptr,
                                 backward);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<BF16> again = ToHost<BF16>(dqkv_mem, static_cast<size_t>(rows * width));
    const std::vector<BF16> first = FromFloats<BF16>(dqkv);
    size_t differ = 0;
    for (size_t i = 0; i < again.size(); ++i) differ += again[i].bits != first[i].bits ? 1 : 0;
    EXPECT_EQ(differ, 0u) << "elements differing between two backward runs";
  }

  // The mma.sync flash kernels, causal, on host data (testing::AttentionRunner):
  // d.doc_start, if set, is host memory and is copied to the device. The
  // backward runs on backward_out and backward_lse, or on the forward's own
  // results when those are empty.
  static testing::AttentionResult RunFlash(const AttentionDims& d, const std::vector<float>& qkv,
                                           const std::vector<float>& dout, const std::vector<float>& backward_out,
                                           const std::vector<float>& backward_lse) {
    const int64_t rows = static_cast<int64_t>(d.batch) * d.seq_len;
    const int64_t width = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
    const int64_t out_width = static_cast<int64_t>(d.n_heads) * d.head_dim;
    const size_t lse_elems = static_cast<size_t>(d.batch) * d.n_heads * d.seq_len;
    AttentionDims dd = d;
    Arena doc_mem;
    if (d.doc_start != nullptr) {
      doc_mem = ToDevice(std::vector<int32_t>(d.doc_start, d.doc_start + rows));
      dd.doc_start = static_cast<const int32_t*>(doc_mem.data());
    }
    Arena qkv_mem = ToDevice(FromFloats<BF16>(qkv)), dout_mem = ToDevice(FromFloats<BF16>(dout));
    Arena out_mem(Device::kCUDA, static_cast<size_t>(rows * out_width) * 2);
    Arena lse_mem(Device::kCUDA, lse_elems * 4);
    Arena dqkv_mem(Device::kCUDA, static_cast<size_t>(rows * width) * 2);
    const int64_t ws_elems = cuda::FlashAttentionBackwardWorkspaceElems(d);
    Arena ws_mem(Device::kCUDA, static_cast<size_t>(ws_elems) * 4);
    for (Arena* a : {&out_mem, &lse_mem, &dqkv_mem, &ws_mem}) Poison(*a);
    const Tensor qkv_t = View<BF16>(qkv_mem, {rows, width}), out_t = View<BF16>(out_mem, {rows, out_width});
    const Tensor lse_t = View<float>(lse_mem, {d.batch, d.n_heads, d.seq_len});

    testing::AttentionResult r;
    cuda::FlashAttentionForward(qkv_t, dd, true, out_t, lse_t, nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    r.out = ToFloats(ToHost<BF16>(out_mem, static_cast<size_t>(rows * out_width)));
    r.lse = ToHost<float>(lse_mem, lse_elems);
    if (!backward_out.empty()) {
      const std::vector<BF16> out_b = FromFloats<BF16>(backward_out);
      CUDA_CHECK(cudaMemcpy(out_mem.data(), out_b.data(), out_b.size() * sizeof(BF16), cudaMemcpyHostToDevice));
      CUDA_CHECK(cudaMemcpy(lse_mem.data(), backward_lse.data(), lse_elems * sizeof(float), cudaMemcpyHostToDevice));
    }
    cuda::FlashAttentionBackward(qkv_t, out_t, View<BF16>(dout_mem, {rows, out_width}), lse_t, dd, true,
                                 View<BF16>(dqkv_mem, {rows, width}), View<float>(ws_mem, {ws_elems}), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    r.dqkv = ToFloats(ToHost<BF16>(dqkv_mem, static_cast<size_t>(rows * width)));
    return r;
  }

  // The double reference as a runner (its backward uses its own forward).
  static testing::AttentionResult RunReference(const AttentionDims& d, const std::vector<float>& qkv,
                                               const std::vector<float>& dout, const std::vector<float>&,
                                               const std::vector<float>&) {
    const testing::AttentionReference ref =
        ReferenceAttention(qkv, dout, {d.batch, d.seq_len, d.n_heads, d.n_kv_heads, d.head_dim, true});
    auto to_float = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
    return {to_float(ref.out), to_float(ref.lse), to_float(ref.dqkv)};
  }

  // out, lse, dq, dk, dv of `got` against `want` (both in the kernels' layouts).
  static void ExpectClose(const testing::AttentionResult& got, const testing::AttentionResult& want,
                          const AttentionDims& d, const std::string& what) {
    const int64_t width = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
    const int64_t q_end = static_cast<int64_t>(d.n_heads) * d.head_dim;
    const int64_t k_end = q_end + static_cast<int64_t>(d.n_kv_heads) * d.head_dim;
    auto column = [width](size_t i) { return static_cast<int64_t>(i) % width; };
    EXPECT_TRUE(CloseAsBf16(
        got.out, testing::ToDouble(want.out), [](size_t) { return true; }, what + " out"));
    EXPECT_TRUE(testing::AllClose(got.lse, testing::ToDouble(want.lse), 1e-4, 1e-4)) << what << " lse";
    const std::vector<double> dqkv = testing::ToDouble(want.dqkv);
    EXPECT_TRUE(CloseAsBf16(
        got.dqkv, dqkv, [&](size_t i) { return column(i) < q_end; }, what + " dq"));
    EXPECT_TRUE(CloseAsBf16(
        got.dqkv, dqkv, [&](size_t i) { return column(i) >= q_end && column(i) < k_end; }, what + " dk"));
    EXPECT_TRUE(CloseAsBf16(
        got.dqkv, dqkv, [&](size_t i) { return column(i) >= k_end; }, what + " dv"));
  }

  void CheckDocuments(const testing::DocumentLengths& lengths, int hq, int hkv, int hd) {
    const int batch = static_cast<int>(lengths.size());
    const auto [seq, docs] = testing::DescribeDocuments(lengths);
    SCOPED_TRACE(::testing::Message() << "B=" << batch << " T=" << seq << " Hq=" << hq << " Hkv=" << hkv << " hd=" << hd
                                      << " documents" << docs);
    const std::vector<int32_t> doc_start = testing::DocStarts(lengths);
    const AttentionDims d{batch, seq, hq, hkv, hd, doc_start.data()};
    ASSERT_TRUE(cuda::FlashAttentionSupports(d, DType::kBF16));
    const int64_t rows = static_cast<int64_t>(batch) * seq;
    const std::vector<float> qkv = RoundTo<BF16>(Normal(static_cast<size_t>(rows * (hq + 2 * hkv) * hd)));
    const std::vector<float> dout = RoundTo<BF16>(Normal(static_cast<size_t>(rows * hq * hd)));

    const testing::AttentionResult packed = RunFlash(d, qkv, dout, {}, {});
    ExpectClose(packed, testing::RunDocumentsAlone(d, lengths, qkv, dout, packed, RunFlash), d, "vs flash alone:");
    ExpectClose(packed, testing::RunDocumentsAlone(d, lengths, qkv, dout, packed, RunReference), d,
                "vs reference alone:");
  }
};

TEST_F(CudaFlashAttentionTest, CausalMatchesDoubleReference) {
  LATAM_REQUIRE_GPU();
  Check({1, 1, 1, 1, 64, true});
  Check({2, 37, 4, 2, 64, true});
  Check({1, 130, 8, 2, 128, true});
  Check({1, 513, 2, 1, 128, true});
  Check({2, 64, 4, 4, 64, true});
}

TEST_F(CudaFlashAttentionTest, NonCausalMatchesDoubleReference) {
  LATAM_REQUIRE_GPU();
  Check({1, 200, 4, 4, 128, false});
  Check({3, 37, 2, 1, 64, false});
}

TEST_F(CudaFlashAttentionTest, ManyBatchesAndHeads) {
  LATAM_REQUIRE_GPU();
  Check({64, 16, 32, 8, 64, true});
}

// The Hopper kernels: the cp.async wgmma forward (FlashForwardPath::kWgmma)
// followed by the mma.sync backward, and the TMA forward (kWgmmaTma)
// followed by the wgmma backward (FlashBackwardPath::kWgmma, also checked
// bitwise reproducible); they run on compute capability 9.0 only.
TEST_F(CudaFlashAttentionTest, WgmmaMatchesDoubleReference) {
  LATAM_REQUIRE_GPU();
  if (!cuda::FlashWgmmaForwardAvailable()) GTEST_SKIP() << "the wgmma kernels need a compute capability 9.0 GPU";
  for (const cuda::FlashForwardPath path : {cuda::FlashForwardPath::kWgmma, cuda::FlashForwardPath::kWgmmaTma}) {
    const cuda::FlashBackwardPath backward =
        path == cuda::FlashForwardPath::kWgmma ? cuda::FlashBackwardPath::kMmaSync : cuda::FlashBackwardPath::kWgmma;
    Check({1, 1, 1, 1, 64, true}, path, backward);
    Check({2, 37, 4, 2, 64, true}, path, backward);
    Check({1, 130, 8, 2, 128, true}, path, backward);
    Check({1, 300, 2, 1, 128, true}, path, backward);
    Check({1, 200, 4, 4, 128, false}, path, backward);
    Check({3, 37, 2, 1, 64, false}, path, backward);
  }
}

// Document mixes per sequence (T = 160): a fixed one (one-token documents,
// documents longer than a 64-key tile, one starting on the tile boundary
// 64) and two random ones.
TEST_F(CudaFlashAttentionTest, DocumentMaskingMatchesDocumentsRunAlone) {
  LATAM_REQUIRE_GPU();
  CheckDocuments({{1, 70, 1, 1, 87}, {64, 1, 31, 64}}, 4, 2, 64);
  auto uniform = [this](int lo, int hi) { return UniformInt(lo, hi); };
  for (int m = 0; m < 2; ++m) {
    CheckDocuments({testing::RandomDocumentLengths(160, uniform), testing::RandomDocumentLengths(160, uniform)}, 4, 2,
                   64);
  }
}

// doc_start with one document per sequence (all zeros) gives the same bits
// as doc_start == nullptr in out, lse and dqkv.
TEST_F(CudaFlashAttentionTest, SingleDocumentIsBitwisePlainCausal) {
  LATAM_REQUIRE_GPU();
  const int batch = 2, seq = 130, hq = 4, hkv = 2, hd = 64;
  const int64_t rows = static_cast<int64_t>(batch) * seq;
  const std::vector<float> qkv = RoundTo<BF16>(Normal(static_cast<size_t>(rows * (hq + 2 * hkv) * hd)));
  const std::vector<float> dout = RoundTo<BF16>(Normal(static_cast<size_t>(rows * hq * hd)));
  const std::vector<int32_t> zeros(static_cast<size_t>(rows), 0);
  const testing::AttentionResult plain = RunFlash(AttentionDims{batch, seq, hq, hkv, hd}, qkv, dout, {}, {});
  const testing::AttentionResult one =
      RunFlash(AttentionDims{batch, seq, hq, hkv, hd, zeros.data()}, qkv, dout, {}, {});
  auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(plain.out, one.out)) << "out";
  EXPECT_TRUE(same(plain.lse, one.lse)) << "lse";
  EXPECT_TRUE(same(plain.dqkv, one.dqkv)) << "dqkv";
}

// The wgmma kernels do not implement document masking: they never report
// support for it, and asking them (or a non-causal call) for it is fatal.
TEST(CudaFlashAttentionSupport, WgmmaPathsRefuseDocuments) {
  LATAM_REQUIRE_GPU();
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const int batch = 1, seq = 8, hq = 2, hkv = 1, hd = 64;
  const int64_t rows = batch * seq, width = (hq + 2 * hkv) * hd, out_width = hq * hd;
  Arena doc_mem = ToDevice(std::vector<int32_t>(rows, 0));
  const AttentionDims plain{batch, seq, hq, hkv, hd};
  const AttentionDims docs{batch, seq, hq, hkv, hd, static_cast<const int32_t*>(doc_mem.data())};
  EXPECT_TRUE(cuda::FlashWgmmaSupports(plain));
  EXPECT_FALSE(cuda::FlashWgmmaSupports(docs));
  EXPECT_TRUE(cuda::FlashAttentionSupports(docs, DType::kBF16));

  Arena qkv_mem(Device::kCUDA, static_cast<size_t>(rows * width) * 2), out_mem(Device::kCUDA, rows * out_width * 2);
  Arena lse_mem(Device::kCUDA, static_cast<size_t>(batch * hq * seq) * 4);
  Arena dqkv_mem(Device::kCUDA, static_cast<size_t>(rows * width) * 2);
  Arena ws_mem(Device::kCUDA, static_cast<size_t>(cuda::FlashAttentionBackwardWorkspaceElems(docs)) * 4);
  const Tensor qkv = View<BF16>(qkv_mem, {rows, width}), out = View<BF16>(out_mem, {rows, out_width});
  const Tensor lse = View<float>(lse_mem, {batch, hq, seq}), dqkv = View<BF16>(dqkv_mem, {rows, width});
  const Tensor ws = View<float>(ws_mem, {cuda::FlashAttentionBackwardWorkspaceElems(docs)});
  for (const cuda::FlashForwardPath path : {cuda::FlashForwardPath::kWgmma, cuda::FlashForwardPath::kWgmmaTma}) {
    EXPECT_DEATH(cuda::FlashAttentionForward(qkv, docs, true, out, lse, nullptr, path),
                 "wgmma kernels do not implement document masking");
  }
  EXPECT_DEATH(
      cuda::FlashAttentionBackward(qkv, out, out, lse, docs, true, dqkv, ws, nullptr, cuda::FlashBackwardPath::kWgmma),
      "wgmma kernels do not implement document masking");
  EXPECT_DEATH(cuda::FlashAttentionForward(qkv, docs, false, out, lse, nullptr), "needs causal = true");
  EXPECT_DEATH(cuda::FlashAttentionBackward(qkv, out, out, lse, docs, false, dqkv, ws, nullptr), "needs causal = true");
}

TEST(CudaFlashAttentionSupport, Bf16WithHeadDims64And128Only) {
  const AttentionDims d64{1, 8, 4, 2, 64}, d128{1, 8, 4, 2, 128}, d32{1, 8, 4, 2, 32};
  EXPECT_TRUE(cuda::FlashAttentionSupports(d64, DType::kBF16));
  EXPECT_TRUE(cuda::FlashAttentionSupports(d128, DType::kBF16));
  EXPECT_FALSE(cuda::FlashAttentionSupports(d32, DType::kBF16));
  EXPECT_FALSE(cuda::FlashAttentionSupports(d64, DType::kF32));
  EXPECT_FALSE(cuda::FlashAttentionSupports(AttentionDims{1, 8, 3, 2, 64}, DType::kBF16));
}

}  // namespace
}  // namespace latam
