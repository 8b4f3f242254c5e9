#include "kernels/cuda/embedding.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda_check.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/vec.cuh"

namespace latam::cuda {

namespace {

constexpr int kForwardThreads = 128;
// Threads per column band of the backward; a band is kBandThreads packs wide.
constexpr int kBandThreads = 128;
// Blocks along the sorted keys in the backward (grid-stride beyond that).
constexpr int64_t kMaxBackwardBlocks = 2048;
// Keys of a run of equal ids read per step of the backward.
constexpr int kRunChunk = 32;
constexpr int kSortThreads = 1024;
// Keys sorted in shared memory by one block (16 KB).
constexpr int kSortTile = 2 * kSortThreads;
constexpr int kStepThreads = 256;
// Tokens outside the shard and the padding up to a power of two sort last.
constexpr uint64_t kNoKey = ~uint64_t{0};

bool Aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

int64_t NextPow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// One block per token row. kVec: 16-byte packs when D is a multiple of the
// pack size (and the pointers are 16-byte aligned), else scalar.
template <typename T, bool kVec>
__global__ void EmbeddingForwardKernel(const int32_t* __restrict__ ids, const T* __restrict__ table,
                                       T* __restrict__ out, int64_t vocab_begin, int64_t v_local, int d) {
  const int64_t row = blockIdx.x;
  const int64_t local = static_cast<int64_t>(ids[row]) - vocab_begin;
  const bool in_shard = local >= 0 && local < v_local;
  const T* src = table + (in_shard ? local : 0) * d;
  T* dst = out + row * d;
  if constexpr (kVec) {
    constexpr int kN = Pack<T>::kN;
    Pack<T> zero;
#pragma unroll
    for (int k = 0; k < kN; ++k) zero.v[k] = FromFloat<T>(0.0f);
    for (int i = threadIdx.x * kN; i < d; i += blockDim.x * kN) {
      *reinterpret_cast<Pack<T>*>(dst + i) = in_shard ? *reinterpret_cast<const Pack<T>*>(src + i) : zero;
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = in_shard ? src[i] : FromFloat<T>(0.0f);
  }
}

// keys[p] = (local id << 32) | p for the tokens in the shard; kNoKey for the
// others and for the padding p >= M. The keys are unique.
__global__ void SortKeysInitKernel(const int32_t* __restrict__ ids, int64_t m, int64_t vocab_begin, int64_t v_local,
                                   uint64_t* __restrict__ keys, int64_t n_keys) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= n_keys) return;
  uint64_t key = kNoKey;
  if (p < m) {
    const int64_t local = static_cast<int64_t>(ids[p]) - vocab_begin;
    if (local >= 0 && local < v_local) key = (static_cast<uint64_t>(local) << 32) | static_cast<uint64_t>(p);
  }
  keys[p] = key;
}

// Bitonic sort, ascending, of n (a power of two) keys. Stage (k, j), for
// k = 2, 4, ..., n and then j = k/2, ..., 1, orders every pair (i, i + j)
// with bit j of i clear: ascending when bit k of i is clear, descending
// otherwise. Pair t of a stage is i = (t with a zero bit inserted at j).
__device__ __forceinline__ int64_t PairIndex(int64_t t, int64_t j) { return ((t & ~(j - 1)) << 1) | (t & (j - 1)); }

__device__ __forceinline__ void CompareExchange(uint64_t& a, uint64_t& b, bool ascending) {
  if ((a > b) == ascending) {
    const uint64_t tmp = a;
    a = b;
    b = tmp;
  }
}

// One stage (k, j < tile) over the tile in shared memory starting at global key index `base`.
__device__ __forceinline__ void SharedStage(uint64_t* s, int tile, int64_t base, int64_t k, int j) {
  for (int t = threadIdx.x; t < tile / 2; t += blockDim.x) {
    const int i = static_cast<int>(PairIndex(t, j));
    CompareExchange(s[i], s[i + j], ((base + i) & k) == 0);
  }
  __syncthreads();
}

// Block b holds keys [b * tile, (b + 1) * tile) in shared memory and runs
// every stage k <= tile when k_merge == 0; otherwise the stages j < tile of
// stage k_merge (> tile), which only pair keys inside one tile.
__global__ void BitonicTileKernel(uint64_t* __restrict__ keys, int tile, int64_t k_merge) {
  __shared__ uint64_t s[kSortTile];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * tile;
  for (int i = threadIdx.x; i < tile; i += blockDim.x) s[i] = keys[base + i];
  __syncthreads();
  if (k_merge == 0) {
    for (int k = 2; k <= tile; k <<= 1) {
      for (int j = k >> 1; j > 0; j >>= 1) SharedStage(s, tile, base, k, j);
    }
  } else {
    for (int j = tile >> 1; j > 0; j >>= 1) SharedStage(s, tile, base, k_merge, j);
  }
  for (int i = threadIdx.x; i < tile; i += blockDim.x) keys[base + i] = s[i];
}

// One stage (k, j >= tile) in global memory, one thread per pair.
__global__ void BitonicGlobalStepKernel(uint64_t* __restrict__ keys, int64_t n_keys, int64_t k, int64_t j) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= n_keys / 2) return;
  const int64_t i = PairIndex(t, j);
  uint64_t a = keys[i], b = keys[i + j];
  CompareExchange(a, b, (i & k) == 0);
  keys[i] = a;
  keys[i + j] = b;
}

