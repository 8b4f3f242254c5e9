// CUDA causal GQA attention (f32 and bf16) against the CPU kernel on the same
// inputs (rounded to bf16 first in the bf16 tests). The forward's out and lse
// are compared with the CPU forward; the backward's dqkv with the CPU
// backward run on the GPU's own out and lse, so each pass is checked alone.
// Shapes cover GQA groups (8 query / 2 KV heads) and plain multi-head, head
// dims 64 and 128 (72 and 256 for the other thread layouts), T = 1, 37, 130
// (partial tiles) and batch > 1. Outputs start poisoned (NaN).
// Tolerances: both sides compute in fp32 and differ only in summation order:
// f32 out and lse 2e-5 abs + 1e-5 rel, f32 dqkv 5e-5 abs + 1e-4 rel. bf16
// out and dqkv are rounded to bf16 (relative step 2^-8), so 1e-3 abs + 1e-2
// rel; bf16 lse is f32 computed from identical inputs, so as for f32.
//
// Document masking (AttentionDims::doc_start) is checked against running
// each document alone as its own sequence with the same kernel
// (tests/cuda/attention_documents.h): batch 2, 4 query / 2 KV heads, head
// dim 16, document mixes with one-token documents and documents longer than
// the kernel's 32-key tile (and 64). The packed and the per-document runs
// tile the same rows differently, so they differ in fp32 summation order
// only: the tolerances above, with each document's backward given the
// packed run's out and lse. A single document per sequence must give the
// same bits as doc_start == nullptr.
#include <gtest/gtest.h>

#include <omp.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cuda/attention.h"
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

struct Tolerance {
  double atol, rtol;
};

class CudaAttentionTest : public testing::RandomTest {
 protected:
  // Device buffers and views for one shape.
  template <typename T>
  struct DeviceRun {
    DeviceRun(const std::vector<float>& qkv_host, const std::vector<float>& dout_host, const AttentionDims& d)
        : rows(static_cast<int64_t>(d.batch) * d.seq_len),
          width(static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim),
          out_width(static_cast<int64_t>(d.n_heads) * d.head_dim),
          ws_elems(cuda::AttentionBackwardWorkspaceElems(d)),
          qkv_mem(ToDevice(FromFloats<T>(qkv_host))),
          dout_mem(ToDevice(FromFloats<T>(dout_host))),
          out_mem(Device::kCUDA, rows * out_width * sizeof(T)),
          lse_mem(Device::kCUDA, static_cast<size_t>(d.batch) * d.n_heads * d.seq_len * sizeof(float)),
          dqkv_mem(Device::kCUDA, rows * width * sizeof(T)),
          ws_mem(Device::kCUDA, ws_elems * sizeof(float)) {
      Poison(out_mem);
      Poison(lse_mem);
      Poison(dqkv_mem);
      Poison(ws_mem);
    }
    Tensor qkv() const { return View<T>(qkv_mem, {rows, width}); }
    Tensor dout() const { return View<T>(dout_mem, {rows, out_width}); }
    Tensor out() const { return View<T>(out_mem, {rows, out_width}); }
    Tensor lse(const AttentionDims& d) const { return View<float>(lse_mem, {d.batch, d.n_heads, d.seq_len}); }
    Tensor dqkv() const { return View<T>(dqkv_mem, {rows, width}); }
    Tensor workspace() const { return View<float>(ws_mem, {ws_elems}); }

    int64_t rows, width, out_width, ws_elems;
    Arena qkv_mem, dout_mem, out_mem, lse_mem, dqkv_mem, ws_mem;
  };

  static std::vector<float> CpuWorkspace(const AttentionDims& d) {
    return std::vector<float>(cpu::AttentionWorkspaceElems(d, omp_get_max_threads()));
  }

