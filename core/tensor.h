// Tensor: a non-owning, typed, shaped view of contiguous row-major memory on
// one device.
//
// A Tensor never owns its memory: Arenas (arena.h) do. Views are cheap value
// types that are passed to kernels by value. Shapes have at most 4 dimensions
// and are always contiguous row-major (the last dimension varies fastest).
// Kernels check the dtype, shape and device of their arguments with
// LATAM_CHECK: a mismatch is a programmer error.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>

#include "core/check.h"
#include "core/dtype.h"

namespace latam {

class Shape {
 public:
  static constexpr int kMaxRank = 4;

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);

  int rank() const { return rank_; }
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(i)]; }
  int64_t numel() const;
  // Product of all dimensions but the last (the number of rows of a 2-D view).
  int64_t rows() const;
  // The last dimension (1 for a scalar).
  int64_t cols() const { return rank_ == 0 ? 1 : dims_[static_cast<size_t>(rank_ - 1)]; }
  bool operator==(const Shape& other) const;
  bool operator!=(const Shape& other) const { return !(*this == other); }
  std::string str() const;  // "[2, 3]"

 private:
  std::array<int64_t, kMaxRank> dims_{};
  int rank_ = 0;
};

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::kF32;
  Shape shape;
  Device device = Device::kCPU;

  Tensor() = default;
  Tensor(void* data_in, DType dtype_in, Shape shape_in, Device device_in = Device::kCPU)
      : data(data_in), dtype(dtype_in), shape(shape_in), device(device_in) {}

  template <typename T>
  static Tensor Of(T* data, Shape shape, Device device = Device::kCPU) {
    return Tensor(static_cast<void*>(data), DTypeOf<T>::value, shape, device);
  }

  int64_t numel() const { return shape.numel(); }
  size_t bytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }

  // Typed pointer; aborts if T does not match the dtype.
  template <typename T>
  T* as() const {
    LATAM_CHECK(DTypeOf<T>::value == dtype,
                "tensor holds " << DTypeName(dtype) << ", accessed as " << DTypeName(DTypeOf<T>::value));
    return static_cast<T*>(data);
  }

  // Same memory, another shape with the same number of elements.
  Tensor Reshaped(Shape new_shape) const;
  // Rows [begin, end) of the outermost dimension.
  Tensor Rows(int64_t begin, int64_t end) const;
  std::string str() const;  // "f32[2, 3]@cpu"
};

// Checks (fatally) that `t` has the expected dtype, shape and device.
void CheckTensor(const Tensor& t, DType dtype, const Shape& shape, Device device, const char* what);

}  // namespace latam
