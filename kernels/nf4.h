// 4-bit NormalFloat (NF4) weights with double-quantised block scales, as in
// QLoRA (Dettmers et al. 2023), and the linear layer over such a frozen
// weight. The CPU reference; kernels/cuda/nf4.h is its CUDA twin. The byte
// layout is also described in docs/formats.md.
//
// Code book. kNf4CodeBook[16] (ascending) are the quantiles of N(0, 1) that
// the paper uses, scaled so that the extremes are exactly -1 and 1, with an
// exact 0 at index 7: with delta = (1/30 + 1/32) / 2, the 8 positive values
// are Phi^-1(p) for p = (1 - delta) - j (1/2 - delta) / 8, j = 0..7, the 7
// negative ones -Phi^-1(p) for p = (1 - delta) - j (1/2 - delta) / 7,
// j = 0..6, all divided by Phi^-1(1 - delta). The fp32 constants are those of
// bitsandbytes, so its NF4 codes mean the same values here.
//
// Quantisation (QuantizeNf4, host only: weights are quantised once, at load).
// The weight is taken flat in row-major order and cut into blocks of
// kNf4BlockSize = 64 consecutive elements (a block may span two rows when
// cols is not a multiple of 64). The element count must be a positive
// multiple of 64 (the weights of a Llama model always are); anything else is
// refused with an InvalidInput Status, as are non-finite values.
//   absmax   s_b = max |w| over block b (fp32)
//   code     x = w / s_b (0 when s_b = 0); its code is the index of the
//            nearest code-book value c_k: the number of midpoints
//            mid_k = (c_k + c_{k+1}) / 2 (in fp32, k = 0..14) with
//            x > mid_k. A tie (x exactly on a midpoint) goes to the lower
//            code.
//   packing  two codes per byte: element 2j in the HIGH nibble (bits 7..4)
//            of byte j, element 2j + 1 in the LOW nibble (bits 3..0), the
//            order bitsandbytes uses.
//
// Double quantisation of the block scales (the paper's, with symmetric int8
// as the 8-bit format). With B = numel / 64 blocks:
//   offset   mu = mean of all s_b (summed in double, stored as fp32)
//   groups   blocks are grouped by 256 (kNf4ScaleGroupSize; the last group
//            may be short), G = ceil(B / 256)
//   g_k      = max over group k of |s_b - mu| / 127 (fp32; 0 if all equal)
//   q_b      = round-half-even((s_b - mu) / g_k), clamped to [-127, 127],
//              an int8 (0 where g_k = 0)
//   s'_b     = fma(g_k, q_b, mu) in fp32 (one rounding): the dequantised
//              scale, bounded by |s'_b - s_b| <= g_k / 2 plus fp32 rounding
//              (a few ulps of |mu| + 127 g_k).
// Codes are chosen with the exact s_b; dequantisation uses s'_b:
//   w' = kNf4CodeBook[code] * s'_b   (one fp32 multiply)
// so |w - w'| <= s_b * max_gap / 2 + |s'_b - s_b|, max_gap being the largest
// distance between neighbouring code-book values.
//
// Size. numel / 2 bytes of codes + B bytes of int8 scales + 4 G bytes of
// group scales + 4 bytes of offset: 4.127 bits per parameter for large
// weights (4 + 8/64 + 32/16384). Nf4Bytes gives the exact count.
//
// Linear layer. W[out, in] in the Hugging Face layout, stored NF4, frozen:
//   forward          y[M,out] (= or +=) x[M,in] W^T
//   input gradient   dx[M,in] (= or +=) dy[M,out] W
// There is no weight gradient. W is dequantised tile by tile (T rows of W at
// a time) into the caller's f32 `scratch`, and each tile goes through
// cpu::Gemm (kernels/gemm.h): the full fp32 W never exists. T = min(out,
// scratch.numel() / in) and must be at least 1, so the scratch bound is the
// caller's: in * T floats. Forward writes y's columns [r0, r0 + T) from tile
// [r0, r0 + T); the input gradient sums the tiles' contributions into dx
// (the first with beta = 0 unless accumulating, the rest with beta = 1).
//
// Ownership. Nf4Weight owns its host arrays; Nf4View is a non-owning view of
// the same four arrays on one device (the CUDA twin takes device views).
// Shape mismatches and wrong dtypes/devices in the dequantise and GEMM calls
// are programmer errors (LATAM_CHECK); the inputs a user supplies (the
// weight to quantise) get a Status.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace latam {

