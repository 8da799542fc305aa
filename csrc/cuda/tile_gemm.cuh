// The tile producer shared by the similarity and contrastive kernels: one CTA of 256 threads computes
// S[r][c] = <a_{r0+r}, b_{c0+c}> for a kRows x kCols tile into shared memory, in the accumulation type.
// float16/bfloat16 use tensor cores (WMMA m16n16k16, float accumulation) where the architecture has
// them (float16 from sm_70, bfloat16 from sm_80); float32, float64 and 16-bit inputs on older
// architectures use an exact SIMT path (float products of the same rounded inputs, float
// accumulation, so both paths compute the same quantity). Rows/columns past the matrix end and the D
// tail are zero-filled, so any D works. Torch-free.
#pragma once

#include <mma.h>

#include "cuda/common.cuh"

namespace dcd {
namespace cuda_kernels {

constexpr int kThreads = 256;
constexpr int kRows = 32;  // rows per CTA
constexpr int kCols = 64;  // columns per tile
constexpr int kDepth = 32; // D per shared-memory stage
constexpr int kTileLd = kCols + 4;

template <typename in_t, typename acc_t>
struct TileSmem {
  acc_t a[kRows][kDepth + 1];
  acc_t b[kCols][kDepth + 1];
};

// Generic exact path: each thread owns a 2 x 4 block of the tile.
template <typename in_t, typename acc_t>
struct TileGemm {
  using Smem = TileSmem<in_t, acc_t>;

  __device__ static void run(const in_t* a, int64_t a_rows, const in_t* b, int64_t b_rows, int64_t d, int64_t r0,
                             int64_t c0, Smem& sm, acc_t (*tile)[kTileLd]) {
    const int tid = threadIdx.x;
    const int tr = tid / 16, tc = tid % 16;
    acc_t acc[2][4] = {};
    for (int64_t k0 = 0; k0 < d; k0 += kDepth) {
      for (int e = tid; e < kRows * kDepth; e += kThreads) {
        const int r = e / kDepth, kk = e % kDepth;
        const int64_t gr = r0 + r, gk = k0 + kk;
        sm.a[r][kk] = (gr < a_rows && gk < d) ? to_acc<acc_t>(a[gr * d + gk]) : acc_t(0);
      }
      for (int e = tid; e < kCols * kDepth; e += kThreads) {
        const int c = e / kDepth, kk = e % kDepth;
        const int64_t gc = c0 + c, gk = k0 + kk;
        sm.b[c][kk] = (gc < b_rows && gk < d) ? to_acc<acc_t>(b[gc * d + gk]) : acc_t(0);
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kDepth; ++kk) {
        const acc_t a0 = sm.a[tr * 2][kk], a1 = sm.a[tr * 2 + 1][kk];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const acc_t bv = sm.b[tc + 16 * q][kk];
          acc[0][q] += a0 * bv;
          acc[1][q] += a1 * bv;
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      tile[tr * 2][tc + 16 * q] = acc[0][q];
      tile[tr * 2 + 1][tc + 16 * q] = acc[1][q];
    }
    __syncthreads();
  }
};

template <typename half_t>
__device__ __forceinline__ half_t zero_of();
template <>
__device__ __forceinline__ __half zero_of<__half>() { return __float2half(0.0f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero_of<__nv_bfloat16>() { return __float2bfloat16(0.0f); }

// Tensor-core path for 16-bit inputs: 8 warps, each one 16 x 16 output fragment of the 32 x 64 tile.
template <typename half_t>
struct WmmaSmem {
  __align__(32) half_t a[kRows][kDepth + 16];
  __align__(32) half_t b[kCols][kDepth + 16];
};

template <typename half_t>
struct WmmaTileGemm {
  using Smem = WmmaSmem<half_t>;
  static constexpr int kLd = kDepth + 16;

  __device__ static void run(const half_t* a, int64_t a_rows, const half_t* b, int64_t b_rows, int64_t d, int64_t r0,
                             int64_t c0, Smem& sm, float (*tile)[kTileLd]) {
    namespace wmma = nvcuda::wmma;
    const int tid = threadIdx.x, warp = tid / 32;
    const int wr = warp / 4, wc = warp % 4;
    const half_t zero = zero_of<half_t>();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int64_t k0 = 0; k0 < d; k0 += kDepth) {
      for (int e = tid; e < kRows * kDepth; e += kThreads) {
        const int r = e / kDepth, kk = e % kDepth;
        const int64_t gr = r0 + r, gk = k0 + kk;
        sm.a[r][kk] = (gr < a_rows && gk < d) ? a[gr * d + gk] : zero;
      }
      for (int e = tid; e < kCols * kDepth; e += kThreads) {
        const int c = e / kDepth, kk = e % kDepth;
        const int64_t gc = c0 + c, gk = k0 + kk;
        sm.b[c][kk] = (gc < b_rows && gk < d) ? b[gc * d + gk] : zero;
      }
      __syncthreads();
#pragma unroll
      for (int ks = 0; ks < kDepth; ks += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, half_t, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, half_t, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, &sm.a[wr * 16][ks], kLd);
        wmma::load_matrix_sync(fb, &sm.b[wc * 16][ks], kLd);
        wmma::mma_sync(acc, fa, fb, acc);
      }
      __syncthreads();
    }
    wmma::store_matrix_sync(&tile[wr * 16][wc * 16], acc, kTileLd, wmma::mem_row_major);
    __syncthreads();
  }
};

// The producer a dtype uses. Only the device passes see __CUDA_ARCH__; the choice changes nothing the
// host launch depends on (the block size is kThreads and all shared memory is static either way).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 700
#define DCD_WMMA_FP16 1
#else
#define DCD_WMMA_FP16 0
#endif
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define DCD_WMMA_BF16 1
#else
#define DCD_WMMA_BF16 0
#endif

template <typename in_t, typename acc_t>
struct TileGemmFor {
  using type = TileGemm<in_t, acc_t>;
};
#if DCD_WMMA_FP16
template <>
struct TileGemmFor<__half, float> {
  using type = WmmaTileGemm<__half>;
};
#endif
#if DCD_WMMA_BF16
template <>
struct TileGemmFor<__nv_bfloat16, float> {
  using type = WmmaTileGemm<__nv_bfloat16>;
};
#endif

}  // namespace cuda_kernels
}  // namespace dcd
