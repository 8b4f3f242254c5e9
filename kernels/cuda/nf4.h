// NF4 weights on the GPU: the CUDA twin of kernels/nf4.h (the code book,
// layout, double-quantised scales and the linear layer over a frozen NF4
// weight are described there and in docs/formats.md).
//
// Quantisation stays on the host (QuantizeNf4): weights are quantised once,
// at load, then UploadNf4 copies the four arrays to the device.
//
// DequantizeNf4 writes rows of W as f32 or bf16: the f32 values are bit for
// bit those of cpu::DequantizeNf4 (the same fma for the block scale, the
// same single multiply), and bf16 is that f32 value rounded once to nearest
// even, as BF16::FromFloat does.
//
// Linear layer. W[out, in] stored NF4, x / dy / scratch of one dtype (bf16
// for training: bf16 operands, products summed in fp32 by cuBLASLt through
// the GemmContext of kernels/cuda/gemm.h; f32 also works), y / dx bf16 or f32
// (f32 only with f32 operands):
//   forward          y[M,out] (= or +=) x[M,in] W^T
//   input gradient   dx[M,in] (= or +=) dy[M,out] W
// Tile by tile as on the CPU: T = min(out, scratch.numel() / in) rows of W
// (T >= 1) are dequantised into `scratch`, then one GEMM per tile, the
// forward writing y's columns [r0, r0 + T), the input gradient adding each
// tile's dy[:, r0:r0+T] W[r0:r0+T, :] into dx (the first tile with beta = 0
// unless accumulating). A scratch of out * in elements makes it one
// dequantisation and one GEMM. A bf16 dx is rounded to bf16 after every
// tile's GEMM (T roundings of the partial sums); an f32 dx, or one tile,
// rounds once. y's columns are each written by one tile, so a bf16 y is
// rounded once.
//
// Streams and memory. Everything is enqueued on `stream`; nothing is
// allocated except by UploadNf4 (which owns the device arrays it returns and
// synchronises). The scratch is reused from tile to tile, which is safe
// because the dequantisation and the GEMMs are ordered on the one stream; the
// GemmContext's rules (one stream per context) apply.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/arena.h"
#include "core/tensor.h"
#include "kernels/cuda/gemm.h"
#include "kernels/nf4.h"

namespace latam::cuda {

// An NF4 weight whose arrays live on the device.
struct Nf4DeviceWeight {
  int64_t rows = 0;
  int64_t cols = 0;
  Arena codes;
  Arena scale_codes;
  Arena group_scales;
  float scale_offset = 0.0f;

  Nf4View View() const;
};

// Copies a host NF4 weight to the current device (synchronous).
Nf4DeviceWeight UploadNf4(const Nf4Weight& w);

// out = rows [row_begin, row_begin + out.shape.rows()) of W dequantised; out
// is an f32 or bf16 CUDA tensor with W's cols as its last dimension,
// overwritten. w is a CUDA view.
void DequantizeNf4(const Nf4View& w, int64_t row_begin, const Tensor& out, cudaStream_t stream);

// y[M,out] (= or +=) x[M,in] W[out,in]^T.
void Nf4LinearForward(GemmContext& ctx, const Tensor& x, const Nf4View& w, const Tensor& y, bool accumulate,
                      const Tensor& scratch, cudaStream_t stream);
// dx[M,in] (= or +=) dy[M,out] W[out,in].
void Nf4LinearBackwardInput(GemmContext& ctx, const Tensor& dy, const Nf4View& w, const Tensor& dx, bool accumulate,
                            const Tensor& scratch, cudaStream_t stream);

}  // namespace latam::cuda
