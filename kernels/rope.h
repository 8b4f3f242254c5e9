// Rotary position embedding, Hugging Face Llama "rotate half" convention.
//
// For a head vector x of size hd (half = hd/2) at position t, and
// i in [0, half):
//   angle   = t * inv_freq[i],   inv_freq[i] = theta^(-2i/hd)  (optionally
//             rescaled by the Llama 3.1 long-context rule, RopeScaling)
//   out[i]        = x[i] cos - x[i+half] sin
//   out[i+half]   = x[i+half] cos + x[i] sin
// The backward is the rotation by -angle:
//   dx[i]         = dy[i] cos + dy[i+half] sin
//   dx[i+half]    = dy[i+half] cos - dy[i] sin
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace latam {

// Llama 3.1 frequency rescaling (rope_type "llama3" in Hugging Face configs).
// factor <= 0 disables it.
struct RopeScaling {
  double factor = 0.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position = 8192.0;
};

// cos/sin for positions [0, max_positions) and i in [0, head_dim/2), each
// stored [position][i], computed in double and rounded to float.
struct RopeTable {
  int head_dim = 0;
  int max_positions = 0;
  std::vector<float> cos;
  std::vector<float> sin;
};

// inv_freq[i] for i in [0, head_dim/2), with scaling applied.
std::vector<double> RopeInverseFrequencies(double theta, int head_dim, const RopeScaling& scaling);
RopeTable BuildRopeTable(double theta, int head_dim, int max_positions, const RopeScaling& scaling);

}  // namespace latam

namespace latam::cpu {

// Rotates in place the first n_rot_heads heads (of head_dim each) of every row
// of x[B*T, row_width] (T = seq_len). For the fused QKV activation,
// n_rot_heads = n_heads + n_kv_heads rotates Q and K, not V.
//
// Positions: with positions null, row m is at position m % seq_len. Else row
// m is at position positions[m] (int32, B*T of them, host memory like x), for
// rows whose positions are not m % seq_len: a context-parallel rank's chunks
// of a sequence (global positions), or positions that restart at every
// document of a packed window. They may repeat and need not increase; each
// must be in [0, table.max_positions), else the call aborts naming the first
// offending row and its position. Positions equal to m % seq_len give
// bitwise the null-positions result. seq_len is checked as without
// positions (rows a multiple of it, at most table.max_positions).
void RopeForward(const Tensor& x, int seq_len, int n_rot_heads, const RopeTable& table,
                 const int32_t* positions = nullptr);
void RopeBackward(const Tensor& dx, int seq_len, int n_rot_heads, const RopeTable& table,
                  const int32_t* positions = nullptr);

// The forward rotation of rows at consecutive positions: row m of
// x[rows, row_width] is at position first_position + m (decoding after a
// key/value cache, kernels/decode_attention.h); first_position + rows must
// not exceed table.max_positions. Unlike RopeForward it is built for the
// baseline ISA only, so every product and sum is rounded on its own (no FMA
// contraction) on any x86 CPU: the arithmetic the generator's decoding has
// always had.
void RopeForwardAt(const Tensor& x, int64_t first_position, int n_rot_heads, const RopeTable& table);

}  // namespace latam::cpu
