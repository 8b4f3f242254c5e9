// Kernel launches and dynamic shared memory, written once for the device and
// for the host emulation (kernels/cuda/simt_emulation.h, LATAM_CUDA_EMULATION).
//
//   Launch(Kernel<...>, grid, block, shared_bytes, stream, args...)
// is kernel<<<grid, block, shared_bytes, stream>>>(args...) on the device; in
// emulation it runs the kernel on the host and returns when it is done.
// DynamicShared<T>() is the block's dynamic shared memory (the
// `extern __shared__` array) as T*.
#pragma once

#include <cstddef>
#include <utility>

// In emulation builds this is kernels/cuda/emulation/include/cuda_runtime.h.
#include <cuda_runtime.h>

#ifdef LATAM_CUDA_EMULATION
#include "kernels/cuda/simt_emulation.h"
#endif

namespace latam::cuda {

template <typename... Params, typename... Args>
inline void Launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   Args&&... args) {
#ifdef LATAM_CUDA_EMULATION
  (void)stream;
  simt::Launch(simt::Dim3{grid.x, grid.y, grid.z}, simt::Dim3{block.x, block.y, block.z}, shared_bytes,
               [&] { kernel(args...); });
#else
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
}

template <typename T>
__device__ __forceinline__ T* DynamicShared() {
#ifdef LATAM_CUDA_EMULATION
  return reinterpret_cast<T*>(simt::SharedMemory());
#else
  extern __shared__ __align__(128) unsigned char dynamic_shared[];
  return reinterpret_cast<T*>(dynamic_shared);
#endif
}

}  // namespace latam::cuda
