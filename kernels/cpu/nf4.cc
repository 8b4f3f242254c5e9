#include "kernels/nf4.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include "kernels/gemm.h"

namespace latam {

namespace {

constexpr std::array<float, kNf4Codes - 1> MakeMidpoints() {
  std::array<float, kNf4Codes - 1> mid{};
  for (int k = 0; k + 1 < kNf4Codes; ++k) mid[static_cast<size_t>(k)] = (kNf4CodeBook[k] + kNf4CodeBook[k + 1]) * 0.5f;
  return mid;
}
constexpr std::array<float, kNf4Codes - 1> kMidpoints = MakeMidpoints();

// The largest |q| of an int8 block-scale code (symmetric: -128 is unused).
constexpr float kScaleCodeMax = 127.0f;

}  // namespace

int Nf4Code(float x) {
  int code = 0;
  for (const float mid : kMidpoints) code += x > mid ? 1 : 0;
  return code;
}

Nf4View Nf4Weight::View() const {
  Nf4View v;
  v.codes = codes.data();
  v.scale_codes = scale_codes.data();
  v.group_scales = group_scales.data();
  v.scale_offset = scale_offset;
  v.rows = rows;
  v.cols = cols;
  v.device = Device::kCPU;
  return v;
}

Result<Nf4Weight> QuantizeNf4(const Tensor& w) {
  LATAM_CHECK(w.dtype == DType::kF32 && w.device == Device::kCPU && w.shape.rank() >= 1,
              "NF4 quantisation takes an f32 CPU tensor, got " << w.str());
  const int64_t numel = w.numel();
  if (numel <= 0 || numel % kNf4BlockSize != 0) {
    return Status::InvalidInput(std::string("NF4 weight of shape ")
                                    .append(w.shape.str())
                                    .append(" has ")
                                    .append(std::to_string(numel))
                                    .append(" elements, not a positive multiple of the block size ")
                                    .append(std::to_string(kNf4BlockSize)));
  }
  const float* src = w.as<float>();
  for (int64_t i = 0; i < numel; ++i) {
    if (!std::isfinite(src[i])) {
      return Status::InvalidInput(std::string("NF4 weight of shape ")
                                      .append(w.shape.str())
                                      .append(": element ")
                                      .append(std::to_string(i))
                                      .append(" is not finite"));
    }
  }

  Nf4Weight q;
  q.rows = w.shape.rows();
  q.cols = w.shape.cols();
  const int64_t blocks = Nf4Blocks(numel);
  const int64_t groups = Nf4ScaleGroups(numel);
  q.codes.assign(static_cast<size_t>(numel / 2), 0);
  q.scale_codes.assign(static_cast<size_t>(blocks), 0);
  q.group_scales.assign(static_cast<size_t>(groups), 0.0f);

  // First level: absmax per block, codes against the exact absmax.
  std::vector<float> absmax(static_cast<size_t>(blocks));
  double absmax_sum = 0.0;
  for (int64_t b = 0; b < blocks; ++b) {
    const float* block = src + b * kNf4BlockSize;
    float s = 0.0f;
    for (int64_t i = 0; i < kNf4BlockSize; ++i) s = std::max(s, std::abs(block[i]));
    absmax[static_cast<size_t>(b)] = s;
    absmax_sum += s;
    uint8_t* packed = q.codes.data() + b * kNf4BlockSize / 2;
    for (int64_t i = 0; i < kNf4BlockSize; i += 2) {
      const int hi = Nf4Code(s == 0.0f ? 0.0f : block[i] / s);
      const int lo = Nf4Code(s == 0.0f ? 0.0f : block[i + 1] / s);
      packed[i / 2] = static_cast<uint8_t>(hi << 4 | lo);
    }
  }

  // Second level: absmax - mu, symmetric int8 with one fp32 scale per group.
  q.scale_offset = static_cast<float>(absmax_sum / static_cast<double>(blocks));
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t first = g * kNf4ScaleGroupSize;
    const int64_t last = std::min(blocks, first + kNf4ScaleGroupSize);
    float dev_max = 0.0f;
    for (int64_t b = first; b < last; ++b) {
      dev_max = std::max(dev_max, std::abs(absmax[static_cast<size_t>(b)] - q.scale_offset));
    }
    const float step = dev_max / kScaleCodeMax;
    q.group_scales[static_cast<size_t>(g)] = step;
    if (step == 0.0f) continue;  // every scale of the group equals mu: q_b = 0
    for (int64_t b = first; b < last; ++b) {
      const float ratio = (absmax[static_cast<size_t>(b)] - q.scale_offset) / step;
      const float rounded = std::clamp(std::nearbyint(ratio), -kScaleCodeMax, kScaleCodeMax);
      q.scale_codes[static_cast<size_t>(b)] = static_cast<int8_t>(rounded);
    }
  }
  return q;
}

