// The Hopper forward kernels of the tensor-core attention: the algorithm of
// FlashForwardKernel (kernels/cuda/flash_attention_kernels.cuh, described in
// flash_attention.h) on warpgroup MMAs (kernels/cuda/wgmma.cuh, sm_90a).
// Launched by FlashAttentionForward with FlashForwardPath::kWgmma and
// kWgmmaTma; in a header so that tests can run them under
// kernels/cuda/simt_emulation.h.
//
// Both take 128 query rows of one head per CTA, 64 rows per computing
// warpgroup, and per key tile of 128 keys run (WgmmaScores, WgmmaSoftmax,
// WgmmaAccumulate):
//   S = Q K^T   4 (hd 64) or 8 (hd 128) wgmma m64n128k16, Q and K from
//               shared memory, fp32 accumulators in registers;
//   online softmax on the accumulators, as in FlashForwardKernel (exp2, one
//               rescale of O per tile, masking only where a tile reaches past
//               the sequence end or the causal diagonal);
//   O += P V    8 wgmma m64n{hd}k16, P from registers (the S accumulators
//               rounded to bf16 are the A fragments), V from shared memory
//               read transposed by the instruction.
// Tiles are 128-byte-swizzled column blocks of 64 head dims (wgmma.cuh).
//   FlashForwardWgmmaKernel (kWgmma): 256 threads, two warpgroups that both
//     load (cp.async, two stages) and compute, in step (block barriers).
//   FlashForwardWgmmaTmaKernel (kWgmmaTma): 384 threads, warp-specialised as
//     FlashAttention-3: a producer warpgroup whose one thread issues TMA
//     copies (tma.cuh) into two K/V stages guarded by mbarriers, and two
//     consumer warpgroups that only compute, each at its own pace; setmaxnreg
//     moves registers from the producer to the consumers. Each consumer
//     overlaps tile j's softmax with tile j-1's P V on the tensor cores,
//     and the two consumers take turns issuing wgmmas (ping-pong).
// Shared memory: (128 + 4 x 128) x hd x 2 bytes + 1 KB of alignment slack
// (+ 56 bytes of barriers): 81 KB at hd 64, 161 KB at hd 128.
//
// Not yet here: tile sizes per head dimension chosen by measurement, and a
// persistent grid that overlaps one tile's epilogue with the next's loads.
#pragma once

#include "kernels/cuda/flash_attention_kernels.cuh"
#include "kernels/cuda/tma.cuh"
#include "kernels/cuda/wgmma.cuh"

namespace latam::cuda::flash {

constexpr int kWgBlockM = 128;  // query rows per CTA: two warpgroups of 64
constexpr int kWgBlockN = 128;  // keys per tile
constexpr int kWgThreads = 2 * wgmma::kWarpgroupThreads;

// Element offset of (row, 16-byte chunk) in a 128-byte-swizzled tile of
// kRows rows (wgmma.cuh): column blocks of 64 bf16, chunk c of row r of a
// block at chunk c ^ (r % 8).
template <int kRows>
__device__ __forceinline__ int Sw128(int row, int chunk) {
  return (chunk / 8) * kRows * 64 + row * 64 + (((chunk % 8) ^ (row % 8)) << 3);
}

// LoadTile for the swizzled layout above, by all kWgThreads threads.
template <int kHd, int kRows>
__device__ __forceinline__ void LoadTileSw128(bf16* tile, const bf16* src, int64_t stride, int row0, int rows_valid) {
  constexpr int kChunks = kHd / 8;
  for (int i = static_cast<int>(threadIdx.x); i < kRows * kChunks; i += kWgThreads) {
    const int r = i / kChunks, c = i % kChunks;
    const bool valid = row0 + r < rows_valid;
    const bf16* from = valid ? src + static_cast<int64_t>(row0 + r) * stride + c * 8 : src;
    mma::CpAsync16(tile + Sw128<kRows>(r, c), from, valid);
  }
}

template <int kHd>
constexpr size_t WgmmaForwardSmemBytes() {
  return 1024 + static_cast<size_t>(kWgBlockM + 4 * kWgBlockN) * kHd * sizeof(bf16);
}

// Aligns a block's dynamic shared memory up to 1024 bytes in the shared
// address space (swizzled tiles must start there); the kernels ask for 1 KB
// of slack.
__device__ __forceinline__ unsigned char* AlignedShared() {
  unsigned char* raw = DynamicShared();
  const uint32_t misalign = mma::SharedAddress(raw) % 1024;
  return raw + (misalign == 0 ? 0 : 1024 - misalign);
}

// The running softmax state of one warpgroup's 64 query rows, per thread:
// the O accumulators and, for rows g and g + 8 of its warp, the running max
// (exp2 domain) and sum.
template <int kHd>
struct WgmmaRows {
  float o[kHd / 8][4];
  float row_max[2];
  float row_sum[2];
  int first_row;  // of this warp, in the CTA's tile of kWgBlockM rows
  int qi[2];      // the thread's two query positions

