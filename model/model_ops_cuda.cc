// ModelOps on a CUDA device: the kernels of kernels/cuda, enqueued on one
// compute stream, with cuBLASLt GEMMs through one GemmContext (its plan cache
// fills during the first step; no allocation after that). Attention runs the
// tensor-core kernel (kernels/cuda/flash_attention.h) wherever it applies
// (bf16, head dim 64 or 128) and the simple tiled kernel otherwise;
// the AttentionChoice it is built with (train.attention) forces the simple
// one, or picks the Hopper kernels.
#include <cuda_runtime.h>

#include <algorithm>

#include "core/arena.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/cross_entropy.h"
#include "kernels/cuda/decode_attention.h"
#include "core/cuda_check.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/flash_attention.h"
#include "kernels/cuda/fused_norm.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/rmsnorm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/swiglu.h"
#include "model/model_ops.h"

namespace latam {

namespace {

size_t AlignUp(size_t n) { return (n + Arena::kAlignment - 1) / Arena::kAlignment * Arena::kAlignment; }

// Where each workspace sits in the ops' device arena.
struct CudaWorkspaceLayout {
  size_t attention = 0, norm = 0, embedding = 0, rope = 0, loss = 0, target_error = 0, total = 0;
  int64_t attention_elems = 0, norm_elems = 0, embedding_elems = 0;

