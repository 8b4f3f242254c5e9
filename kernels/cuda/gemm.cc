#include "kernels/cuda/gemm.h"

#ifndef LATAM_CUDA_EMULATION
#include <cublasLt.h>
#endif

#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>

#include "core/arena.h"
#include "core/check.h"
#ifndef LATAM_CUDA_EMULATION
#include "kernels/cuda/cublas_check.h"
#endif

namespace latam::cuda {

namespace {

#ifndef LATAM_CUDA_EMULATION
cudaDataType_t CudaDataType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return CUDA_R_32F;
    case DType::kBF16:
      return CUDA_R_16BF;
    case DType::kI32:
      break;
  }
  LATAM_CHECK(false, "GEMM operands must be f32 or bf16, got " << DTypeName(dtype));
  return CUDA_R_32F;
}
#endif

// The largest power of two, at most 256 (cuBLASLt's default assumption),
// that divides the address. Kernels that need more alignment are excluded by
// the heuristic when a pointer has less.
uint32_t AlignmentOf(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t alignment = 256;
  while (alignment > 1 && address % alignment != 0) alignment /= 2;
  return alignment;
}

// Everything the heuristic's choice depends on.
struct PlanKey {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  DType ab_dtype = DType::kF32;
  DType c_dtype = DType::kF32;
  GemmEpilogue epilogue = GemmEpilogue::kNone;
  uint32_t align_a = 0, align_b = 0, align_c = 0, align_bias = 0;

  bool operator==(const PlanKey&) const = default;
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    size_t h = 0;
    auto mix = [&h](uint64_t v) { h ^= std::hash<uint64_t>{}(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    mix(static_cast<uint64_t>(key.trans_a) | static_cast<uint64_t>(key.trans_b) << 1 |
        static_cast<uint64_t>(key.ab_dtype) << 8 | static_cast<uint64_t>(key.c_dtype) << 16 |
        static_cast<uint64_t>(key.epilogue) << 24);
    mix(static_cast<uint64_t>(key.m));
    mix(static_cast<uint64_t>(key.n));
    mix(static_cast<uint64_t>(key.k));
    mix(static_cast<uint64_t>(key.lda));
    mix(static_cast<uint64_t>(key.ldb));
    mix(static_cast<uint64_t>(key.ldc));
    mix(static_cast<uint64_t>(key.align_a) | static_cast<uint64_t>(key.align_b) << 16 |
        static_cast<uint64_t>(key.align_c) << 32 | static_cast<uint64_t>(key.align_bias) << 48);
    return h;
  }
};

#ifdef LATAM_CUDA_EMULATION
// The emulation has no cuBLASLt: a plan is only its cache entry.
struct Plan {};

// C = alpha op(A) op(B) + beta C (+ bias), on the host, products summed in
// fp32 in k order; a bf16 C is rounded once at the end, as gemm.h states.
float LoadElement(const void* base, int64_t index, DType dtype) {
  if (dtype == DType::kF32) return static_cast<const float*>(base)[index];
  return simt::Bf16ToFloat(static_cast<const uint16_t*>(base)[index]);
}
void StoreElement(void* base, int64_t index, DType dtype, float v) {
  if (dtype == DType::kF32) {
    static_cast<float*>(base)[index] = v;
  } else {
    static_cast<uint16_t*>(base)[index] = simt::RoundToBf16(v);
  }
}
void EmulatedGemm(const GemmArgs& g) {
  for (int64_t i = 0; i < g.m; ++i) {
    for (int64_t j = 0; j < g.n; ++j) {
      float sum = 0.0f;
      for (int64_t k = 0; k < g.k; ++k) {
        const float a = LoadElement(g.a, g.trans_a ? k * g.lda + i : i * g.lda + k, g.ab_dtype);
        const float b = LoadElement(g.b, g.trans_b ? j * g.ldb + k : k * g.ldb + j, g.ab_dtype);
        sum += a * b;
      }
      float c = g.alpha * sum;
      if (g.beta != 0.0f) c += g.beta * LoadElement(g.c, i * g.ldc + j, g.c_dtype);
      if (g.epilogue == GemmEpilogue::kBias) c += LoadElement(g.bias, j, g.c_dtype);
      StoreElement(g.c, i * g.ldc + j, g.c_dtype, c);
    }
  }
}
#else
// The cuBLASLt descriptors of one key (in cuBLASLt's column-major terms, see
// the mapping in gemm.h) and the algorithm the heuristic chose for them.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a_layout = nullptr;  // our B
  cublasLtMatrixLayout_t b_layout = nullptr;  // our A
  cublasLtMatrixLayout_t c_layout = nullptr;  // our C, also used for D
  cublasLtMatmulAlgo_t algo{};

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c_layout != nullptr) CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(c_layout));
    if (b_layout != nullptr) CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(b_layout));
    if (a_layout != nullptr) CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(a_layout));
    if (desc != nullptr) CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
  }
};
#endif

