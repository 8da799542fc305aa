// Fused similarity + top-k: each CTA owns kRows query rows, streams key tiles through the tile producer
// and keeps each row's sorted top-k list in the output arrays. A warp handles 4 rows; its lanes test
// the tile against the row's current k-th value, and the rare survivors are inserted in increasing
// column order (ties keep the smaller index). The score tile never leaves shared memory.
#include "cuda/tile_gemm.cuh"
#include "dcd/topk.h"

namespace dcd {
namespace cuda_kernels {

namespace {

template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    similarity_topk_kernel(const in_t* q, int64_t n, const in_t* keys, int64_t m, int64_t d, int k,
                           const int64_t* qid, const int64_t* kid, float* values, int64_t* indices) {
  using Gemm = typename TileGemmFor<in_t, acc_t>::type;
  __shared__ typename Gemm::Smem sm;
  __shared__ __align__(32) acc_t tile[kRows][kTileLd];  // WMMA stores need 256-bit alignment
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int kRowsPerWarp = kRows / (kThreads / 32);

  for (int64_t c0 = 0; c0 < m; c0 += kCols) {
    Gemm::run(q, n, keys, m, d, r0, c0, sm, tile);
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp * kRowsPerWarp + rr;
      const int64_t i = r0 + r;
      if (i >= n) break;
      float* vals = values + i * k;
      int64_t* idx = indices + i * k;
      const int64_t my_id = qid ? qid[i] : 0;
      float threshold = vals[k - 1];
      for (int half = 0; half < kCols; half += 32) {
        const int64_t j = c0 + half + lane;
        const float v = static_cast<float>(tile[r][half + lane]);
        const bool pass = j < m && v > threshold && !(kid && kid[j] == my_id);
        unsigned ballot = __ballot_sync(kFullMask, pass);
        while (ballot) {
          const int src = __ffs(ballot) - 1;
          ballot &= ballot - 1;
          const float cv = __shfl_sync(kFullMask, v, src);
          if (lane == 0) topk_insert(vals, idx, k, cv, c0 + half + src);
          __syncwarp();
          threshold = vals[k - 1];
        }
      }
    }
    __syncthreads();
  }
}

}  // namespace

cudaError_t similarity_topk(Matrix query, Matrix keys, int64_t k, const int64_t* query_ids, const int64_t* key_ids,
                            float* values, int64_t* indices, cudaStream_t stream) {
  if (query.rows == 0 || keys.rows == 0 || k == 0) return cudaSuccess;
  DCD_DISPATCH_DTYPE(query.dtype, {
    similarity_topk_kernel<in_t, float><<<ceil_div(query.rows, kRows), kThreads, 0, stream>>>(
        static_cast<const in_t*>(query.data), query.rows, static_cast<const in_t*>(keys.data), keys.rows, query.cols,
        static_cast<int>(k), query_ids, key_ids, values, indices);
    return cudaGetLastError();
  })
}

}  // namespace cuda_kernels
}  // namespace dcd
