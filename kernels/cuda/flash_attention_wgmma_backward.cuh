// The Hopper backward kernels of the tensor-core attention: the algorithm
// of FlashKeyValueKernel and FlashQueryKernel (flash_attention_kernels.cuh,
// described in flash_attention.h) on warpgroup MMAs (wgmma.cuh, sm_90a),
// launched by FlashAttentionBackward with FlashBackwardPath::kWgmma after the
// same D = rowsum(dO * O) kernel. Deterministic like them: no atomics, every
// output element written once after sums in a fixed order.
//
// Both kernels: 256 threads, two warpgroups of 64 rows each (128 rows per
// CTA), tiles of 64 rows of the other operand streamed through two cp.async
// stages, everything in the 128-byte-swizzled layout of wgmma.cuh. Per
// streamed tile, in each warpgroup:
//   dK, dV (CTA: 128 keys of one KV head; streamed: 64 queries of each query
//   head of the group, from the first tile that sees the keys):
//     S^T  = K Q^T, dP^T = V dO^T     m64n64k16, both operands from shared memory
//     P^T  = exp2(S^T scale_log2 - lse log2 e), dS^T = P^T (dP^T - D)   (registers)
//     dV  += P^T dO, dK += dS^T Q     m64n{hd}k16, A from registers (the
//                                     accumulators above, rounded to bf16),
//                                     B read transposed from shared memory
//   dQ (CTA: 128 queries of one query head; streamed: 64 keys):
//     S = Q K^T, dP = dO V^T           m64n64k16
//     dS = P (dP - D)
//     dQ += dS K                       m64n{hd}k16, dS from registers
// dK and dQ are scaled by 1 / sqrt(hd) when written.
// Shared memory: (2 x 128 + 4 x 64) x hd x 2 bytes + 1 KB of alignment slack
// (+ 512 bytes of lse and D for dK, dV): 65 KB at hd 64, 129 KB at hd 128.
#pragma once

#include "kernels/cuda/flash_attention_wgmma.cuh"

