// A rectangular block of a global tensor, and the pieces of state a rank
// holds, described as blocks: what checkpoints read and write.
//
// A Block is elements [offset[d], offset[d] + extent[d]) of every dimension
// d of a tensor. A StatePiece is one such block of a named global tensor in
// live memory (host or device), row-major over block.extent; the model
// lists its parameters and optimizer state as pieces (model/state.h) and the
// checkpoint code (checkpoint/state.h) saves and loads pieces without
// knowing what they are.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace latam {

struct Block {
  std::vector<int64_t> offset;
  std::vector<int64_t> extent;
  int64_t numel() const;
  std::string ToString() const;  // "[0:4, 8:16]"
};

// The whole tensor of `shape`.
Block WholeBlock(const std::vector<int64_t>& shape);
// The common part of two blocks of the same tensor, if any.
std::optional<Block> Intersect(const Block& a, const Block& b);

// Splits flat elements [begin, end) of a block `origin` (1-D or 2-D, its
// elements row-major) into at most three rectangles in the tensor's
// coordinates: a partial first row, whole rows, a partial last row. Each
// comes with the flat index (within origin) of its first element.
std::vector<std::pair<Block, int64_t>> FlatRangeBlocks(const Block& origin, int64_t begin, int64_t end);

// One block of a rank's state.
struct StatePiece {
  std::string name;  // global tensor name
  std::vector<int64_t> global_shape;
  Block block;
  float* data = nullptr;  // the block's elements, row-major, in live memory
  bool saved_here = false;  // this rank's copy is the one written (every element is stored once)
  bool moment = false;      // optimizer state, not a parameter
  Device device = Device::kCPU;  // where `data` lives
};

}  // namespace latam
