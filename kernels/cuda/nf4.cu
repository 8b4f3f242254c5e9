#include "kernels/cuda/nf4.h"

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"

namespace latam::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

// The code book, passed by value to the kernel (a kernel parameter lives in
// constant memory; every thread of a warp reading one entry is a broadcast).
struct CodeBook {
  float value[kNf4Codes];
};

using Bf16Bits = uint16_t;

template <typename Out>
__device__ __forceinline__ Out Narrow(float v);
template <>
__device__ __forceinline__ float Narrow<float>(float v) {
  return v;
}
// Round to nearest, ties to even, as BF16::FromFloat. Dequantised values are
// finite (finite code book times a finite scale), so no NaN case is needed.
template <>
__device__ __forceinline__ Bf16Bits Narrow<Bf16Bits>(float v) {
  const uint32_t u = __float_as_uint(v);
  return static_cast<Bf16Bits>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// out[i] = W element first + i (flat row-major), for i < n, grid-stride,
// one element per thread step:
//   s'_b = fma(g_{b / 256}, q_b, mu)          b = e / 64
//   code = high nibble of byte e / 2 for even e, low nibble for odd e
//   out  = code_book[code] * s'_b             one fp32 multiply, as on the CPU
template <typename Out>
__global__ void DequantizeNf4Kernel(const uint8_t* __restrict__ codes, const int8_t* __restrict__ scale_codes,
                                    const float* __restrict__ group_scales, float scale_offset, CodeBook book,
                                    int64_t first, int64_t n, Out* __restrict__ out) {
  const int64_t start = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = start; i < n; i += stride) {
    const int64_t e = first + i;
    const int64_t block = e / kNf4BlockSize;
    const float scale =
        fmaf(group_scales[block / kNf4ScaleGroupSize], static_cast<float>(scale_codes[block]), scale_offset);
    const uint32_t byte = codes[e >> 1];
    const uint32_t code = (e & 1) != 0 ? (byte & 0x0fu) : (byte >> 4);
    out[i] = Narrow<Out>(book.value[code] * scale);
  }
}

int Blocks(int64_t n) { return static_cast<int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, kMaxBlocks)); }

void CheckView(const Nf4View& w) {
  LATAM_CHECK(w.device == Device::kCUDA && w.rows > 0 && w.cols > 0 && w.numel() % kNf4BlockSize == 0 &&
                  w.codes != nullptr && w.scale_codes != nullptr && w.group_scales != nullptr,
              "NF4 weight [" << w.rows << ", " << w.cols << "] on " << DeviceName(w.device)
                             << " is not a CUDA NF4 view of a positive multiple of " << kNf4BlockSize << " elements");
}

void CheckMatrix(const Tensor& t, const char* what) {
  LATAM_CHECK(t.device == Device::kCUDA && (t.dtype == DType::kF32 || t.dtype == DType::kBF16) && t.shape.rank() >= 1,
              what << " must be an f32 or bf16 CUDA tensor, got " << t.str());
}

// Rows of W per scratch tile; scratch has the operands' dtype.
int64_t TileRows(const Nf4View& w, const Tensor& scratch, DType operand_dtype) {
  LATAM_CHECK(scratch.device == Device::kCUDA && scratch.dtype == operand_dtype,
              "NF4 GEMM scratch must be a CUDA tensor of " << DTypeName(operand_dtype) << ", got " << scratch.str());
  const int64_t tile = std::min(w.rows, scratch.numel() / w.cols);
  LATAM_CHECK(tile >= 1, "NF4 GEMM scratch of " << scratch.numel() << " elements holds no row of W [" << w.rows << ", "
                                                << w.cols << "]");
  return tile;
}

// `elements` elements past t's data.
void* Offset(const Tensor& t, int64_t elements) {
  return static_cast<char*>(t.data) + static_cast<size_t>(elements) * DTypeSize(t.dtype);
}

}  // namespace

Nf4View Nf4DeviceWeight::View() const {
  Nf4View v;
  v.codes = static_cast<const uint8_t*>(codes.data());
  v.scale_codes = static_cast<const int8_t*>(scale_codes.data());
  v.group_scales = static_cast<const float*>(group_scales.data());
  v.scale_offset = scale_offset;
  v.rows = rows;
  v.cols = cols;
  v.device = Device::kCUDA;
  return v;
}