namespace latam::cuda::flash {

constexpr int kWgBwdRows = 128;  // keys (dK, dV) or queries (dQ) per CTA: two warpgroups of 64
constexpr int kWgBwdCols = 64;   // rows of each streamed tile: queries (dK, dV) or keys (dQ)
constexpr int kWgBwdThreads = 2 * wgmma::kWarpgroupThreads;

template <int kHd>
constexpr size_t WgmmaKeyValueSmemBytes() {  // K, V; 2 x (Q, dO) tiles; 2 x (lse, D)
  return 1024 + static_cast<size_t>(2 * kWgBwdRows + 4 * kWgBwdCols) * kHd * sizeof(bf16) +
         4 * kWgBwdCols * sizeof(float);
}

template <int kHd>
constexpr size_t WgmmaQuerySmemBytes() {  // Q, dO; 2 x (K, V) tiles
  return 1024 + static_cast<size_t>(2 * kWgBwdRows + 4 * kWgBwdCols) * kHd * sizeof(bf16);
}

// The descriptor of k16 step kk of `rows` (64 rows of a warpgroup, or a
// whole tile) in a K-major operand: 32 bytes into column block kk / 4, the
// blocks `tile_rows` rows of 128 bytes apart.
template <int kTileRows>
__device__ __forceinline__ uint64_t KMajorStep(const bf16* rows, int kk) {
  return wgmma::Sw128Descriptor(rows + (kk / 4) * kTileRows * 64 + (kk % 4) * 16, 16, 1024);
}

// The descriptor of k16 step ks (rows 16 ks .. + 15) of a kTileRows-row tile
// read as an MN-major B (its columns are N), transposed by the instruction.
template <int kTileRows>
__device__ __forceinline__ uint64_t MnMajorStep(const bf16* tile, int ks) {
  return wgmma::Sw128Descriptor(tile + ks * 16 * 64, kTileRows * 128, 1024);
}

// acc_a (+)= A_a B_a^T and acc_b (+)= A_b B_b^T over kHd (m64n64k16, all four
// K-major in shared memory: `a` rows are the warpgroup's 64, `b` rows a
// kWgBwdCols-row tile); issued as one group and waited for.
template <int kHd, int kARows>
__device__ __forceinline__ void WgmmaTwoScores(float (&acc_a)[kWgBwdCols / 8][4], const bf16* a_a, const bf16* b_a,
                                               float (&acc_b)[kWgBwdCols / 8][4], const bf16* a_b,
                                               const bf16* b_b) {
#ifdef LATAM_CUDA_EMULATION
  for (int nb = 0; nb < kWgBwdCols / 8; ++nb) {  // defined values for the host compiler; scale-d 0 ignores them
    for (int e = 0; e < 4; ++e) acc_a[nb][e] = acc_b[nb][e] = 0.0f;
  }
#endif
  uint64_t da[kHd / 16][2], db[kHd / 16][2];
  for (int kk = 0; kk < kHd / 16; ++kk) {
    da[kk][0] = KMajorStep<kARows>(a_a, kk);
    da[kk][1] = KMajorStep<kWgBwdCols>(b_a, kk);
    db[kk][0] = KMajorStep<kARows>(a_b, kk);
    db[kk][1] = KMajorStep<kWgBwdCols>(b_b, kk);
  }
  wgmma::FenceOperands(acc_a);
  wgmma::FenceOperands(acc_b);
  wgmma::Fence();
  for (int kk = 0; kk < kHd / 16; ++kk) wgmma::MmaSS<kWgBwdCols>(acc_a, da[kk][0], da[kk][1], kk > 0 ? 1 : 0);
  for (int kk = 0; kk < kHd / 16; ++kk) wgmma::MmaSS<kWgBwdCols>(acc_b, db[kk][0], db[kk][1], kk > 0 ? 1 : 0);
  wgmma::Commit();
  wgmma::Wait<0>();
  wgmma::FenceOperands(acc_a);
  wgmma::FenceOperands(acc_b);
}

// The descriptors of the k16 steps of a kWgBwdCols-row tile read as the
// MN-major B of acc += A B (A: registers, k = the tile's rows).
__device__ __forceinline__ void RowsDescriptors(uint64_t (&d)[kWgBwdCols / 16], const bf16* tile) {
  for (int ks = 0; ks < kWgBwdCols / 16; ++ks) d[ks] = MnMajorStep<kWgBwdCols>(tile, ks);
}

// Issues (no fence, commit or wait) acc += A B: A from registers, k16 step
// ks in a[ks], B by the descriptors of RowsDescriptors.
template <int kHd>
__device__ __forceinline__ void IssueRowsProduct(float (&acc)[kHd / 8][4], const uint32_t (&a)[kWgBwdCols / 16][4],
                                                 const uint64_t (&d)[kWgBwdCols / 16]) {
  for (int ks = 0; ks < kWgBwdCols / 16; ++ks) wgmma::MmaRSTransB<kHd>(acc, a[ks], d[ks], 1);
}

// Starts the copies (does not commit) of query tile q0 of head h: Q and dO
// rows into swizzled tiles, lse and D rows (threads 0-63 and 64-127; 0 past
// the end).
template <int kHd>
__device__ __forceinline__ void IssueWgmmaQueryTile(const FlashGeometry& g, const bf16* qkv_batch,
                                                    const bf16* dout_batch, const float* lse, const float* dsum, int b,
                                                    int h, int q0, bf16* sq, bf16* sdo, float* slse, float* sd) {
  const int T = g.seq_len;
  LoadTileSw128<kHd, kWgBwdCols>(sq, qkv_batch + static_cast<int64_t>(h) * kHd, g.row_stride, q0, T);
  LoadTileSw128<kHd, kWgBwdCols>(sdo, dout_batch + static_cast<int64_t>(h) * kHd, g.out_stride, q0, T);
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < 2 * kWgBwdCols) {
    const int t = tid % kWgBwdCols;
    const bool is_d = tid >= kWgBwdCols;
    const float* src = (is_d ? dsum : lse) + (static_cast<int64_t>(b) * g.n_heads + h) * T;
    const bool valid = q0 + t < T;
    CpAsync4((is_d ? sd : slse) + t, valid ? src + q0 + t : src, valid);
  }
}

