// ModelOps on the CPU: the fp32 reference kernels, run synchronously.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/arena.h"
#include "kernels/cross_entropy.h"
#include "kernels/decode_attention.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/rmsnorm.h"
#include "kernels/swiglu.h"
#include "model/model_ops.h"

namespace latam {

namespace {

int CpuThreads(const OpsShape& shape) { return shape.cpu_threads > 0 ? shape.cpu_threads : omp_get_max_threads(); }

// One scratch buffer serves the training attention and the decode
// attention: no call of one overlaps a call of the other.
int64_t CpuWorkspaceElems(const OpsShape& shape) {
  const int64_t training = cpu::AttentionWorkspaceElems(shape.attention, CpuThreads(shape));
  if (shape.decode_rows <= 0) return training;
  return std::max(training, cpu::DecodeAttentionWorkspaceElems(shape.decode, shape.decode_rows));
}

class CpuOps final : public ModelOps {
 public:
  CpuOps(const OpsShape& shape, const RopeTable& rope)
      : shape_(shape),
        rope_(rope),
        workspace_arena_(Device::kCPU, static_cast<size_t>(CpuWorkspaceElems(shape)) * sizeof(float)),
        workspace_(workspace_arena_.View(0, DType::kF32, Shape{CpuWorkspaceElems(shape)})) {}

  Device device() const override { return Device::kCPU; }
  DType activation_dtype() const override { return DType::kF32; }

