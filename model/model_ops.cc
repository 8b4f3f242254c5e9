#include "model/model_ops.h"

#include <string>

#include "core/check.h"

namespace latam {

const char* AttentionChoiceName(AttentionChoice choice) {
  switch (choice) {
    case AttentionChoice::kAuto:
      return "auto";
    case AttentionChoice::kSimple:
      return "simple";
    case AttentionChoice::kWgmma:
      return "wgmma";
    case AttentionChoice::kWgmmaTma:
      return "wgmma_tma";
  }
  return "?";
}

std::string AttentionKernelsName(AttentionChoice choice, bool tensor_core) {
  if (!tensor_core || choice == AttentionChoice::kSimple) return "simple";
  if (choice == AttentionChoice::kWgmma) return "tensor-core, wgmma forward and backward";
  if (choice == AttentionChoice::kWgmmaTma) return "tensor-core, wgmma+TMA forward, wgmma backward";
  return "tensor-core, mma.sync forward and backward";
}

void CheckStridedOperands(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                          const ModelOps::GemmOperand& a, const ModelOps::GemmOperand& b,
                          const ModelOps::GemmOperand& c) {
  // A row-major block of `rows` x `cols` with row stride ld from `offset`
  // ends at element offset + (rows - 1) ld + cols.
  auto check = [](const char* what, const ModelOps::GemmOperand& o, int64_t rows, int64_t cols) {
    LATAM_CHECK(o.offset >= 0 && cols <= o.ld,
                "GEMM operand " << what << ": offset " << o.offset << ", " << cols << " columns, ld " << o.ld);
    LATAM_CHECK(rows == 0 || o.offset + (rows - 1) * o.ld + cols <= o.t.numel(),
                "GEMM operand " << what << " [" << rows << ", " << cols << "] from element " << o.offset
                                << " with ld " << o.ld << " overruns its " << o.t.numel() << " elements");
  };
  LATAM_CHECK(m >= 0 && n >= 0 && k >= 0, "GEMM sizes " << m << " x " << n << " x " << k);
  check("A", a, trans_a ? k : m, trans_a ? m : k);
  check("B", b, trans_b ? n : k, trans_b ? k : n);
  check("C", c, m, n);
  LATAM_CHECK(a.t.device == c.t.device && b.t.device == c.t.device, "GEMM operands on different devices");
}

size_t OpsWorkspaceBytes(Device device, const OpsShape& shape) {
  if (device == Device::kCPU) return CpuOpsWorkspaceBytes(shape);
#ifdef LATAM_HAVE_CUDA
  return CudaOpsWorkspaceBytes(shape);
#else
  return 0;  // a build without CUDA cannot size (or allocate) them
#endif
}

#ifndef LATAM_HAVE_CUDA
std::unique_ptr<ModelOps> MakeCudaOps(const OpsShape&, const RopeTable&, DType, Stream, AttentionChoice) {
  LATAM_CHECK(false, "train.device=cuda needs a build with CUDA (configure with LATAM_CUDA=ON)");
  return nullptr;
}
#endif

}  // namespace latam