void SortKeys(uint64_t* keys, int64_t n_keys, cudaStream_t stream) {
  const int tile = static_cast<int>(std::min<int64_t>(n_keys, kSortTile));
  const int64_t n_tiles = n_keys / tile;
  Launch(BitonicTileKernel, n_tiles, kSortThreads, 0, stream, keys, tile, 0);
  CUDA_CHECK_LAUNCH();
  const int64_t step_blocks = (n_keys / 2 + kStepThreads - 1) / kStepThreads;
  for (int64_t k = 2 * static_cast<int64_t>(tile); k <= n_keys; k <<= 1) {
    for (int64_t j = k >> 1; j >= tile; j >>= 1) {
      Launch(BitonicGlobalStepKernel, step_blocks, kStepThreads, 0, stream, keys, n_keys, k, j);
      CUDA_CHECK_LAUNCH();
    }
    Launch(BitonicTileKernel, n_tiles, kSortThreads, 0, stream, keys, tile, k);
    CUDA_CHECK_LAUNCH();
  }
}

template <int kN>
__device__ __forceinline__ void LoadF32(const float* p, float (&v)[kN]) {
  if constexpr (kN % 4 == 0) {
#pragma unroll
    for (int k = 0; k < kN; k += 4) {
      const Pack<float> q = *reinterpret_cast<const Pack<float>*>(p + k);
#pragma unroll
      for (int e = 0; e < 4; ++e) v[k + e] = q.v[e];
    }
  } else {
#pragma unroll
    for (int k = 0; k < kN; ++k) v[k] = p[k];
  }
}

template <int kN>
__device__ __forceinline__ void StoreF32(float* p, const float (&v)[kN]) {
  if constexpr (kN % 4 == 0) {
#pragma unroll
    for (int k = 0; k < kN; k += 4) {
      Pack<float> q;
#pragma unroll
      for (int e = 0; e < 4; ++e) q.v[e] = v[k + e];
      *reinterpret_cast<Pack<float>*>(p + k) = q;
    }
  } else {
#pragma unroll
    for (int k = 0; k < kN; ++k) p[k] = v[k];
  }
}

