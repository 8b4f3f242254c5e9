#include "kernels/cuda/fused_norm.h"

#include <cuda_bf16.h>

#include <initializer_list>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/vec.cuh"

namespace latam::cuda {

namespace {

constexpr int kThreads = 256;
// Rows per block of the backward; each block writes one partial dw row.
constexpr int kBackwardRows = 32;

// kN consecutive elements moved as one access: a 16-byte Pack when the row
// width and pointers allow it (kN = 16 / sizeof(T)), a single element else.
template <typename T, int kN>
struct alignas(sizeof(T) * kN) Group {
  T v[kN];
};

// One block per row; thread t handles groups t, t + blockDim.x, ... in both
// passes, so the h it reads back in the second pass is the h it wrote.
// x, r and h carry no __restrict__: h may alias either input.
template <typename T, int kN>
__global__ void AddRmsNormForwardKernel(const T* x, const T* r, const T* __restrict__ w, T* h, T* __restrict__ y,
                                        float* __restrict__ rstd, int d, float eps) {
  using G = Group<T, kN>;
  __shared__ float red[32];
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * d;
  const G* xr = reinterpret_cast<const G*>(x + offset);
  const G* rr = reinterpret_cast<const G*>(r + offset);
  const G* wg = reinterpret_cast<const G*>(w);
  G* hr = reinterpret_cast<G*>(h + offset);
  G* yr = reinterpret_cast<G*>(y + offset);
  const int n = d / kN;
  // h = x + r, rounded to T; sum of squares of the rounded h.
  float ss = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const G a = xr[i], b = rr[i];
    G s;
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      s.v[k] = FromFloat<T>(ToFloat(a.v[k]) + ToFloat(b.v[k]));
      const float v = ToFloat(s.v[k]);
      ss += v * v;
    }
    hr[i] = s;
  }
  ss = BlockSum(ss, red);
  // rstd = 1 / sqrt(mean h^2 + eps); y = h * rstd * w.
  const float rs = rsqrtf(ss / static_cast<float>(d) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = rs;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const G s = hr[i], wv = wg[i];
    G out;
#pragma unroll
    for (int k = 0; k < kN; ++k) out.v[k] = FromFloat<T>(ToFloat(s.v[k]) * rs * ToFloat(wv.v[k]));
    yr[i] = out;
  }
}

// Block b handles rows [b * kBackwardRows, ...). Thread t owns groups
// t, t + blockDim.x, ... of every row, so its columns' dw partials need no
// synchronisation; they live in shared memory as dw_shared[k * n + i]
// (element k of group i: consecutive threads hit consecutive banks) and are
// written to partial[b, :] at the end. dh_in and dh may alias.
template <typename T, int kN>
__global__ void AddRmsNormBackwardKernel(const T* __restrict__ dy, const T* __restrict__ h, const T* __restrict__ w,
                                         const float* __restrict__ rstd, const T* dh_in, T* dh,
                                         float* __restrict__ partial, int64_t rows, int d) {
  using G = Group<T, kN>;
  float* dw_shared = DynamicShared<float>();
  __shared__ float red[32];
  const int n = d / kN;
  const G* wg = reinterpret_cast<const G*>(w);
  for (int j = threadIdx.x; j < d; j += blockDim.x) dw_shared[j] = 0.0f;
  __syncthreads();
  const int64_t row_begin = static_cast<int64_t>(blockIdx.x) * kBackwardRows;
  const int64_t row_end = min(rows, row_begin + kBackwardRows);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t offset = row * d;
    const G* dyr = reinterpret_cast<const G*>(dy + offset);
    const G* hr = reinterpret_cast<const G*>(h + offset);
    const G* dinr = reinterpret_cast<const G*>(dh_in + offset);
    G* dhr = reinterpret_cast<G*>(dh + offset);
    const float rs = rstd[row];
    // dot = sum_k dy w h
    float dot = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const G g = dyr[i], hv = hr[i], wv = wg[i];
#pragma unroll
      for (int k = 0; k < kN; ++k) dot += ToFloat(g.v[k]) * ToFloat(wv.v[k]) * ToFloat(hv.v[k]);
    }
    dot = BlockSum(dot, red);
    // dh = dh_in + rstd dy w - h rstd^3 dot / D;  dw += dy h rstd
    const float c = dot * rs * rs * rs / static_cast<float>(d);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const G g = dyr[i], hv = hr[i], wv = wg[i], din = dinr[i];
      G out;