  __device__ __forceinline__ void Start(int q0, int warpgroup, int warp, int lane) {
    for (auto& f : o) f[0] = f[1] = f[2] = f[3] = 0.0f;
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.0f;
    first_row = warpgroup * 64 + warp * 16;
    qi[0] = q0 + first_row + lane / 4;
    qi[1] = qi[0] + 8;
  }
};

// The shared-memory descriptors of one tile step: S = Q K^T reads Q and K
// at k16 step kk 32 bytes into column block kk / 4 (K-major, 8-row groups
// 1024 bytes apart); O += P V reads V rows 16 ks .. + 15 (2048 bytes in,
// MN-major, column blocks of 64 head dims kWgBlockN rows of 128 bytes
// apart). Computed before the wgmmas are issued and pinned there
// (Materialize): a descriptor computed between two wgmmas of one pipeline
// stage makes ptxas serialise them (C7513).
template <int kHd>
struct TileDescriptors {
  uint64_t q[kHd / 16];
  uint64_t k[kHd / 16];
  uint64_t v[kWgBlockN / 16];

  __device__ __forceinline__ void ForScores(const bf16* q_rows, const bf16* k_tile) {
    for (int kk = 0; kk < kHd / 16; ++kk) {
      q[kk] = wgmma::Sw128Descriptor(q_rows + (kk / 4) * kWgBlockM * 64 + (kk % 4) * 16, 16, 1024);
      k[kk] = wgmma::Sw128Descriptor(k_tile + (kk / 4) * kWgBlockN * 64 + (kk % 4) * 16, 16, 1024);
    }
  }
  __device__ __forceinline__ void ForValues(const bf16* v_tile) {
    for (int ks = 0; ks < kWgBlockN / 16; ++ks) {
      v[ks] = wgmma::Sw128Descriptor(v_tile + ks * 16 * 64, kWgBlockN * 128, 1024);
    }
  }
  __device__ __forceinline__ void Materialize() {
#ifndef LATAM_CUDA_EMULATION
    for (auto& d : q) asm volatile("" : "+l"(d));
    for (auto& d : k) asm volatile("" : "+l"(d));
    for (auto& d : v) asm volatile("" : "+l"(d));
#endif
  }
};

// Issues S = Q K^T of one warpgroup (no fence, commit or wait): its 64 query
// rows against the kWgBlockN keys of a tile. The first step overwrites S
// (scale-d 0).
template <int kHd>
__device__ __forceinline__ void IssueScores(float (&s)[kWgBlockN / 8][4], const TileDescriptors<kHd>& d) {
  for (int kk = 0; kk < kHd / 16; ++kk) wgmma::MmaSS<kWgBlockN>(s, d.q[kk], d.k[kk], kk > 0 ? 1 : 0);
}

// Issues O += P V (no fence, commit or wait).
template <int kHd>
__device__ __forceinline__ void IssueAccumulate(float (&o)[kHd / 8][4], const uint32_t (&pa)[kWgBlockN / 16][4],
                                                const TileDescriptors<kHd>& d) {
  for (int ks = 0; ks < kWgBlockN / 16; ++ks) wgmma::MmaRSTransB<kHd>(o, pa[ks], d.v[ks], 1);
}

// S = Q K^T, issued and waited for.
template <int kHd>
__device__ __forceinline__ void WgmmaScores(float (&s)[kWgBlockN / 8][4], const bf16* q_rows, const bf16* k_tile) {
#ifdef LATAM_CUDA_EMULATION
  for (auto& f : s) f[0] = f[1] = f[2] = f[3] = 0.0f;  // defined values for the host compiler; scale-d 0 ignores them
#endif
  TileDescriptors<kHd> d;
  d.ForScores(q_rows, k_tile);
  wgmma::FenceOperands(s);
  wgmma::Fence();
  IssueScores<kHd>(s, d);
  wgmma::Commit();
  wgmma::Wait<0>();
  wgmma::FenceOperands(s);
}

// The online softmax step for key tile j (keys key0 .. key0 + kWgBlockN - 1),
// in place: S becomes P = exp2(S log2(e) / sqrt(hd) - max), 0 for keys past
// the end and, causally, past the row (only tiles that reach past the warp's
// first row hold such keys); updates the running max and sum and returns the
// factor O must be scaled by before P V is added in `correction`. O is not
// touched (a P V wgmma of the previous tile may still be writing it).
template <int kHd>
__device__ __forceinline__ void WgmmaSoftmax(float (&s)[kWgBlockN / 8][4], WgmmaRows<kHd>& st,
                                             float (&correction)[2], int key0, int q0, int lane,
                                             const FlashGeometry& g) {
  const int T = g.seq_len;
  if (key0 + kWgBlockN > T || (g.causal && key0 + kWgBlockN - 1 > q0 + st.first_row)) {
    for (int nb = 0; nb < kWgBlockN / 8; ++nb) {
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + nb * 8 + 2 * (lane % 4) + (e & 1);
        if (key >= T || (g.causal && key > st.qi[e / 2])) s[nb][e] = -INFINITY;
      }
    }
  }
  float base[2];
  for (int r = 0; r < 2; ++r) {
    float mx = -INFINITY;  // of the raw scores; the scale is positive
    for (int nb = 0; nb < kWgBlockN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    mx = fmaxf(st.row_max[r], mx * g.scale_log2);
    base[r] = mx == -INFINITY ? 0.0f : mx;  // a row with no key yet keeps l = o = 0
    correction[r] = exp2f(st.row_max[r] - base[r]);
    st.row_max[r] = mx;
    st.row_sum[r] *= correction[r];
  }
  for (int nb = 0; nb < kWgBlockN / 8; ++nb) {
    for (int e = 0; e < 4; ++e) {
      s[nb][e] = exp2f(fmaf(s[nb][e], g.scale_log2, -base[e / 2]));
      st.row_sum[e / 2] += s[nb][e];
    }
  }
}

// P (fp32, the layout of S) as the bf16 A fragments of P V.
__device__ __forceinline__ void PackP(const float (&p)[kWgBlockN / 8][4], uint32_t (&pa)[kWgBlockN / 16][4]) {
  for (int ks = 0; ks < kWgBlockN / 16; ++ks) PackA<kWgBlockN>(pa[ks], p, ks);
}

template <int kHd>
__device__ __forceinline__ void RescaleO(WgmmaRows<kHd>& st, const float (&correction)[2]) {
  for (auto& f : st.o) {
    f[0] *= correction[0];
    f[1] *= correction[0];
    f[2] *= correction[1];
    f[3] *= correction[1];
  }
}

// O += P V, issued and waited for.
template <int kHd>
__device__ __forceinline__ void WgmmaAccumulate(WgmmaRows<kHd>& st, uint32_t (&pa)[kWgBlockN / 16][4],
                                                const bf16* v_tile) {
  TileDescriptors<kHd> d;
  d.ForValues(v_tile);
  wgmma::FenceOperands(st.o);
  wgmma::FenceOperands(pa);
  wgmma::Fence();
  IssueAccumulate<kHd>(st.o, pa, d);
  wgmma::Commit();
  wgmma::Wait<0>();
  wgmma::FenceOperands(st.o);
  wgmma::FenceOperands(pa);
}

// Writes a warp's 16 x kHd fp32 accumulator rows (rows first_row + g and
// + 8 of a kRows-row tile, times scale[0] and scale[1]) as bf16 to dst rows
// first_row .. + 15 (row r at dst + r * stride), skipping rows >= n_rows.
// They are staged through the same rows of `stage`, a 128-byte-swizzled
// tile no longer read, so each row leaves in 16-byte stores; only the
// warp's own rows of `stage` are touched.
template <int kHd, int kRows>
__device__ __forceinline__ void StoreRowsSw128(const float (&acc)[kHd / 8][4], const float (&scale)[2], bf16* stage,
                                               int first_row, int lane, bf16* dst, int64_t stride, int n_rows) {
  for (int nb = 0; nb < kHd / 8; ++nb) {
    for (int r = 0; r < 2; ++r) {
      const uint32_t packed = mma::PackBf16(acc[nb][2 * r] * scale[r], acc[nb][2 * r + 1] * scale[r]);
      *reinterpret_cast<uint32_t*>(stage + Sw128<kRows>(first_row + lane / 4 + 8 * r, nb) + 2 * (lane % 4)) = packed;
    }
  }
  __syncwarp();
  constexpr int kChunks = kHd / 8;
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int r = first_row + i / kChunks, c = i % kChunks;
    if (r >= n_rows) continue;
    const uint4 v = *reinterpret_cast<const uint4*>(stage + Sw128<kRows>(r, c));
    *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r) * stride + c * 8) = v;
  }
}

