// ModelOps: the kernels LlamaModel computes with, bound to one device.
//
// LlamaModel (model/model.h) is written once against this interface; the
// CPU implementation calls the fp32 reference kernels (kernels/*.h), the
// CUDA one the device kernels (kernels/cuda/*.h) on one compute stream. The
// model code, its tensor-parallel communication and its pipeline interface
// are therefore the same on both devices, and every GPU result can be
// checked against the CPU one.
//
// Contracts are those of the kernels named in each comment (shapes, dtypes,
// what is overwritten or accumulated). On the CPU every tensor is f32 and
// every call has finished when it returns. On CUDA, activations and the
// weights the model reads are in activation_dtype() (bf16 with
// train.precision=bf16, else f32), gradients of weights and every
// statistic (rstd, lse, row max / sum-exp / target logit) are f32, and every
// call is only enqueued on the compute stream: the host learns results
// through TakeLoss() (which synchronises) or a synchronous copy.
//
// An ops object owns the workspaces its kernels need (attention, norm and
// embedding backward scratch, the RoPE table, the loss accumulator), sized
// for the OpsShape it was built for; WorkspaceBytes() gives the same number
// without building one (for --plan).
//
// Decoding (model/generate.h) uses the forward ops above plus RopeForwardAt,
// KvCacheAppend, DecodeAttention and Download; the key/value cache itself
// belongs to the caller (an arena on the ops' device, in activation_dtype()).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kernels/attention.h"
#include "kernels/decode_attention.h"
#include "kernels/rope.h"
#include "core/status.h"
#include "core/stream.h"
#include "core/tensor.h"

namespace latam {

// What the workspaces are sized for: one micro-batch of one model shard.
struct OpsShape {
  AttentionDims attention;  // local heads, micro-batch, sequence length
  int64_t dim = 0;               // model width (norms)
  int64_t max_logits_rows = 0;   // rows per LM-head chunk (0: no head)
  int cpu_threads = 0;           // CPU: threads the attention workspace serves
  // Decoding: the largest number of new rows per DecodeAttention call (0:
  // no decoding) and the positions of the cache it reads (`decode.max_context`);
  // the RoPE table must cover those positions.
  int64_t decode_rows = 0;
  DecodeAttentionDims decode;
  int64_t rows() const { return static_cast<int64_t>(attention.batch) * attention.seq_len; }
};

class ModelOps {
 public:
  virtual ~ModelOps() = default;

  virtual Device device() const = 0;
  // The dtype of activations and of the compute copy of the weights.
  virtual DType activation_dtype() const = 0;

  // dst (int32, on this device) <- host[0 .. dst.numel()). The host buffer
  // may be reused as soon as the call returns.
  virtual void UploadIds(const int32_t* host, const Tensor& dst) = 0;