  CudaWorkspaceLayout(const OpsShape& shape, size_t rope_bytes) {
    AttentionBlockDims block;  // ring attention's blocks of this shape (context parallelism)
    block.batch = shape.attention.batch;
    block.rows = shape.attention.seq_len;
    block.n_heads = shape.attention.n_heads;
    block.n_kv_heads = shape.attention.n_kv_heads;
    block.head_dim = shape.attention.head_dim;
    attention_elems = std::max({cuda::AttentionBackwardWorkspaceElems(shape.attention),
                                cuda::FlashAttentionBackwardWorkspaceElems(shape.attention),
                                cuda::AttentionBlockBackwardWorkspaceElems(block)});
    norm_elems = cuda::RmsNormBackwardWorkspaceElems(shape.rows(), shape.dim);
    embedding_elems = cuda::EmbeddingBackwardWorkspaceElems(shape.rows());
    size_t at = 0;
    auto place = [&at](size_t bytes) {
      const size_t offset = at;
      at = AlignUp(at + bytes);
      return offset;
    };
    attention = place(static_cast<size_t>(attention_elems) * sizeof(float));
    norm = place(static_cast<size_t>(norm_elems) * sizeof(float));
    embedding = place(static_cast<size_t>(embedding_elems) * sizeof(int32_t));
    rope = place(rope_bytes);
    loss = place(sizeof(double));
    target_error = place(sizeof(int32_t));
    total = at;
  }
};

size_t RopeBytesFor(const OpsShape& shape) {
  // UploadRopeTable stores cos and sin, f32 [positions, head_dim / 2] each,
  // for the training sequence and, when decoding, every cached position.
  const int64_t positions =
      std::max<int64_t>(shape.attention.seq_len, shape.decode_rows > 0 ? shape.decode.max_context : 0);
  return 2 * static_cast<size_t>(positions) * static_cast<size_t>(shape.attention.head_dim / 2) * sizeof(float);
}

class CudaOps final : public ModelOps {
 public:
  CudaOps(const OpsShape& shape, const RopeTable& rope, DType dtype, cudaStream_t stream, AttentionChoice attention)
      : shape_(shape), dtype_(dtype), stream_(stream), layout_(shape, cuda::RopeTableBytes(rope)) {
    LATAM_CHECK(dtype == DType::kBF16 || dtype == DType::kF32,
                "CUDA activations must be bf16 or f32, got " << DTypeName(dtype));
    flash_ = cuda::FlashAttentionSupports(shape.attention, dtype) && attention != AttentionChoice::kSimple;
    if (flash_ && (attention == AttentionChoice::kWgmma || attention == AttentionChoice::kWgmmaTma)) {
      LATAM_CHECK(
          cuda::FlashWgmmaForwardAvailable(),
          "train.attention=" << AttentionChoiceName(attention) << " needs a compute capability 9.0 GPU (H100, H200)");
      forward_path_ =
          attention == AttentionChoice::kWgmma ? cuda::FlashForwardPath::kWgmma : cuda::FlashForwardPath::kWgmmaTma;
      backward_path_ = cuda::FlashBackwardPath::kWgmma;
    }
    arena_ = Arena(Device::kCUDA, layout_.total);
    attention_ws_ = arena_.View(layout_.attention, DType::kF32, Shape{layout_.attention_elems});
    norm_ws_ = arena_.View(layout_.norm, DType::kF32, Shape{layout_.norm_elems});
    embedding_ws_ = arena_.View(layout_.embedding, DType::kI32, Shape{layout_.embedding_elems});
    rope_ = cuda::UploadRopeTable(rope, arena_, layout_.rope, stream_);
    loss_ = static_cast<double*>(static_cast<void*>(static_cast<char*>(arena_.data()) + layout_.loss));
    target_error_ = arena_.View(layout_.target_error, DType::kI32, Shape{1});
    // The RoPE upload reads the host table: finish it before `rope` goes.
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  Device device() const override { return Device::kCUDA; }
  DType activation_dtype() const override { return dtype_; }

  void UploadIds(const int32_t* host, const Tensor& dst) override {
    // From pageable memory the copy is staged before the call returns, so the
    // caller may reuse `host` at once.
    CUDA_CHECK(cudaMemcpyAsync(dst.data, host, dst.bytes(), cudaMemcpyHostToDevice, stream_));
  }
  void RmsNormForward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd) override {
    cuda::RmsNormForward(x, w, eps, y, rstd, stream_);
  }
  void RmsNormBackward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, const Tensor& dx,
                       bool accumulate_dx, const Tensor& dw) override {
    cuda::RmsNormBackward(dy, x, w, rstd, dx, accumulate_dx, dw, norm_ws_, stream_);
  }
  void LinearForward(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) override {
    cuda::LinearForward(gemm_, x, w, y, accumulate, stream_);
  }
  void LinearBackwardInput(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate) override {
    cuda::LinearBackwardInput(gemm_, dy, w, dx, accumulate, stream_);
  }
  void LinearBackwardWeight(const Tensor& dy, const Tensor& x, const Tensor& dw) override {
    cuda::LinearBackwardWeight(gemm_, dy, x, dw, stream_);
  }
  void StridedGemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a,
                   GemmOperand b, float beta, GemmOperand c) override {
    CheckStridedOperands(trans_a, trans_b, m, n, k, a, b, c);
    LATAM_CHECK(a.t.dtype == b.t.dtype, "GEMM operands of dtypes " << DTypeName(a.t.dtype) << " and "
                                                                     << DTypeName(b.t.dtype));
    auto at = [](const GemmOperand& o) {
      return static_cast<char*>(o.t.data) + static_cast<size_t>(o.offset) * DTypeSize(o.t.dtype);
    };
    cuda::GemmArgs g;
    g.trans_a = trans_a;
    g.trans_b = trans_b;
    g.m = m;
    g.n = n;
    g.k = k;
    g.alpha = alpha;
    g.a = at(a);
    g.lda = a.ld;
    g.b = at(b);
    g.ldb = b.ld;
    g.beta = beta;
    g.c = at(c);
    g.ldc = c.ld;
    g.ab_dtype = a.t.dtype;
    g.c_dtype = c.t.dtype;
    gemm_.Gemm(g, stream_);
  }
  void RopeForward(const Tensor& qkv, int n_rot_heads, const int32_t* positions) override {
    cuda::RopeForward(qkv, shape_.attention.seq_len, n_rot_heads, rope_, stream_, positions);
  }
  void RopeBackward(const Tensor& dqkv, int n_rot_heads, const int32_t* positions) override {
    cuda::RopeBackward(dqkv, shape_.attention.seq_len, n_rot_heads, rope_, stream_, positions);
  }
  // Document masking runs on the mma.sync flash kernels (the wgmma ones do
  // not implement it) or the simple ones.
  void AttentionForward(const Tensor& qkv, const Tensor& out, const Tensor& lse, const int32_t* doc_start) override {
    AttentionDims d = shape_.attention;
    d.doc_start = doc_start;
    if (flash_) {
      const auto path = doc_start != nullptr ? cuda::FlashForwardPath::kMmaSync : forward_path_;
      cuda::FlashAttentionForward(qkv, d, true, out, lse, stream_, path);
    } else {
      cuda::AttentionForward(qkv, d, out, lse, stream_);
    }
  }
  void AttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                         const Tensor& dqkv, const int32_t* doc_start) override {
    AttentionDims d = shape_.attention;
    d.doc_start = doc_start;
    if (flash_) {
      const auto path = doc_start != nullptr ? cuda::FlashBackwardPath::kMmaSync : backward_path_;
      cuda::FlashAttentionBackward(qkv, out, dout, lse, d, true, dqkv, attention_ws_, stream_, path);
    } else {
      cuda::AttentionBackward(qkv, out, dout, lse, d, dqkv, attention_ws_, stream_);
    }
  }
  // Ring attention's blocks run the simple kernels (kernels/cuda/attention.h):
  // the tensor-core flash kernels have no block form yet.
  void AttentionBlockForward(const Tensor& qkv, const Tensor& kv, const AttentionBlockDims& dims, const Tensor& out,
                             const Tensor& lse) override {
    cuda::AttentionBlockForward(qkv, kv, dims, out, lse, stream_);
  }
  void AttentionBlockBackward(const Tensor& qkv, const Tensor& kv, const Tensor& out, const Tensor& dout,
                              const Tensor& lse, const AttentionBlockDims& dims, const Tensor& dqkv,
                              const Tensor& dkv) override {
    cuda::AttentionBlockBackward(qkv, kv, out, dout, lse, dims, dqkv, dkv, attention_ws_, stream_);
  }
  void PackKeyValues(const Tensor& qkv, const Tensor& kv) override {
    const AttentionDims& d = shape_.attention;
    cuda::PackKeyValues(qkv, kv, d.n_heads, d.n_kv_heads, d.head_dim, stream_);
  }
  void UnpackKeyValueGrads(const Tensor& dkv, const Tensor& dqkv) override {
    const AttentionDims& d = shape_.attention;
    cuda::UnpackKeyValueGrads(dkv, dqkv, d.n_heads, d.n_kv_heads, d.head_dim, stream_);
  }
  void Fill(const Tensor& t, float value) override { cuda::Fill(t, value, stream_); }
  void Add(const Tensor& a, const Tensor& b, const Tensor& out) override { cuda::Add(a, b, out, stream_); }
  void AddRmsNormForward(const Tensor& x, const Tensor& r, const Tensor& w, float eps, const Tensor& h,
                         const Tensor& y, const Tensor& rstd) override {
    cuda::AddRmsNormForward(x, r, w, eps, h, y, rstd, stream_);
  }
  void SwigluForward(const Tensor& gu, const Tensor& out) override { cuda::SwigluForward(gu, out, stream_); }
  void SwigluBackward(const Tensor& dout, const Tensor& gu, const Tensor& dgu) override {
    cuda::SwigluBackward(dout, gu, dgu, stream_);
  }
  void EmbeddingForward(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out) override {
    cuda::EmbeddingForward(ids, table, vocab_begin, out, stream_);
  }
  void EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin, const Tensor& dtable) override {
    cuda::EmbeddingBackward(ids, dout, vocab_begin, dtable, embedding_ws_, stream_);
  }
  void LogitsRowMax(const Tensor& logits, const Tensor& row_max) override {
    cuda::LogitsRowMax(logits, row_max, stream_);
  }
  void LogitsRowSumExp(const Tensor& logits, const Tensor& global_max, const Tensor& targets, int64_t vocab_begin,
                       int64_t vocab, const Tensor& row_sumexp, const Tensor& target_logit) override {
    cuda::LogitsRowSumExp(logits, global_max, targets, vocab_begin, vocab, row_sumexp, target_logit, target_error_,
                          stream_);
  }
  void CrossEntropyLoss(const Tensor& row_max, const Tensor& row_sumexp, const Tensor& target_logit,
                        const Tensor& targets, const Tensor& lse) override {
    cuda::CrossEntropyLoss(row_max, row_sumexp, target_logit, targets, lse, loss_, stream_);
  }
  void SoftmaxCrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                   const Tensor& lse, float grad_scale) override {
    cuda::SoftmaxCrossEntropyBackward(logits, targets, vocab_begin, lse, grad_scale, stream_);
  }
  void RopeForwardAt(const Tensor& qkv, int64_t first_position, int n_rot_heads) override {
    cuda::RopeForwardAt(qkv, first_position, n_rot_heads, rope_, stream_);
  }
  void KvCacheAppend(const Tensor& qkv, int64_t first_position, const Tensor& k_cache,
                     const Tensor& v_cache) override {
    cuda::KvCacheAppend(qkv, shape_.decode, first_position, k_cache, v_cache, stream_);
  }
  void DecodeAttention(const Tensor& qkv, int64_t first_position, const Tensor& k_cache, const Tensor& v_cache,
                       const Tensor& out) override {
    LATAM_CHECK(qkv.shape.rows() <= shape_.decode_rows,
                "decode attention of " << qkv.shape.rows() << " rows; the ops were built for " << shape_.decode_rows);
    cuda::DecodeAttention(qkv, shape_.decode, first_position, k_cache, v_cache, out, stream_);
  }
  void Download(const Tensor& src, void* host) override {
    CUDA_CHECK(cudaMemcpyAsync(host, src.data, src.bytes(), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  double TakeLoss() override {
    double loss = 0.0;
    int32_t bad_target = 0;
    CUDA_CHECK(cudaMemcpyAsync(&loss, loss_, sizeof(loss), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaMemcpyAsync(&bad_target, target_error_.data, sizeof(bad_target), cudaMemcpyDeviceToHost, stream_));
    CUDA_CHECK(cudaMemsetAsync(loss_, 0, sizeof(double), stream_));
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    LATAM_CHECK(bad_target == 0, "target token id " << bad_target << " is outside the vocabulary");
    return loss;
  }

 private:
  OpsShape shape_;
  DType dtype_;
  cudaStream_t stream_;
  CudaWorkspaceLayout layout_;
  cuda::GemmContext gemm_;
  Arena arena_;
  Tensor attention_ws_, norm_ws_, embedding_ws_, target_error_;
  cuda::RopeDeviceTable rope_;
  double* loss_ = nullptr;
  bool flash_ = false;  // the tensor-core attention kernel applies
  cuda::FlashForwardPath forward_path_ = cuda::FlashForwardPath::kMmaSync;
  cuda::FlashBackwardPath backward_path_ = cuda::FlashBackwardPath::kMmaSync;
};

}  // namespace

std::unique_ptr<ModelOps> MakeCudaOps(const OpsShape& shape, const RopeTable& rope, DType dtype, Stream stream,
                                      AttentionChoice attention) {
  return std::make_unique<CudaOps>(shape, rope, dtype, stream.cuda(), attention);
}

size_t CudaOpsWorkspaceBytes(const OpsShape& shape) {
  return CudaWorkspaceLayout(shape, RopeBytesFor(shape)).total + cuda::GemmContext::kDefaultWorkspaceBytes;
}

}  // namespace latam