// Writes O / l and the lse of the warp's 16 rows, staged through the warp's
// own rows of `sq` (the query tile, no longer read).
template <int kHd>
__device__ __forceinline__ void WgmmaFinish(WgmmaRows<kHd>& st, bf16* sq, int q0, int h, int b, int lane,
                                            const FlashGeometry& g, bf16* out, float* lse) {
  const int T = g.seq_len;
  float inv[2];
  for (int r = 0; r < 2; ++r) {
    st.row_sum[r] += __shfl_xor_sync(0xffffffffu, st.row_sum[r], 1);
    st.row_sum[r] += __shfl_xor_sync(0xffffffffu, st.row_sum[r], 2);
    inv[r] = st.row_sum[r] > 0.0f ? 1.0f / st.row_sum[r] : 0.0f;
  }
  StoreRowsSw128<kHd, kWgBlockM>(st.o, inv, sq, st.first_row, lane,
                                  out + (static_cast<int64_t>(b) * T + q0) * g.out_stride + static_cast<int64_t>(h) * kHd,
                                  g.out_stride, T - q0);
  if (lane % 4 == 0) {
    for (int r = 0; r < 2; ++r) {
      if (st.qi[r] < T) {
        lse[(static_cast<int64_t>(b) * g.n_heads + h) * T + st.qi[r]] =
            (st.row_max[r] + log2f(st.row_sum[r])) * 0.6931471805599453f;
      }
    }
  }
}