// Over the sorted keys: block x visits positions p = x, x + gridDim.x, ...
// and skips every p that does not start a run of equal ids. For a run
// start, the block's column band c (blockIdx.y) of the id's dtable row gets
//   dtable[v, c] = ((dtable[v, c] + dout[t1, c]) + dout[t2, c]) + ...
// with t1 < t2 < ... the run's tokens (the key order), in fp32 registers.
// The run's token indices are staged in shared memory kRunChunk at a time,
// so the dout loads of a long run are independent of one another.
template <typename T, bool kVec>
__global__ void EmbeddingBackwardKernel(const uint64_t* __restrict__ keys, int64_t n_keys, const T* __restrict__ dout,
                                        float* __restrict__ dtable, int d) {
  constexpr int kN = kVec ? Pack<T>::kN : 1;
  __shared__ int32_t tokens[kRunChunk];
  const int64_t c = (static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x) * kN;
  const bool active = c < d;
  for (int64_t p = blockIdx.x; p < n_keys; p += gridDim.x) {
    const uint64_t key = keys[p];
    const uint64_t id = key >> 32;
    if (key == kNoKey) break;  // sorted: only padding follows
    if (p > 0 && (keys[p - 1] >> 32) == id) continue;
    float acc[kN] = {};  // loaded below where active
    float* dst = dtable + static_cast<int64_t>(id) * d + c;
    if (active) LoadF32<kN>(dst, acc);
    for (int64_t q0 = p;; q0 += kRunChunk) {
      const int64_t q = q0 + threadIdx.x;
      const uint64_t kq = threadIdx.x < kRunChunk && q < n_keys ? keys[q] : kNoKey;
      const bool same = (kq >> 32) == id;
      if (threadIdx.x < kRunChunk) tokens[threadIdx.x] = static_cast<int32_t>(kq & 0xffffffffu);
      // The run is a prefix of this chunk: `count` keys of it lie here.
      const int count = __syncthreads_count(same);
      if (active) {
#pragma unroll 8
        for (int r = 0; r < count; ++r) {
          const T* src = dout + static_cast<int64_t>(tokens[r]) * d + c;
          if constexpr (kVec) {
            const Pack<T> g = *reinterpret_cast<const Pack<T>*>(src);
#pragma unroll
            for (int k = 0; k < kN; ++k) acc[k] += ToFloat(g.v[k]);
          } else {
            acc[0] += ToFloat(*src);
          }
        }
      }
      __syncthreads();  // `tokens` is rewritten by the next chunk
      if (count < kRunChunk) break;
    }
    if (active) StoreF32<kN>(dst, acc);
  }
}

