#include "kernels/rope.h"

#include <cmath>
#include <numbers>

#include "kernels/cpu/vec_math.h"

namespace latam {

std::vector<double> RopeInverseFrequencies(double theta, int head_dim, const RopeScaling& scaling) {
  const int half = head_dim / 2;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    inv_freq[static_cast<size_t>(i)] = std::pow(theta, -2.0 * i / head_dim);
  }
  if (scaling.factor > 0.0) {
    // Llama 3.1: wavelengths longer than original/low_freq_factor are divided
    // by factor, shorter than original/high_freq_factor are kept, and the band
    // in between is interpolated smoothly.
    const double low_freq_wavelen = scaling.original_max_position / scaling.low_freq_factor;
    const double high_freq_wavelen = scaling.original_max_position / scaling.high_freq_factor;
    for (double& f : inv_freq) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_freq_wavelen) {
        f /= scaling.factor;
      } else if (wavelen >= high_freq_wavelen) {
        const double smooth = (scaling.original_max_position / wavelen - scaling.low_freq_factor) /
                              (scaling.high_freq_factor - scaling.low_freq_factor);
        f = (1.0 - smooth) * f / scaling.factor + smooth * f;
      }
    }
  }
  return inv_freq;
}

RopeTable BuildRopeTable(double theta, int head_dim, int max_positions, const RopeScaling& scaling) {
  LATAM_CHECK(head_dim > 0 && head_dim % 2 == 0, "RoPE head_dim must be even, got " << head_dim);
  RopeTable table;
  table.head_dim = head_dim;
  table.max_positions = max_positions;
  const int half = head_dim / 2;
  const std::vector<double> inv_freq = RopeInverseFrequencies(theta, head_dim, scaling);
  table.cos.resize(static_cast<size_t>(max_positions) * half);
  table.sin.resize(static_cast<size_t>(max_positions) * half);
  for (int t = 0; t < max_positions; ++t) {
    for (int i = 0; i < half; ++i) {
      const double angle = static_cast<double>(t) * inv_freq[static_cast<size_t>(i)];
      table.cos[static_cast<size_t>(t) * half + i] = static_cast<float>(std::cos(angle));
      table.sin[static_cast<size_t>(t) * half + i] = static_cast<float>(std::sin(angle));
    }
  }
  return table;
}

}  // namespace latam

namespace latam::cpu {

namespace {

// direction = +1 rotates by +angle (forward), -1 by -angle (backward).
// Row m is at position positions[m], or m % seq_len when positions is null.
LATAM_CPU_CLONES
void Rotate(float* x, int64_t rows, int64_t row_width, int seq_len, const int32_t* positions, int n_rot_heads,
            int head_dim, const float* cos_table, const float* sin_table, float direction) {
  const int half = head_dim / 2;
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t t = positions == nullptr ? m % seq_len : static_cast<int64_t>(positions[m]);
    const float* c = cos_table + t * half;
    const float* s = sin_table + t * half;
    for (int h = 0; h < n_rot_heads; ++h) {
      float* lo = x + m * row_width + static_cast<int64_t>(h) * head_dim;
      float* hi = lo + half;
      for (int i = 0; i < half; ++i) {
        const float sn = direction * s[i];
        const float a = lo[i], b = hi[i];
        lo[i] = a * c[i] - b * sn;
        hi[i] = b * c[i] + a * sn;
      }
    }
  }
}

void CheckRope(const Tensor& x, int seq_len, int n_rot_heads, const RopeTable& table, const int32_t* positions) {
  LATAM_CHECK(x.dtype == DType::kF32 && x.device == Device::kCPU, "rope x must be f32 on cpu, got " << x.str());
  LATAM_CHECK(seq_len > 0 && seq_len <= table.max_positions,
              "seq_len " << seq_len << " exceeds the RoPE table (" << table.max_positions << ")");
  LATAM_CHECK(x.shape.rows() % seq_len == 0, "rope rows " << x.shape.rows() << " not a multiple of " << seq_len);
  LATAM_CHECK(static_cast<int64_t>(n_rot_heads) * table.head_dim <= x.shape.cols(),
              n_rot_heads << " heads of " << table.head_dim << " exceed row width " << x.shape.cols());
  if (positions == nullptr) return;
  for (int64_t m = 0; m < x.shape.rows(); ++m) {
    LATAM_CHECK(positions[m] >= 0 && positions[m] < table.max_positions,
                "rope row " << m << " is at position " << positions[m] << ", outside the RoPE table [0, "
                            << table.max_positions << ")");
  }
}

}  // namespace

void RopeForward(const Tensor& x, int seq_len, int n_rot_heads, const RopeTable& table, const int32_t* positions) {
  CheckRope(x, seq_len, n_rot_heads, table, positions);
  Rotate(x.as<float>(), x.shape.rows(), x.shape.cols(), seq_len, positions, n_rot_heads, table.head_dim,
         table.cos.data(), table.sin.data(), 1.0f);
}

void RopeBackward(const Tensor& dx, int seq_len, int n_rot_heads, const RopeTable& table, const int32_t* positions) {
  CheckRope(dx, seq_len, n_rot_heads, table, positions);
  Rotate(dx.as<float>(), dx.shape.rows(), dx.shape.cols(), seq_len, positions, n_rot_heads, table.head_dim,
         table.cos.data(), table.sin.data(), -1.0f);
}

void RopeForwardAt(const Tensor& x, int64_t first_position, int n_rot_heads, const RopeTable& table) {
  LATAM_CHECK(x.dtype == DType::kF32 && x.device == Device::kCPU, "rope x must be f32 on cpu, got " << x.str());
  const int64_t rows = x.shape.rows(), row_width = x.shape.cols(), hd = table.head_dim, half = hd / 2;
  LATAM_CHECK(first_position >= 0 && first_position + rows <= table.max_positions,
              "rows at positions [" << first_position << ", " << first_position + rows << ") exceed the RoPE table ("
                                    << table.max_positions << ")");
  LATAM_CHECK(static_cast<int64_t>(n_rot_heads) * hd <= row_width,
              n_rot_heads << " heads of " << hd << " exceed row width " << row_width);
  float* data = x.as<float>();
  // lo' = lo cos - hi sin,  hi' = hi cos + lo sin  (position first_position + m)
  for (int64_t m = 0; m < rows; ++m) {
    const float* c = table.cos.data() + (first_position + m) * half;
    const float* s = table.sin.data() + (first_position + m) * half;
    for (int64_t h = 0; h < n_rot_heads; ++h) {
      float* lo = data + m * row_width + h * hd;
      float* hi = lo + half;
      for (int64_t i = 0; i < half; ++i) {
        const float a = lo[i], b = hi[i];
        lo[i] = a * c[i] - b * s[i];
        hi[i] = b * c[i] + a * s[i];
      }
    }
  }
}

}  // namespace latam::cpu