inline constexpr int64_t kNf4BlockSize = 64;        // elements per absmax block
inline constexpr int64_t kNf4ScaleGroupSize = 256;  // blocks per second-level fp32 scale
inline constexpr int kNf4Codes = 16;

inline constexpr float kNf4CodeBook[kNf4Codes] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};
inline constexpr int kNf4ZeroCode = 7;

// Number of blocks, second-level groups and bytes of an NF4 weight of
// `numel` elements (a multiple of kNf4BlockSize).
inline constexpr int64_t Nf4Blocks(int64_t numel) { return numel / kNf4BlockSize; }
inline constexpr int64_t Nf4ScaleGroups(int64_t numel) {
  return (Nf4Blocks(numel) + kNf4ScaleGroupSize - 1) / kNf4ScaleGroupSize;
}
// Packed codes + int8 block scales + fp32 group scales + the fp32 offset.
inline constexpr int64_t Nf4Bytes(int64_t numel) {
  return numel / 2 + Nf4Blocks(numel) + 4 * Nf4ScaleGroups(numel) + 4;
}

// The 4-bit code of x = w / absmax (see the contract above).
int Nf4Code(float x);

// A non-owning view of an NF4 weight [rows, cols]; every pointer is on
// `device`.
struct Nf4View {
  const uint8_t* codes = nullptr;       // rows * cols / 2 bytes
  const int8_t* scale_codes = nullptr;  // q_b, one per block
  const float* group_scales = nullptr;  // g_k, one per 256 blocks
  float scale_offset = 0.0f;            // mu
  int64_t rows = 0;
  int64_t cols = 0;
  Device device = Device::kCPU;

  int64_t numel() const { return rows * cols; }
  int64_t bytes() const { return Nf4Bytes(numel()); }
};

// An NF4 weight owned on the host.
struct Nf4Weight {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> codes;
  std::vector<int8_t> scale_codes;
  std::vector<float> group_scales;
  float scale_offset = 0.0f;

  int64_t numel() const { return rows * cols; }
  int64_t bytes() const { return Nf4Bytes(numel()); }
  Nf4View View() const;
};

// Quantises w (an f32 CPU tensor, taken as [w.shape.rows(), w.shape.cols()])
// as described above. InvalidInput when numel is not a positive multiple of
// 64 or an element is not finite; the message names the shape or element.
Result<Nf4Weight> QuantizeNf4(const Tensor& w);

namespace cpu {

// The dequantised scale s'_b of block `block` of a CPU view.
float Nf4BlockScale(const Nf4View& w, int64_t block);

// out = rows [row_begin, row_begin + out.shape.rows()) of W dequantised; out
// is an f32 or bf16 (rounded once, to nearest even) CPU tensor with W's cols
// as its last dimension, overwritten.
void DequantizeNf4(const Nf4View& w, int64_t row_begin, const Tensor& out);

// y[M,out] (= or +=) x[M,in] W[out,in]^T; x, y and scratch are f32 CPU
// tensors (scratch: any shape, at least `in` elements).
void Nf4LinearForward(const Tensor& x, const Nf4View& w, const Tensor& y, bool accumulate, const Tensor& scratch);
// dx[M,in] (= or +=) dy[M,out] W[out,in]; as above.
void Nf4LinearBackwardInput(const Tensor& dy, const Nf4View& w, const Tensor& dx, bool accumulate,
                            const Tensor& scratch);

}  // namespace cpu
}  // namespace latam