template <typename T>
void LaunchForward(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out,
                   cudaStream_t stream) {
  const int64_t m = ids.numel(), v_local = table.shape[0];
  const int d = static_cast<int>(table.shape.cols());
  if (m == 0 || d == 0) return;
  const bool vec = d % Pack<T>::kN == 0 && Aligned16(table.data) && Aligned16(out.data);
  const int32_t* id = ids.as<int32_t>();
  const T* w = static_cast<const T*>(table.data);
  T* o = static_cast<T*>(out.data);
  if (vec) {
    Launch(EmbeddingForwardKernel<T, true>, m, kForwardThreads, 0, stream, id, w, o, vocab_begin, v_local, d);
  } else {
    Launch(EmbeddingForwardKernel<T, false>, m, kForwardThreads, 0, stream, id, w, o, vocab_begin, v_local, d);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void LaunchBackward(const uint64_t* keys, int64_t n_keys, const Tensor& dout, const Tensor& dtable,
                    cudaStream_t stream) {
  const int d = static_cast<int>(dtable.shape.cols());
  const bool vec = d % Pack<T>::kN == 0 && Aligned16(dout.data) && Aligned16(dtable.data);
  const int band = kBandThreads * (vec ? Pack<T>::kN : 1);
  LATAM_CHECK((d + band - 1) / band <= 65535, "cuda embedding rows too wide for the backward: " << dtable.str());
  const dim3 grid(static_cast<unsigned>(std::min(n_keys, kMaxBackwardBlocks)),
                  static_cast<unsigned>((d + band - 1) / band));
  const T* g = static_cast<const T*>(dout.data);
  if (vec) {
    Launch(EmbeddingBackwardKernel<T, true>, grid, kBandThreads, 0, stream, keys, n_keys, g, dtable.as<float>(), d);
  } else {
    Launch(EmbeddingBackwardKernel<T, false>, grid, kBandThreads, 0, stream, keys, n_keys, g, dtable.as<float>(), d);
  }
  CUDA_CHECK_LAUNCH();
}

void CheckTable(const Tensor& ids, const Tensor& table, const char* what) {
  CheckTensor(ids, DType::kI32, Shape{ids.numel()}, Device::kCUDA, "cuda embedding ids");
  CheckTensor(table, table.dtype, Shape{table.shape[0], table.shape.cols()}, Device::kCUDA, what);
  LATAM_CHECK(ids.numel() <= INT32_MAX && table.shape[0] <= INT32_MAX && table.shape.cols() <= INT32_MAX,
              "cuda embedding sizes beyond int32: ids " << ids.str() << ", " << what << " " << table.str());
}

}  // namespace

void EmbeddingForward(const Tensor& ids, const Tensor& table, int64_t vocab_begin, const Tensor& out,
                      cudaStream_t stream) {
  LATAM_CHECK(table.dtype == DType::kF32 || table.dtype == DType::kBF16,
              "cuda embedding table must be f32 or bf16, got " << table.str());
  CheckTable(ids, table, "cuda embedding table");
  CheckTensor(out, table.dtype, Shape{ids.numel(), table.shape.cols()}, Device::kCUDA, "cuda embedding out");
  if (table.dtype == DType::kF32) {
    LaunchForward<float>(ids, table, vocab_begin, out, stream);
  } else {
    LaunchForward<__nv_bfloat16>(ids, table, vocab_begin, out, stream);
  }
}

int64_t EmbeddingBackwardWorkspaceElems(int64_t tokens) {
  // next_pow2(tokens) 64-bit keys, as int32 elements.
  return 2 * NextPow2(std::max<int64_t>(tokens, 1));
}

void EmbeddingBackward(const Tensor& ids, const Tensor& dout, int64_t vocab_begin, const Tensor& dtable,
                       const Tensor& workspace, cudaStream_t stream) {
  LATAM_CHECK(dout.dtype == DType::kF32 || dout.dtype == DType::kBF16,
              "cuda embedding dout must be f32 or bf16, got " << dout.str());
  CheckTable(ids, dtable, "cuda embedding dtable");
  const int64_t m = ids.numel(), v_local = dtable.shape[0], d = dtable.shape.cols();
  CheckTensor(dtable, DType::kF32, Shape{v_local, d}, Device::kCUDA, "cuda embedding dtable");
  CheckTensor(dout, dout.dtype, Shape{m, d}, Device::kCUDA, "cuda embedding dout");
  LATAM_CHECK(workspace.dtype == DType::kI32 && workspace.device == Device::kCUDA &&
                  workspace.numel() >= EmbeddingBackwardWorkspaceElems(m) &&
                  reinterpret_cast<uintptr_t>(workspace.data) % sizeof(uint64_t) == 0,
              "cuda embedding workspace too small or not 8-byte aligned: " << workspace.str());
  if (m == 0 || d == 0) return;
  const int64_t n_keys = NextPow2(m);
  uint64_t* keys = static_cast<uint64_t*>(workspace.data);
  Launch(SortKeysInitKernel, (n_keys + kStepThreads - 1) / kStepThreads, kStepThreads, 0, stream, ids.as<int32_t>(), m,
         vocab_begin, v_local, keys, n_keys);
  CUDA_CHECK_LAUNCH();
  SortKeys(keys, n_keys, stream);
  if (dout.dtype == DType::kF32) {
    LaunchBackward<float>(keys, n_keys, dout, dtable, stream);
  } else {
    LaunchBackward<__nv_bfloat16>(keys, n_keys, dout, dtable, stream);
  }
}

}  // namespace latam::cuda
