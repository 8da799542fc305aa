// Fused contrastive loss on CUDA. Both kernels walk one row block (kRows rows of `a`) across all column
// tiles of `b`, recomputing each score tile in shared memory; the column direction runs the same
// kernels with a and b swapped (PairMask is symmetric under that swap), so nothing of size N x M and
// no atomics are ever needed and results are bitwise reproducible.
#include "cuda/tile_gemm.cuh"
#include "dcd/contrastive_grad.h"
#include "dcd/online_lse.h"
#include "dcd/pair_mask.h"

namespace dcd {
namespace cuda_kernels {

namespace {

static_assert(kRows == kContrastiveRowsPerBlock, "launchers.h must state the row block of these kernels");
constexpr int kThreadsPerRow = kThreads / kRows;  // 8 threads share a row; they are adjacent lanes
constexpr int kGradDepth = 32;                      // D columns of b staged per step of the gradient GEMM

__device__ __forceinline__ PairMask to_pair_mask(const MaskArgs& m) {
  return PairMask{m.a_ids, m.b_ids, m.pos_a, m.pos_b};
}

template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    row_lse_kernel(const in_t* a, int64_t n, const in_t* b, int64_t m, int64_t d, const acc_t* scale_ptr,
                   MaskArgs mask_args, acc_t* lse) {
  using Gemm = typename TileGemmFor<in_t, acc_t>::type;
  __shared__ typename Gemm::Smem sm;
  __shared__ __align__(32) acc_t tile[kRows][kTileLd];  // WMMA stores need 256-bit alignment
  const PairMask mask = to_pair_mask(mask_args);
  const acc_t scale = *scale_ptr;
  const int r = threadIdx.x / kThreadsPerRow, p = threadIdx.x % kThreadsPerRow;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows, i = r0 + r;
  OnlineLSE<acc_t> run = OnlineLSE<acc_t>::empty();

  for (int64_t c0 = 0; c0 < m; c0 += kCols) {
    Gemm::run(a, n, b, m, d, r0, c0, sm, tile);
    if (i < n) {
      acc_t mx = neg_infinity<acc_t>();
      for (int q = 0; q < kCols / kThreadsPerRow; ++q) {
        const int c = q * kThreadsPerRow + p;
        const int64_t j = c0 + c;
        if (j < m && mask.in_row(i, j)) mx = max_of(mx, scale * tile[r][c]);
      }
      acc_t sum = 0;
      for (int q = 0; q < kCols / kThreadsPerRow; ++q) {
        const int c = q * kThreadsPerRow + p;
        const int64_t j = c0 + c;
        if (j < m && mask.in_row(i, j)) sum += exp_of(scale * tile[r][c] - mx);
      }
      run.merge(mx, sum);
    }
    __syncthreads();
  }
  for (int offset = 1; offset < kThreadsPerRow; offset <<= 1) {
    const acc_t om = __shfl_xor_sync(kFullMask, run.max, offset);
    const acc_t os = __shfl_xor_sync(kFullMask, run.sum, offset);
    run.merge(om, os);
  }
  if (p == 0 && i < n) lse[i] = run.value();
}

template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    row_grad_kernel(const in_t* a, int64_t n, const in_t* b, int64_t m, int64_t d, const acc_t* scale_ptr,
                    MaskArgs mask_args, const acc_t* g_a, const acc_t* lse_a, const acc_t* g_b, const acc_t* lse_b,
                    acc_t* d_a, acc_t* d_scale_parts) {
  using Gemm = typename TileGemmFor<in_t, acc_t>::type;
  __shared__ typename Gemm::Smem sm;
  __shared__ __align__(32) acc_t tile[kRows][kTileLd];  // WMMA stores need 256-bit alignment
  __shared__ acc_t warp_parts[kThreads / 32];
  // the gradient GEMM stages b through the producer's shared memory, which is free between tiles
  using Stage = acc_t[kGradDepth + 1];
  static_assert(sizeof(typename Gemm::Smem) >= sizeof(acc_t) * kCols * (kGradDepth + 1), "stage does not fit");
  Stage* stage = reinterpret_cast<Stage*>(&sm);
  const PairMask mask = to_pair_mask(mask_args);
  const acc_t scale = *scale_ptr;
  const int r = threadIdx.x / kThreadsPerRow, p = threadIdx.x % kThreadsPerRow;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows, i = r0 + r;
  const acc_t gi = i < n ? g_a[i] : acc_t(0), li = i < n ? lse_a[i] : acc_t(0);
  acc_t d_scale = 0;

  for (int64_t c0 = 0; c0 < m; c0 += kCols) {
    Gemm::run(a, n, b, m, d, r0, c0, sm, tile);
    for (int q = 0; q < kCols / kThreadsPerRow; ++q) {
      const int c = q * kThreadsPerRow + p;
      const int64_t j = c0 + c;
      acc_t ds = 0;
      if (i < n && j < m) {
        const acc_t dot = tile[r][c];
        ds = contrastive_score_grad(scale * dot, mask.in_row(i, j), mask.in_col(i, j), mask.pos_row[i] == j,
                                    mask.pos_col[j] == i, gi, li, g_b[j], lse_b[j]);
        d_scale += ds * dot;
      }
      tile[r][c] = ds;
    }
    __syncthreads();
    // d_a[rows] += scale * ds_tile @ b[c0 : c0 + kCols], kGradDepth columns of b at a time
    for (int64_t k0 = 0; k0 < d; k0 += kGradDepth) {
      for (int e = threadIdx.x; e < kCols * kGradDepth; e += kThreads) {
        const int c = e / kGradDepth, kk = e % kGradDepth;
        const int64_t gc = c0 + c, gk = k0 + kk;
        stage[c][kk] = (gc < m && gk < d) ? to_acc<acc_t>(b[gc * d + gk]) : acc_t(0);
      }
      __syncthreads();
      for (int kk = p; kk < kGradDepth; kk += kThreadsPerRow) {
        acc_t acc = 0;
#pragma unroll 8
        for (int c = 0; c < kCols; ++c) acc += tile[r][c] * stage[c][kk];
        if (i < n && k0 + kk < d) d_a[i * d + k0 + kk] += scale * acc;
      }
      __syncthreads();
    }
  }
  if (d_scale_parts != nullptr) {
    d_scale = warp_sum(d_scale);
    if (threadIdx.x % 32 == 0) warp_parts[threadIdx.x / 32] = d_scale;
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t total = 0;
      for (int w = 0; w < kThreads / 32; ++w) total += warp_parts[w];
      d_scale_parts[blockIdx.x] = total;
    }
  }
}

}  // namespace

cudaError_t contrastive_row_lse(Matrix a, Matrix b, const void* scale, MaskArgs mask, void* lse,
                                cudaStream_t stream) {
  DCD_DISPATCH_DTYPE(a.dtype, {
    row_lse_kernel<in_t, acc_t><<<ceil_div(a.rows, kRows), kThreads, 0, stream>>>(
        static_cast<const in_t*>(a.data), a.rows, static_cast<const in_t*>(b.data), b.rows, a.cols,
        static_cast<const acc_t*>(scale), mask, static_cast<acc_t*>(lse));
    return cudaGetLastError();
  })
}

cudaError_t contrastive_row_grad(Matrix a, Matrix b, const void* scale, MaskArgs mask, const void* g_a,
                                 const void* lse_a, const void* g_b, const void* lse_b, void* d_a,
                                 void* d_scale_parts, cudaStream_t stream) {
  DCD_DISPATCH_DTYPE(a.dtype, {
    row_grad_kernel<in_t, acc_t><<<ceil_div(a.rows, kRows), kThreads, 0, stream>>>(
        static_cast<const in_t*>(a.data), a.rows, static_cast<const in_t*>(b.data), b.rows, a.cols,
        static_cast<const acc_t*>(scale), mask, static_cast<const acc_t*>(g_a), static_cast<const acc_t*>(lse_a),
        static_cast<const acc_t*>(g_b), static_cast<const acc_t*>(lse_b), static_cast<acc_t*>(d_a),
        static_cast<acc_t*>(d_scale_parts));
    return cudaGetLastError();
  })
}

}  // namespace cuda_kernels
}  // namespace dcd
