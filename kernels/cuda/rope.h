// Rotary position embedding on the GPU: the CUDA twin of kernels/rope.h
// (same rotate-half convention, same formulas).
//
// x is the fused QKV activation [B*T, row_width], f32 or bf16, on the device;
// the first n_rot_heads heads (head_dim each) of every row are rotated in
// place (overwritten), the rest of the row is not touched. Row m is at
// position m % seq_len. Arithmetic is fp32 in registers; loads and stores are
// 16 bytes wide when head_dim/2 and row_width allow it and the pointers are
// 16-byte aligned, else scalar. All work is enqueued on `stream`; nothing is
// allocated.
//
// The cos/sin table lives on the device as two f32 tensors
// [max_positions, head_dim/2] (RopeDeviceTable), built once from a host
// RopeTable by UploadRopeTable into memory the caller owns.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "core/arena.h"
#include "kernels/rope.h"
#include "core/tensor.h"

namespace latam::cuda {

// A RopeTable's cos and sin on the device, each f32 [max_positions, head_dim/2]
// and stored [position][i] like the host table. Views only: the memory
// belongs to the caller's arena.
struct RopeDeviceTable {
  Tensor cos;
  Tensor sin;

  int head_dim() const { return static_cast<int>(cos.shape[1]) * 2; }
  int max_positions() const { return static_cast<int>(cos.shape[0]); }
};

// Bytes UploadRopeTable writes: cos then sin, both f32.
size_t RopeTableBytes(const RopeTable& table);

// Enqueues on `stream` copies of table.cos and table.sin into the device
// arena at [offset, offset + RopeTableBytes(table)) and returns views of
// them. `table` must stay alive until the stream has done the copies (for
// instance, synchronise once after setting up).
RopeDeviceTable UploadRopeTable(const RopeTable& table, const Arena& arena, size_t offset, cudaStream_t stream);

// Forward rotates by +angle, backward (dx holds dy on entry, dx on return) by
// -angle. x/dx are overwritten in place.
void RopeForward(const Tensor& x, int seq_len, int n_rot_heads, const RopeDeviceTable& table, cudaStream_t stream);
void RopeBackward(const Tensor& dx, int seq_len, int n_rot_heads, const RopeDeviceTable& table, cudaStream_t stream);
// The forward rotation of rows at consecutive positions (kernels/rope.h,
// RopeForwardAt): row m is at position first_position + m, which must be
// inside the table.
void RopeForwardAt(const Tensor& x, int64_t first_position, int n_rot_heads, const RopeDeviceTable& table,
                   cudaStream_t stream);

}  // namespace latam::cuda