template <int kHd>
__global__ void __launch_bounds__(kWgBwdThreads, 1)
    FlashKeyValueWgmmaKernel(const bf16* __restrict__ qkv, const bf16* __restrict__ dout,
                             const float* __restrict__ lse, const float* __restrict__ dsum,
                             bf16* __restrict__ dqkv, FlashGeometry g) {
  static_assert(kHd == 64 || kHd == 128, "head dims 64 and 128");
  constexpr int kR = kWgBwdRows, kC = kWgBwdCols;
  static_assert(kR % kC == 0, "a key tile starts at a query tile boundary");
  bf16* sk = reinterpret_cast<bf16*>(AlignedShared());  // kR x kHd
  bf16* sv = sk + kR * kHd;                              // kR x kHd
  bf16* sq = sv + kR * kHd;                              // 2 stages of kC x kHd
  bf16* sdo = sq + 2 * kC * kHd;                         // 2 stages of kC x kHd
  float* slse = reinterpret_cast<float*>(sdo + 2 * kC * kHd);  // 2 stages of kC
  float* sd = slse + 2 * kC;                                   // 2 stages of kC

  const int k_tile = static_cast<int>(blockIdx.x);  // causal: tile 0 is the heaviest, and goes first
  const int kv = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  const int wg = tid / wgmma::kWarpgroupThreads, warp = (tid / 32) % 4, lane = tid % 32;
  const int T = g.seq_len, k0 = k_tile * kR;
  const bf16* qkv_batch = qkv + static_cast<int64_t>(b) * T * g.row_stride;
  const bf16* dout_batch = dout + static_cast<int64_t>(b) * T * g.out_stride;

  // Causal: the query tiles from the one holding row k0 (earlier rows see
  // none of these keys).
  const int n_q_tiles = (T + kC - 1) / kC;
  const int qt_begin = g.causal ? k0 / kC : 0;
  const int n_qt = n_q_tiles - qt_begin;  // >= 1
  const int n_iter = g.group * n_qt;

  LoadTileSw128<kHd, kR>(sk, qkv_batch + g.k_col + static_cast<int64_t>(kv) * kHd, g.row_stride, k0, T);
  LoadTileSw128<kHd, kR>(sv, qkv_batch + g.v_col + static_cast<int64_t>(kv) * kHd, g.row_stride, k0, T);
  IssueWgmmaQueryTile<kHd>(g, qkv_batch, dout_batch, lse, dsum, b, kv * g.group, qt_begin * kC, sq, sdo, slse, sd);
  mma::CpAsyncCommit();

  float dk[kHd / 8][4], dv[kHd / 8][4];  // rows: keys key_lo (+8); cols: dims nb*8 + 2q (+1)
  for (int nb = 0; nb < kHd / 8; ++nb) {
    for (int e = 0; e < 4; ++e) dk[nb][e] = dv[nb][e] = 0.0f;
  }
  const int first_row = wg * 64 + warp * 16;  // the warp's first key row in the tile
  const int key_lo = k0 + first_row + lane / 4;
  const bf16* k_rows = sk + wg * 64 * 64;
  const bf16* v_rows = sv + wg * 64 * 64;

  for (int it = 0; it < n_iter; ++it) {
    const int stage = it & 1;
    if (it + 1 < n_iter) {
      const int next = stage ^ 1;
      IssueWgmmaQueryTile<kHd>(g, qkv_batch, dout_batch, lse, dsum, b, kv * g.group + (it + 1) / n_qt,
                               (qt_begin + (it + 1) % n_qt) * kC, sq + next * kC * kHd, sdo + next * kC * kHd,
                               slse + next * kC, sd + next * kC);
    }
    mma::CpAsyncCommit();   // possibly empty: one group per iteration
    mma::CpAsyncWait<1>();  // all but the prefetch just issued have landed
    wgmma::FenceProxyAsync();
    __syncthreads();

    const int q0 = (qt_begin + it % n_qt) * kC;
    const bf16* q_tile = sq + stage * kC * kHd;
    const bf16* do_tile = sdo + stage * kC * kHd;
    const float* lse_tile = slse + stage * kC;
    const float* d_tile = sd + stage * kC;

    float st[kC / 8][4], dpt[kC / 8][4];  // rows: keys key_lo (+8); cols: queries q0 + nb*8 + 2q (+1)
    WgmmaTwoScores<kHd, kR>(st, k_rows, q_tile, dpt, v_rows, do_tile);

    // P^T and dS^T in place; masked: causally key > query, and keys or
    // queries >= T (zero-filled rows), tested only where a tile can hold them.
    const bool mask = q0 + kC > T || k0 + kR > T || (g.causal && k0 + first_row + 15 > q0);
    KeyValueGradients<kC>(st, dpt, lse_tile, d_tile, 0, q0, key_lo, mask, lane, g);
    uint32_t pa[kC / 16][4], dsa[kC / 16][4];
    for (int ks = 0; ks < kC / 16; ++ks) {
      PackA<kC>(pa[ks], st, ks);
      PackA<kC>(dsa[ks], dpt, ks);
    }
    // dV += P^T dO, dK += dS^T Q, as one group.
    uint64_t d_do[kC / 16], d_q[kC / 16];
    RowsDescriptors(d_do, do_tile);
    RowsDescriptors(d_q, q_tile);
    wgmma::FenceOperands(dv);
    wgmma::FenceOperands(dk);
    wgmma::FenceOperands(pa);
    wgmma::FenceOperands(dsa);
    wgmma::Fence();
    IssueRowsProduct<kHd>(dv, pa, d_do);
    IssueRowsProduct<kHd>(dk, dsa, d_q);
    wgmma::Commit();
    wgmma::Wait<0>();
    wgmma::FenceOperands(dv);
    wgmma::FenceOperands(dk);
    wgmma::FenceOperands(pa);
    wgmma::FenceOperands(dsa);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  // dK (scaled) and dV leave through the warp's own rows of the K and V
  // tiles (all reads of them ended with the loop's last barrier).
  bf16* drows = dqkv + (static_cast<int64_t>(b) * T + k0) * g.row_stride + static_cast<int64_t>(kv) * kHd;
  const float k_scale[2] = {g.scale, g.scale}, v_scale[2] = {1.0f, 1.0f};
  StoreRowsSw128<kHd, kR>(dk, k_scale, sk, first_row, lane, drows + g.k_col, g.row_stride, T - k0);
  StoreRowsSw128<kHd, kR>(dv, v_scale, sv, first_row, lane, drows + g.v_col, g.row_stride, T - k0);
}

template <int kHd>
__global__ void __launch_bounds__(kWgBwdThreads, 1)
    FlashQueryWgmmaKernel(const bf16* __restrict__ qkv, const bf16* __restrict__ dout, const float* __restrict__ lse,
                          const float* __restrict__ dsum, bf16* __restrict__ dqkv, FlashGeometry g) {
  static_assert(kHd == 64 || kHd == 128, "head dims 64 and 128");
  constexpr int kR = kWgBwdRows, kC = kWgBwdCols;
  bf16* sq = reinterpret_cast<bf16*>(AlignedShared());  // kR x kHd
  bf16* sdo = sq + kR * kHd;                             // kR x kHd
  bf16* sk = sdo + kR * kHd;                             // 2 stages of kC x kHd
  bf16* sv = sk + 2 * kC * kHd;                          // 2 stages of kC x kHd

  const int q_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);  // heaviest causal tiles first
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int tid = static_cast<int>(threadIdx.x);
  const int wg = tid / wgmma::kWarpgroupThreads, warp = (tid / 32) % 4, lane = tid % 32;
  const int T = g.seq_len, q0 = q_tile * kR;
  const bf16* qkv_batch = qkv + static_cast<int64_t>(b) * T * g.row_stride;
  const bf16* ksrc = qkv_batch + g.KeyColumn(h, kHd);
  const bf16* vsrc = qkv_batch + g.ValueColumn(h, kHd);
  const int kv_end = g.causal ? min(T, q0 + kR) : T;
  const int n_tiles = (kv_end + kC - 1) / kC;

  LoadTileSw128<kHd, kR>(sq, qkv_batch + static_cast<int64_t>(h) * kHd, g.row_stride, q0, T);
  LoadTileSw128<kHd, kR>(sdo, dout + static_cast<int64_t>(b) * T * g.out_stride + static_cast<int64_t>(h) * kHd,
                         g.out_stride, q0, T);
  LoadTileSw128<kHd, kC>(sk, ksrc, g.row_stride, 0, T);
  LoadTileSw128<kHd, kC>(sv, vsrc, g.row_stride, 0, T);
  mma::CpAsyncCommit();

  // The lane's rows (C elements e = 0, 1 and 2, 3): lse in the exp2 domain
  // and D, 0 past the end (those rows are masked).
  const int first_row = wg * 64 + warp * 16;
  const int qi[2] = {q0 + first_row + lane / 4, q0 + first_row + lane / 4 + 8};
  float lse_log2[2], dval[2];
  for (int r = 0; r < 2; ++r) {
    const int64_t stat = (static_cast<int64_t>(b) * g.n_heads + h) * T + qi[r];
    lse_log2[r] = qi[r] < T ? lse[stat] * kLog2e : 0.0f;
    dval[r] = qi[r] < T ? dsum[stat] : 0.0f;
  }
  float dq[kHd / 8][4];
  for (int nb = 0; nb < kHd / 8; ++nb) {
    for (int e = 0; e < 4; ++e) dq[nb][e] = 0.0f;
  }
  const bf16* q_rows = sq + wg * 64 * 64;
  const bf16* do_rows = sdo + wg * 64 * 64;

  for (int j = 0; j < n_tiles; ++j) {
    const int stage = j & 1;
    if (j + 1 < n_tiles) {
      LoadTileSw128<kHd, kC>(sk + (stage ^ 1) * kC * kHd, ksrc, g.row_stride, (j + 1) * kC, T);
      LoadTileSw128<kHd, kC>(sv + (stage ^ 1) * kC * kHd, vsrc, g.row_stride, (j + 1) * kC, T);
    }
    mma::CpAsyncCommit();
    mma::CpAsyncWait<1>();
    wgmma::FenceProxyAsync();
    __syncthreads();
    const bf16* k_tile = sk + stage * kC * kHd;
    const bf16* v_tile = sv + stage * kC * kHd;
    const int key0 = j * kC;

    float s[kC / 8][4], dp[kC / 8][4];  // rows qi; cols: keys key0 + nb*8 + 2q (+1)
    WgmmaTwoScores<kHd, kR>(s, q_rows, k_tile, dp, do_rows, v_tile);

    // dS in place of dP; masked: causally key > row, keys or rows >= T.
    const bool mask = key0 + kC > T || q0 + kR > T || (g.causal && key0 + kC - 1 > q0 + first_row);
    QueryGradients<kC>(s, dp, qi, lse_log2, dval, key0, mask, lane, g);
    uint32_t dsa[kC / 16][4];
    for (int ks = 0; ks < kC / 16; ++ks) PackA<kC>(dsa[ks], dp, ks);
    // dQ += dS K.
    uint64_t d_k[kC / 16];
    RowsDescriptors(d_k, k_tile);
    wgmma::FenceOperands(dq);
    wgmma::FenceOperands(dsa);
    wgmma::Fence();
    IssueRowsProduct<kHd>(dq, dsa, d_k);
    wgmma::Commit();
    wgmma::Wait<0>();
    wgmma::FenceOperands(dq);
    wgmma::FenceOperands(dsa);
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  const float q_scale[2] = {g.scale, g.scale};
  StoreRowsSw128<kHd, kR>(dq, q_scale, sq, first_row, lane,
                          dqkv + (static_cast<int64_t>(b) * T + q0) * g.row_stride + static_cast<int64_t>(h) * kHd,
                          g.row_stride, T - q0);
}

}  // namespace latam::cuda::flash
