// The Hopper forward kernel of the tensor-core attention: the algorithm of
// FlashForwardKernel (kernels/cuda/flash_attention_kernels.cuh, described in
// flash_attention.h) on warpgroup MMAs (kernels/cuda/wgmma.cuh, sm_90a).
// Launched by FlashAttentionForward with FlashForwardPath::kWgmma; in a
// header so that tests can run it under kernels/cuda/simt_emulation.h.
//
// One CTA: 128 query rows of one head, two warpgroups of 64 rows each
// (256 threads). Per key tile of 128 keys:
//   S = Q K^T   4 (hd 64) or 8 (hd 128) wgmma m64n128k16, Q and K from
//               shared memory, fp32 accumulators in registers;
//   online softmax on the accumulators, as in FlashForwardKernel (exp2, one
//               rescale of O per tile, masking only where a tile reaches past
//               the sequence end or the causal diagonal);
//   O += P V    8 wgmma m64n{hd}k16, P from registers (the S accumulators
//               rounded to bf16 are the A fragments), V from shared memory
//               read transposed by the instruction.
// K and V tiles stream through two shared-memory stages filled by cp.async
// (all 256 threads), in the 128-byte-swizzled layout wgmma reads; the tile
// of 128 query rows shares each K/V tile between the two warpgroups.
// Shared memory: (128 + 4 x 128) x hd x 2 bytes + 1 KB of alignment slack:
// 81 KB at hd 64 (two CTAs per SM), 161 KB at hd 128.
//
// Not yet here (FlashAttention-3's further steps): TMA loads by a producer
// warp, warp specialisation with setmaxnreg, and overlapping one tile's
// softmax with the next tile's Q K^T.
#pragma once

#include "kernels/cuda/flash_attention_kernels.cuh"
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