  // kernels/rmsnorm.h: y, rstd overwritten; dx overwritten or added to; dw +=.
  virtual void RmsNormForward(const Tensor& x, const Tensor& w, float eps, const Tensor& y, const Tensor& rstd) = 0;
  virtual void RmsNormBackward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                               const Tensor& dx, bool accumulate_dx, const Tensor& dw) = 0;
  // kernels/gemm.h, W[out, in]: y (= or +=) x W^T; dx (= or +=) dy W; dW += dy^T x.
  virtual void LinearForward(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) = 0;
  virtual void LinearBackwardInput(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate) = 0;
  virtual void LinearBackwardWeight(const Tensor& dy, const Tensor& x, const Tensor& dw) = 0;
  // kernels/gemm.h Gemm with row strides, on blocks of this device's tensors:
  // C = alpha op(A) op(B) + beta C, where each operand starts at an element
  // offset into its tensor (a column block of a wider matrix: offset = the
  // block's first column, ld = the full row width). A and B share a dtype;
  // C is f32 or that dtype (the CPU: all f32). Offsets and extents are checked.
  struct GemmOperand {
    const Tensor& t;
    int64_t offset;
    int64_t ld;
  };
  virtual void StridedGemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, GemmOperand a,
                           GemmOperand b, float beta, GemmOperand c) = 0;
  // kernels/rope.h on the first n_rot_heads heads of each fused-QKV row, in place.
  // positions: null, row m at position m % seq_len (the OpsShape's); else row
  // m at positions[m] (int32, one per row, in the ops' memory: host or
  // device), each inside the RoPE table: the CPU checks, on CUDA the caller
  // guarantees it (one outside makes the kernel trap, kernels/cuda/rope.h).
  virtual void RopeForward(const Tensor& qkv, int n_rot_heads, const int32_t* positions = nullptr) = 0;
  virtual void RopeBackward(const Tensor& dqkv, int n_rot_heads, const int32_t* positions = nullptr) = 0;
  // kernels/attention.h with the OpsShape's dimensions: out, lse overwritten;
  // dqkv overwritten.
  // doc_start: AttentionDims::doc_start (null: plain causal), in the ops'
  // memory (host or device).
  virtual void AttentionForward(const Tensor& qkv, const Tensor& out, const Tensor& lse,
                                const int32_t* doc_start = nullptr) = 0;
  virtual void AttentionBackward(const Tensor& qkv, const Tensor& out, const Tensor& dout, const Tensor& lse,
                                 const Tensor& dqkv, const int32_t* doc_start = nullptr) = 0;
  // Ring attention (context parallelism, model/ring_attention.h): the block
  // kernels of kernels/attention.h (AttentionBlockDims), whose workspace the
  // OpsShape's attention dimensions size (seq_len = the local rows). The
  // forward merges into out, lse; the backward adds into dqkv's query
  // columns and into dkv (f32: the ring adds every rank's share into it).
  // The CUDA ops run the simple kernels' block form (kernels/cuda/attention.h).
  virtual void AttentionBlockForward(const Tensor& qkv, const Tensor& kv, const AttentionBlockDims& dims,
                                     const Tensor& out, const Tensor& lse) = 0;
  virtual void AttentionBlockBackward(const Tensor& qkv, const Tensor& kv, const Tensor& out, const Tensor& dout,
                                      const Tensor& lse, const AttentionBlockDims& dims, const Tensor& dqkv,
                                      const Tensor& dkv) = 0;
  // kv [rows, 2 Hkv hd] <- the key and value columns of qkv [rows, (Hq + 2 Hkv) hd]
  // (overwritten), with the OpsShape's head counts.
  virtual void PackKeyValues(const Tensor& qkv, const Tensor& kv) = 0;
  // The key and value columns of dqkv <- dkv (overwritten, rounded to
  // dqkv's dtype; the query columns are not touched).
  virtual void UnpackKeyValueGrads(const Tensor& dkv, const Tensor& dqkv) = 0;
  // Every element of t <- value (f32 or the activation dtype).
  virtual void Fill(const Tensor& t, float value) = 0;
  // out = a + b (out may alias a or b).
  virtual void Add(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // h = x + r, then y, rstd = RMSNorm(h, w) (kernels/cuda/fused_norm.h: one
  // pass on the GPU). h, y, rstd overwritten; y must not alias x, r or h.
  virtual void AddRmsNormForward(const Tensor& x, const Tensor& r, const Tensor& w, float eps, const Tensor& h,
                                 const Tensor& y, const Tensor& rstd) = 0;
  // kernels/swiglu.h: out overwritten; dgu overwritten.
  virtual void SwigluForward(const Tensor& gu, const Tensor& out) = 0;
  virtual void SwigluBackward(const Tensor& dout, const Tensor& gu, const Tensor& dgu) = 0;
  // kernels/embedding.h: out overwritten; dtable (f32) +=.
  virtual void EmbeddingForward(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out) = 0;
  virtual void EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin,
                                 const Tensor& dtable) = 0;

  // Vocab-parallel cross-entropy (kernels/cross_entropy.h), in the order the
  // model calls them: row max (then all-reduce max over the shards), sum-exp
  // and target logit (then all-reduce sum), CrossEntropyLoss, and with
  // gradients SoftmaxCrossEntropyBackward, which overwrites the logits.
  virtual void LogitsRowMax(const Tensor& logits, const Tensor& row_max) = 0;
  virtual void LogitsRowSumExp(const Tensor& logits, const Tensor& global_max, const Tensor& targets,
                               int64_t vocab_begin, int64_t vocab, const Tensor& row_sumexp,
                               const Tensor& target_logit) = 0;
  // lse[m] = max[m] + log(sumexp[m]) (f32, overwritten), and adds
  // sum over rows with targets >= 0 of (lse[m] - target_logit[m]), in double,
  // to the loss accumulator.
  virtual void CrossEntropyLoss(const Tensor& row_max, const Tensor& row_sumexp, const Tensor& target_logit,
                                const Tensor& targets, const Tensor& lse) = 0;
  virtual void SoftmaxCrossEntropyBackward(const Tensor& logits, const Tensor& targets, int64_t vocab_begin,
                                           const Tensor& lse, float grad_scale) = 0;

  // Decoding with a key/value cache (kernels/decode_attention.h, with the
  // OpsShape's `decode` dimensions; the caches are [Hkv, max_context, hd] in
  // activation_dtype() on this device).
  // kernels/rope.h RopeForwardAt: the first n_rot_heads heads of each
  // fused-QKV row rotated in place, row m at position first_position + m.
  virtual void RopeForwardAt(const Tensor& qkv, int64_t first_position, int n_rot_heads) = 0;
  // The rows' rotated keys and values written to the caches at positions
  // first_position .. first_position + rows - 1 (overwritten).
  virtual void KvCacheAppend(const Tensor& qkv, int64_t first_position, const Tensor& k_cache,
                             const Tensor& v_cache) = 0;
  // out [rows, Hq hd] overwritten: the rows' queries attending causally to
  // cache positions [0, first_position + row]; at most OpsShape::decode_rows
  // rows.
  virtual void DecodeAttention(const Tensor& qkv, int64_t first_position, const Tensor& k_cache,
                               const Tensor& v_cache, const Tensor& out) = 0;
  // host[0 .. src.bytes()) <- src, once everything enqueued before has run
  // (on CUDA: waits for the compute stream).
  virtual void Download(const Tensor& src, void* host) = 0;
  // The loss accumulated since the last call, which resets it to 0. On CUDA
  // this waits for the compute stream, and a target outside the vocabulary
  // seen by the cross-entropy kernels is a fatal error naming it.
  virtual double TakeLoss() = 0;
};

