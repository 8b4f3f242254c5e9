// GEMM on the GPU with cuBLASLt: the CUDA twin of kernels/gemm.h (same
// semantics, same Linear helpers), for bf16 or f32 operands.
//
// Gemm: C[M,N] = alpha * op(A) op(B) + beta * C (+ bias[N] on every row),
// row-major, where op(X) is X or X^T. A is [M,K] ([K,M] when trans_a), B is
// [K,N] ([N,K] when trans_b); lda, ldb, ldc are row strides in elements. A
// and B share one dtype: bf16 operands write a bf16 or f32 C, f32 operands
// write an f32 C. Products are summed in fp32 (CUBLAS_COMPUTE_32F, no TF32;
// split-K partial sums of a bf16 C are also kept in fp32, by allowing only
// CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) and alpha, beta are fp32; a bf16 C
// is rounded once, at the end. beta = 0 overwrites C without reading it (NaNs
// included); beta = 1 accumulates, which is how weight gradients are summed
// into an f32 dW. M = 0 or N = 0 is a no-op, and so is K = 0 with beta = 1
// and no bias (an empty sum added to C); any other K = 0 is an error.
//
// Row-major on a column-major library. A row-major X[r,c] with row stride ld
// is, byte for byte, the column-major X^T (c x r) with leading dimension ld.
// So the row-major C = op(A) op(B) is computed as the column-major
// C^T = op(B)^T op(A)^T, swapping the operands:
//   cuBLASLt (m, n, k)  = (N, M, K)
//   cuBLASLt A          = our B, stored (trans_b ? K x N : N x K), ld = ldb,
//                         op = trans_b ? T : N
//   cuBLASLt B          = our A, stored (trans_a ? M x K : K x M), ld = lda,
//                         op = trans_a ? T : N
//   cuBLASLt C = D      = our C, stored N x M, ld = ldc
// A bias of length N is then one value per row of cuBLASLt's D, which is
// exactly what CUBLASLT_EPILOGUE_BIAS broadcasts: the per-output-feature bias
// of y = x W^T + b.
//
// Epilogues. GemmEpilogue::kNone writes alpha op(A) op(B) + beta C;
// GemmEpilogue::kBias also adds `bias` (a packed vector of N elements of C's
// dtype) inside the GEMM kernel, saving a pass over C. An epilogue is
// requested on the cuBLASLt matmul descriptor: CUBLASLT_MATMUL_DESC_EPILOGUE
// = CUBLASLT_EPILOGUE_BIAS, with CUBLASLT_MATMUL_DESC_BIAS_POINTER and
// CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE. The epilogue is part of the plan key
// below, since the heuristic must pick a kernel that implements it. Adding
// another (GELU_BIAS, BGRADB for a bias gradient, ...) is a new enumerator,
// its mapping in gemm.cc, and the descriptor pointers it reads.
//
// GemmContext owns the cuBLASLt handle, a device workspace whose size the
// caller picks, and a plan cache. For each distinct key (transposes, M, N, K,
// lda, ldb, ldc, dtypes, epilogue, and the alignment of each pointer up to
// 256 bytes) the first call creates the matmul descriptor and layouts and
// runs cublasLtMatmulAlgoGetHeuristic once; that first call allocates (host
// memory for the descriptors and the cache entry). Every later call with the
// same key only sets the bias pointer and enqueues cublasLtMatmul on
// `stream`: no allocation, no synchronisation. heuristic_calls() counts the
// heuristic queries made so far.
//
// Streams and threads. A context is not thread-safe, and every call through
// it uses its one workspace, so calls through one context must be ordered
// (one stream, or streams ordered by events); give each concurrent stream its
// own context. A context belongs to the device that was current when it was
// built; its memory (the workspace) is freed by its destructor.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/tensor.h"

namespace latam::cuda {

enum class GemmEpilogue : uint8_t {
  kNone,  // C = alpha op(A) op(B) + beta C
  kBias,  // C = alpha op(A) op(B) + beta C + bias (bias[N] added to every row)
};

// One GEMM, row-major, as in cpu::Gemm; a, b, c (and bias) are device pointers.
struct GemmArgs {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  float alpha = 1.0f;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  float beta = 0.0f;
  void* c = nullptr;
  int64_t ldc = 0;
  DType ab_dtype = DType::kBF16;  // dtype of A and B: kBF16 or kF32
  DType c_dtype = DType::kBF16;   // dtype of C (and of bias): kBF16 or kF32
  GemmEpilogue epilogue = GemmEpilogue::kNone;
  const void* bias = nullptr;  // N elements of c_dtype; only with kBias
};

class GemmContext {
 public:
  // NVIDIA's suggested cuBLASLt workspace for Hopper.
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;

  // Creates the cuBLASLt handle and allocates `workspace_bytes` of device
  // memory on the current device (0 restricts cuBLASLt to kernels that need
  // no workspace).
  explicit GemmContext(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~GemmContext();
  GemmContext(const GemmContext&) = delete;
  GemmContext& operator=(const GemmContext&) = delete;

  // Enqueues args on `stream` (see the contract above for empty sizes).
  void Gemm(const GemmArgs& args, cudaStream_t stream);

  // Number of cublasLtMatmulAlgoGetHeuristic calls (one per new key).
  int64_t heuristic_calls() const;
  // Number of cached plans (distinct keys seen).
  size_t cached_plans() const;
  size_t workspace_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Linear layers, W[out, in] as in Hugging Face (see kernels/gemm.h). Every
// tensor is a contiguous CUDA tensor; x, w, dy share one dtype (bf16 or f32)
// and the output may be bf16 or f32 (f32 only for f32 inputs).
//
// y[M,out] (= or +=) x[M,in] W[out,in]^T.
void LinearForward(GemmContext& ctx, const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate,
                   cudaStream_t stream);
// y[M,out] (= or +=) x[M,in] W[out,in]^T + bias[out], the bias added by the
// GEMM's epilogue; bias has y's dtype.
void LinearForward(GemmContext& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                   bool accumulate, cudaStream_t stream);
// dx[M,in] (= or +=) dy[M,out] W[out,in].
void LinearBackwardInput(GemmContext& ctx, const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate,
                         cudaStream_t stream);
// dW[out,in] += dy[M,out]^T x[M,in]. Always accumulates (beta = 1); dW is
// usually the f32 gradient.
void LinearBackwardWeight(GemmContext& ctx, const Tensor& dy, const Tensor& x, const Tensor& dw, cudaStream_t stream);

}  // namespace latam::cuda