void CheckArgs(const GemmArgs& args) {
  LATAM_CHECK(args.ab_dtype == DType::kBF16 || args.ab_dtype == DType::kF32,
              "GEMM A/B must be bf16 or f32, got " << DTypeName(args.ab_dtype));
  LATAM_CHECK(args.c_dtype == DType::kBF16 || args.c_dtype == DType::kF32,
              "GEMM C must be bf16 or f32, got " << DTypeName(args.c_dtype));
  LATAM_CHECK(args.ab_dtype == DType::kBF16 || args.c_dtype == DType::kF32,
              "f32 GEMM operands need an f32 C, got " << DTypeName(args.c_dtype));
  LATAM_CHECK(args.m >= 0 && args.n >= 0 && args.k >= 0,
              "GEMM sizes M=" << args.m << " N=" << args.n << " K=" << args.k);
  const int64_t a_cols = args.trans_a ? args.m : args.k;
  const int64_t b_cols = args.trans_b ? args.k : args.n;
  LATAM_CHECK(args.lda >= a_cols && args.ldb >= b_cols && args.ldc >= args.n,
              "GEMM row strides lda=" << args.lda << " ldb=" << args.ldb << " ldc=" << args.ldc
                                      << " shorter than the rows of A (" << a_cols << "), B (" << b_cols << ") or C ("
                                      << args.n << ")");
}

// Checks for a GEMM that reaches cuBLASLt (M, N, K all positive).
void CheckOperands(const GemmArgs& args) {
  LATAM_CHECK(args.k >= 1, "GEMM with K=0 is supported only as the no-op beta=1 without bias");
  LATAM_CHECK(args.a != nullptr && args.b != nullptr && args.c != nullptr, "GEMM operand pointer is null");
  LATAM_CHECK((args.epilogue == GemmEpilogue::kBias) == (args.bias != nullptr),
              "GEMM bias pointer must be set exactly when the epilogue is kBias");
}

PlanKey KeyOf(const GemmArgs& args) {
  PlanKey key;
  key.trans_a = args.trans_a;
  key.trans_b = args.trans_b;
  key.m = args.m;
  key.n = args.n;
  key.k = args.k;
  key.lda = args.lda;
  key.ldb = args.ldb;
  key.ldc = args.ldc;
  key.ab_dtype = args.ab_dtype;
  key.c_dtype = args.c_dtype;
  key.epilogue = args.epilogue;
  key.align_a = AlignmentOf(args.a);
  key.align_b = AlignmentOf(args.b);
  key.align_c = AlignmentOf(args.c);
  key.align_bias = args.bias == nullptr ? 0 : AlignmentOf(args.bias);
  return key;
}

}  // namespace