#pragma unroll
      for (int k = 0; k < kN; ++k) {
        const float gf = ToFloat(g.v[k]), hf = ToFloat(hv.v[k]);
        float v = rs * gf * ToFloat(wv.v[k]) - hf * c;
        v += ToFloat(din.v[k]);
        out.v[k] = FromFloat<T>(v);
        dw_shared[k * n + i] += gf * hf * rs;
      }
      dhr[i] = out;
    }
  }
  __syncthreads();
  float* out = partial + static_cast<int64_t>(blockIdx.x) * d;
  for (int j = threadIdx.x; j < d; j += blockDim.x) out[j] = dw_shared[(j % kN) * n + j / kN];
}

// dw[j] += sum_b partial[b, j], in block order.
__global__ void SumPartialsKernel(const float* __restrict__ partial, int64_t n_blocks, int d, float* __restrict__ dw) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= d) return;
  float s = 0.0f;
  for (int64_t b = 0; b < n_blocks; ++b) s += partial[b * d + j];
  dw[j] += s;
}

// 16-byte groups when d is a multiple of the pack and every pointer is aligned.
template <typename T>
bool Vectorisable(int64_t d, std::initializer_list<const void*> pointers) {
  if (d % Pack<T>::kN != 0) return false;
  for (const void* p : pointers) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

template <typename T, int kN>
void LaunchForward(const Tensor& x, const Tensor& r, const Tensor& w, float eps, const Tensor& h, const Tensor& y,
                   const Tensor& rstd, cudaStream_t stream) {
  const int64_t rows = x.shape.rows();
  Launch(AddRmsNormForwardKernel<T, kN>, rows, kThreads, 0, stream, static_cast<const T*>(x.data),
         static_cast<const T*>(r.data), static_cast<const T*>(w.data), static_cast<T*>(h.data), static_cast<T*>(y.data),
         rstd.as<float>(), static_cast<int>(x.shape.cols()), eps);
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void Forward(const Tensor& x, const Tensor& r, const Tensor& w, float eps, const Tensor& h, const Tensor& y,
             const Tensor& rstd, cudaStream_t stream) {
  if (Vectorisable<T>(x.shape.cols(), {x.data, r.data, w.data, h.data, y.data})) {
    LaunchForward<T, Pack<T>::kN>(x, r, w, eps, h, y, rstd, stream);
  } else {
    LaunchForward<T, 1>(x, r, w, eps, h, y, rstd, stream);
  }
}

template <typename T, int kN>
void LaunchBackward(const Tensor& dy, const Tensor& h, const Tensor& w, const Tensor& rstd, const Tensor& dh_in,
                    const Tensor& dh, const Tensor& dw, const Tensor& workspace, cudaStream_t stream) {
  const int64_t rows = h.shape.rows();
  const int d = static_cast<int>(h.shape.cols());
  const int64_t n_blocks = (rows + kBackwardRows - 1) / kBackwardRows;
  const size_t shared_bytes = static_cast<size_t>(d) * sizeof(float);
  if (shared_bytes > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(AddRmsNormBackwardKernel<T, kN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(shared_bytes)));
  }
  Launch(AddRmsNormBackwardKernel<T, kN>, n_blocks, kThreads, shared_bytes, stream, static_cast<const T*>(dy.data),
         static_cast<const T*>(h.data), static_cast<const T*>(w.data), rstd.as<float>(),
         static_cast<const T*>(dh_in.data), static_cast<T*>(dh.data), workspace.as<float>(), rows, d);
  CUDA_CHECK_LAUNCH();
  Launch(SumPartialsKernel, (d + kThreads - 1) / kThreads, kThreads, 0, stream, workspace.as<float>(), n_blocks, d,
         dw.as<float>());
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void Backward(const Tensor& dy, const Tensor& h, const Tensor& w, const Tensor& rstd, const Tensor& dh_in,
              const Tensor& dh, const Tensor& dw, const Tensor& workspace, cudaStream_t stream) {
  if (Vectorisable<T>(h.shape.cols(), {dy.data, h.data, w.data, dh_in.data, dh.data})) {
    LaunchBackward<T, Pack<T>::kN>(dy, h, w, rstd, dh_in, dh, dw, workspace, stream);
  } else {
    LaunchBackward<T, 1>(dy, h, w, rstd, dh_in, dh, dw, workspace, stream);
  }
}

void CheckCommon(const Tensor& h, const Tensor& w, const Tensor& rstd) {
  LATAM_CHECK(h.dtype == DType::kF32 || h.dtype == DType::kBF16,
              "cuda add+rmsnorm tensors must be f32 or bf16, got " << h.str());
  CheckTensor(h, h.dtype, h.shape, Device::kCUDA, "cuda add+rmsnorm h");
  CheckTensor(w, h.dtype, Shape{h.shape.cols()}, Device::kCUDA, "cuda add+rmsnorm w");
  CheckTensor(rstd, DType::kF32, Shape{h.shape.rows()}, Device::kCUDA, "cuda add+rmsnorm rstd");
}

}  // namespace

void AddRmsNormForward(const Tensor& x, const Tensor& r, const Tensor& w, float eps, const Tensor& h, const Tensor& y,
                       const Tensor& rstd, cudaStream_t stream) {
  CheckCommon(h, w, rstd);
  CheckTensor(x, h.dtype, h.shape, Device::kCUDA, "cuda add+rmsnorm x");
  CheckTensor(r, h.dtype, h.shape, Device::kCUDA, "cuda add+rmsnorm r");
  CheckTensor(y, h.dtype, h.shape, Device::kCUDA, "cuda add+rmsnorm y");
  LATAM_CHECK(y.data != h.data && y.data != x.data && y.data != r.data, "cuda add+rmsnorm: y must not alias x, r or h");
  if (h.shape.rows() == 0) return;
  if (h.dtype == DType::kF32) {
    Forward<float>(x, r, w, eps, h, y, rstd, stream);
  } else {
    Forward<__nv_bfloat16>(x, r, w, eps, h, y, rstd, stream);
  }
}

int64_t AddRmsNormBackwardWorkspaceElems(int64_t rows, int64_t d) {
  return (rows + kBackwardRows - 1) / kBackwardRows * d;
}

void AddRmsNormBackward(const Tensor& dy, const Tensor& h, const Tensor& w, const Tensor& rstd, const Tensor& dh_in,
                        const Tensor& dh, const Tensor& dw, const Tensor& workspace, cudaStream_t stream) {
  CheckCommon(h, w, rstd);
  CheckTensor(dy, h.dtype, h.shape, Device::kCUDA, "cuda add+rmsnorm dy");
  CheckTensor(dh_in, h.dtype, h.shape, Device::kCUDA, "cuda add+rmsnorm dh_in");
  CheckTensor(dh, h.dtype, h.shape, Device::kCUDA, "cuda add+rmsnorm dh");
  CheckTensor(dw, DType::kF32, Shape{h.shape.cols()}, Device::kCUDA, "cuda add+rmsnorm dw");
  LATAM_CHECK(workspace.dtype == DType::kF32 && workspace.device == Device::kCUDA &&
                  workspace.numel() >= AddRmsNormBackwardWorkspaceElems(h.shape.rows(), h.shape.cols()),
              "cuda add+rmsnorm workspace too small: " << workspace.str());
  if (h.shape.rows() == 0) return;
  if (h.dtype == DType::kF32) {
    Backward<float>(dy, h, w, rstd, dh_in, dh, dw, workspace, stream);
  } else {
    Backward<__nv_bfloat16>(dy, h, w, rstd, dh_in, dh, dw, workspace, stream);
  }
}

}  // namespace latam::cuda
