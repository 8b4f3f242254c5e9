// Pieces shared by the tensor-core attention kernels (forward in
// flash_attention.cu, backward in flash_attention_backward.cu). Internal to
// kernels/cuda.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/attention.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/mma.cuh"
#include "core/tensor.h"

// In emulation builds cuda_bf16.h and cuda_runtime.h (through cuda_check.h)
// are kernels/cuda/emulation/include's.
#include <cuda_bf16.h>

#include "core/cuda_check.h"

namespace latam::cuda::flash {

constexpr int kBlockM = 64;  // query rows per tile (4 warps x 16 rows)
constexpr int kBlockN = 64;  // keys per tile
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;

// Index arithmetic: element offsets into qkv (row-major [B*T, row_stride])
// and out / dout ([B*T, out_stride]).
struct FlashGeometry {
  int batch;
  int seq_len;
  int n_heads;         // query heads
  int group;           // query heads per KV head
  int64_t row_stride;  // elements per token row of qkv
  int64_t k_col;       // first column of the key heads
  int64_t v_col;       // first column of the value heads
  int64_t out_stride;  // elements per token row of out
  float scale;         // 1 / sqrt(head_dim)
  float scale_log2;    // log2(e) / sqrt(head_dim)
  bool causal;
  // Document masking (kernels/attention.h): null, or [batch * seq_len] with
  // the position where each token's document begins; implies causal. Key j
  // is visible to query i iff doc_start[i] <= j <= i.
  const int32_t* doc_start;

  // The start of the document holding token t of batch b (0 without
  // document masking). t < seq_len.
  __device__ __forceinline__ int DocStart(int b, int t) const {
    return doc_start == nullptr ? 0 : doc_start[static_cast<int64_t>(b) * seq_len + t];
  }
  // One past the last token of the document holding token t of batch b:
  // the queries that see key t are exactly [t, DocumentEnd(b, t)). doc_start
  // never decreases along a sequence, so this is the first position after t
  // whose document starts after t, found by binary search (seq_len without
  // document masking).
  __device__ __forceinline__ int DocumentEnd(int b, int t) const {
    if (doc_start == nullptr) return seq_len;
    const int32_t* row = doc_start + static_cast<int64_t>(b) * seq_len;
    int lo = t + 1, hi = seq_len;
    while (lo < hi) {
      const int mid = lo + (hi - lo) / 2;
      if (row[mid] > t) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return lo;
  }

  // The first qkv column of the key / value head that query head h reads
  // (GQA: `group` consecutive query heads share one), for head dim hd.
  __host__ __device__ int64_t KeyColumn(int h, int hd) const { return k_col + static_cast<int64_t>(h / group) * hd; }
  __host__ __device__ int64_t ValueColumn(int h, int hd) const {
    return v_col + static_cast<int64_t>(h / group) * hd;
  }
};

inline FlashGeometry MakeFlashGeometry(const AttentionDims& d, bool causal) {
  FlashGeometry g;
  g.batch = d.batch;
  g.seq_len = d.seq_len;
  g.n_heads = d.n_heads;
  g.group = d.n_heads / d.n_kv_heads;
  g.row_stride = static_cast<int64_t>(d.n_heads + 2 * d.n_kv_heads) * d.head_dim;
  g.k_col = static_cast<int64_t>(d.n_heads) * d.head_dim;
  g.v_col = static_cast<int64_t>(d.n_heads + d.n_kv_heads) * d.head_dim;
  g.out_stride = static_cast<int64_t>(d.n_heads) * d.head_dim;
  g.scale = 1.0f / std::sqrt(static_cast<float>(d.head_dim));
  g.scale_log2 = g.scale * 1.4426950408889634f;
  g.causal = causal;
  g.doc_start = d.doc_start;
  return g;
}

// Fatal checks of the shapes, dtypes and alignment every entry point shares.
void CheckFlashTensors(const Tensor& qkv, const AttentionDims& d, const Tensor& out, const Tensor& lse);
// Fatal unless document masking (d.doc_start) comes with `causal` and the
// mma.sync kernels (`wgmma` false): the wgmma kernels do not implement it.
void CheckDocuments(const AttentionDims& d, bool causal, bool wgmma);

// The block's dynamic shared memory (cuda::DynamicShared in launch.cuh).
__device__ __forceinline__ unsigned char* DynamicShared() { return cuda::DynamicShared<unsigned char>(); }

// Starts cp.async copies of rows [row0, row0 + kRows) of one head (kHd
// columns, rows `stride` elements apart from `src`) into a swizzled tile;
// rows at or past `rows_valid` are zero-filled. The caller commits and waits.
template <int kHd, int kRows>
__device__ __forceinline__ void LoadTile(__nv_bfloat16* tile, const __nv_bfloat16* src, int64_t stride, int row0,
                                         int rows_valid) {
  constexpr int kChunks = kHd / 8;
  for (int i = static_cast<int>(threadIdx.x); i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = row0 + r < rows_valid;
    const __nv_bfloat16* from = valid ? src + static_cast<int64_t>(row0 + r) * stride + c * 8 : src;
    mma::CpAsync16(tile + mma::Swizzle<kHd>(r, c), from, valid);
  }
}

// Opts a kernel into more than the default 48 KB of dynamic shared memory.
template <typename Kernel>
void AllowSharedBytes(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }
}

}  // namespace latam::cuda::flash
