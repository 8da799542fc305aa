// Device pieces of the contrastive loss kernels beyond the score-tile producer (tile_gemm.cuh):
//  - column statistics of a score tile (per-column (max, sum) over the CTA's 32 rows, the partials of
//    the one-pass forward),
//  - the backward's gradient product acc[kRows][dc] += dS[kRows][kCols] . B[kCols][dc chunk], with the
//    accumulator in (dynamic) shared memory across all column tiles, so d_a is written once:
//    tensor cores (WMMA m16n16k16, float accumulation) for float16 from sm_70 and bfloat16 from sm_80,
//    with dS rounded to the input type after a power-of-two pre-scale; an exact SIMT path otherwise.
// Torch-free.
#pragma once

#include <mma.h>

#include <cstdint>

#include "cuda/tile_gemm.cuh"
#include "dcd/online_lse.h"
#include "dcd/pair_mask.h"

namespace dcd {
namespace cuda_kernels {

// D columns of the gradient product per shared-memory strip, and the padding of the accumulator rows
// (a multiple of 8 floats keeps every WMMA fragment pointer 32-byte aligned).
constexpr int kGradStrip = 64;
constexpr int kAccPad = 8;
constexpr int kThreadsPerCol = kThreads / kCols;  // 4 adjacent lanes share a column of the tile
static_assert(kThreadsPerCol == 4 && kRows % kThreadsPerCol == 0, "column statistics assume 4 threads a column");

// The column part of the forward: for column c0 + threadIdx.x / 4 of the tile (scores scale * tile),
// the (max, sum) over the tile's rows that enter that column's denominator, merged over the 4 lanes in
// a fixed order. Every lane of the CTA must call it (shuffles); lane 4c gets the column's pair.
template <typename acc_t>
__device__ __forceinline__ OnlineLSE<acc_t> tile_column_stats(const acc_t (*tile)[kTileLd], const PairMask& mask,
                                                              acc_t scale, int64_t r0, int64_t n, int64_t c0,
                                                              int64_t m) {
  const int c = threadIdx.x / kThreadsPerCol, q = threadIdx.x % kThreadsPerCol;
  const int64_t j = c0 + c;
  constexpr int kPer = kRows / kThreadsPerCol;
  acc_t mx = neg_infinity<acc_t>();
  bool any = false;
#pragma unroll
  for (int t = 0; t < kPer; ++t) {
    const int r = t * kThreadsPerCol + q;  // interleaved rows: fewer shared-memory bank conflicts
    const int64_t i = r0 + r;
    if (i < n && j < m && mask.in_col(i, j)) {
      mx = max_of(mx, scale * tile[r][c]);
      any = true;
    }
  }
  acc_t sum = 0;
  if (any) {
#pragma unroll
    for (int t = 0; t < kPer; ++t) {
      const int r = t * kThreadsPerCol + q;
      const int64_t i = r0 + r;
      if (i < n && j < m && mask.in_col(i, j)) sum += exp_of(scale * tile[r][c] - mx);
    }
  }
  OnlineLSE<acc_t> run{mx, sum};
#pragma unroll
  for (int offset = 1; offset < kThreadsPerCol; offset <<= 1) {
    const acc_t om = __shfl_xor_sync(kFullMask, run.max, offset);
    const acc_t os = __shfl_xor_sync(kFullMask, run.sum, offset);
    run.merge(om, os);
  }
  return run;
}

// ---------------------------------------------------------------- the gradient product, SIMT (exact)
// dS stays in the accumulation type in the score tile; B strips are staged through the producer's
// shared memory (free between tiles). Each thread owns rows {tr, tr + 16} x columns {tc, tc + 16} of a
// 32 x 32 strip: 4 shared loads per 4 FMAs.
template <typename in_t, typename acc_t, typename ProducerSmem>
struct SimtGradProduct {
  static constexpr int kStrip = 32;
  using Stage = acc_t[kStrip + 1];
  static_assert(sizeof(ProducerSmem) >= sizeof(acc_t) * kCols * (kStrip + 1), "stage does not fit");
  static_assert(kGradStrip % kStrip == 0, "accumulator padding assumes strips divide kGradStrip");
  struct Smem {};

