#include "kernels/cuda/simt_emulation.h"

#include <thread>

#include "kernels/check.h"

thread_local latam::simt::Dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace latam::simt {

namespace {
thread_local Block* current_block = nullptr;
}  // namespace

Block& CurrentBlock() { return *current_block; }
unsigned char* SharedMemory() { return current_block->shared.data(); }

void Launch(Dim3 grid, Dim3 block, size_t shared_bytes, const std::function<void()>& body) {
  LATAM_CHECK(block.y == 1 && block.z == 1 && block.x % 32 == 0, "emulated kernels take 1-D blocks of whole warps");
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        Block b(block.x);
        b.shared.assign(shared_bytes, 0);
        std::vector<std::thread> threads;
        threads.reserve(block.x);
        for (unsigned t = 0; t < block.x; ++t) {
          threads.emplace_back([&, t] {
            threadIdx = Dim3{t, 1, 1};
            blockIdx = Dim3{x, y, z};
            blockDim = block;
            gridDim = grid;
            current_block = &b;
            body();
          });
        }
        for (std::thread& t : threads) t.join();
      }
    }
  }
}

}  // namespace latam::simt
