// Token embedding on the GPU: the CUDA twin of kernels/embedding.h (same
// vocabulary-shard semantics).
//
// ids[M] are int32; table[V_local, D] holds the rows of token ids
// [vocab_begin, vocab_begin + V_local):
//   out[m, :] = table[ids[m] - vocab_begin, :]   if the id is in the shard
//               0                                 otherwise
// Forward: table and out share one dtype, f32 or bf16; out is overwritten
// (a plain copy, so bit-exact). Backward: dout is f32 or bf16, dtable is
// f32 and accumulated: dtable[ids[m] - vocab_begin, :] += dout[m, :].
// Loads and stores are 16 bytes wide when D allows it. All work is enqueued
// on `stream`; nothing is allocated.
//
// The backward is deterministic and uses no float atomics. It sorts the
// keys (local id << 32 | token index) of the shard's tokens into a
// caller-owned int32 workspace of EmbeddingBackwardWorkspaceElems(M)
// elements (8-byte aligned; it holds next_pow2(M) 64-bit keys). The keys are
// unique, so the sorted order is unique: every token of one id comes out in
// token order. Then each run of equal ids is summed by its own blocks,
// starting from the current dtable row and adding dout rows in token order:
// the same fp32 additions in the same order as the CPU kernel, so for equal
// inputs the result is bitwise equal to it and to itself on every run.
// Cost: a bitonic sort of next_pow2(M) keys (O(M log^2 M) compare-exchanges
// in 1 + L(L+3)/2 launches, L = log2(next_pow2(M) / 2048) or 0 for
// M <= 2048, e.g. 10 launches for M = 16384), then one read of dout and one
// read-modify-write of each touched dtable row. Each column band (128 packs:
// 512 f32 or 1024 bf16 columns, 128 on the scalar path) of an id's row is
// summed serially by one block, so the latency grows with the longest run
// of one id (its n dout rows are read with independent loads).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/tensor.h"

namespace latam::cuda {

// out is overwritten.
void EmbeddingForward(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out,
                      cudaStream_t stream);

// int32 elements of the backward's workspace for `tokens` ids.
int64_t EmbeddingBackwardWorkspaceElems(int64_t tokens);

// dtable is accumulated; workspace (int32, device) is scratch.
void EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin, const Tensor& dtable,
                       const Tensor& workspace, cudaStream_t stream);

}  // namespace latam::cuda
