#include "core/block.h"

#include <algorithm>

namespace latam {

int64_t Block::numel() const {
  int64_t n = 1;
  for (int64_t e : extent) n *= e;
  return n;
}

std::string Block::ToString() const {
  std::string s = "[";
  for (size_t d = 0; d < offset.size(); ++d) {
    if (d > 0) s += ", ";
    s += std::to_string(offset[d]) + ":" + std::to_string(offset[d] + extent[d]);
  }
  return s + "]";
}

Block WholeBlock(const std::vector<int64_t>& shape) { return Block{std::vector<int64_t>(shape.size(), 0), shape}; }

std::optional<Block> Intersect(const Block& a, const Block& b) {
  if (a.offset.size() != b.offset.size()) return std::nullopt;
  Block r;
  for (size_t d = 0; d < a.offset.size(); ++d) {
    const int64_t lo = std::max(a.offset[d], b.offset[d]);
    const int64_t hi = std::min(a.offset[d] + a.extent[d], b.offset[d] + b.extent[d]);
    if (lo >= hi) return std::nullopt;
    r.offset.push_back(lo);
    r.extent.push_back(hi - lo);
  }
  return r;
}

std::vector<std::pair<Block, int64_t>> FlatRangeBlocks(const Block& origin, int64_t begin, int64_t end) {
  std::vector<std::pair<Block, int64_t>> out;  // block, first flat element
  if (origin.extent.size() == 1) {
    out.push_back({Block{{origin.offset[0] + begin}, {end - begin}}, begin});
    return out;
  }
  const int64_t cols = origin.extent[1];
  auto rect = [&](int64_t row, int64_t rows, int64_t col, int64_t ncols) {
    out.push_back({Block{{origin.offset[0] + row, origin.offset[1] + col}, {rows, ncols}}, row * cols + col});
  };
  int64_t pos = begin;
  if (pos % cols != 0) {
    const int64_t row = pos / cols, col = pos % cols;
    const int64_t n = std::min(cols - col, end - pos);
    rect(row, 1, col, n);
    pos += n;
  }
  if (end - pos >= cols) {
    const int64_t rows = (end - pos) / cols;
    rect(pos / cols, rows, 0, cols);
    pos += rows * cols;
  }
  if (pos < end) rect(pos / cols, 1, 0, end - pos);
  return out;
}

}  // namespace latam