Nf4DeviceWeight UploadNf4(const Nf4Weight& w) {
  Nf4DeviceWeight d;
  d.rows = w.rows;
  d.cols = w.cols;
  d.scale_offset = w.scale_offset;
  d.codes = Arena(Device::kCUDA, w.codes.size());
  d.scale_codes = Arena(Device::kCUDA, w.scale_codes.size());
  d.group_scales = Arena(Device::kCUDA, w.group_scales.size() * sizeof(float));
  CUDA_CHECK(cudaMemcpy(d.codes.data(), w.codes.data(), w.codes.size(), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d.scale_codes.data(), w.scale_codes.data(), w.scale_codes.size(), cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(d.group_scales.data(), w.group_scales.data(), w.group_scales.size() * sizeof(float),
                        cudaMemcpyHostToDevice));
  return d;
}

void DequantizeNf4(const Nf4View& w, int64_t row_begin, const Tensor& out, cudaStream_t stream) {
  CheckView(w);
  LATAM_CHECK(out.device == Device::kCUDA && (out.dtype == DType::kF32 || out.dtype == DType::kBF16) &&
                  out.shape.rank() >= 1 && out.shape.cols() == w.cols,
              "NF4 dequantisation of W [" << w.rows << ", " << w.cols << "] into " << out.str()
                                          << ": out must be an f32 or bf16 CUDA tensor with " << w.cols << " columns");
  const int64_t n_rows = out.shape.rows();
  LATAM_CHECK(row_begin >= 0 && row_begin + n_rows <= w.rows, "NF4 dequantisation of rows ["
                                                                  << row_begin << ", " << row_begin + n_rows
                                                                  << ") of W [" << w.rows << ", " << w.cols << "]");
  const int64_t n = n_rows * w.cols;
  if (n == 0) return;
  CodeBook book;
  for (int k = 0; k < kNf4Codes; ++k) book.value[k] = kNf4CodeBook[k];
  const int64_t first = row_begin * w.cols;
  if (out.dtype == DType::kF32) {
    Launch(DequantizeNf4Kernel<float>, Blocks(n), kThreads, 0, stream, w.codes, w.scale_codes, w.group_scales,
           w.scale_offset, book, first, n, static_cast<float*>(out.data));
  } else {
    Launch(DequantizeNf4Kernel<Bf16Bits>, Blocks(n), kThreads, 0, stream, w.codes, w.scale_codes, w.group_scales,
           w.scale_offset, book, first, n, static_cast<Bf16Bits*>(out.data));
  }
  CUDA_CHECK_LAUNCH();
}

// y[:, r0:r0+T] = x Wtile^T per tile: C = y offset by r0 columns, ldc = out.
void Nf4LinearForward(GemmContext& ctx, const Tensor& x, const Nf4View& w, const Tensor& y, bool accumulate,
                      const Tensor& scratch, cudaStream_t stream) {
  CheckView(w);
  CheckMatrix(x, "NF4 linear x");
  CheckMatrix(y, "NF4 linear y");
  const int64_t m = x.shape.rows(), in = x.shape.cols(), out = w.rows;
  LATAM_CHECK(
      w.cols == in && y.shape.rows() == m && y.shape.cols() == out,
      "NF4 linear forward shapes x" << x.shape.str() << " W[" << w.rows << ", " << w.cols << "] y" << y.shape.str());
  const int64_t tile = TileRows(w, scratch, x.dtype);
  for (int64_t r0 = 0; r0 < out; r0 += tile) {
    const int64_t rows = std::min(tile, out - r0);
    DequantizeNf4(w, r0, Tensor(scratch.data, scratch.dtype, Shape{rows, in}, Device::kCUDA), stream);
    GemmArgs args;
    args.trans_a = false;
    args.trans_b = true;
    args.m = m;
    args.n = rows;
    args.k = in;
    args.a = x.data;
    args.lda = in;
    args.b = scratch.data;
    args.ldb = in;
    args.beta = accumulate ? 1.0f : 0.0f;
    args.c = Offset(y, r0);
    args.ldc = out;
    args.ab_dtype = x.dtype;
    args.c_dtype = y.dtype;
    ctx.Gemm(args, stream);
  }
}

// dx = sum over tiles of dy[:, r0:r0+T] Wtile: A = dy offset by r0 columns
// (lda = out), K = T; the first tile sets dx unless accumulating.
void Nf4LinearBackwardInput(GemmContext& ctx, const Tensor& dy, const Nf4View& w, const Tensor& dx, bool accumulate,
                            const Tensor& scratch, cudaStream_t stream) {
  CheckView(w);
  CheckMatrix(dy, "NF4 linear dy");
  CheckMatrix(dx, "NF4 linear dx");
  const int64_t m = dy.shape.rows(), out = dy.shape.cols(), in = w.cols;
  LATAM_CHECK(w.rows == out && dx.shape.rows() == m && dx.shape.cols() == in,
              "NF4 linear backward shapes dy" << dy.shape.str() << " W[" << w.rows << ", " << w.cols << "] dx"
                                              << dx.shape.str());
  const int64_t tile = TileRows(w, scratch, dy.dtype);
  for (int64_t r0 = 0; r0 < out; r0 += tile) {
    const int64_t rows = std::min(tile, out - r0);
    DequantizeNf4(w, r0, Tensor(scratch.data, scratch.dtype, Shape{rows, in}, Device::kCUDA), stream);
    GemmArgs args;
    args.m = m;
    args.n = in;
    args.k = rows;
    args.a = Offset(dy, r0);
    args.lda = out;
    args.b = scratch.data;
    args.ldb = in;
    args.beta = (r0 == 0 && !accumulate) ? 0.0f : 1.0f;
    args.c = dx.data;
    args.ldc = in;
    args.ab_dtype = dy.dtype;
    args.c_dtype = dx.dtype;
    ctx.Gemm(args, stream);
  }
}

}  // namespace latam::cuda