  template <typename T>
  void Check(int batch, int seq, int hq, int hkv, int hd, Tolerance fwd, Tolerance lse_tol, Tolerance bwd) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " B=" << batch << " T=" << seq << " Hq=" << hq
                                      << " Hkv=" << hkv << " hd=" << hd);
    const AttentionDims d{batch, seq, hq, hkv, hd};
    const int64_t rows = static_cast<int64_t>(batch) * seq, width = static_cast<int64_t>(hq + 2 * hkv) * hd;
    const int64_t out_width = static_cast<int64_t>(hq) * hd, lse_elems = static_cast<int64_t>(batch) * hq * seq;
    auto qkv = RoundTo<T>(Normal(rows * width));
    auto dout = RoundTo<T>(Normal(rows * out_width));

    DeviceRun<T> gpu(qkv, dout, d);
    cuda::AttentionForward(gpu.qkv(), d, gpu.out(), gpu.lse(d), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    auto out = ToFloats(ToHost<T>(gpu.out_mem, rows * out_width));
    auto lse = ToHost<float>(gpu.lse_mem, lse_elems);

    std::vector<float> cpu_out(rows * out_width), cpu_lse(lse_elems), cpu_ws = CpuWorkspace(d);
    const Tensor qkv_t = Tensor::Of(qkv.data(), {rows, width});
    const Tensor ws_t = Tensor::Of(cpu_ws.data(), {static_cast<int64_t>(cpu_ws.size())});
    cpu::AttentionForward(qkv_t, d, Tensor::Of(cpu_out.data(), {rows, out_width}),
                          Tensor::Of(cpu_lse.data(), {batch, hq, seq}), ws_t);
    EXPECT_TRUE(testing::AllClose(out, testing::ToDouble(cpu_out), fwd.atol, fwd.rtol)) << "out";
    EXPECT_TRUE(testing::AllClose(lse, testing::ToDouble(cpu_lse), lse_tol.atol, lse_tol.rtol)) << "lse";

    cuda::AttentionBackward(gpu.qkv(), gpu.out(), gpu.dout(), gpu.lse(d), d, gpu.dqkv(), gpu.workspace(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto dqkv = ToFloats(ToHost<T>(gpu.dqkv_mem, rows * width));

    std::vector<float> cpu_dqkv(rows * width);
    cpu::AttentionBackward(qkv_t, Tensor::Of(out.data(), {rows, out_width}), Tensor::Of(dout.data(), {rows, out_width}),
                           Tensor::Of(lse.data(), {batch, hq, seq}), d, Tensor::Of(cpu_dqkv.data(), {rows, width}),
                           ws_t);
    EXPECT_TRUE(testing::AllClose(dqkv, testing::ToDouble(cpu_dqkv), bwd.atol, bwd.rtol)) << "dqkv";
  }

  // Two backward runs on poisoned outputs give the same bits.
  template <typename T>
  void CheckDeterministic(int batch, int seq, int hq, int hkv, int hd) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " B=" << batch << " T=" << seq << " Hq=" << hq
                                      << " Hkv=" << hkv << " hd=" << hd);
    const AttentionDims d{batch, seq, hq, hkv, hd};
    const int64_t rows = static_cast<int64_t>(batch) * seq;
    DeviceRun<T> gpu(RoundTo<T>(Normal(rows * (hq + 2 * hkv) * hd)), RoundTo<T>(Normal(rows * hq * hd)), d);
    cuda::AttentionForward(gpu.qkv(), d, gpu.out(), gpu.lse(d), nullptr);
    std::vector<std::vector<T>> results;
    for (int run = 0; run < 2; ++run) {
      Poison(gpu.dqkv_mem);
      Poison(gpu.ws_mem);
      cuda::AttentionBackward(gpu.qkv(), gpu.out(), gpu.dout(), gpu.lse(d), d, gpu.dqkv(), gpu.workspace(), nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      results.push_back(ToHost<T>(gpu.dqkv_mem, rows * gpu.width));
    }
    EXPECT_EQ(std::memcmp(results[0].data(), results[1].data(), results[0].size() * sizeof(T)), 0);
  }

  // The CUDA kernels on host data (testing::AttentionRunner): d.doc_start,
  // if set, is host memory and is copied to the device. The backward runs on
  // backward_out and backward_lse, or on the forward's own results when
  // those are empty.
  template <typename T>
  static testing::AttentionResult RunCuda(const AttentionDims& d, const std::vector<float>& qkv,
                                          const std::vector<float>& dout, const std::vector<float>& backward_out,
                                          const std::vector<float>& backward_lse) {
    DeviceRun<T> gpu(qkv, dout, d);
    AttentionDims dd = d;
    Arena doc_mem;
    if (d.doc_start != nullptr) {
      doc_mem = ToDevice(std::vector<int32_t>(d.doc_start, d.doc_start + static_cast<int64_t>(d.batch) * d.seq_len));
      dd.doc_start = static_cast<const int32_t*>(doc_mem.data());
    }
    const size_t lse_elems = static_cast<size_t>(d.batch) * d.n_heads * d.seq_len;
    testing::AttentionResult r;
    cuda::AttentionForward(gpu.qkv(), dd, gpu.out(), gpu.lse(d), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    r.out = ToFloats(ToHost<T>(gpu.out_mem, gpu.rows * gpu.out_width));
    r.lse = ToHost<float>(gpu.lse_mem, lse_elems);
    if (!backward_out.empty()) {
      const std::vector<T> out_t = FromFloats<T>(backward_out);
      CUDA_CHECK(cudaMemcpy(gpu.out_mem.data(), out_t.data(), out_t.size() * sizeof(T), cudaMemcpyHostToDevice));
      CUDA_CHECK(
          cudaMemcpy(gpu.lse_mem.data(), backward_lse.data(), lse_elems * sizeof(float), cudaMemcpyHostToDevice));
    }
    cuda::AttentionBackward(gpu.qkv(), gpu.out(), gpu.dout(), gpu.lse(d), dd, gpu.dqkv(), gpu.workspace(), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
    r.dqkv = ToFloats(ToHost<T>(gpu.dqkv_mem, gpu.rows * gpu.width));
    return r;
  }

  // Document-masked attention over `lengths` (batch lengths.size()) against
  // every document run alone.
  template <typename T>
  void CheckDocuments(const testing::DocumentLengths& lengths, int hq, int hkv, int hd, Tolerance fwd,
                      Tolerance lse_tol, Tolerance bwd) {
    const int batch = static_cast<int>(lengths.size());
    const auto [seq, docs] = testing::DescribeDocuments(lengths);
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " B=" << batch << " T=" << seq << " Hq=" << hq
                                      << " Hkv=" << hkv << " hd=" << hd << " documents" << docs);
    const std::vector<int32_t> doc_start = testing::DocStarts(lengths);
    const AttentionDims d{batch, seq, hq, hkv, hd, doc_start.data()};
    const int64_t rows = static_cast<int64_t>(batch) * seq;
    const auto qkv = RoundTo<T>(Normal(rows * (hq + 2 * hkv) * hd));
    const auto dout = RoundTo<T>(Normal(rows * hq * hd));

    const testing::AttentionResult packed = RunCuda<T>(d, qkv, dout, {}, {});
    const testing::AttentionResult alone = testing::RunDocumentsAlone(d, lengths, qkv, dout, packed, RunCuda<T>);
    EXPECT_TRUE(testing::AllClose(packed.out, testing::ToDouble(alone.out), fwd.atol, fwd.rtol)) << "out";
    EXPECT_TRUE(testing::AllClose(packed.lse, testing::ToDouble(alone.lse), lse_tol.atol, lse_tol.rtol)) << "lse";
    EXPECT_TRUE(testing::AllClose(packed.dqkv, testing::ToDouble(alone.dqkv), bwd.atol, bwd.rtol)) << "dqkv";
  }

  // A fixed mix (one-token documents, documents longer than 32 and 64 keys,
  // one starting on a tile boundary) and two random ones per sequence, T = 100.
  std::vector<testing::DocumentLengths> DocumentMixes() {
    std::vector<testing::DocumentLengths> mixes = {{{1, 70, 1, 1, 27}, {32, 1, 2, 65}}};
    auto uniform = [this](int lo, int hi) { return UniformInt(lo, hi); };
    for (int m = 0; m < 2; ++m) {
      mixes.push_back({testing::RandomDocumentLengths(100, uniform), testing::RandomDocumentLengths(100, uniform)});
    }
    return mixes;
  }

  // doc_start with one document per sequence (all zeros) against nullptr:
  // the same bits in out, lse and dqkv.
  template <typename T>
  void CheckSingleDocumentBitwise(int batch, int seq, int hq, int hkv, int hd) {
    SCOPED_TRACE(::testing::Message() << DTypeName(DTypeOf<T>::value) << " B=" << batch << " T=" << seq);
    const int64_t rows = static_cast<int64_t>(batch) * seq;
    const auto qkv = RoundTo<T>(Normal(rows * (hq + 2 * hkv) * hd));
    const auto dout = RoundTo<T>(Normal(rows * hq * hd));
    const std::vector<int32_t> zeros(static_cast<size_t>(rows), 0);
    const testing::AttentionResult plain = RunCuda<T>(AttentionDims{batch, seq, hq, hkv, hd}, qkv, dout, {}, {});
    const testing::AttentionResult one =
        RunCuda<T>(AttentionDims{batch, seq, hq, hkv, hd, zeros.data()}, qkv, dout, {}, {});
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    EXPECT_TRUE(same(plain.out, one.out)) << "out";
    EXPECT_TRUE(same(plain.lse, one.lse)) << "lse";
    EXPECT_TRUE(same(plain.dqkv, one.dqkv)) << "dqkv";
  }
};

// (batch, seq_len, query heads, KV heads, head_dim)
using AttentionShape = std::tuple<int, int, int, int, int>;
const std::vector<AttentionShape> kShapes = {{2, 37, 8, 2, 64},  {1, 130, 8, 2, 128}, {2, 1, 8, 2, 64},
                                             {2, 130, 8, 2, 64}, {1, 37, 4, 4, 128},  {1, 65, 6, 3, 72},
                                             {1, 40, 4, 1, 256}, {3, 33, 2, 1, 128}};

TEST_F(CudaAttentionTest, Float32MatchesCpu) {
  LATAM_REQUIRE_GPU();
  for (const auto& [b, t, hq, hkv, hd] : kShapes) {
    Check<float>(b, t, hq, hkv, hd, {2e-5, 1e-5}, {2e-5, 1e-5}, {5e-5, 1e-4});
  }
}

TEST_F(CudaAttentionTest, BFloat16MatchesCpu) {
  LATAM_REQUIRE_GPU();
  for (const auto& [b, t, hq, hkv, hd] : kShapes) {
    Check<BF16>(b, t, hq, hkv, hd, {1e-3, 1e-2}, {2e-5, 1e-5}, {1e-3, 1e-2});
  }
}

TEST_F(CudaAttentionTest, BackwardIsBitwiseDeterministic) {
  LATAM_REQUIRE_GPU();
  CheckDeterministic<float>(2, 130, 8, 2, 128);
  CheckDeterministic<BF16>(2, 130, 8, 2, 64);
}

TEST_F(CudaAttentionTest, DocumentMaskingMatchesDocumentsRunAloneFloat32) {
  LATAM_REQUIRE_GPU();
  for (const auto& lengths : DocumentMixes())
    CheckDocuments<float>(lengths, 4, 2, 16, {2e-5, 1e-5}, {2e-5, 1e-5}, {5e-5, 1e-4});
}

TEST_F(CudaAttentionTest, DocumentMaskingMatchesDocumentsRunAloneBFloat16) {
  LATAM_REQUIRE_GPU();
  for (const auto& lengths : DocumentMixes())
    CheckDocuments<BF16>(lengths, 4, 2, 16, {1e-3, 1e-2}, {2e-5, 1e-5}, {1e-3, 1e-2});
}

TEST_F(CudaAttentionTest, SingleDocumentIsBitwisePlainCausal) {
  LATAM_REQUIRE_GPU();
  CheckSingleDocumentBitwise<float>(2, 70, 4, 2, 16);
  CheckSingleDocumentBitwise<BF16>(2, 70, 4, 2, 16);
}

}  // namespace
}  // namespace latam