  void UploadIds(const int32_t* host, const Tensor& dst) override {
    std::copy(host, host + dst.numel(), dst.as<int32_t>());
  }
  void RmsNormForward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd) override {
    cpu::RmsNormForward(x, w, eps, y, rstd);
  }
  void RmsNormBackward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dx,
                       bool accumulate_dx, const Tensor& dw) override {
    cpu::RmsNormBackward(dy, x, w, rstd, dx, accumulate_dx, dw);
  }
  void LinearForward(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) override {
    cpu::LinearForward(x, w, y, accumulate);
  }
  void LinearBackwardInput(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate) override {
    cpu::LinearBackwardInput(dy, w, dx, accumulate);
  }
  void LinearBackwardWeight(const Tensor& dy, const Tensor& x, const Tensor& dw) override {
    cpu::LinearBackwardWeight(dy, x, dw);
  }
  void StridedGemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a,
                   GemmOperand b, float beta, GemmOperand c) override {
    CheckStridedOperands(trans_a, trans_b, m, n, k, a, b, c);
    for (const GemmOperand* o : {&a, &b, &c}) {
      LATAM_CHECK(o->t.dtype == DType::kF32, "CPU GEMM operand of dtype " << DTypeName(o->t.dtype));
    }
    cpu::Gemm(trans_a, trans_b, m, n, k, alpha, static_cast<const float*>(a.t.data) + a.offset, a.ld,
              static_cast<const float*>(b.t.data) + b.offset, b.ld, beta, static_cast<float*>(c.t.data) + c.offset,
              c.ld);
  }
  void RopeForward(const Tensor& qkv, int n_rot_heads, const int32_t* positions) override {
    cpu::RopeForward(qkv, shape_.attention.seq_len, n_rot_heads, rope_, positions);
  }
  void RopeBackward(const Tensor& dqkv, int n_rot_heads, const int32_t* positions) override {
    cpu::RopeBackward(dqkv, shape_.attention.seq_len, n_rot_heads, rope_, positions);
  }
  void AttentionForward(const Tensor& qkv, const Tensor& out, const Tensor& lse, const int32_t* doc_start) override {
    AttentionDims d = shape_.attention;
    d.doc_start = doc_start;
    cpu::AttentionForward(qkv, d, out, lse, workspace_);
  }
  void AttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                         const Tensor& dqkv, const int32_t* doc_start) override {
    AttentionDims d = shape_.attention;
    d.doc_start = doc_start;
    cpu::AttentionBackward(qkv, out, dout, lse, d, dqkv, workspace_);
  }
  void AttentionBlockForward(const Tensor& qkv, const Tensor& kv, const AttentionBlockDims& dims, const Tensor& out,
                             const Tensor& lse) override {
    cpu::AttentionBlockForward(qkv, kv, dims, out, lse, workspace_);
  }
  void AttentionBlockBackward(const Tensor& qkv, const Tensor& kv, const Tensor& out, const Tensor& dout,
                              const Tensor& lse, const AttentionBlockDims& dims, const Tensor& dqkv,
                              const Tensor& dkv) override {
    cpu::AttentionBlockBackward(qkv, kv, out, dout, lse, dims, dqkv, dkv, workspace_);
  }
  void PackKeyValues(const Tensor& qkv, const Tensor& kv) override {
    CopyKeyValueColumns(qkv, kv, true);
  }
  void UnpackKeyValueGrads(const Tensor& dkv, const Tensor& dqkv) override {
    CopyKeyValueColumns(dqkv, dkv, false);
  }
  void Fill(const Tensor& t, float value) override {
    LATAM_CHECK(t.dtype == DType::kF32, "Fill of a " << DTypeName(t.dtype) << " tensor on the CPU");
    std::fill_n(t.as<float>(), t.numel(), value);
  }
  void Add(const Tensor& a, const Tensor& b, const Tensor& out) override { cpu::Add(a, b, out); }
  void AddRmsNormForward(const Tensor& x, const Tensor& r, const Tensor& w, float eps, const Tensor& h,
                         const Tensor& y, const Tensor& rstd) override {
    cpu::Add(x, r, h);
    cpu::RmsNormForward(h, w, eps, y, rstd);
  }
  void SwigluForward(const Tensor& gu, const Tensor& out) override { cpu::SwigluForward(gu, out); }
  void SwigluBackward(const Tensor& dout, const Tensor& gu, const Tensor& dgu) override {
    cpu::SwigluBackward(dout, gu, dgu);
  }
  void EmbeddingForward(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out) override {
    cpu::EmbeddingForward(ids, table, vocab_begin, out);
  }
  void EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin, const Tensor& dtable) override {
    cpu::EmbeddingBackward(ids, dout, vocab_begin, dtable);
  }
  void LogitsRowMax(const Tensor& logits, const Tensor& row_max) override { cpu::LogitsRowMax(logits, row_max); }
  void LogitsRowSumExp(const Tensor& logits, const Tensor& global_max, const Tensor& targets, int64_t vocab_begin,
                       int64_t vocab, const Tensor& row_sumexp, const Tensor& target_logit) override {
    cpu::LogitsRowSumExp(logits, global_max, targets, vocab_begin, vocab, row_sumexp, target_logit);
  }
  void CrossEntropyLoss(const Tensor& row_max, const Tensor& row_sumexp, const Tensor& target_logit,
                        const Tensor& targets, const Tensor& lse) override {
    const int64_t n = lse.numel();
    const float *mx = row_max.as<float>(), *se = row_sumexp.as<float>(), *tl = target_logit.as<float>();
    const int32_t* t = targets.as<int32_t>();
    float* l = lse.as<float>();
    for (int64_t r = 0; r < n; ++r) {
      l[r] = mx[r] + std::log(se[r]);
      if (t[r] >= 0) loss_ += static_cast<double>(l[r]) - static_cast<double>(tl[r]);
    }
  }
  void SoftmaxCrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                   const Tensor& lse, float grad_scale) override {
    cpu::SoftmaxCrossEntropyBackward(logits, targets, vocab_begin, lse, grad_scale);
  }
  void RopeForwardAt(const Tensor& qkv, int64_t first_position, int n_rot_heads) override {
    cpu::RopeForwardAt(qkv, first_position, n_rot_heads, rope_);
  }
  void KvCacheAppend(const Tensor& qkv, int64_t first_position, const Tensor& k_cache,
                     const Tensor& v_cache) override {
    cpu::KvCacheAppend(qkv, shape_.decode, first_position, k_cache, v_cache);
  }
  void DecodeAttention(const Tensor& qkv, int64_t first_position, const Tensor& k_cache, const Tensor& v_cache,
                       const Tensor& out) override {
    LATAM_CHECK(qkv.shape.rows() <= shape_.decode_rows,
                "decode attention of " << qkv.shape.rows() << " rows; the ops were built for " << shape_.decode_rows);
    cpu::DecodeAttention(qkv, shape_.decode, first_position, k_cache, v_cache, out, workspace_);
  }
  void Download(const Tensor& src, void* host) override { std::memcpy(host, src.data, src.bytes()); }
  double TakeLoss() override {
    const double loss = loss_;
    loss_ = 0.0;
    return loss;
  }

 private:
  // The key/value columns of every row of `qkv` [rows, (Hq + 2 Hkv) hd] and
  // the rows of `kv` [rows, 2 Hkv hd]: kv <- them (to_kv) or them <- kv.
  void CopyKeyValueColumns(const Tensor& qkv, const Tensor& kv, bool to_kv) const {
    const AttentionDims& d = shape_.attention;
    const int64_t q_width = static_cast<int64_t>(d.n_heads) * d.head_dim;
    const int64_t kv_width = 2 * static_cast<int64_t>(d.n_kv_heads) * d.head_dim;
    const int64_t rows = qkv.numel() / (q_width + kv_width);
    CheckTensor(qkv, DType::kF32, Shape{rows, q_width + kv_width}, Device::kCPU, "key/value copy qkv");
    CheckTensor(kv, DType::kF32, Shape{rows, kv_width}, Device::kCPU, "key/value copy kv");
#pragma omp parallel for
    for (int64_t m = 0; m < rows; ++m) {
      float* wide = qkv.as<float>() + m * (q_width + kv_width) + q_width;
      float* packed = kv.as<float>() + m * kv_width;
      if (to_kv) {
        std::copy(wide, wide + kv_width, packed);
      } else {
        std::copy(packed, packed + kv_width, wide);
      }
    }
  }

  OpsShape shape_;
  RopeTable rope_;
  Arena workspace_arena_;
  Tensor workspace_;
  double loss_ = 0.0;
};

}  // namespace

std::unique_ptr<ModelOps> MakeCpuOps(const OpsShape& shape, const RopeTable& rope) {
  return std::make_unique<CpuOps>(shape, rope);
}

size_t CpuOpsWorkspaceBytes(const OpsShape& shape) {
  return static_cast<size_t>(CpuWorkspaceElems(shape)) * sizeof(float);
}

}  // namespace latam
