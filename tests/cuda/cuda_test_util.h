// Helpers for the CUDA kernel tests: skipping without a GPU and moving
// vectors to and from device arenas.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <vector>

#include "kernels/arena.h"
#include "kernels/cuda/cuda_check.h"
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

}  // namespace latam::testing
