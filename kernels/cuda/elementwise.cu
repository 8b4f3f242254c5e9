#include "kernels/cuda/elementwise.h"

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/vec.cuh"

namespace latam::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

// Elements per vectorised work item: two 16-byte packs of f32 or one of
// bf16, so a cast moves whole packs on both sides.
constexpr int kItem = 8;

// Threads of the single block that sums the loss (a power of two: the tree
// below halves it).
constexpr int kLossThreads = 512;
static_assert((kLossThreads & (kLossThreads - 1)) == 0, "the loss tree needs a power-of-two block");

// bf16 is handled as its raw bits, so that Narrow below (and not the
// hardware conversion, which turns every NaN into one canonical NaN) decides
// every output bit.
using Bf16Bits = uint16_t;

__device__ __forceinline__ float Widen(float v) { return v; }
__device__ __forceinline__ float Widen(Bf16Bits v) { return __uint_as_float(static_cast<uint32_t>(v) << 16); }

template <typename T>
__device__ __forceinline__ T Narrow(float v);
template <>
__device__ __forceinline__ float Narrow<float>(float v) {
  return v;
}
// Round to nearest, ties to even; a NaN keeps its sign and top payload bits
// and is made quiet. The same steps as BF16::FromFloat on the host.
template <>
__device__ __forceinline__ Bf16Bits Narrow<Bf16Bits>(float v) {
  const uint32_t u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<Bf16Bits>((u >> 16) | 0x0040u);
  return static_cast<Bf16Bits>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// kItem elements from a 16-byte aligned p, as fp32.
template <typename T>
__device__ __forceinline__ void LoadItem(const T* p, float (&out)[kItem]) {
  constexpr int kN = Pack<T>::kN;
  static_assert(kItem % kN == 0, "an item is a whole number of packs");
#pragma unroll
  for (int q = 0; q < kItem / kN; ++q) {
    const Pack<T> pack = reinterpret_cast<const Pack<T>*>(p)[q];
#pragma unroll
    for (int k = 0; k < kN; ++k) out[q * kN + k] = Widen(pack.v[k]);
  }
}

// kItem fp32 values to a 16-byte aligned p, each rounded once to T.
template <typename T>
__device__ __forceinline__ void StoreItem(T* p, const float (&in)[kItem]) {
  constexpr int kN = Pack<T>::kN;
#pragma unroll
  for (int q = 0; q < kItem / kN; ++q) {
    Pack<T> pack;
#pragma unroll
    for (int k = 0; k < kN; ++k) pack.v[k] = Narrow<T>(in[q * kN + k]);
    reinterpret_cast<Pack<T>*>(p)[q] = pack;
  }
}

// out[i] = a[i] + b[i]. Items [0, n_items) are kItem-element vectors
// (n_items is 0 when the pointers are not all 16-byte aligned); elements
// [n_items * kItem, n) are done one at a time. Both loops are grid-stride.
// No __restrict__: out may alias a or b, and every element is read by the
// thread that then writes it.
template <typename T>
__global__ void AddKernel(const T* a, const T* b, T* out, int64_t n_items, int64_t n) {
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = first; i < n_items; i += stride) {
    const int64_t at = i * kItem;
    float x[kItem], y[kItem];
    LoadItem(a + at, x);
    LoadItem(b + at, y);
#pragma unroll
    for (int k = 0; k < kItem; ++k) x[k] += y[k];
    StoreItem(out + at, x);
  }
  for (int64_t j = n_items * kItem + first; j < n; j += stride) out[j] = Narrow<T>(Widen(a[j]) + Widen(b[j]));
}

// out[i] = in[i] converted, with the same split into vector items and a
// scalar remainder as AddKernel.
template <typename In, typename Out>
__global__ void CastKernel(const In* __restrict__ in, Out* __restrict__ out, int64_t n_items, int64_t n) {
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = first; i < n_items; i += stride) {
    const int64_t at = i * kItem;
    float x[kItem];
    LoadItem(in + at, x);
    StoreItem(out + at, x);
  }
  for (int64_t j = n_items * kItem + first; j < n; j += stride) out[j] = Narrow<Out>(Widen(in[j]));
}

