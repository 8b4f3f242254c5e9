// Element types and devices: the one DType enum every layer uses (file
// formats map their own codes onto it), where memory lives, and the host
// bfloat16 value type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace latam {

enum class DType : uint8_t {
  kF32,   // IEEE float32
  kBF16,  // bfloat16 (top 16 bits of a float32), see BF16 below
  kI32,   // int32 token ids and indices
};

size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);

enum class Device : uint8_t { kCPU, kCUDA };
const char* DeviceName(Device device);

// Host-side bfloat16 value. Conversion from float rounds to nearest, ties to
// even, and keeps NaNs quiet; conversion to float is exact.
struct BF16 {
  uint16_t bits = 0;

  static BF16 FromFloat(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    BF16 out;
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN
      out.bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
      return out;
    }
    const uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
    out.bits = static_cast<uint16_t>((u + rounding_bias) >> 16);
    return out;
  }
  float ToFloat() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
  }
};

template <typename T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::kF32;
};
template <>
struct DTypeOf<BF16> {
  static constexpr DType value = DType::kBF16;
};
template <>
struct DTypeOf<int32_t> {
  static constexpr DType value = DType::kI32;
};

}  // namespace latam