template <int kHd>
__global__ void __launch_bounds__(kWgThreads, 1)
    FlashForwardWgmmaKernel(const bf16* __restrict__ qkv, bf16* __restrict__ out, float* __restrict__ lse,
                            FlashGeometry g) {
  static_assert(kHd == 64 || kHd == 128, "head dims 64 and 128");
  // Swizzled tiles must start 1024-byte aligned in the shared address space.
  unsigned char* raw = DynamicShared();
  const uint32_t misalign = mma::SharedAddress(raw) % 1024;
  bf16* sq = reinterpret_cast<bf16*>(raw + (misalign == 0 ? 0 : 1024 - misalign));  // kWgBlockM x kHd
  bf16* sk = sq + kWgBlockM * kHd;                                                  // 2 stages of kWgBlockN x kHd
  bf16* sv = sk + 2 * kWgBlockN * kHd;                                              // 2 stages of kWgBlockN x kHd

  const int q_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);  // heaviest causal tiles first
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  const int wg = tid / wgmma::kWarpgroupThreads, warp = (tid / 32) % 4, lane = tid % 32;
  const int T = g.seq_len, q0 = q_tile * kWgBlockM;
  const bf16* batch = qkv + static_cast<int64_t>(b) * T * g.row_stride;
  const bf16* qsrc = batch + static_cast<int64_t>(h) * kHd;
  const bf16* ksrc = batch + g.k_col + static_cast<int64_t>(h / g.group) * kHd;
  const bf16* vsrc = batch + g.v_col + static_cast<int64_t>(h / g.group) * kHd;

  const int kv_end = g.causal ? min(T, q0 + kWgBlockM) : T;
  const int n_tiles = (kv_end + kWgBlockN - 1) / kWgBlockN;

  LoadTileSw128<kHd, kWgBlockM>(sq, qsrc, g.row_stride, q0, T);
  LoadTileSw128<kHd, kWgBlockN>(sk, ksrc, g.row_stride, 0, T);
  LoadTileSw128<kHd, kWgBlockN>(sv, vsrc, g.row_stride, 0, T);
  mma::CpAsyncCommit();

  float o[kHd / 8][4];
  for (auto& f : o) f[0] = f[1] = f[2] = f[3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  const int first_row = wg * 64 + warp * 16;  // of this warp, in the tile
  const int row_in_tile = first_row + lane / 4;
  const int qi[2] = {q0 + row_in_tile, q0 + row_in_tile + 8};
  // This warpgroup's Q rows: K-major, rows at 128 bytes, 8-row groups 1024 apart.
  const bf16* q_rows = sq + wg * 64 * 64;

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {
      LoadTileSw128<kHd, kWgBlockN>(sk + (stage ^ 1) * kWgBlockN * kHd, ksrc, g.row_stride, (j + 1) * kWgBlockN, T);
      LoadTileSw128<kHd, kWgBlockN>(sv + (stage ^ 1) * kWgBlockN * kHd, vsrc, g.row_stride, (j + 1) * kWgBlockN, T);
    }
    mma::CpAsyncCommit();   // possibly empty: one group per iteration
    mma::CpAsyncWait<1>();  // all but the prefetch just issued have landed
    wgmma::FenceProxyAsync();  // make them visible to the tensor cores' reads
    __syncthreads();
    const bf16* k_tile = sk + stage * kWgBlockN * kHd;
    const bf16* v_tile = sv + stage * kWgBlockN * kHd;

    // S = Q K^T: k16 step kk is 32 bytes into column block kk / 4.
    float s[kWgBlockN / 8][4];
    for (auto& f : s) f[0] = f[1] = f[2] = f[3] = 0.0f;
    wgmma::FenceOperands(s);
    wgmma::Fence();
    for (int kk = 0; kk < kHd / 16; ++kk) {
      const uint64_t desc_q = wgmma::Sw128Descriptor(q_rows + (kk / 4) * kWgBlockM * 64 + (kk % 4) * 16, 16, 1024);
      const uint64_t desc_k = wgmma::Sw128Descriptor(k_tile + (kk / 4) * kWgBlockN * 64 + (kk % 4) * 16, 16, 1024);
      wgmma::MmaSS<kWgBlockN>(s, desc_q, desc_k, kk > 0 ? 1 : 0);
    }
    wgmma::Commit();
    wgmma::Wait<0>();
    wgmma::FenceOperands(s);

    // Scale into the exp2 domain; mask keys past the end and, causally, past
    // the row (only tiles that reach past the warp's first row hold such keys).
    const int key0 = j * kWgBlockN;
    const bool mask = key0 + kWgBlockN > T || (g.causal && key0 + kWgBlockN - 1 > q0 + first_row);
    for (int nb = 0; nb < kWgBlockN / 8; ++nb) {
      for (int e = 0; e < 4; ++e) {
        float v = s[nb][e] * g.scale_log2;
        if (mask) {
          const int key = key0 + nb * 8 + 2 * (lane % 4) + (e & 1);
          if (key >= T || (g.causal && key > qi[e / 2])) v = -INFINITY;
        }
        s[nb][e] = v;
      }
    }

    // Online softmax: new running max, rescale the old sum and output.
    float base[2];
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
      for (int nb = 0; nb < kWgBlockN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      base[r] = mx == -INFINITY ? 0.0f : mx;  // a row with no key yet keeps l = o = 0
      const float correction = exp2f(row_max[r] - base[r]);
      row_max[r] = mx;
      row_sum[r] *= correction;
      for (auto& f : o) {
        f[2 * r] *= correction;
        f[2 * r + 1] *= correction;
      }
    }
    uint32_t pa[kWgBlockN / 16][4];
    for (int nb = 0; nb < kWgBlockN / 8; ++nb) {
      for (int e = 0; e < 4; ++e) {
        s[nb][e] = exp2f(s[nb][e] - base[e / 2]);
        row_sum[e / 2] += s[nb][e];
      }
    }
    for (int ks = 0; ks < kWgBlockN / 16; ++ks) PackA<kWgBlockN>(pa[ks], s, ks);

    // O += P V: k16 step ks is V rows 16 ks .. + 15 (2048 bytes in); the
    // column blocks of 64 head dims are kWgBlockN rows of 128 bytes apart.
    wgmma::FenceOperands(o);
    wgmma::Fence();
    for (int ks = 0; ks < kWgBlockN / 16; ++ks) {
      const uint64_t desc_v = wgmma::Sw128Descriptor(v_tile + ks * 16 * 64, kWgBlockN * 128, 1024);
      wgmma::MmaRSTransB<kHd>(o, pa[ks], desc_v, 1);
    }
    wgmma::Commit();
    wgmma::Wait<0>();
    wgmma::FenceOperands(o);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  // Finish: O / l, staged through this warp's own rows of the (now unused) Q
  // tile so that each row leaves in 16-byte stores.
  float inv[2];
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    inv[r] = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
  }
  for (int nb = 0; nb < kHd / 8; ++nb) {
    for (int r = 0; r < 2; ++r) {
      const uint32_t packed = mma::PackBf16(o[nb][2 * r] * inv[r], o[nb][2 * r + 1] * inv[r]);
      *reinterpret_cast<uint32_t*>(sq + Sw128<kWgBlockM>(row_in_tile + 8 * r, nb) + 2 * (lane % 4)) = packed;
    }
  }
  __syncwarp();
  constexpr int kChunks = kHd / 8;
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int r = first_row + i / kChunks, c = i % kChunks;
    if (q0 + r >= T) continue;
    const uint4 v = *reinterpret_cast<const uint4*>(sq + Sw128<kWgBlockM>(r, c));
    *reinterpret_cast<uint4*>(out + (static_cast<int64_t>(b) * T + q0 + r) * g.out_stride +
                              static_cast<int64_t>(h) * kHd + c * 8) = v;
  }
  if (lane % 4 == 0) {
    for (int r = 0; r < 2; ++r) {
      if (qi[r] < T) {
        lse[(static_cast<int64_t>(b) * g.n_heads + h) * T + qi[r]] =
            (row_max[r] + log2f(row_sum[r])) * 0.6931471805599453f;
      }
    }
  }
}

}  // namespace latam::cuda::flash