// The number of key tiles CTA tile q0 visits.
__device__ __forceinline__ int WgmmaKeyTiles(const FlashGeometry& g, int q0) {
  const int kv_end = g.causal ? min(g.seq_len, q0 + kWgBlockM) : g.seq_len;
  return (kv_end + kWgBlockN - 1) / kWgBlockN;
}

// kWgmma: all 256 threads load with cp.async, then both warpgroups compute.
template <int kHd>
__global__ void __launch_bounds__(kWgThreads, 1)
    FlashForwardWgmmaKernel(const bf16* __restrict__ qkv, bf16* __restrict__ out, float* __restrict__ lse,
                            FlashGeometry g) {
  static_assert(kHd == 64 || kHd == 128, "head dims 64 and 128");
  bf16* sq = reinterpret_cast<bf16*>(AlignedShared());  // kWgBlockM x kHd
  bf16* sk = sq + kWgBlockM * kHd;                       // 2 stages of kWgBlockN x kHd
  bf16* sv = sk + 2 * kWgBlockN * kHd;                   // 2 stages of kWgBlockN x kHd

  const int q_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);  // heaviest causal tiles first
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  const int wg = tid / wgmma::kWarpgroupThreads, warp = (tid / 32) % 4, lane = tid % 32;
  const int T = g.seq_len, q0 = q_tile * kWgBlockM;
  const bf16* batch = qkv + static_cast<int64_t>(b) * T * g.row_stride;
  const bf16* qsrc = batch + static_cast<int64_t>(h) * kHd;
  const bf16* ksrc = batch + g.KeyColumn(h, kHd);
  const bf16* vsrc = batch + g.ValueColumn(h, kHd);
  const int n_tiles = WgmmaKeyTiles(g, q0);

  LoadTileSw128<kHd, kWgBlockM>(sq, qsrc, g.row_stride, q0, T);
  LoadTileSw128<kHd, kWgBlockN>(sk, ksrc, g.row_stride, 0, T);
  LoadTileSw128<kHd, kWgBlockN>(sv, vsrc, g.row_stride, 0, T);
  mma::CpAsyncCommit();

  WgmmaRows<kHd> st;
  st.Start(q0, wg, warp, lane);
  const bf16* q_rows = sq + wg * 64 * 64;  // this warpgroup's rows of each column block

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {
      LoadTileSw128<kHd, kWgBlockN>(sk + (stage ^ 1) * kWgBlockN * kHd, ksrc, g.row_stride, (j + 1) * kWgBlockN, T);
      LoadTileSw128<kHd, kWgBlockN>(sv + (stage ^ 1) * kWgBlockN * kHd, vsrc, g.row_stride, (j + 1) * kWgBlockN, T);
    }
    mma::CpAsyncCommit();      // possibly empty: one group per iteration
    mma::CpAsyncWait<1>();     // all but the prefetch just issued have landed
    wgmma::FenceProxyAsync();  // make them visible to the tensor cores' reads
    __syncthreads();
    float s[kWgBlockN / 8][4];
    WgmmaScores<kHd>(s, q_rows, sk + stage * kWgBlockN * kHd);
    uint32_t pa[kWgBlockN / 16][4];
    float correction[2];
    WgmmaSoftmax<kHd>(s, st, correction, j * kWgBlockN, q0, lane, g);
    PackP(s, pa);
    RescaleO<kHd>(st, correction);
    WgmmaAccumulate<kHd>(st, pa, sv + stage * kWgBlockN * kHd);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }
  WgmmaFinish<kHd>(st, sq, q0, h, b, lane, g, out, lse);
}