// Bytes of workspace an ops object for `device` allocates (the same for any
// activation dtype: workspaces are f32 and int32). A build without CUDA
// returns 0 for kCUDA, since it cannot size the device kernels' scratch.
// Checks a StridedGemm call: every operand's block (offset, rows, columns,
// ld) lies inside its tensor, on one device. Shared by the implementations.
void CheckStridedOperands(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                          const ModelOps::GemmOperand& a, const ModelOps::GemmOperand& b,
                          const ModelOps::GemmOperand& c);

size_t OpsWorkspaceBytes(Device device, const OpsShape& shape);
size_t CpuOpsWorkspaceBytes(const OpsShape& shape);
size_t CudaOpsWorkspaceBytes(const OpsShape& shape);  // builds with CUDA only

// The attention kernels CUDA ops run (train.attention in model/config.proto,
// converted by the trainer and passed to MakeCudaOps):
//   kAuto:     the tensor-core kernels (kernels/cuda/flash_attention.h)
//              wherever they apply (bf16, head dim 64 or 128), the simple
//              kernel elsewhere;
//   kSimple:   the simple kernel (kernels/cuda/attention.h) everywhere;
//   kWgmma:    as kAuto, with the Hopper kernels (FlashForwardPath::kWgmma,
//              FlashBackwardPath::kWgmma), which need a compute capability 9.0 GPU;
//   kWgmmaTma: as kWgmma, with the warp-specialised TMA forward (kWgmmaTma).
enum class AttentionChoice { kAuto, kSimple, kWgmma, kWgmmaTma };
// The config spelling of `choice`: "auto", "simple", "wgmma", "wgmma_tma".
const char* AttentionChoiceName(AttentionChoice choice);

// The attention kernels CUDA ops run under `choice`, for logs, where the
// tensor-core kernels apply (`tensor_core`: bf16, head dim 64 or 128) or
// not: "tensor-core, mma.sync forward and backward", "tensor-core, wgmma
// forward and backward", "tensor-core, wgmma+TMA forward, wgmma backward",
// or "simple".
std::string AttentionKernelsName(AttentionChoice choice, bool tensor_core);

// CPU ops (f32 only).
std::unique_ptr<ModelOps> MakeCpuOps(const OpsShape& shape, const RopeTable& rope);

// CUDA ops on the current device, enqueuing on `stream` (a cudaStream_t;
// nullptr is the legacy default stream). Activations and compute weights in
// `dtype` (kBF16 or kF32), attention by `attention` (a wgmma choice aborts
// on a GPU without them: callers check first, as ComputeDevice::Open does).
// Aborts in a build without CUDA.
std::unique_ptr<ModelOps> MakeCudaOps(const OpsShape& shape, const RopeTable& rope, DType dtype, Stream stream,
                                      AttentionChoice attention);

}  // namespace latam
