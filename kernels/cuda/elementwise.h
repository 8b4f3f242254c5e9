// Element-wise helpers on the GPU: the CUDA twin of kernels/elementwise.h
// (Add), a dtype cast, a column-block copy, a fill, and the last step of the
// vocab-parallel cross-entropy (kernels/cuda/cross_entropy.h) once the row
// statistics have been combined across tensor-parallel ranks.
//
// All tensors live on the device. Everything is enqueued on `stream`;
// nothing is allocated and no memory changes owner (the caller owns every
// buffer, including `loss_sum`).
//
// bf16 results are rounded from fp32 once, to nearest with ties to even,
// bit for bit as latam::BF16::FromFloat does it (NaNs stay NaN: their sign
// and top payload bits are kept and the quiet bit is set); bf16 -> fp32 is
// exact. Add and Cast move 16 bytes per load and store when every pointer
// is 16-byte aligned, with a scalar tail for sizes not a multiple of the
// pack; views off 16-byte alignment run scalar.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/tensor.h"

namespace latam::cuda {

// out = a + b element-wise. a, b and out share one shape and one dtype, f32
// or bf16; the sum is taken in fp32 and (for bf16) rounded once. out is
// overwritten; it may alias a or b (each element is read before the same
// thread writes it), but must not partially overlap them.
void Add(const Tensor& a, const Tensor& b, const Tensor& out, cudaStream_t stream);

// out = in converted element-wise: f32 -> bf16 (rounded), bf16 -> f32
// (exact), or a copy when the dtypes are equal (f32 -> f32, bf16 -> bf16).
// Shapes may differ but the element counts must be equal (the data are
// taken flat, row-major). out is overwritten. in and out must not overlap,
// except that a same-dtype cast of a tensor onto itself is a no-op.
void Cast(const Tensor& in, const Tensor& out, cudaStream_t stream);

// out[r, out_col0 + c] = in[r, in_col0 + c] converted as Cast does, for every
// row r and c < cols: a block of columns moved between two 2-D row-major
// tensors with the same number of rows, f32 or bf16 each (the other columns
// of out are not touched). in and out must not overlap. Vectorised when both
// column blocks start 16-byte aligned on every row and cols is a multiple of
// 8, element by element otherwise.
void CopyColumns(const Tensor& in, int64_t in_col0, const Tensor& out, int64_t out_col0, int64_t cols,
                 cudaStream_t stream);

// Every element of t (f32 or bf16, any shape) = value, rounded once to bf16.
void Fill(const Tensor& t, float value, cudaStream_t stream);

// Finishes the cross-entropy loss from the combined row statistics of M
// rows (the formula of the CPU trainer's HeadForward):
//   lse[m]     = row_max[m] + log(row_sumexp[m])        (fp32, every row)
//   *loss_sum += sum over m with targets[m] >= 0 of
//                  (double(lse[m]) - double(target_logit[m]))
// row_max, row_sumexp, target_logit and lse are f32 [M]; targets is int32
// [M] (negative: ignored row). lse is overwritten for every row, ignored
// ones included; `loss_sum` is a device pointer to one double that is
// ACCUMULATED into (the caller zeroes it when it wants a fresh sum). The
// sum runs in double in one block of a fixed size, each thread over a fixed
// set of rows and then a fixed-order tree, so it is bitwise reproducible
// from run to run (though not bitwise equal to the CPU's sequential sum).
// lse must not overlap the inputs.
void CrossEntropyLoss(const Tensor& row_max, const Tensor& row_sumexp, const Tensor& target_logit,
                      const Tensor& targets, const Tensor& lse, double* loss_sum, cudaStream_t stream);

}  // namespace latam::cuda