// ---------------------------------------------------------------------------
// kWgmmaTma: warp-specialised, as FlashAttention-3. Three warpgroups:
// warpgroup 0 is the producer (one thread issues every TMA copy; the
// warpgroup gives registers back with setmaxnreg), warpgroups 1 and 2 the
// consumers (64 query rows each, with the registers the producer gave up).
// K and V tiles go through kWsStages stages, each with a "full" barrier per
// operand (the TMA's transaction bytes complete it) and one "empty" barrier
// (one arrival per consumer warp once its P V wgmma is done); the query tile
// has its own full barrier. No block-wide barrier after the roles split.

constexpr int kWsStages = 2;
constexpr int kWsThreads = 3 * wgmma::kWarpgroupThreads;
constexpr int kWsConsumerWarps = 8;
constexpr int kWsTurnBarrier = 1;  // named barriers 1 and 2: the consumers' turns
constexpr int kWsProducerRegisters = 24;
constexpr int kWsConsumerRegisters = 240;
// setmaxnreg moves registers within the block's own allocation: what the
// block was launched with (kWsThreads x the kernel's register count, which
// __launch_bounds__(kWsThreads, 1) caps at 65536 / kWsThreads rounded down
// to a multiple of 8, and which ptxas then takes for a kernel that uses
// setmaxnreg) must cover the producer's and consumers' new counts, or the
// consumers' increase blocks for ever. LaunchFlashForwardWgmmaTma checks the
// count ptxas actually chose before the first launch.
constexpr int kWsEntryRegisters = (65536 / kWsThreads) / 8 * 8;
static_assert(wgmma::kWarpgroupThreads * (kWsProducerRegisters + 2 * kWsConsumerRegisters) <=
                  kWsThreads * kWsEntryRegisters,
              "the warpgroups' register counts exceed the block's allocation");

// One column block (64 head dims) of a 128-row tile.
constexpr uint32_t kWsBoxBytes = 128 * 64 * sizeof(bf16);

template <int kHd>
constexpr size_t WgmmaTmaForwardSmemBytes() {
  return 1024 + static_cast<size_t>(kWgBlockM + 2 * kWsStages * kWgBlockN) * kHd * sizeof(bf16) +
         (1 + 3 * kWsStages) * sizeof(uint64_t);
}

