// Rotary position embedding on the GPU: the CUDA twin of kernels/rope.h
// (same rotate-half convention, same formulas).
//
// x is the fused QKV activation [B*T, row_width], f32 or bf16, on the device;
// the first n_rot_heads heads (head_dim each) of every row are rotated in
// place (overwritten), the rest of the row is not touched. Row m is at
// position m % seq_len, or at positions[m] when the caller passes positions
// (RopeForward/RopeBackward below). Arithmetic is fp32 in registers; loads
// and stores are 16 bytes wide when head_dim/2 and row_width allow it and the
// pointers are 16-byte aligned, else scalar. All work is enqueued on
// `stream`; nothing is allocated.
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
//
// positions: null, row m is at position m % seq_len; else row m is at
// positions[m] (int32, B*T of them, in DEVICE memory like x, read on
// `stream`), as in the CPU kernels (kernels/rope.h). The caller guarantees
// every position is in [0, table.max_positions()): the host cannot check
// device memory without a synchronisation, so nothing is checked before the
// launch (the CPU kernels check, and the model's positions come from the
// same host code on both devices). A position outside the table is still
// never used to read it: the kernel traps, so the launch fails (the next
// synchronising CUDA call reports it and the context is unusable after).
// seq_len is checked as without positions. The null-positions path is the
// kernel it always was (positions are a template parameter of the kernel).
void RopeForward(const Tensor& x, int seq_len, int n_rot_heads, const RopeDeviceTable& table, cudaStream_t stream,
                 const int32_t* positions = nullptr);
void RopeBackward(const Tensor& dx, int seq_len, int n_rot_heads, const RopeDeviceTable& table, cudaStream_t stream,
                  const int32_t* positions = nullptr);
// The forward rotation of rows at consecutive positions (kernels/rope.h,
// RopeForwardAt): row m is at position first_position + m, which must be
// inside the table.
void RopeForwardAt(const Tensor& x, int64_t first_position, int n_rot_heads, const RopeDeviceTable& table,
                   cudaStream_t stream);

}  // namespace latam::cuda