struct GemmContext::Impl {
  Arena workspace;
  std::unordered_map<PlanKey, std::unique_ptr<Plan>, PlanKeyHash> plans;
  int64_t heuristic_calls = 0;
#ifdef LATAM_CUDA_EMULATION
  std::unique_ptr<Plan> CreatePlan(const GemmArgs&) {
    ++heuristic_calls;
    return std::make_unique<Plan>();
  }
};
#else
  cublasLtHandle_t handle = nullptr;

  // Creates the descriptors for `args` and asks the heuristic for its best
  // algorithm within the workspace. Allocates (host memory).
  std::unique_ptr<Plan> CreatePlan(const GemmArgs& args) {
    auto plan = std::make_unique<Plan>();
    const cudaDataType_t ab_type = CudaDataType(args.ab_dtype);
    const cudaDataType_t c_type = CudaDataType(args.c_dtype);
    const auto m = static_cast<uint64_t>(args.m), n = static_cast<uint64_t>(args.n), k = static_cast<uint64_t>(args.k);

    // fp32 products and sums, fp32 alpha/beta read from host memory.
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    // C^T = op(B)^T op(A)^T: cuBLASLt's A is our B, its B is our A.
    const int32_t op_a = args.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int32_t op_b = args.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    if (args.epilogue == GemmEpilogue::kBias) {
      // The bias has one element per row of cuBLASLt's D (our N columns).
      // The heuristic reads the pointer's value for its alignment.
      const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      const int32_t bias_type = c_type;
      CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                                  sizeof(bias_type)));
      CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &args.bias, sizeof(args.bias)));
    }
    // Column-major views of the row-major operands (stored shapes, before op).
    CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&plan->a_layout, ab_type, args.trans_b ? k : n, args.trans_b ? n : k, args.ldb));
    CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&plan->b_layout, ab_type, args.trans_a ? m : k, args.trans_a ? k : m, args.lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c_layout, c_type, n, m, args.ldc));

    cublasLtMatmulPreference_t preference = nullptr;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const uint64_t max_workspace = workspace.size();
    const uint32_t align_a = AlignmentOf(args.b), align_b = AlignmentOf(args.a), align_c = AlignmentOf(args.c);
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                      &max_workspace, sizeof(max_workspace)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                      sizeof(align_a)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                      sizeof(align_b)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                      sizeof(align_c)));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                      sizeof(align_c)));
    if (args.c_dtype == DType::kBF16) {
      // Split-K partial sums in fp32 (in the workspace), never in a bf16 C.
      const uint32_t reductions = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
      CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                        &reductions, sizeof(reductions)));
    }

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    ++heuristic_calls;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a_layout, plan->b_layout, plan->c_layout,
                                                plan->c_layout, preference, 1, &result, &found));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(preference));
    LATAM_CHECK(found > 0 && result.state == CUBLAS_STATUS_SUCCESS,
                "cuBLASLt has no algorithm for GEMM "
                    << (args.trans_a ? 'T' : 'N') << (args.trans_b ? 'T' : 'N') << " M=" << args.m << " N=" << args.n
                    << " K=" << args.k << " lda=" << args.lda << " ldb=" << args.ldb << " ldc=" << args.ldc << " "
                    << DTypeName(args.ab_dtype) << "->" << DTypeName(args.c_dtype) << " with " << workspace.size()
                    << " bytes of workspace");
    plan->algo = result.algo;
    return plan;
  }

  ~Impl() {
    plans.clear();
    if (handle != nullptr) CUBLAS_CHECK(cublasLtDestroy(handle));
  }
};
#endif

GemmContext::GemmContext(size_t workspace_bytes) : impl_(std::make_unique<Impl>()) {
#ifndef LATAM_CUDA_EMULATION
  CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
#endif
  impl_->workspace = Arena(Device::kCUDA, workspace_bytes);
}

GemmContext::~GemmContext() = default;

int64_t GemmContext::heuristic_calls() const { return impl_->heuristic_calls; }
size_t GemmContext::cached_plans() const { return impl_->plans.size(); }
size_t GemmContext::workspace_bytes() const { return impl_->workspace.size(); }

void GemmContext::Gemm(const GemmArgs& args, cudaStream_t stream) {
  CheckArgs(args);
  if (args.m == 0 || args.n == 0) return;
  // An empty sum added to C (a weight gradient over zero rows) leaves C as is.
  if (args.k == 0 && args.beta == 1.0f && args.epilogue == GemmEpilogue::kNone) return;
  CheckOperands(args);
  const PlanKey key = KeyOf(args);
  auto it = impl_->plans.find(key);
  if (it == impl_->plans.end()) it = impl_->plans.emplace(key, impl_->CreatePlan(args)).first;
#ifdef LATAM_CUDA_EMULATION
  (void)stream;
  EmulatedGemm(args);
#else
  const Plan& plan = *it->second;
  if (args.epilogue == GemmEpilogue::kBias) {
    // Same alignment as the pointer the plan was made with (it is in the key).
    CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &args.bias, sizeof(args.bias)));
  }
  // D = C in place; cuBLASLt's A/B are our B/A (see gemm.h).
  CUBLAS_CHECK(cublasLtMatmul(impl_->handle, plan.desc, &args.alpha, args.b, plan.a_layout, args.a, plan.b_layout,
                              &args.beta, args.c, plan.c_layout, args.c, plan.c_layout, &plan.algo,
                              impl_->workspace.data(), impl_->workspace.size(), stream));