  __device__ static acc_t ds_factor(acc_t) { return acc_t(1); }

  // acc[r * ld + k] += sum_c tile[r][c] * b[c0 + c][k_begin + k] for k < k_len. Starts and ends with a barrier.
  __device__ static void accumulate(Smem&, ProducerSmem& producer, const acc_t (*tile)[kTileLd], const in_t* b,
                                    int64_t m, int64_t d, int64_t c0, int64_t k_begin, int64_t k_len, acc_t* acc,
                                    int ld) {
    Stage* stage = reinterpret_cast<Stage*>(&producer);
    const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    __syncthreads();
    for (int64_t k0 = 0; k0 < k_len; k0 += kStrip) {
      for (int e = tid; e < kCols * kStrip; e += kThreads) {
        const int c = e / kStrip, kk = e % kStrip;
        const int64_t gc = c0 + c;
        stage[c][kk] = (gc < m && k0 + kk < k_len) ? to_acc<acc_t>(b[gc * d + k_begin + k0 + kk]) : acc_t(0);
      }
      __syncthreads();
      acc_t s00 = 0, s01 = 0, s10 = 0, s11 = 0;
#pragma unroll 8
      for (int c = 0; c < kCols; ++c) {
        const acc_t a0 = tile[tr][c], a1 = tile[tr + 16][c];
        const acc_t b0 = stage[c][tc], b1 = stage[c][tc + 16];
        s00 += a0 * b0;
        s01 += a0 * b1;
        s10 += a1 * b0;
        s11 += a1 * b1;
      }
      acc_t* row0 = acc + tr * ld + k0;
      acc_t* row1 = acc + (tr + 16) * ld + k0;
      row0[tc] += s00;
      row0[tc + 16] += s01;
      row1[tc] += s10;
      row1[tc + 16] += s11;
      __syncthreads();
    }
  }
};

// ---------------------------------------------------------------- the gradient product, tensor cores
template <typename half_t>
__device__ __forceinline__ half_t from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// dS (scaled by ds_factor) is rounded to half_t into shared memory once per tile; B strips of 64 D
// columns are staged as half_t; 8 warps each own one 16 x 16 fragment of the 32 x 64 output strip,
// load it from the shared accumulator, run 4 m16n16k16 products over the tile's 64 columns and store it
// back. The accumulator is float, so the only rounding beyond the float path is dS to half_t.
template <typename half_t, typename ProducerSmem>
struct WmmaGradProduct {
  static constexpr int kDsLd = kCols + 8;
  static constexpr int kBLd = kGradStrip + 8;
  struct Smem {
    __align__(32) half_t ds[kRows][kDsLd];
    __align__(32) half_t b[kCols][kBLd];
  };
  static_assert(kBLd % 8 == 0 && kGradStrip % 8 == 0, "16-byte staging of b needs 16-byte aligned rows");

  // A power of two 2^(14 - e) with g_bound < 2^e: |dS| * factor < 2^14, inside the float16 range with
  // the smallest probabilities of a 10^6-wide softmax still normal; 1 when the bound is 0 or not finite.
  // The exponent is capped at 64 (the cap acts below g_bound = 2^-50): uncapped, 2^(14 - e) is inf for
  // g_bound < 2^-114 (e.g. an upstream gradient of 1e-36) and dS * factor inf/NaN; capped, |dS| * factor
  // stays < 2^14 and scale / factor a normal float.
  __device__ static float ds_factor(float g_bound) {
    if (!(g_bound > 0.0f) || !(g_bound < 3.0e38f)) return 1.0f;
    int e = 0;
    frexpf(g_bound, &e);  // g_bound = f * 2^e, f in [0.5, 1)
    const int shift = 14 - e;
    return ldexpf(1.0f, shift < 64 ? shift : 64);
  }