// `map` is a 3-D bf16 map of qkv as {columns, T, B} with boxes of
// {64, 128, 1} and the 128-byte swizzle (FlashAttentionForward makes it).
template <int kHd>
__global__ void __launch_bounds__(kWsThreads, 1)
    FlashForwardWgmmaTmaKernel(const __grid_constant__ tma::TensorMap map, bf16* __restrict__ out,
                               float* __restrict__ lse, FlashGeometry g) {
  static_assert(kHd == 64 || kHd == 128, "head dims 64 and 128");
  static_assert(kWgBlockM == 128 && kWgBlockN == 128, "one TMA box is 128 rows");
  constexpr int kBlocks = kHd / 64;  // column blocks per tile
  bf16* sq = reinterpret_cast<bf16*>(AlignedShared());  // kWgBlockM x kHd
  bf16* sk = sq + kWgBlockM * kHd;                       // kWsStages x kWgBlockN x kHd
  bf16* sv = sk + kWsStages * kWgBlockN * kHd;           // kWsStages x kWgBlockN x kHd
  uint64_t* q_full = reinterpret_cast<uint64_t*>(sv + kWsStages * kWgBlockN * kHd);
  uint64_t* k_full = q_full + 1;
  uint64_t* v_full = k_full + kWsStages;
  uint64_t* empty = v_full + kWsStages;

  const int q_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);  // heaviest causal tiles first
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  const int wg = tid / wgmma::kWarpgroupThreads, warp = (tid / 32) % 4, lane = tid % 32;
  const int q0 = q_tile * kWgBlockM;
  const int n_tiles = WgmmaKeyTiles(g, q0);

  if (tid == 0) {
    tma::InitBarrier(q_full, 1);
    for (int s = 0; s < kWsStages; ++s) {
      tma::InitBarrier(k_full + s, 1);
      tma::InitBarrier(v_full + s, 1);
      tma::InitBarrier(empty + s, kWsConsumerWarps);
    }
    tma::FenceBarrierInit();
  }
  __syncthreads();

  if (wg == 0) {
    tma::DecreaseRegisters<kWsProducerRegisters>();
    if (tid == 0) {
      const int q_col = h * kHd, k_col = static_cast<int>(g.KeyColumn(h, kHd));
      const int v_col = static_cast<int>(g.ValueColumn(h, kHd));
      tma::ArriveExpectTx(q_full, kBlocks * kWsBoxBytes);
      for (int c = 0; c < kBlocks; ++c) tma::Load3d(sq + c * kWgBlockM * 64, map, q_col + 64 * c, q0, b, q_full);
      for (int j = 0; j < n_tiles; ++j) {
        const int s = j % kWsStages;
        const uint32_t round = static_cast<uint32_t>(j / kWsStages);
        tma::WaitParity(empty + s, (round & 1u) ^ 1u);  // the consumers are done with the stage's last round
        bf16* k_stage = sk + s * kWgBlockN * kHd;
        bf16* v_stage = sv + s * kWgBlockN * kHd;
        tma::ArriveExpectTx(k_full + s, kBlocks * kWsBoxBytes);
        for (int c = 0; c < kBlocks; ++c) {
          tma::Load3d(k_stage + c * kWgBlockN * 64, map, k_col + 64 * c, j * kWgBlockN, b, k_full + s);
        }
        tma::ArriveExpectTx(v_full + s, kBlocks * kWsBoxBytes);
        for (int c = 0; c < kBlocks; ++c) {
          tma::Load3d(v_stage + c * kWgBlockN * 64, map, v_col + 64 * c, j * kWgBlockN, b, v_full + s);
        }
      }
    }
  } else {
    tma::IncreaseRegisters<kWsConsumerRegisters>();
    const int cwg = wg - 1;  // consumer warpgroup: rows cwg * 64 .. + 63 of the tile
    WgmmaRows<kHd> st;
    st.Start(q0, cwg, warp, lane);
    const bf16* q_rows = sq + cwg * 64 * 64;
    tma::WaitParity(q_full, 0);
    // Software-pipelined as FlashAttention-3 inside the warpgroup: while the
    // tensor cores run tile j's S = Q K^T and then tile j-1's O += P V, the
    // warpgroup computes tile j's softmax (in place, in fp32) as soon as S
    // has landed. P of tile j-1 (`pa`) is read by the wgmma in flight, so
    // tile j's P is packed into it, and O rescaled, only once that is done:
    // registers an in-flight wgmma reads or writes are defined only outside
    // its pipeline stage, or ptxas serialises the wgmmas (C7513).
    //
    // Ping-pong between the two consumers, as FlashAttention-3: a consumer
    // issues its wgmmas only in its turn (named barrier kWsTurnBarrier + its
    // index, completed by its own 128 threads and the other consumer's 128
    // arrivals) and hands the turn over right after issuing, so one
    // warpgroup's softmax runs while the other's GEMMs hold the tensor
    // cores. Consumer 0 starts; each consumer takes n_tiles + 1 turns, and
    // consumer 1 does not hand over after its last (no one would take it).
    auto k_stage = [&](int j) { return sk + (j % kWsStages) * kWgBlockN * kHd; };
    auto v_stage = [&](int j) { return sv + (j % kWsStages) * kWgBlockN * kHd; };
    auto parity = [](int j) { return static_cast<uint32_t>(j / kWsStages) & 1u; };
    constexpr int kTurnThreads = 2 * wgmma::kWarpgroupThreads;
    auto my_turn = [&] {
      if (cwg == 0) {
        tma::NamedBarrierSync<kWsTurnBarrier>(kTurnThreads);
      } else {
        tma::NamedBarrierSync<kWsTurnBarrier + 1>(kTurnThreads);
      }
    };
    auto hand_over = [&](bool last) {
      if (cwg == 0) {
        tma::NamedBarrierArrive<kWsTurnBarrier + 1>(kTurnThreads);
      } else if (!last) {
        tma::NamedBarrierArrive<kWsTurnBarrier>(kTurnThreads);
      }
    };
    if (cwg == 1) tma::NamedBarrierArrive<kWsTurnBarrier>(kTurnThreads);
    float sc[kWgBlockN / 8][4];
    uint32_t pa[kWgBlockN / 16][4];
    float correction[2];
    {
      tma::WaitParity(k_full, 0);
      TileDescriptors<kHd> d;
      d.ForScores(q_rows, k_stage(0));
      d.Materialize();
#ifdef LATAM_CUDA_EMULATION
      for (auto& f : sc) f[0] = f[1] = f[2] = f[3] = 0.0f;  // defined values for the host compiler
#endif
      my_turn();
      wgmma::FenceOperands(sc);
      wgmma::Fence();
      IssueScores<kHd>(sc, d);
      wgmma::Commit();
      hand_over(false);
      wgmma::Wait<0>();
      wgmma::FenceOperands(sc);
    }
    WgmmaSoftmax<kHd>(sc, st, correction, 0, q0, lane, g);  // O is still 0: no rescale
    PackP(sc, pa);
    for (int j = 1; j < n_tiles; ++j) {
      tma::WaitParity(k_full + j % kWsStages, parity(j));
      tma::WaitParity(v_full + (j - 1) % kWsStages, parity(j - 1));
      TileDescriptors<kHd> d;
      d.ForScores(q_rows, k_stage(j));
      d.ForValues(v_stage(j - 1));
      d.Materialize();
      my_turn();
      wgmma::FenceOperands(sc);
      wgmma::FenceOperands(st.o);
      wgmma::FenceOperands(pa);
      wgmma::Fence();
      IssueScores<kHd>(sc, d);
      wgmma::Commit();
      IssueAccumulate<kHd>(st.o, pa, d);
      wgmma::Commit();
      hand_over(false);
      wgmma::Wait<1>();  // S of tile j has landed; P V may still run
      wgmma::FenceOperands(sc);
      WgmmaSoftmax<kHd>(sc, st, correction, j * kWgBlockN, q0, lane, g);
      wgmma::Wait<0>();
      wgmma::FenceOperands(st.o);
      wgmma::FenceOperands(pa);
      __syncwarp();
      if (lane == 0) tma::Arrive(empty + (j - 1) % kWsStages);
      PackP(sc, pa);
      RescaleO<kHd>(st, correction);
    }
    {
      tma::WaitParity(v_full + (n_tiles - 1) % kWsStages, parity(n_tiles - 1));
      TileDescriptors<kHd> d;
      d.ForValues(v_stage(n_tiles - 1));
      d.Materialize();
      my_turn();
      wgmma::FenceOperands(st.o);
      wgmma::FenceOperands(pa);
      wgmma::Fence();
      IssueAccumulate<kHd>(st.o, pa, d);
      wgmma::Commit();
      hand_over(true);
      wgmma::Wait<0>();
      wgmma::FenceOperands(st.o);
      wgmma::FenceOperands(pa);
    }
    __syncwarp();
    if (lane == 0) tma::Arrive(empty + (n_tiles - 1) % kWsStages);
    WgmmaFinish<kHd>(st, sq, q0, h, b, lane, g, out, lse);
  }
}

}  // namespace latam::cuda::flash
