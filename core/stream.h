// Stream: the queue that device work is enqueued on, as a typed handle.
//
// On the CPU there is none (a default Stream): work runs when called. On
// CUDA it wraps a cudaStream_t; a default Stream there means the legacy
// default stream. The handle does not own the stream (ComputeDevice,
// trainer/compute_device.h, creates and destroys it). Declaring CUstream_st
// here keeps the CUDA headers out of every file that passes a stream on.
#pragma once

struct CUstream_st;

namespace latam {

class Stream {
 public:
  Stream() = default;
  explicit Stream(CUstream_st* cuda) : cuda_(cuda) {}
  // The cudaStream_t (nullptr: the legacy default stream).
  CUstream_st* cuda() const { return cuda_; }

 private:
  CUstream_st* cuda_ = nullptr;
};

}  // namespace latam