// out[r * out_stride + c] = in[r * in_stride + c] converted, for r < rows and
// c < cols (in and out already point at their first column). With `vector`
// (both column blocks 16-byte aligned on every row, cols a multiple of
// kItem) each work item is kItem elements of a row, else one element.
template <typename In, typename Out>
__global__ void CopyColumnsKernel(const In* __restrict__ in, int64_t in_stride, Out* __restrict__ out,
                                  int64_t out_stride, int64_t rows, int64_t cols, bool vector) {
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t per_row = vector ? cols / kItem : cols;
  for (int64_t i = first; i < rows * per_row; i += stride) {
    const int64_t r = i / per_row, c = i % per_row;
    if (vector) {
      float x[kItem];
      LoadItem(in + r * in_stride + c * kItem, x);
      StoreItem(out + r * out_stride + c * kItem, x);
    } else {
      out[r * out_stride + c] = Narrow<Out>(Widen(in[r * in_stride + c]));
    }
  }
}

// out[i] = value, in vector items and a scalar remainder as AddKernel.
template <typename T>
__global__ void FillKernel(T* __restrict__ out, float value, int64_t n_items, int64_t n) {
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float x[kItem];
#pragma unroll
  for (int k = 0; k < kItem; ++k) x[k] = value;
  for (int64_t i = first; i < n_items; i += stride) StoreItem(out + i * kItem, x);
  for (int64_t j = n_items * kItem + first; j < n; j += stride) out[j] = Narrow<T>(value);
}

