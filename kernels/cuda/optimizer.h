// The optimizer step on the GPU over many tensors at once: AdamW and the
// gradient sum of squares, each one launch over a table of segments (pieces
// of the flat parameter / gradient / moment arenas, as model/optimizer.h
// keeps them: whole tensors for ZeRO-0, the pieces inside this rank's slice
// for ZeRO-1).
//
// The table is a device array of OptimizerSegment that the caller builds on
// the host and copies to device memory it owns (once: the arenas do not
// move). All pointers are device pointers to f32 (bf16 for param_bf16);
// everything is enqueued on `stream`; nothing is allocated.
//
// Work split: every segment is cut into chunks of kOptimizerChunk elements,
// numbered across the table in order, and block b of a fixed-size grid
// takes chunks b, b + grid, b + 2 grid, ... Accesses are 16-byte (float4)
// when a segment's f32 pointers are 16-byte aligned (and its bf16 copy
// 8-byte aligned), with a scalar tail for sizes not a multiple of 4;
// unaligned segments run scalar.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/adamw.h"
#include "core/tensor.h"

namespace latam::cuda {

// One piece of a parameter tensor. Aggregate without defaults (it is staged
// in shared memory by the kernels); zero-initialise with OptimizerSegment{}.
struct OptimizerSegment {
  float* param;          // f32 master weights, updated in place by AdamW
  const float* grad;     // f32 gradients, read only (the clip factor is applied on the fly)
  float* exp_avg;        // f32 first moment, updated in place
  float* exp_avg_sq;     // f32 second moment, updated in place
  BF16* param_bf16;      // bf16 copy of the updated weights, or nullptr for none
  int64_t numel;         // elements in every one of the arrays above
  int32_t weight_decay;  // 1: decay with AdamWHyper::weight_decay; 0: none
  int32_t counted;       // 1: the gradient norm includes this segment
};
static_assert(sizeof(OptimizerSegment) == 56, "OptimizerSegment is shared by host and device code");

inline constexpr int64_t kOptimizerChunk = 4096;

// AdamW (kernels/adamw.h) over every segment, with g = grad_scale * grad:
//   m  = beta1 m + (1 - beta1) g
//   v  = beta2 v + (1 - beta2) g^2
//   p -= lr * ( (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps) + wd * p )
// where wd = hyper.weight_decay for segments flagged weight_decay, else 0,
// and t = hyper.step (1-based). param, exp_avg, exp_avg_sq are updated in
// place; param_bf16 (when set) is overwritten with the new param rounded to
// nearest even; grad is only read. The result equals cpu::Scale(grad,
// grad_scale) then cpu::AdamWUpdate per segment up to the contraction of
// multiply-adds into FMAs (sqrtf and division are IEEE-rounded on the GPU).
// `segments` is a device array of n_segments entries; segments must not
// overlap.
void MultiTensorAdamW(const OptimizerSegment* segments, int n_segments, const AdamWHyper& hyper, float grad_scale,
                      cudaStream_t stream);

// Doubles of workspace GradSumOfSquares needs (one per block of its grid).
int64_t GradSumOfSquaresWorkspaceElems();

// *sum (device memory, overwritten) = sum over the segments flagged counted
// of sum_i grad[i]^2. Only the grad pointers and numel are read.
// Rounding: each thread squares and adds the (at most 16) elements it reads
// from one chunk in fp32, adds that partial to a per-thread double, the
// block's threads are summed in double into workspace[block], and a second
// single-block launch sums the blocks in a fixed order. The grid size is a
// constant, so a given build gives bitwise the same result for a given
// table on any GPU. The CPU's SumOfSquares (kernels/grad_norm.h) adds fp32
// partials (of up to 256 squares, split over its SIMD lanes) in double.
// With all terms positive, a partial of n terms is off by at most
// (n - 1) 2^-24 relative: 1e-6 here, 1.5e-5 for a CPU without SIMD; rounding
// errors being random, the typical error is ~sqrt(n) 2^-24, a few 1e-7. The
// tests compare against the CPU with 1e-5 relative.
void GradSumOfSquares(const OptimizerSegment* segments, int n_segments, double* workspace, double* sum,
                      cudaStream_t stream);

}  // namespace latam::cuda
