// Helpers for the CUDA kernel tests: skipping without a GPU and moving
// vectors to and from device arenas.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <type_traits>
#include <vector>

#include "core/arena.h"
#include "core/cuda_check.h"
#include "kernels/cuda/device.h"

#define LATAM_REQUIRE_GPU()                                                       \
  do {                                                                            \
    if (::latam::cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA GPU visible"; \
  } while (0)

namespace latam::testing {

// A device arena holding a copy of `host`, viewed with `shape`.
template <typename T>
Arena ToDevice(const std::vector<T>& host) {
  Arena a(Device::kCUDA, host.size() * sizeof(T));
  CUDA_CHECK(cudaMemcpy(a.data(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return a;
}

template <typename T>
std::vector<T> ToHost(const Arena& a, size_t n) {
  std::vector<T> host(n);
  CUDA_CHECK(cudaMemcpy(host.data(), a.data(), n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

template <typename T>
Tensor View(const Arena& a, Shape shape) {
  return a.View(0, DTypeOf<T>::value, shape);
}

inline std::vector<BF16> ToBF16(const std::vector<float>& v) {
  std::vector<BF16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = BF16::FromFloat(v[i]);
  return out;
}

inline std::vector<float> ToFloat(const std::vector<BF16>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = v[i].ToFloat();
  return out;
}

// Test values as elements of T (f32 or bf16, rounded to nearest even), and back.
template <typename T>
std::vector<T> FromFloats(const std::vector<float>& v) {
  if constexpr (std::is_same_v<T, BF16>) {
    return ToBF16(v);
  } else {
    return v;
  }
}

template <typename T>
std::vector<float> ToFloats(const std::vector<T>& v) {
  if constexpr (std::is_same_v<T, BF16>) {
    return ToFloat(v);
  } else {
    return v;
  }
}

// The values of v as T holds them.
template <typename T>
std::vector<float> RoundTo(const std::vector<float>& v) {
  return ToFloats(FromFloats<T>(v));
}

// Every byte 0xff: a NaN in f32 and bf16 (-1 in int32), so an element a
// kernel leaves unwritten fails the comparison.
inline constexpr unsigned char kPoison = 0xff;
inline void Poison(const Arena& a) { CUDA_CHECK(cudaMemset(a.data(), kPoison, a.size())); }

// A poisoned device arena holding `host` from byte `offset` on (an offset
// that is not a multiple of 16 misaligns the data for vector accesses), and
// n elements read back from byte `offset`.
template <typename T>
Arena ToDeviceAt(const std::vector<T>& host, size_t offset) {
  Arena a(Device::kCUDA, offset + host.size() * sizeof(T));
  Poison(a);
  CUDA_CHECK(
      cudaMemcpy(static_cast<char*>(a.data()) + offset, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return a;
}

template <typename T>
std::vector<T> ToHostAt(const Arena& a, size_t offset, size_t n) {
  std::vector<T> host(n);
  CUDA_CHECK(
      cudaMemcpy(host.data(), static_cast<const char*>(a.data()) + offset, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// Poisoned bytes on each side of a GuardedBuffer's data.
inline constexpr size_t kGuardBytes = 64;

// n elements of T on the device, inside an arena whose other bytes are all
// kPoison (the elements too, until written). misalign moves the data one
// element off 16-byte alignment, which rules out the vectorised path.
template <typename T>
class GuardedBuffer {
 public:
  GuardedBuffer(size_t n, bool misalign)
      : n_(n),
        offset_(kGuardBytes + (misalign ? sizeof(T) : 0)),
        arena_(Device::kCUDA, offset_ + n * sizeof(T) + kGuardBytes) {
    Poison(arena_);
  }
  GuardedBuffer(const std::vector<T>& host, bool misalign) : GuardedBuffer(host.size(), misalign) { Write(host); }

  Tensor View() const { return View(Shape{static_cast<int64_t>(n_)}); }
  Tensor View(Shape shape) const { return arena_.View(offset_, DTypeOf<T>::value, shape); }

  void Write(const std::vector<T>& host) const {
    LATAM_CHECK(host.size() == n_, "buffer of " << n_ << " elements written with " << host.size());
    CUDA_CHECK(cudaMemcpy(Data(), host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Read() const {
    std::vector<T> host(n_);
    CUDA_CHECK(cudaMemcpy(host.data(), Data(), n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

  ::testing::AssertionResult GuardsIntact() const {
    std::vector<unsigned char> bytes(arena_.size());
    CUDA_CHECK(cudaMemcpy(bytes.data(), arena_.data(), bytes.size(), cudaMemcpyDeviceToHost));
    const size_t end = offset_ + n_ * sizeof(T);
    for (size_t i = 0; i < bytes.size(); ++i) {
      if ((i < offset_ || i >= end) && bytes[i] != kPoison) {
        return ::testing::AssertionFailure()
               << "byte " << i << " outside the data [" << offset_ << ", " << end << ") was written";
      }
    }
    return ::testing::AssertionSuccess();
  }

 private:
  void* Data() const { return static_cast<char*>(arena_.data()) + offset_; }

  size_t n_;
  size_t offset_;
  Arena arena_;
};

}  // namespace latam::testing