// One block of kLossThreads. Thread t takes rows t, t + kLossThreads, ... in
// that order, writes their lse and sums their losses in double; the partial
// sums are then added pairwise in a fixed tree, and thread 0 adds the total
// to *loss_sum. No atomics, so the result does not depend on scheduling.
__global__ void __launch_bounds__(kLossThreads)
    CrossEntropyLossKernel(const float* __restrict__ row_max, const float* __restrict__ row_sumexp,
                           const float* __restrict__ target_logit, const int32_t* __restrict__ targets,
                           float* __restrict__ lse, double* loss_sum, int64_t rows) {
  __shared__ double partial[kLossThreads];
  double sum = 0.0;
  for (int64_t m = threadIdx.x; m < rows; m += kLossThreads) {
    const float l = row_max[m] + logf(row_sumexp[m]);  // fp32, as the CPU's mx + std::log(se)
    lse[m] = l;
    if (targets[m] >= 0) sum += static_cast<double>(l) - static_cast<double>(target_logit[m]);
  }
  partial[threadIdx.x] = sum;
  __syncthreads();
#pragma unroll
  for (int half = kLossThreads / 2; half > 0; half >>= 1) {
    if (static_cast<int>(threadIdx.x) < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss_sum += partial[0];
}

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

int Blocks(int64_t n_threads) {
  return static_cast<int>(std::clamp<int64_t>((n_threads + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

// Whether the byte ranges of x and y share any byte.
bool Overlap(const Tensor& x, const Tensor& y) {
  const auto x0 = reinterpret_cast<uintptr_t>(x.data), y0 = reinterpret_cast<uintptr_t>(y.data);
  return x.bytes() != 0 && y.bytes() != 0 && x0 < y0 + y.bytes() && y0 < x0 + x.bytes();
}

// Vector items for n elements when `aligned`, else 0 (all scalar).
int64_t VectorItems(int64_t n, bool aligned) { return aligned ? n / kItem : 0; }

template <typename T>
void LaunchAdd(const Tensor& a, const Tensor& b, const Tensor& out, cudaStream_t stream) {
  const int64_t n = a.numel();
  const int64_t n_items = VectorItems(n, Aligned16(a.data) && Aligned16(b.data) && Aligned16(out.data));
  const int64_t n_scalar = n - n_items * kItem;
  Launch(AddKernel<T>, Blocks(std::max(n_items, n_scalar)), kThreads, 0, stream, static_cast<const T*>(a.data),
         static_cast<const T*>(b.data), static_cast<T*>(out.data), n_items, n);
  CUDA_CHECK_LAUNCH();
}

template <typename In, typename Out>
void LaunchCast(const Tensor& in, const Tensor& out, cudaStream_t stream) {
  const int64_t n = in.numel();
  const int64_t n_items = VectorItems(n, Aligned16(in.data) && Aligned16(out.data));
  const int64_t n_scalar = n - n_items * kItem;
  Launch(CastKernel<In, Out>, Blocks(std::max(n_items, n_scalar)), kThreads, 0, stream, static_cast<const In*>(in.data),
         static_cast<Out*>(out.data), n_items, n);
  CUDA_CHECK_LAUNCH();
}

template <typename In, typename Out>
void LaunchCopyColumns(const Tensor& in, int64_t in_col0, const Tensor& out, int64_t out_col0, int64_t cols,
                       cudaStream_t stream) {
  const In* src = static_cast<const In*>(in.data) + in_col0;
  Out* dst = static_cast<Out*>(out.data) + out_col0;
  const int64_t rows = in.shape[0], in_stride = in.shape[1], out_stride = out.shape[1];
  const bool vector = cols % kItem == 0 && Aligned16(src) && Aligned16(dst) &&
                      in_stride * static_cast<int64_t>(sizeof(In)) % 16 == 0 &&
                      out_stride * static_cast<int64_t>(sizeof(Out)) % 16 == 0;
  Launch(CopyColumnsKernel<In, Out>, Blocks(rows * (vector ? cols / kItem : cols)), kThreads, 0, stream, src,
         in_stride, dst, out_stride, rows, cols, vector);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void LaunchFill(const Tensor& t, float value, cudaStream_t stream) {
  const int64_t n = t.numel();
  const int64_t n_items = VectorItems(n, Aligned16(t.data));
  Launch(FillKernel<T>, Blocks(std::max(n_items, n - n_items * kItem)), kThreads, 0, stream, static_cast<T*>(t.data),
         value, n_items, n);
  CUDA_CHECK_LAUNCH();
}

void CheckFloating(const Tensor& t, const char* what) {
  LATAM_CHECK(t.dtype == DType::kF32 || t.dtype == DType::kBF16, what << " must be f32 or bf16, got " << t.str());
  CheckTensor(t, t.dtype, t.shape, Device::kCUDA, what);
}

// Calls fn(float{}) or fn(Bf16Bits{}) by t's dtype (f32 or bf16).
template <typename Fn>
void ByFloating(const Tensor& t, Fn fn) {
  if (t.dtype == DType::kF32) {
    fn(float{});
  } else {
    fn(Bf16Bits{});
  }
}

}  // namespace

void Add(const Tensor& a, const Tensor& b, const Tensor& out, cudaStream_t stream) {
  CheckFloating(a, "cuda add a");
  CheckTensor(b, a.dtype, a.shape, Device::kCUDA, "cuda add b");
  CheckTensor(out, a.dtype, a.shape, Device::kCUDA, "cuda add out");
  LATAM_CHECK(out.data == a.data || !Overlap(out, a), "cuda add out partially overlaps a");
  LATAM_CHECK(out.data == b.data || !Overlap(out, b), "cuda add out partially overlaps b");
  if (a.numel() == 0) return;
  if (a.dtype == DType::kF32) {
    LaunchAdd<float>(a, b, out, stream);
  } else {
    LaunchAdd<Bf16Bits>(a, b, out, stream);
  }
}

void Cast(const Tensor& in, const Tensor& out, cudaStream_t stream) {
  CheckFloating(in, "cuda cast in");
  CheckFloating(out, "cuda cast out");
  LATAM_CHECK(in.numel() == out.numel(), "cuda cast: " << in.str() << " and " << out.str() << " differ in size");
  if (in.numel() == 0) return;
  if (in.dtype == out.dtype) {
    if (in.data == out.data) return;
    LATAM_CHECK(!Overlap(in, out), "cuda cast: in and out overlap");
    CUDA_CHECK(cudaMemcpyAsync(out.data, in.data, in.bytes(), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  LATAM_CHECK(!Overlap(in, out), "cuda cast: in and out overlap");
  if (in.dtype == DType::kF32) {
    LaunchCast<float, Bf16Bits>(in, out, stream);
  } else {
    LaunchCast<Bf16Bits, float>(in, out, stream);
  }
}

void CopyColumns(const Tensor& in, int64_t in_col0, const Tensor& out, int64_t out_col0, int64_t cols,
                 cudaStream_t stream) {
  CheckFloating(in, "cuda copy columns in");
  CheckFloating(out, "cuda copy columns out");
  LATAM_CHECK(in.shape.rank() == 2 && out.shape.rank() == 2 && in.shape[0] == out.shape[0],
              "cuda copy columns needs 2-D tensors with equal rows, got " << in.str() << " and " << out.str());
  LATAM_CHECK(cols >= 0 && in_col0 >= 0 && out_col0 >= 0 && in_col0 + cols <= in.shape[1] &&
                  out_col0 + cols <= out.shape[1],
              "cuda copy columns: columns [" << in_col0 << ", +" << cols << ") of " << in.str() << " to ["
                                             << out_col0 << ", +" << cols << ") of " << out.str());
  LATAM_CHECK(!Overlap(in, out), "cuda copy columns: in and out overlap");
  if (cols == 0 || in.shape[0] == 0) return;
  ByFloating(in, [&](auto in_type) {
    ByFloating(out, [&](auto out_type) {
      LaunchCopyColumns<decltype(in_type), decltype(out_type)>(in, in_col0, out, out_col0, cols, stream);
    });
  });
}

void Fill(const Tensor& t, float value, cudaStream_t stream) {
  CheckFloating(t, "cuda fill");
  if (t.numel() == 0) return;
  ByFloating(t, [&](auto type) { LaunchFill<decltype(type)>(t, value, stream); });
}

void CrossEntropyLoss(const Tensor& row_max, const Tensor& row_sumexp, const Tensor& target_logit,
                      const Tensor& targets, const Tensor& lse, double* loss_sum, cudaStream_t stream) {
  LATAM_CHECK(row_max.shape.rank() == 1, "cuda cross-entropy loss row_max must be [M], got " << row_max.str());
  const Shape rows{row_max.shape[0]};
  CheckTensor(row_max, DType::kF32, rows, Device::kCUDA, "cuda cross-entropy loss row_max");
  CheckTensor(row_sumexp, DType::kF32, rows, Device::kCUDA, "cuda cross-entropy loss row_sumexp");
  CheckTensor(target_logit, DType::kF32, rows, Device::kCUDA, "cuda cross-entropy loss target_logit");
  CheckTensor(targets, DType::kI32, rows, Device::kCUDA, "cuda cross-entropy loss targets");
  CheckTensor(lse, DType::kF32, rows, Device::kCUDA, "cuda cross-entropy loss lse");
  LATAM_CHECK(loss_sum != nullptr, "cuda cross-entropy loss: null loss_sum");
  LATAM_CHECK(
      !Overlap(lse, row_max) && !Overlap(lse, row_sumexp) && !Overlap(lse, target_logit) && !Overlap(lse, targets),
      "cuda cross-entropy loss: lse overlaps an input");
  if (rows.numel() == 0) return;
  Launch(CrossEntropyLossKernel, 1, kLossThreads, 0, stream, row_max.as<float>(), row_sumexp.as<float>(),
         target_logit.as<float>(), targets.as<int32_t>(), lse.as<float>(), loss_sum, rows.numel());
  CUDA_CHECK_LAUNCH();
}

}  // namespace latam::cuda