  __device__ static void accumulate(Smem& sm, ProducerSmem&, const float (*tile)[kTileLd], const half_t* b,
                                    int64_t m, int64_t d, int64_t c0, int64_t k_begin, int64_t k_len, float* acc,
                                    int ld) {
    namespace wmma = nvcuda::wmma;
    const int tid = threadIdx.x, warp = tid / 32;
    const int wr = warp / 4, wc = warp % 4;
    const half_t zero = zero_of<half_t>();
    __syncthreads();  // the tile's dS values are complete
    if (k_len <= 0) return;  // D = 0: nothing to multiply (uniform over the CTA)
    for (int e = tid; e < kRows * kCols; e += kThreads) {
      const int r = e / kCols, c = e % kCols;
      sm.ds[r][c] = from_float<half_t>(tile[r][c]);
    }
    // 16-byte loads when every row of b starts 16-byte aligned: then k_begin, k0 and k_len are multiples
    // of 8 too, so each group of 8 is wholly inside or outside the chunk
    const bool vec = d % 8 == 0 && reinterpret_cast<uintptr_t>(b) % 16 == 0;
    for (int64_t k0 = 0; k0 < k_len; k0 += kGradStrip) {
      if (vec) {
        constexpr int kGroups = kGradStrip / 8;
        for (int e = tid; e < kCols * kGroups; e += kThreads) {
          const int c = e / kGroups, kk = (e % kGroups) * 8;
          const int64_t gc = c0 + c;
          uint4 v = make_uint4(0u, 0u, 0u, 0u);  // +0 in float16 and bfloat16 alike
          if (gc < m && k0 + kk < k_len) v = *reinterpret_cast<const uint4*>(b + gc * d + k_begin + k0 + kk);
          *reinterpret_cast<uint4*>(&sm.b[c][kk]) = v;
        }
      } else {
        for (int e = tid; e < kCols * kGradStrip; e += kThreads) {
          const int c = e / kGradStrip, kk = e % kGradStrip;
          const int64_t gc = c0 + c;
          sm.b[c][kk] = (gc < m && k0 + kk < k_len) ? b[gc * d + k_begin + k0 + kk] : zero;
        }
      }
      __syncthreads();
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> out;
      float* out_ptr = acc + (wr * 16) * ld + k0 + wc * 16;
      wmma::load_matrix_sync(out, out_ptr, ld, wmma::mem_row_major);
#pragma unroll
      for (int ks = 0; ks < kCols; ks += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, half_t, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, half_t, wmma::row_major> fb;
        wmma::load_matrix_sync(fa, &sm.ds[wr * 16][ks], kDsLd);
        wmma::load_matrix_sync(fb, &sm.b[ks][wc * 16], kBLd);
        wmma::mma_sync(out, fa, fb, out);
      }
      wmma::store_matrix_sync(out_ptr, out, ld, wmma::mem_row_major);
      __syncthreads();
    }
  }
};

// The product a dtype uses: tensor cores exactly where the score producer uses them (the same
// DCD_WMMA_* tests of tile_gemm.cuh), the SIMT path elsewhere.
template <typename in_t, typename acc_t>
struct GradProductFor {
  using type = SimtGradProduct<in_t, acc_t, typename TileGemmFor<in_t, acc_t>::type::Smem>;
};
#if DCD_WMMA_FP16
template <>
struct GradProductFor<__half, float> {
  using type = WmmaGradProduct<__half, typename TileGemmFor<__half, float>::type::Smem>;
};
#endif
#if DCD_WMMA_BF16
template <>
struct GradProductFor<__nv_bfloat16, float> {
  using type = WmmaGradProduct<__nv_bfloat16, typename TileGemmFor<__nv_bfloat16, float>::type::Smem>;
};
#endif

}  // namespace cuda_kernels
}  // namespace dcd
