#include "core/tensor.h"

#include <sstream>

namespace latam {

Shape::Shape(std::initializer_list<int64_t> dims) {
  LATAM_CHECK(dims.size() <= static_cast<size_t>(kMaxRank), "rank " << dims.size() << " > " << kMaxRank);
  for (int64_t d : dims) {
    LATAM_CHECK(d >= 0, "negative dimension " << d);
    dims_[static_cast<size_t>(rank_++)] = d;
  }
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank_; ++i) n *= dims_[static_cast<size_t>(i)];
  return n;
}

int64_t Shape::rows() const {
  int64_t n = 1;
  for (int i = 0; i + 1 < rank_; ++i) n *= dims_[static_cast<size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& other) const {
  if (rank_ != other.rank_) return false;
  for (int i = 0; i < rank_; ++i) {
    if (dims_[static_cast<size_t>(i)] != other.dims_[static_cast<size_t>(i)]) return false;
  }
  return true;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < rank_; ++i) os << (i ? ", " : "") << dims_[static_cast<size_t>(i)];
  os << ']';
  return os.str();
}

Tensor Tensor::Reshaped(Shape new_shape) const {
  LATAM_CHECK(new_shape.numel() == numel(), "reshape " << shape.str() << " -> " << new_shape.str());
  return Tensor(data, dtype, new_shape, device);
}

Tensor Tensor::Rows(int64_t begin, int64_t end) const {
  LATAM_CHECK(shape.rank() >= 1 && 0 <= begin && begin <= end && end <= shape[0],
              "rows [" << begin << ", " << end << ") of " << shape.str());
  const int64_t row_elems = shape[0] == 0 ? 0 : numel() / shape[0];
  Shape s = shape;
  // Rebuild the shape with the new outer extent.
  switch (shape.rank()) {
    case 1:
      s = Shape{end - begin};
      break;
    case 2:
      s = Shape{end - begin, shape[1]};
      break;
    case 3:
      s = Shape{end - begin, shape[1], shape[2]};
      break;
    default:
      s = Shape{end - begin, shape[1], shape[2], shape[3]};
      break;
  }
  char* base = static_cast<char*>(data) + static_cast<size_t>(begin * row_elems) * DTypeSize(dtype);
  return Tensor(base, dtype, s, device);
}

std::string Tensor::str() const { return std::string(DTypeName(dtype)) + shape.str() + "@" + DeviceName(device); }

void CheckTensor(const Tensor& t, DType dtype, const Shape& shape, Device device, const char* what) {
  LATAM_CHECK(t.dtype == dtype && t.shape == shape && t.device == device,
              what << ": expected " << Tensor(nullptr, dtype, shape, device).str() << ", got " << t.str());
  LATAM_CHECK(t.data != nullptr || shape.numel() == 0, what << ": null data");
}

}  // namespace latam