namespace cpu {

namespace {

void CheckView(const Nf4View& w) {
  LATAM_CHECK(w.device == Device::kCPU && w.rows > 0 && w.cols > 0 && w.numel() % kNf4BlockSize == 0 &&
                  w.codes != nullptr && w.scale_codes != nullptr && w.group_scales != nullptr,
              "NF4 weight [" << w.rows << ", " << w.cols << "] on " << DeviceName(w.device)
                             << " is not a CPU NF4 view of a positive multiple of " << kNf4BlockSize << " elements");
}

// s'_b = fma(g_k, q_b, mu), one rounding (the CUDA twin computes the same).
float ScaleOf(const Nf4View& w, int64_t block) {
  const float step = w.group_scales[block / kNf4ScaleGroupSize];
  return std::fma(step, static_cast<float>(w.scale_codes[block]), w.scale_offset);
}

// Element e of W (flat row-major index), dequantised with its block's scale.
float Element(const Nf4View& w, int64_t e, float scale) {
  const uint8_t byte = w.codes[e / 2];
  const int code = (e % 2 == 0) ? byte >> 4 : byte & 0x0f;
  return kNf4CodeBook[code] * scale;
}

// Rows of W per scratch tile.
int64_t TileRows(const Nf4View& w, const Tensor& scratch) {
  LATAM_CHECK(scratch.dtype == DType::kF32 && scratch.device == Device::kCPU,
              "NF4 GEMM scratch must be an f32 CPU tensor, got " << scratch.str());
  const int64_t tile = std::min(w.rows, scratch.numel() / w.cols);
  LATAM_CHECK(tile >= 1, "NF4 GEMM scratch of " << scratch.numel() << " elements holds no row of W [" << w.rows << ", "
                                                << w.cols << "]");
  return tile;
}

void CheckMatrix(const Tensor& t, const char* what) {
  LATAM_CHECK(t.dtype == DType::kF32 && t.device == Device::kCPU && t.shape.rank() >= 1,
              what << " must be an f32 CPU tensor, got " << t.str());
}

}  // namespace

float Nf4BlockScale(const Nf4View& w, int64_t block) {
  CheckView(w);
  LATAM_CHECK(block >= 0 && block < Nf4Blocks(w.numel()),
              "NF4 block " << block << " out of [0, " << Nf4Blocks(w.numel()) << ")");
  return ScaleOf(w, block);
}

void DequantizeNf4(const Nf4View& w, int64_t row_begin, const Tensor& out) {
  CheckView(w);
  LATAM_CHECK(out.device == Device::kCPU && (out.dtype == DType::kF32 || out.dtype == DType::kBF16) &&
                  out.shape.rank() >= 1 && out.shape.cols() == w.cols,
              "NF4 dequantisation of W [" << w.rows << ", " << w.cols << "] into " << out.str()
                                          << ": out must be an f32 or bf16 CPU tensor with " << w.cols << " columns");
  const int64_t n_rows = out.shape.rows();
  LATAM_CHECK(row_begin >= 0 && row_begin + n_rows <= w.rows, "NF4 dequantisation of rows ["
                                                                  << row_begin << ", " << row_begin + n_rows
                                                                  << ") of W [" << w.rows << ", " << w.cols << "]");
  const int64_t first = row_begin * w.cols;
  const int64_t n = n_rows * w.cols;
  const bool bf16 = out.dtype == DType::kBF16;
  float* out_f32 = bf16 ? nullptr : out.as<float>();
  BF16* out_bf16 = bf16 ? out.as<BF16>() : nullptr;
  // Block by block, so each block's scale is computed once.
#pragma omp parallel for schedule(static)
  for (int64_t b = first / kNf4BlockSize; b <= (first + n - 1) / kNf4BlockSize; ++b) {
    const float scale = ScaleOf(w, b);
    const int64_t begin = std::max(first, b * kNf4BlockSize);
    const int64_t end = std::min(first + n, (b + 1) * kNf4BlockSize);
    for (int64_t e = begin; e < end; ++e) {
      const float v = Element(w, e, scale);
      if (bf16) {
        out_bf16[e - first] = BF16::FromFloat(v);
      } else {
        out_f32[e - first] = v;
      }
    }
  }
}

// y[:, r0:r0+T] = x Wtile^T, Wtile = W[r0:r0+T, :] (no tile's columns of y
// depend on another tile, so each tile writes its own columns once).
void Nf4LinearForward(const Tensor& x, const Nf4View& w, const Tensor& y, bool accumulate, const Tensor& scratch) {
  CheckView(w);
  CheckMatrix(x, "NF4 linear x");
  CheckMatrix(y, "NF4 linear y");
  const int64_t m = x.shape.rows(), in = x.shape.cols(), out = w.rows;
  LATAM_CHECK(
      w.cols == in && y.shape.rows() == m && y.shape.cols() == out,
      "NF4 linear forward shapes x" << x.shape.str() << " W[" << w.rows << ", " << w.cols << "] y" << y.shape.str());
  const int64_t tile = TileRows(w, scratch);
  float* tile_data = scratch.as<float>();
  for (int64_t r0 = 0; r0 < out; r0 += tile) {
    const int64_t rows = std::min(tile, out - r0);
    DequantizeNf4(w, r0, Tensor::Of(tile_data, Shape{rows, in}));
    Gemm(false, true, m, rows, in, 1.0f, x.as<float>(), in, tile_data, in, accumulate ? 1.0f : 0.0f, y.as<float>() + r0,
         out);
  }
}

// dx = dy W = sum over tiles of dy[:, r0:r0+T] Wtile: K is split by tile, so
// the first tile sets (or adds to) dx and every later one adds to it.
void Nf4LinearBackwardInput(const Tensor& dy, const Nf4View& w, const Tensor& dx, bool accumulate,
                            const Tensor& scratch) {
  CheckView(w);
  CheckMatrix(dy, "NF4 linear dy");
  CheckMatrix(dx, "NF4 linear dx");
  const int64_t m = dy.shape.rows(), out = dy.shape.cols(), in = w.cols;
  LATAM_CHECK(w.rows == out && dx.shape.rows() == m && dx.shape.cols() == in,
              "NF4 linear backward shapes dy" << dy.shape.str() << " W[" << w.rows << ", " << w.cols << "] dx"
                                              << dx.shape.str());
  const int64_t tile = TileRows(w, scratch);
  float* tile_data = scratch.as<float>();
  for (int64_t r0 = 0; r0 < out; r0 += tile) {
    const int64_t rows = std::min(tile, out - r0);
    DequantizeNf4(w, r0, Tensor::Of(tile_data, Shape{rows, in}));
    const float beta = (r0 == 0 && !accumulate) ? 0.0f : 1.0f;
    Gemm(false, false, m, in, rows, 1.0f, dy.as<float>() + r0, out, tile_data, in, beta, dx.as<float>(), in);
  }
}

}  // namespace cpu
}  // namespace latam