#endif
}

namespace {

void CheckMatrix(const Tensor& t, const char* what) {
  LATAM_CHECK(t.device == Device::kCUDA && (t.dtype == DType::kF32 || t.dtype == DType::kBF16) && t.shape.rank() >= 1,
              what << " must be an f32 or bf16 CUDA tensor, got " << t.str());
}

void CheckSameDType(const Tensor& a, const Tensor& b, const char* what) {
  LATAM_CHECK(a.dtype == b.dtype, what << " operands differ in dtype: " << a.str() << " and " << b.str());
}

GemmArgs MatrixArgs(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const Tensor& a, int64_t lda,
                    const Tensor& b, int64_t ldb, float beta, const Tensor& c, int64_t ldc) {
  GemmArgs args;
  args.trans_a = trans_a;
  args.trans_b = trans_b;
  args.m = m;
  args.n = n;
  args.k = k;
  args.a = a.data;
  args.lda = lda;
  args.b = b.data;
  args.ldb = ldb;
  args.beta = beta;
  args.c = c.data;
  args.ldc = ldc;
  args.ab_dtype = a.dtype;
  args.c_dtype = c.dtype;
  return args;
}

GemmArgs LinearForwardArgs(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) {
  CheckMatrix(x, "linear x");
  CheckMatrix(w, "linear W");
  CheckMatrix(y, "linear y");
  CheckSameDType(x, w, "linear forward");
  const int64_t m = x.shape.rows(), in = x.shape.cols(), out = w.shape.rows();
  LATAM_CHECK(w.shape.cols() == in && y.shape.rows() == m && y.shape.cols() == out,
              "linear forward shapes x" << x.shape.str() << " W" << w.shape.str() << " y" << y.shape.str());
  return MatrixArgs(false, true, m, out, in, x, in, w, in, accumulate ? 1.0f : 0.0f, y, out);
}

}  // namespace

void LinearForward(GemmContext& ctx, const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate,
                   cudaStream_t stream) {
  ctx.Gemm(LinearForwardArgs(x, w, y, accumulate), stream);
}

void LinearForward(GemmContext& ctx, const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& y,
                   bool accumulate, cudaStream_t stream) {
  GemmArgs args = LinearForwardArgs(x, w, y, accumulate);
  LATAM_CHECK(bias.device == Device::kCUDA && bias.dtype == y.dtype && bias.numel() == args.n,
              "linear bias must be a CUDA tensor of " << args.n << " elements of " << DTypeName(y.dtype) << ", got "
                                                      << bias.str());
  args.epilogue = GemmEpilogue::kBias;
  args.bias = bias.data;
  ctx.Gemm(args, stream);
}

void LinearBackwardInput(GemmContext& ctx, const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate,
                         cudaStream_t stream) {
  CheckMatrix(dy, "linear dy");
  CheckMatrix(w, "linear W");
  CheckMatrix(dx, "linear dx");
  CheckSameDType(dy, w, "linear backward");
  const int64_t m = dy.shape.rows(), out = dy.shape.cols(), in = w.shape.cols();
  LATAM_CHECK(w.shape.rows() == out && dx.shape.rows() == m && dx.shape.cols() == in,
              "linear backward shapes dy" << dy.shape.str() << " W" << w.shape.str() << " dx" << dx.shape.str());
  ctx.Gemm(MatrixArgs(false, false, m, in, out, dy, out, w, in, accumulate ? 1.0f : 0.0f, dx, in), stream);
}

void LinearBackwardWeight(GemmContext& ctx, const Tensor& dy, const Tensor& x, const Tensor& dw, cudaStream_t stream) {
  CheckMatrix(dy, "linear dy");
  CheckMatrix(x, "linear x");
  CheckMatrix(dw, "linear dW");
  CheckSameDType(dy, x, "linear weight-gradient");
  const int64_t m = dy.shape.rows(), out = dy.shape.cols(), in = x.shape.cols();
  LATAM_CHECK(x.shape.rows() == m && dw.shape.rows() == out && dw.shape.cols() == in,
              "linear weight-gradient shapes dy" << dy.shape.str() << " x" << x.shape.str() << " dW" << dw.shape.str());
  ctx.Gemm(MatrixArgs(true, false, out, in, m, dy, out, x, in, 1.0f, dw, in), stream);
}

}  // namespace latam::cuda
