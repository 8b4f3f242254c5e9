// The tensor-core attention kernels themselves (kernels/cuda/flash_attention.h
// describes the algorithm; the .cu files launch them). In a header so that
// tests can also run them on the host under kernels/cuda/simt_emulation.h.
#pragma once

#include "kernels/cuda/flash_attention_common.cuh"

namespace latam::cuda::flash {

using bf16 = __nv_bfloat16;

// One CTA: query rows [q0, q0 + kBlockM) of head h in batch b; warp w owns
// rows q0 + 16 w .. + 15. Thread (lane) holds, per 8-column block, the C
// fragment elements of rows g = lane / 4 and g + 8, columns 2 (lane % 4) + {0, 1}.
template <int kHd>
__global__ void __launch_bounds__(kThreads)
    FlashForwardKernel(const bf16* __restrict__ qkv, bf16* __restrict__ out, float* __restrict__ lse, FlashGeometry g) {
  unsigned char* smem = DynamicShared();
  bf16* sq = reinterpret_cast<bf16*>(smem);  // kBlockM x kHd
  bf16* sk = sq + kBlockM * kHd;             // 2 stages of kBlockN x kHd
  bf16* sv = sk + 2 * kBlockN * kHd;         // 2 stages of kBlockN x kHd

  // Heaviest causal tiles first: they are the last query tiles.
  const int q_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int T = g.seq_len, q0 = q_tile * kBlockM;
  const bf16* batch = qkv + static_cast<int64_t>(b) * T * g.row_stride;
  const bf16* qsrc = batch + static_cast<int64_t>(h) * kHd;
  const bf16* ksrc = batch + g.KeyColumn(h, kHd);
  const bf16* vsrc = batch + g.ValueColumn(h, kHd);

  // Causal: the keys up to this tile's last query row. With documents, from
  // the key tile holding the start of the first row's document (rows' starts
  // never decrease, so no row of the tile sees a key before it).
  const int kv_end = g.causal ? min(T, q0 + kBlockM) : T;
  const int n_tiles = (kv_end + kBlockN - 1) / kBlockN;
  const int first_tile = g.DocStart(b, q0) / kBlockN;

  flash::LoadTile<kHd, kBlockM>(sq, qsrc, g.row_stride, q0, T);
  flash::LoadTile<kHd, kBlockN>(sk, ksrc, g.row_stride, first_tile * kBlockN, T);
  flash::LoadTile<kHd, kBlockN>(sv, vsrc, g.row_stride, first_tile * kBlockN, T);
  mma::CpAsyncCommit();

  uint32_t qf[kHd / 16][4];  // this warp's Q rows as A fragments, one per k16 step
  float o[kHd / 8][4];
  for (auto& f : o) f[0] = f[1] = f[2] = f[3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  const int row_in_tile = warp * 16 + lane / 4;
  const int qi[2] = {q0 + row_in_tile, q0 + row_in_tile + 8};
  // The document starts of the lane's rows (rows past the end take the last
  // row's, and are masked anyway), and the latest start among the warp's
  // rows: key tiles from there on need no per-element document test.
  const int row_doc[2] = {g.DocStart(b, min(qi[0], T - 1)), g.DocStart(b, min(qi[1], T - 1))};
  const int warp_doc_max = g.DocStart(b, min(q0 + warp * 16 + 15, T - 1));

  for (int j = first_tile; j < n_tiles; ++j) {
    const int stage = (j - first_tile) & 1;
    if (j + 1 < n_tiles) {
      flash::LoadTile<kHd, kBlockN>(sk + (stage ^ 1) * kBlockN * kHd, ksrc, g.row_stride, (j + 1) * kBlockN, T);
      flash::LoadTile<kHd, kBlockN>(sv + (stage ^ 1) * kBlockN * kHd, vsrc, g.row_stride, (j + 1) * kBlockN, T);
    }
    mma::CpAsyncCommit();  // possibly empty: keeps one group per iteration
    mma::CpAsyncWait<1>();  // all but the prefetch just issued have landed
    __syncthreads();
    if (j == first_tile) {
      for (int ks = 0; ks < kHd / 16; ++ks) {
        mma::LdMatrixX4(qf[ks], sq + mma::Swizzle<kHd>(warp * 16 + lane % 16, 2 * ks + lane / 16));
      }
    }
    const bf16* k_tile = sk + stage * kBlockN * kHd;
    const bf16* v_tile = sv + stage * kBlockN * kHd;

    // S = Q K^T for the warp's 16 rows and the tile's kBlockN keys.
    float s[kBlockN / 8][4];
    for (int nb = 0; nb < kBlockN / 8; ++nb) {
      s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.0f;
      for (int ks = 0; ks < kHd / 16; ks += 2) {
        uint32_t kb[4];
        mma::LdMatrixX4(kb, k_tile + mma::Swizzle<kHd>(nb * 8 + lane % 8, 2 * ks + lane / 8));
        mma::MmaBf16(s[nb], qf[ks], kb[0], kb[1]);
        mma::MmaBf16(s[nb], qf[ks + 1], kb[2], kb[3]);
      }
    }

    // Scale into the exp2 domain; mask keys past the end, causally past the
    // row, and before the row's document (only tiles that reach past the
    // warp's first row, or start before its last row's document, can hold
    // such keys).
    const int key0 = j * kBlockN;
    const bool mask = key0 + kBlockN > T || (g.causal && key0 + kBlockN - 1 > q0 + warp * 16) || key0 < warp_doc_max;
    for (int nb = 0; nb < kBlockN / 8; ++nb) {
      for (int e = 0; e < 4; ++e) {
        float v = s[nb][e] * g.scale_log2;
        if (mask) {
          const int key = key0 + nb * 8 + 2 * (lane % 4) + (e & 1);
          if (key >= T || (g.causal && key > qi[e / 2]) || key < row_doc[e / 2]) v = -INFINITY;
        }
        s[nb][e] = v;
      }
    }

    // Online softmax: new running max, rescale the old sum and output.
    float base[2];
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
      for (int nb = 0; nb < kBlockN / 8; ++nb) mx = fmaxf(mx, fmaxf(s[nb][2 * r], s[nb][2 * r + 1]));
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
    for (int nb = 0; nb < kBlockN / 8; ++nb) {
      for (int e = 0; e < 4; ++e) {
        s[nb][e] = exp2f(s[nb][e] - base[e / 2]);
        row_sum[e / 2] += s[nb][e];
      }
    }

    // O += P V: P's C fragments become A fragments (two n8 blocks per k16
    // step of keys); V is read transposed.
    for (int ks = 0; ks < kBlockN / 16; ++ks) {
      const uint32_t pa[4] = {mma::PackBf16(s[2 * ks][0], s[2 * ks][1]), mma::PackBf16(s[2 * ks][2], s[2 * ks][3]),
                              mma::PackBf16(s[2 * ks + 1][0], s[2 * ks + 1][1]),
                              mma::PackBf16(s[2 * ks + 1][2], s[2 * ks + 1][3])};
      for (int nb = 0; nb < kHd / 8; nb += 2) {
        uint32_t vb[4];
        mma::LdMatrixX4Trans(vb, v_tile + mma::Swizzle<kHd>(ks * 16 + lane % 8 + (lane / 8 % 2) * 8, nb + lane / 16));
        mma::MmaBf16(o[nb], pa, vb[0], vb[1]);
        mma::MmaBf16(o[nb + 1], pa, vb[2], vb[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  // Finish: the quad holds a row's partial sums; O / l, staged through the
  // (now unused) Q tile so each row leaves in 16-byte stores.
  float inv[2];
  for (int r = 0; r < 2; ++r) {
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
    inv[r] = row_sum[r] > 0.0f ? 1.0f / row_sum[r] : 0.0f;
  }
  for (int nb = 0; nb < kHd / 8; ++nb) {
    for (int r = 0; r < 2; ++r) {
      const uint32_t packed = mma::PackBf16(o[nb][2 * r] * inv[r], o[nb][2 * r + 1] * inv[r]);
      *reinterpret_cast<uint32_t*>(sq + mma::Swizzle<kHd>(row_in_tile + 8 * r, nb) + 2 * (lane % 4)) = packed;
    }
  }
  __syncwarp();
  constexpr int kChunks = kHd / 8;
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int r = warp * 16 + i / kChunks, c = i % kChunks;
    if (q0 + r >= T) continue;
    const uint4 v = *reinterpret_cast<const uint4*>(sq + mma::Swizzle<kHd>(r, c));
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

// ---------------------------------------------------------------------------
// The backward pass: three launches on one stream,
//   1. FlashRowDotKernel:  D[b, h, i] = sum_d dO[i, d] O[i, d]   (f32 workspace)
//   2. FlashKeyValueKernel: dK, dV of 64 keys of one KV head, summed over the
//      query heads of its group and the query tiles that see those keys;
//   3. FlashQueryKernel:   dQ of 64 query rows of one query head, summed over
//      the key tiles those rows see.
// No atomics: each output element is written by one thread, after sums in a
// fixed order, so results are bitwise reproducible.
//
// Notation, as in mma.cuh: for lane l of a warp, g = l / 4 and q = l % 4.
// An m16n8k16 C fragment c[nb][0..3] of a 16-row block holds rows g (e = 0, 1)
// and g + 8 (e = 2, 3), columns nb * 8 + 2q + (e & 1). Shared tiles are
// swizzled rows of kHd bf16 (mma::Swizzle), filled by flash::LoadTile.
//
// ldmatrix address patterns used below (all read 16-byte chunks of one
// swizzled tile; "row" is the tile row, "chunk" the logical 8-column chunk):
//   A fragment of rows r0 .. r0 + 15, k16 step ks (columns 16 ks .. + 15):
//       LdMatrixX4, row r0 + lane % 16, chunk 2 ks + lane / 16
//     lanes 0-7 -> rows 0-7, cols 16ks+0..7   (register 0 = A[g][2q, 2q+1])
//     lanes 8-15 -> rows 8-15, cols 16ks+0..7 (register 1 = A[g+8][2q, 2q+1])
//     lanes 16-23 -> rows 0-7, cols 16ks+8..15 (register 2 = A[g][2q+8, 2q+9])
//     lanes 24-31 -> rows 8-15, cols 16ks+8..15 (register 3 = A[g+8][2q+8, 2q+9])
//   B fragments for X Y^T, Y stored as rows (Y row n = column n of B), n8
//   block nb, k16 steps ks and ks + 1:
//       LdMatrixX4, row nb * 8 + lane % 8, chunk 2 ks + lane / 8
//     matrix i (lanes 8i .. 8i+7) = rows nb*8 + 0..7, cols 8 (2ks + i) + 0..7;
//     register i = Y[nb*8 + g][8 (2ks + i) + 2q, +1] = B[k = 2q, 2q+1][n = g]
//     of (ks, b0), (ks, b1), (ks+1, b0), (ks+1, b1) for i = 0, 1, 2, 3.
//   B fragments for X Y, Y stored as rows (Y row k = row k of B), k16 step
//   ks (Y rows 16 ks .. + 15), n8 blocks nb and nb + 1:
//       LdMatrixX4Trans, row ks * 16 + lane % 8 + (lane / 8 % 2) * 8, chunk nb + lane / 16
//     matrix 0: rows 16ks+0..7, cols 8nb..   -> (transposed) B[2q, 2q+1][g] = b0 of nb
//     matrix 1: rows 16ks+8..15, cols 8nb..  -> b1 of nb
//     matrix 2: rows 16ks+0..7, cols 8nb+8.. -> b0 of nb + 1
//     matrix 3: rows 16ks+8..15, cols 8nb+8.. -> b1 of nb + 1
//   and the C -> A reuse: the C fragments of n8 blocks 2 ks and 2 ks + 1,
//   rounded to bf16 and packed in pairs, are the A fragment of k16 step ks
//   (PackA below).

constexpr float kLog2e = 1.4426950408889634f;

static_assert(kBlockM == 64 && kBlockN == 64 && kWarps == 4 && kThreads == 128,
              "the fragment bookkeeping below assumes 64 x 64 tiles and 4 warps of 16 rows");
static_assert(kThreads == 2 * kBlockM, "FlashKeyValueKernel copies lse and D of a query tile with one thread each");

// The score-sized products (S, dP: 16 x 64 per warp) are computed in column
// blocks of kSub, to bound the fp32 registers they take next to the 16 x kHd
// accumulators (kSub 64 spills in these cases; the price of a smaller block
// is reloading the warp's A fragments of the row operands once per block).
// The values were picked with ptxas -v: no spills, CUDA 13, sm_90a. (Loops
// over register arrays have constant trip counts; nvcc unrolls them without
// pragmas, as in the forward kernel, and ptxas -v shows no local memory.)
constexpr int kKeyValueSub = 32;  // queries per block in FlashKeyValueKernel (hd 64 and 128)
template <int kHd>
constexpr int QuerySub() {  // keys per block in FlashQueryKernel
  return kHd == 64 ? 64 : 32;
}

// 4 bytes global -> shared (cp.async.ca: the .cg variant only takes 16);
// zero-filled, without reading global memory, when `valid` is false. Used
// for the f32 lse and D rows, whose tile starts are only 4-byte aligned.
__device__ __forceinline__ void CpAsync4(void* shared_dst, const void* global_src, bool valid) {
#ifdef LATAM_CUDA_EMULATION  // lands at the wait, as the emulated CpAsync16 (mma.cuh)
  mma::CpAsync(shared_dst, global_src, 4, valid);
#else
  const int src_bytes = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(mma::SharedAddress(shared_dst)), "l"(global_src),
               "r"(src_bytes));
#endif
}

// A fragment (16 rows x k16 step ks) of the rows r0 .. r0 + 15 of a swizzled tile.
template <int kHd>
__device__ __forceinline__ void LoadA(uint32_t (&a)[4], const bf16* tile, int r0, int ks, int lane) {
  mma::LdMatrixX4(a, tile + mma::Swizzle<kHd>(r0 + lane % 16, 2 * ks + lane / 16));
}

// B fragments of X Y^T from the rows of Y: n8 block nb, k16 steps ks, ks + 1
// (b[0], b[1] for ks; b[2], b[3] for ks + 1).
template <int kHd>
__device__ __forceinline__ void LoadBRows(uint32_t (&b)[4], const bf16* tile, int nb, int ks, int lane) {
  mma::LdMatrixX4(b, tile + mma::Swizzle<kHd>(nb * 8 + lane % 8, 2 * ks + lane / 8));
}

// B fragments of X Y from the rows of Y (transposed load): k16 step ks, n8
// blocks nb, nb + 1 (b[0], b[1] for nb; b[2], b[3] for nb + 1).
template <int kHd>
__device__ __forceinline__ void LoadBTrans(uint32_t (&b)[4], const bf16* tile, int ks, int nb, int lane) {
  mma::LdMatrixX4Trans(b, tile + mma::Swizzle<kHd>(ks * 16 + lane % 8 + (lane / 8 % 2) * 8, nb + lane / 16));
}

// A fragment of k16 step ks from the fp32 C fragments of n8 blocks 2 ks, 2 ks + 1
// (of a 16 x kCols C block).
template <int kCols>
__device__ __forceinline__ void PackA(uint32_t (&a)[4], const float (&c)[kCols / 8][4], int ks) {
  a[0] = mma::PackBf16(c[2 * ks][0], c[2 * ks][1]);          // row g,     cols 16ks + 2q, +1
  a[1] = mma::PackBf16(c[2 * ks][2], c[2 * ks][3]);          // row g + 8, cols 16ks + 2q, +1
  a[2] = mma::PackBf16(c[2 * ks + 1][0], c[2 * ks + 1][1]);  // row g,     cols 16ks + 8 + 2q, +1
  a[3] = mma::PackBf16(c[2 * ks + 1][2], c[2 * ks + 1][3]);  // row g + 8, cols 16ks + 8 + 2q, +1
}

// Writes a warp's 16 x kHd fp32 accumulator (C fragments, rows r0 .. r0 + 15
// of `stage`), times `scale`, as bf16 through the swizzled tile `stage` to
// dst rows r0 .. r0 + 15 (row r at dst + r * stride), skipping rows >= n_rows.
// Only this warp's rows of `stage` are touched.
template <int kHd>
__device__ __forceinline__ void StoreWarpRows(const float (&acc)[kHd / 8][4], float scale, bf16* stage, int r0,
                                              int lane, bf16* dst, int64_t stride, int n_rows) {
  for (int nb = 0; nb < kHd / 8; ++nb) {
    for (int r = 0; r < 2; ++r) {
      const uint32_t packed = mma::PackBf16(acc[nb][2 * r] * scale, acc[nb][2 * r + 1] * scale);
      *reinterpret_cast<uint32_t*>(stage + mma::Swizzle<kHd>(r0 + lane / 4 + 8 * r, nb) + 2 * (lane % 4)) = packed;
    }
  }
  __syncwarp();
  constexpr int kChunks = kHd / 8;
  for (int i = lane; i < 16 * kChunks; i += 32) {
    const int r = r0 + i / kChunks, c = i % kChunks;
    if (r >= n_rows) continue;
    const uint4 v = *reinterpret_cast<const uint4*>(stage + mma::Swizzle<kHd>(r, c));
    *reinterpret_cast<uint4*>(dst + static_cast<int64_t>(r) * stride + c * 8) = v;
  }
}

// ---------------------------------------------------------------------------
// 1. D = rowsum(dO * O).

constexpr int kRowDotThreads = 256;

// The bf16 in the low / high half of a 32-bit word, as f32 (exact: bf16 is
// the upper half of an f32).
__device__ __forceinline__ float Bf16Lo(uint32_t w) {
  const uint32_t bits = w << 16;
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}
__device__ __forceinline__ float Bf16Hi(uint32_t w) {
  const uint32_t bits = w & 0xffff0000u;
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}

// One (token, query head) item per kHd / 8 adjacent threads, each taking
// one 16-byte chunk (8 bf16) of the head's row of out and dout. out and dout
// are contiguous [B*T, Hq*hd], so item = token * Hq + h starts at element
// item * kHd and thread t reads elements 8 t .. 8 t + 7: the whole tensor is
// read linearly. Groups of kHd / 8 (8 or 16) lanes never straddle warps.
template <int kHd>
__global__ void __launch_bounds__(kRowDotThreads)
    FlashRowDotKernel(const bf16* __restrict__ out, const bf16* __restrict__ dout, float* __restrict__ dsum,
                      int64_t n_items, int n_heads, int seq_len) {
  constexpr int kLanes = kHd / 8;
  static_assert(32 % kLanes == 0, "an item's lanes must stay inside one warp");
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowDotThreads + threadIdx.x;
  const int64_t item = t / kLanes;
  const bool valid = item < n_items;
  float s = 0.0f;
  if (valid) {
    const uint4 o4 = *reinterpret_cast<const uint4*>(out + t * 8);
    const uint4 d4 = *reinterpret_cast<const uint4*>(dout + t * 8);
    const uint32_t ow[4] = {o4.x, o4.y, o4.z, o4.w}, dw[4] = {d4.x, d4.y, d4.z, d4.w};
    for (int k = 0; k < 4; ++k) {  // each word: element 2k in the low half, 2k + 1 in the high half
      s += Bf16Lo(dw[k]) * Bf16Lo(ow[k]);
      s += Bf16Hi(dw[k]) * Bf16Hi(ow[k]);
    }
  }
  // Every lane takes part in the shuffles (invalid ones add 0 to their own
  // invalid group only).
  for (int offset = kLanes / 2; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
  if (valid && t % kLanes == 0) {
    const int64_t token = item / n_heads, h = item % n_heads;
    const int64_t b = token / seq_len, i = token % seq_len;
    dsum[(b * n_heads + h) * seq_len + i] = s;
  }
}

// P^T and dS^T in place of S^T and dP^T, for a key-rows x query-columns
// accumulator block of kCols queries: element (nb, e) is key key_lo + 8 (e / 2)
// and query q0 + col0 + nb * 8 + 2 (lane % 4) + (e & 1), whose lse and D are
// at that column of lse_tile and d_tile. With `mask`, elements with key >
// query (causal), query >= T or key >= T become 0 (zero-filled rows would
// add nothing to the rows stored, but are zeroed rather than relied on), and
// so do keys before the query's document when doc_tile (the document starts
// of the tile's queries, by column) is given.
template <int kCols>
__device__ __forceinline__ void KeyValueGradients(float (&st)[kCols / 8][4], float (&dpt)[kCols / 8][4],
                                                  const float* lse_tile, const float* d_tile, int col0, int q0,
                                                  int key_lo, bool mask, int lane, const FlashGeometry& g,
                                                  const int32_t* doc_tile = nullptr) {
  const int T = g.seq_len;
  for (int nb = 0; nb < kCols / 8; ++nb) {
    const int col = col0 + nb * 8 + 2 * (lane % 4);  // query q0 + col (e even), q0 + col + 1 (e odd)
    const float lse_log2[2] = {lse_tile[col] * kLog2e, lse_tile[col + 1] * kLog2e};
    const float dval[2] = {d_tile[col], d_tile[col + 1]};
    for (int e = 0; e < 4; ++e) {
      const int query = q0 + col + (e & 1), key = key_lo + 8 * (e / 2);
      const bool visible = !mask || (query < T && key < T && !(g.causal && key > query) &&
                                     (doc_tile == nullptr || key >= doc_tile[col + (e & 1)]));
      const float p = visible ? exp2f(st[nb][e] * g.scale_log2 - lse_log2[e & 1]) : 0.0f;
      dpt[nb][e] = visible ? p * (dpt[nb][e] - dval[e & 1]) : 0.0f;
      st[nb][e] = p;
    }
  }
}

// dS in place of dP for a query-rows x key-columns block of kCols keys:
// element (nb, e) is row qi[e / 2] (lse in the exp2 domain and D of that
// row in lse_log2, dval) and key key_lo + nb * 8 + 2 (lane % 4) + (e & 1).
// With `mask`, elements with key > row (causal), key >= T or row >= T
// become 0, and so do keys before the row's document: doc0, doc1 are the
// document starts of rows qi[0], qi[1] (0 without document masking; passed
// by value, as an array they would be kept in local memory).
template <int kCols>
__device__ __forceinline__ void QueryGradients(const float (&s)[kCols / 8][4], float (&dp)[kCols / 8][4],
                                               const int (&qi)[2], const float (&lse_log2)[2], const float (&dval)[2],
                                               int key_lo, bool mask, int lane, const FlashGeometry& g, int doc0 = 0,
                                               int doc1 = 0) {
  const int T = g.seq_len;
  for (int nb = 0; nb < kCols / 8; ++nb) {
    for (int e = 0; e < 4; ++e) {
      const int key = key_lo + nb * 8 + 2 * (lane % 4) + (e & 1), row = qi[e / 2];
      const bool visible = !mask || (key < T && row < T && !(g.causal && key > row) && key >= (e < 2 ? doc0 : doc1));
      const float p = visible ? exp2f(s[nb][e] * g.scale_log2 - lse_log2[e / 2]) : 0.0f;
      dp[nb][e] = visible ? p * (dp[nb][e] - dval[e / 2]) : 0.0f;
    }
  }
}

// ---------------------------------------------------------------------------
// 2. dK, dV.
//
// CTA: keys [k0, k0 + 64) of KV head kv in batch b. Shared memory: the K and
// V tiles (loaded once), two stages of {Q tile, dO tile, lse[64], D[64],
// and with document masking doc_start[64]} for the query tiles streamed
// through a cp.async double buffer. Iteration `it` of the flattened (query
// head, query tile) loop handles query head kv * group + it / n_qt and query
// tile qt_begin + it % n_qt, where causal query tiles start at the key
// tile's own index (the first tile holding a row >= k0; earlier rows see
// none of these keys) and non-causal ones at 0; with document masking they
// end at the tile holding the last query of the tile's last key's document.
//
// Warp w owns keys k0 + 16 w .. + 15 (A rows of every product) and holds
// their dK, dV accumulators (16 x kHd fp32 each). Per query tile (64 rows
// i = q0 .. q0 + 63, "columns" below, taken kKeyValueSub at a time):
//   S^T  = K Q^T          (A: K rows;  B: Q rows, non-transposed load)
//   P^T  = exp2(S^T scale_log2 - lse_i log2 e), 0 where masked
//   dP^T = V dO^T         (A: V rows;  B: dO rows, non-transposed load)
//   dS^T = P^T (dP^T - D_i)
//   dV  += P^T dO         (A: P^T as bf16 from its C fragments; B: dO rows, transposed load)
//   dK  += dS^T Q         (A: dS^T as bf16;                     B: Q rows, transposed load)
// and at the end dK *= 1 / sqrt(hd).
template <int kHd>
constexpr size_t KeyValueSmemBytes() {  // K, V, 2 x Q, 2 x dO tiles (bf16), 2 x lse, 2 x D (f32), 2 x doc_start
  return static_cast<size_t>(6 * kBlockN * kHd) * sizeof(bf16) + 4 * kBlockM * sizeof(float) +
         2 * kBlockM * sizeof(int32_t);
}

// Issues (does not commit) the copies of iteration `it`'s Q and dO tiles and
// lse, D rows into `stage`, and with document masking the rows' document
// starts into sdoc.
template <int kHd>
__device__ __forceinline__ void IssueQueryTile(const FlashGeometry& g, const bf16* qkv_batch, const bf16* dout_batch,
                                               const float* lse, const float* dsum, int b, int h, int q0, bf16* sq,
                                               bf16* sdo, float* slse, float* sd, int32_t* sdoc) {
  const int T = g.seq_len;
  flash::LoadTile<kHd, kBlockM>(sq, qkv_batch + static_cast<int64_t>(h) * kHd, g.row_stride, q0, T);
  flash::LoadTile<kHd, kBlockM>(sdo, dout_batch + static_cast<int64_t>(h) * kHd, g.out_stride, q0, T);
  // Threads 0-63 copy lse[q0 + t], threads 64-127 D[q0 + t]; rows >= T get 0.
  const int t = static_cast<int>(threadIdx.x) % kBlockM;
  const bool is_d = static_cast<int>(threadIdx.x) >= kBlockM;
  const float* src = (is_d ? dsum : lse) + (static_cast<int64_t>(b) * g.n_heads + h) * T;
  const bool valid = q0 + t < T;
  CpAsync4((is_d ? sd : slse) + t, valid ? src + q0 + t : src, valid);
  if (g.doc_start != nullptr && !is_d) {
    const int32_t* doc = g.doc_start + static_cast<int64_t>(b) * T;
    CpAsync4(sdoc + t, valid ? doc + q0 + t : doc, valid);
  }
}

// (The explicit minimum of 1 CTA per SM lets ptxas use up to 255 registers;
// without it, it settles for fewer here and spills.)
template <int kHd>
__global__ void __launch_bounds__(kThreads, 1)
    FlashKeyValueKernel(const bf16* __restrict__ qkv, const bf16* __restrict__ dout, const float* __restrict__ lse,
                        const float* __restrict__ dsum, bf16* __restrict__ dqkv, FlashGeometry g) {
  unsigned char* smem = flash::DynamicShared();
  constexpr int kTile = kBlockN * kHd;  // elements of one tile (kBlockM == kBlockN)
  constexpr int kSub = kKeyValueSub;
  bf16* sk = reinterpret_cast<bf16*>(smem);                 // kBlockN x kHd
  bf16* sv = sk + kTile;                                    // kBlockN x kHd
  bf16* sq = sv + kTile;                                    // 2 stages of kBlockM x kHd
  bf16* sdo = sq + 2 * kTile;                               // 2 stages of kBlockM x kHd
  float* slse = reinterpret_cast<float*>(sdo + 2 * kTile);  // 2 stages of kBlockM
  float* sd = slse + 2 * kBlockM;                           // 2 stages of kBlockM
  int32_t* sdoc = reinterpret_cast<int32_t*>(sd + 2 * kBlockM);  // 2 stages of kBlockM (document masking)

  // Causal: key tile 0 sees every query tile, so the natural order already
  // starts with the heaviest CTAs.
  const int k_tile = static_cast<int>(blockIdx.x);
  const int kv = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int T = g.seq_len, k0 = k_tile * kBlockN;
  const bf16* qkv_batch = qkv + static_cast<int64_t>(b) * T * g.row_stride;
  const bf16* dout_batch = dout + static_cast<int64_t>(b) * T * g.out_stride;

  // With documents, the queries that see any of these keys end with the
  // document holding the tile's last key (doc_start never decreases, so
  // every later query's document starts after that key): the query tiles
  // past it are skipped.
  const int q_end = g.DocumentEnd(b, min(k0 + kBlockN, T) - 1);
  const int n_q_tiles = (q_end + kBlockM - 1) / kBlockM;
  const int qt_begin = g.causal ? k_tile : 0;  // kBlockM == kBlockN: row k0 lies in query tile k_tile
  const int n_qt = n_q_tiles - qt_begin;       // >= 1
  const int n_iter = g.group * n_qt;
  const bool documents = g.doc_start != nullptr;

  flash::LoadTile<kHd, kBlockN>(sk, qkv_batch + g.k_col + static_cast<int64_t>(kv) * kHd, g.row_stride, k0, T);
  flash::LoadTile<kHd, kBlockN>(sv, qkv_batch + g.v_col + static_cast<int64_t>(kv) * kHd, g.row_stride, k0, T);
  IssueQueryTile<kHd>(g, qkv_batch, dout_batch, lse, dsum, b, kv * g.group, qt_begin * kBlockM, sq, sdo, slse, sd,
                      sdoc);
  mma::CpAsyncCommit();

  float dk[kHd / 8][4], dv[kHd / 8][4];  // C fragments: keys warp*16 + g (+8), dims nb*8 + 2q (+1)
  for (int nb = 0; nb < kHd / 8; ++nb) {
    for (int e = 0; e < 4; ++e) dk[nb][e] = dv[nb][e] = 0.0f;
  }
  const int r0 = warp * 16;               // the warp's first key row in the tile
  const int key_lo = k0 + r0 + lane / 4;  // key of C elements e = 0, 1 (e = 2, 3: key_lo + 8)

  for (int it = 0; it < n_iter; ++it) {
    const int stage = it & 1;
    if (it + 1 < n_iter) {
      const int next = stage ^ 1;
      IssueQueryTile<kHd>(g, qkv_batch, dout_batch, lse, dsum, b, kv * g.group + (it + 1) / n_qt,
                          (qt_begin + (it + 1) % n_qt) * kBlockM, sq + next * kTile, sdo + next * kTile,
                          slse + next * kBlockM, sd + next * kBlockM, sdoc + next * kBlockM);
    }
    mma::CpAsyncCommit();   // possibly empty: keeps one group per iteration
    mma::CpAsyncWait<1>();  // everything but the prefetch just issued has landed
    __syncthreads();

    const int q0 = (qt_begin + it % n_qt) * kBlockM;
    const bf16* q_tile = sq + stage * kTile;
    const bf16* do_tile = sdo + stage * kTile;
    const float* lse_tile = slse + stage * kBlockM;
    const float* d_tile = sd + stage * kBlockM;
    const int32_t* doc_tile = documents ? sdoc + stage * kBlockM : nullptr;

    for (int c0 = 0; c0 < kBlockM; c0 += kSub) {
      // S^T (16 keys x kSub queries c0 ..) and dP^T, accumulated over kHd in k16 steps.
      float st[kSub / 8][4], dpt[kSub / 8][4];  // rows: keys key_lo (+8); cols: queries c0 + nb*8 + 2q (+1)
      for (int nb = 0; nb < kSub / 8; ++nb) {
        for (int e = 0; e < 4; ++e) st[nb][e] = dpt[nb][e] = 0.0f;
      }
      for (int ks = 0; ks < kHd / 16; ks += 2) {
        uint32_t ka[2][4], va[2][4];  // A fragments of the warp's K and V rows, k16 steps ks, ks + 1
        LoadA<kHd>(ka[0], sk, r0, ks, lane);
        LoadA<kHd>(ka[1], sk, r0, ks + 1, lane);
        LoadA<kHd>(va[0], sv, r0, ks, lane);
        LoadA<kHd>(va[1], sv, r0, ks + 1, lane);
        for (int nb = 0; nb < kSub / 8; ++nb) {
          uint32_t qb[4], ob[4];  // Q, dO rows c0 + nb*8 .. + 7 as B (n = query), k16 steps ks, ks + 1
          LoadBRows<kHd>(qb, q_tile, c0 / 8 + nb, ks, lane);
          mma::MmaBf16(st[nb], ka[0], qb[0], qb[1]);
          mma::MmaBf16(st[nb], ka[1], qb[2], qb[3]);
          LoadBRows<kHd>(ob, do_tile, c0 / 8 + nb, ks, lane);
          mma::MmaBf16(dpt[nb], va[0], ob[0], ob[1]);
          mma::MmaBf16(dpt[nb], va[1], ob[2], ob[3]);
        }
      }

      // P^T and dS^T in place. Masked: causally, key > query; queries >= T
      // and keys >= T (zero-filled rows, with lse = D = 0: they would add
      // nothing to the rows stored, but are zeroed rather than relied on).
      // Only the blocks that can hold such elements test each one: on the
      // causal diagonal (the warp's last key k0 + r0 + 15 is past the
      // block's first query q0 + c0), at the sequence end, and where the
      // block's last query's document starts after the warp's first key
      // (then some query's document may start after some key).
      const bool mask = q0 + c0 + kSub > T || k0 + kBlockN > T || (g.causal && k0 + r0 + 15 > q0 + c0) ||
                        (documents && doc_tile[c0 + kSub - 1] > k0 + r0);
      KeyValueGradients<kSub>(st, dpt, lse_tile, d_tile, c0, q0, key_lo, mask, lane, g, doc_tile);

      // dV += P^T dO and dK += dS^T Q over the block's queries in k16 steps.
      for (int ks = 0; ks < kSub / 16; ++ks) {
        uint32_t pa[4], dsa[4];
        PackA<kSub>(pa, st, ks);
        PackA<kSub>(dsa, dpt, ks);
        for (int nb = 0; nb < kHd / 8; nb += 2) {
          uint32_t ob[4], qb[4];  // dO, Q rows c0 + 16ks .. + 15 as B (k = query, n = dim), dims nb*8 .. + 15
          LoadBTrans<kHd>(ob, do_tile, c0 / 16 + ks, nb, lane);
          mma::MmaBf16(dv[nb], pa, ob[0], ob[1]);
          mma::MmaBf16(dv[nb + 1], pa, ob[2], ob[3]);
          LoadBTrans<kHd>(qb, q_tile, c0 / 16 + ks, nb, lane);
          mma::MmaBf16(dk[nb], dsa, qb[0], qb[1]);
          mma::MmaBf16(dk[nb + 1], dsa, qb[2], qb[3]);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  // dK (scaled) and dV leave through the warp's own rows of the K and V
  // tiles (every warp is past its last read of them: the loop ended with a
  // barrier), 16 bytes per store; keys >= T are not written.
  bf16* drows = dqkv + (static_cast<int64_t>(b) * T + k0) * g.row_stride + static_cast<int64_t>(kv) * kHd;
  StoreWarpRows<kHd>(dk, g.scale, sk, r0, lane, drows + g.k_col, g.row_stride, T - k0);
  StoreWarpRows<kHd>(dv, 1.0f, sv, r0, lane, drows + g.v_col, g.row_stride, T - k0);
}

// ---------------------------------------------------------------------------
// 3. dQ.
//
// CTA: query rows [q0, q0 + 64) of query head h in batch b; warp w owns
// rows q0 + 16 w .. + 15, like the forward. Shared memory: the Q and dO
// tiles (loaded once), two stages of K and V tiles. Per key tile (keys
// key0 .. key0 + 63, "columns"):
//   S  = Q K^T    (A: Q rows;  B: K rows, non-transposed load)
//   P  = exp2(S scale_log2 - lse_i log2 e), 0 where masked
//   dP = dO V^T   (A: dO rows; B: V rows, non-transposed load)
//   dS = P (dP - D_i)                        (keys taken QuerySub() at a time)
//   dQ += dS K    (A: dS as bf16 from its C fragments; B: K rows, transposed load)
// and at the end dQ *= 1 / sqrt(hd). Causal: key tiles up to the diagonal.
template <int kHd>
constexpr size_t QuerySmemBytes() {
  return static_cast<size_t>(6 * kBlockM * kHd) * sizeof(bf16);  // Q, dO, 2 x K, 2 x V
}

template <int kHd>
__global__ void __launch_bounds__(kThreads, 1)
    FlashQueryKernel(const bf16* __restrict__ qkv, const bf16* __restrict__ dout, const float* __restrict__ lse,
                     const float* __restrict__ dsum, bf16* __restrict__ dqkv, FlashGeometry g) {
  unsigned char* smem = flash::DynamicShared();
  constexpr int kTile = kBlockN * kHd;
  constexpr int kSub = QuerySub<kHd>();
  static_assert(kBlockM == kBlockN, "the tiles below are all kBlockN x kHd");
  bf16* sq = reinterpret_cast<bf16*>(smem);  // kBlockM x kHd
  bf16* sdo = sq + kTile;                    // kBlockM x kHd
  bf16* sk = sdo + kTile;                    // 2 stages of kBlockN x kHd
  bf16* sv = sk + 2 * kTile;                 // 2 stages of kBlockN x kHd

  // Heaviest causal tiles first: they are the last query tiles.
  const int q_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int T = g.seq_len, q0 = q_tile * kBlockM;
  const bf16* qkv_batch = qkv + static_cast<int64_t>(b) * T * g.row_stride;
  const bf16* ksrc = qkv_batch + g.KeyColumn(h, kHd);
  const bf16* vsrc = qkv_batch + g.ValueColumn(h, kHd);

  // Causal: the keys up to this tile's last query row. With documents, from
  // the key tile holding the start of the first row's document (as the forward).
  const int kv_end = g.causal ? min(T, q0 + kBlockM) : T;
  const int n_tiles = (kv_end + kBlockN - 1) / kBlockN;
  const int first_tile = g.DocStart(b, q0) / kBlockN;

  flash::LoadTile<kHd, kBlockM>(sq, qkv_batch + static_cast<int64_t>(h) * kHd, g.row_stride, q0, T);
  flash::LoadTile<kHd, kBlockM>(sdo, dout + static_cast<int64_t>(b) * T * g.out_stride + static_cast<int64_t>(h) * kHd,
                                g.out_stride, q0, T);
  flash::LoadTile<kHd, kBlockN>(sk, ksrc, g.row_stride, first_tile * kBlockN, T);
  flash::LoadTile<kHd, kBlockN>(sv, vsrc, g.row_stride, first_tile * kBlockN, T);
  mma::CpAsyncCommit();

  // The lane's rows q0 + r0 + g and + 8 (C elements e = 0, 1 and 2, 3):
  // lse in the exp2 domain and D, 0 past the end (those rows are masked).
  const int r0 = warp * 16;
  const int qi[2] = {q0 + r0 + lane / 4, q0 + r0 + lane / 4 + 8};
  float lse_log2[2], dval[2];
  for (int r = 0; r < 2; ++r) {
    const int64_t stat = (static_cast<int64_t>(b) * g.n_heads + h) * T + qi[r];
    lse_log2[r] = qi[r] < T ? lse[stat] * kLog2e : 0.0f;
    dval[r] = qi[r] < T ? dsum[stat] : 0.0f;
  }
  // Document starts of the lane's rows (rows past the end take the last
  // row's; they are masked anyway) and the latest among the warp's rows.
  const int row_doc[2] = {g.DocStart(b, min(qi[0], T - 1)), g.DocStart(b, min(qi[1], T - 1))};
  const int warp_doc_max = g.DocStart(b, min(q0 + r0 + 15, T - 1));

  float dq[kHd / 8][4];  // C fragments: rows r0 + g (+8), dims nb*8 + 2q (+1)
  for (int nb = 0; nb < kHd / 8; ++nb) {
    for (int e = 0; e < 4; ++e) dq[nb][e] = 0.0f;
  }

  for (int j = first_tile; j < n_tiles; ++j) {
    const int stage = (j - first_tile) & 1;
    if (j + 1 < n_tiles) {
      flash::LoadTile<kHd, kBlockN>(sk + (stage ^ 1) * kTile, ksrc, g.row_stride, (j + 1) * kBlockN, T);
      flash::LoadTile<kHd, kBlockN>(sv + (stage ^ 1) * kTile, vsrc, g.row_stride, (j + 1) * kBlockN, T);
    }
    mma::CpAsyncCommit();   // possibly empty: keeps one group per iteration
    mma::CpAsyncWait<1>();  // everything but the prefetch just issued has landed
    __syncthreads();
    const bf16* k_tile = sk + stage * kTile;
    const bf16* v_tile = sv + stage * kTile;
    const int key0 = j * kBlockN;

    for (int c0 = 0; c0 < kBlockN; c0 += kSub) {
      // S (16 rows x kSub keys key0 + c0 ..) and dP, accumulated over kHd in k16 steps.
      float s[kSub / 8][4], dp[kSub / 8][4];  // rows r0 + g (+8); cols: keys key0 + c0 + nb*8 + 2q (+1)
      for (int nb = 0; nb < kSub / 8; ++nb) {
        for (int e = 0; e < 4; ++e) s[nb][e] = dp[nb][e] = 0.0f;
      }
      for (int ks = 0; ks < kHd / 16; ks += 2) {
        uint32_t qa[2][4], oa[2][4];  // A fragments of the warp's Q and dO rows, k16 steps ks, ks + 1
        LoadA<kHd>(qa[0], sq, r0, ks, lane);
        LoadA<kHd>(qa[1], sq, r0, ks + 1, lane);
        LoadA<kHd>(oa[0], sdo, r0, ks, lane);
        LoadA<kHd>(oa[1], sdo, r0, ks + 1, lane);
        for (int nb = 0; nb < kSub / 8; ++nb) {
          uint32_t kb[4], vb[4];  // K, V rows c0 + nb*8 .. + 7 as B (n = key), k16 steps ks, ks + 1
          LoadBRows<kHd>(kb, k_tile, c0 / 8 + nb, ks, lane);
          mma::MmaBf16(s[nb], qa[0], kb[0], kb[1]);
          mma::MmaBf16(s[nb], qa[1], kb[2], kb[3]);
          LoadBRows<kHd>(vb, v_tile, c0 / 8 + nb, ks, lane);
          mma::MmaBf16(dp[nb], oa[0], vb[0], vb[1]);
          mma::MmaBf16(dp[nb], oa[1], vb[2], vb[3]);
        }
      }

      // dS in place of dP. Masked: causally, key > row; keys >= T and rows
      // >= T (zero-filled K, V, Q, dO rows: they would add nothing to the
      // rows stored, but are zeroed rather than relied on). Only blocks at
      // the sequence end, reaching past the warp's first row (key_lo +
      // kSub - 1 > q0 + r0) or starting before the warp's last row's
      // document test each element.
      const int key_lo = key0 + c0;
      const bool mask =
          key_lo + kSub > T || q0 + kBlockM > T || (g.causal && key_lo + kSub - 1 > q0 + r0) || key_lo < warp_doc_max;
      QueryGradients<kSub>(s, dp, qi, lse_log2, dval, key_lo, mask, lane, g, row_doc[0], row_doc[1]);

      // dQ += dS K over the block's keys in k16 steps.
      for (int ks = 0; ks < kSub / 16; ++ks) {
        uint32_t dsa[4];
        PackA<kSub>(dsa, dp, ks);
        for (int nb = 0; nb < kHd / 8; nb += 2) {
          uint32_t kb[4];  // K rows c0 + 16ks .. + 15 as B (k = key, n = dim), dims nb*8 .. + 15
          LoadBTrans<kHd>(kb, k_tile, c0 / 16 + ks, nb, lane);
          mma::MmaBf16(dq[nb], dsa, kb[0], kb[1]);
          mma::MmaBf16(dq[nb + 1], dsa, kb[2], kb[3]);
        }
      }
    }
    __syncthreads();  // this stage is refilled by the next iteration's prefetch
  }

  // dQ (scaled) leaves through the warp's own rows of the Q tile; rows >= T
  // are not written.
  StoreWarpRows<kHd>(dq, g.scale, sq, r0, lane,
                     dqkv + (static_cast<int64_t>(b) * T + q0) * g.row_stride + static_cast<int64_t>(h) * kHd,
                     g.row_stride, T - q0);
}

}  // namespace latam::cuda::flash
