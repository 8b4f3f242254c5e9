// ComputeDevice: the GPU one rank trains on, and its compute stream.
//
// Open() binds the calling process to GPU number local_rank of its node
// (every rank needs a GPU of its own), creates one non-blocking compute
// stream, and returns InvalidInput naming the rank when the build has no CUDA
// or the node has fewer visible GPUs than ranks, or when `attention`
// (train.attention) is a wgmma choice and the GPU is not compute capability
// 9.0. The
// stream is handed to the model's kernels, the parameter arenas and the NCCL
// communicators, so that everything of a step is ordered on it (the
// communicators order their own streams after it with events). The
// destructor waits for the stream and destroys it.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "core/stream.h"
#include "model/model_ops.h"

namespace latam {

class ComputeDevice {
 public:
  // Binds GPU `local_rank` of this node; `world_rank` names the rank in errors.
  static Result<std::unique_ptr<ComputeDevice>> Open(int local_rank, int local_size, int world_rank,
                                                     AttentionChoice attention);
  ~ComputeDevice();
  ComputeDevice(const ComputeDevice&) = delete;
  ComputeDevice& operator=(const ComputeDevice&) = delete;

  int ordinal() const { return ordinal_; }
  // "NVIDIA H100 80GB HBM3 (compute capability 9.0)", for logs.
  std::string Describe() const;
  // The compute stream, a cudaStream_t.
  Stream stream() const { return Stream(stream_); }
  // Waits until everything enqueued on the stream has run.
  void Synchronize() const;
  // Peak dense throughput of this GPU for `bf16` (tensor cores) or fp32
  // operands, in FLOP/s, for MFU: LATAM_PEAK_TFLOPS when set, else H100/H200
  // SXM's 989 TFLOP/s (bf16) or 67 TFLOP/s (fp32).
  static double PeakFlops(bool bf16);
  // The most device memory in use at any SampleMemory() call: total - free
  // from cudaMemGetInfo, so it includes the CUDA context, cuBLASLt and NCCL
  // buffers, and anything else on the same GPU.
  size_t PeakMemoryBytes() const;
  // Records the current use into the peak.
  void SampleMemory();

 private:
  ComputeDevice() = default;
  int ordinal_ = 0;
  CUstream_st* stream_ = nullptr;
  size_t peak_used_ = 0;
};

}  // namespace latam
