// Device discovery for the CUDA backend.
#pragma once

namespace latam::cuda {

// Number of CUDA devices this process can use; 0 when there is no driver or
// no GPU (never aborts), so tests can skip cleanly on CPU-only machines.
int DeviceCount();

}  // namespace latam::cuda
