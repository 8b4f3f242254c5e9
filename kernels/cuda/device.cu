#include "kernels/cuda/device.h"

#include <cuda_runtime.h>

namespace latam::cuda {

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
}

}  // namespace latam::cuda
