// Fused contrastive loss on CUDA (docs/design.md section 7).
//
// Forward, one pass over the score tiles (1 GEMM-equivalent): one wave of CTAs, each walking a fixed,
// strided set of 32-row blocks across all 64-column tiles; the row LSE is an online reduction inside the CTA, and the
// column statistics of every tile are folded into the CTA's own slot of a [parts, M] (max, sum)
// workspace (only that CTA touches the slot, in a fixed order); a second small kernel merges the slots
// of each column in slot order with the shared OnlineLSE.
//
// Backward (4 GEMM-equivalents: per direction one score recomputation and one gradient product): a CTA
// owns 32 rows, a chunk of D and a split of the columns (one split unless the rows are too few to fill
// the GPU); for every column tile of its split it recomputes the scores, forms dS with the shared
// per-score helper (dcd/contrastive_grad.h) and accumulates dS . B in shared memory across the tiles
// (tensor cores for 16-bit inputs), writing its d_a block (a split's partial) once at the end; a small
// kernel adds the splits' partials in split order. The column direction
// runs the same kernel with a and b swapped (PairMask is symmetric under that swap), so there are no
// atomics, nothing of size N x M, and results are bitwise reproducible.
#include "cuda/contrastive_tiles.cuh"
#include "dcd/contrastive_grad.h"

namespace dcd {
namespace cuda_kernels {

namespace {

static_assert(kRows == kContrastiveRowsPerBlock, "launchers.h must state the row block of these kernels");
constexpr int kThreadsPerRow = kThreads / kRows;  // 8 threads share a row; they are adjacent lanes
// Largest dynamic shared accumulator of the backward (a D chunk beyond it costs one more score sweep):
// D = 768 fits for float accumulation, with room for two CTAs per SM on sm_90.
constexpr int64_t kMaxAccBytes = 112 * 1024;

__device__ __forceinline__ PairMask to_pair_mask(const MaskArgs& m) {
  return PairMask{m.a_ids, m.b_ids, m.pos_a, m.pos_b};
}

template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 3)
    lse_kernel(const in_t* a, int64_t n, const in_t* b, int64_t m, int64_t d, const acc_t* scale_ptr,
               MaskArgs mask_args, acc_t* row_lse, acc_t* part_max, acc_t* part_sum) {
  using Gemm = typename TileGemmFor<in_t, acc_t>::type;
  __shared__ typename Gemm::Smem sm;
  __shared__ __align__(32) acc_t tile[kRows][kTileLd];  // WMMA stores need 256-bit alignment
  const PairMask mask = to_pair_mask(mask_args);
  const acc_t scale = *scale_ptr;
  const int r = threadIdx.x / kThreadsPerRow, p = threadIdx.x % kThreadsPerRow;
  const bool col_writer = threadIdx.x % kThreadsPerCol == 0;
  const int64_t col_of_thread = threadIdx.x / kThreadsPerCol;
  acc_t* slot_max = part_max + static_cast<int64_t>(blockIdx.x) * m;
  acc_t* slot_sum = part_sum + static_cast<int64_t>(blockIdx.x) * m;
  const int64_t row_blocks = (n + kRows - 1) / kRows;

  for (int64_t rb = blockIdx.x; rb < row_blocks; rb += gridDim.x) {
    const bool first_block = rb == blockIdx.x;
    const int64_t r0 = rb * kRows, i = r0 + r;
    OnlineLSE<acc_t> run = OnlineLSE<acc_t>::empty();
    for (int64_t c0 = 0; c0 < m; c0 += kCols) {
      Gemm::run(a, n, b, m, d, r0, c0, sm, tile);
      // rows: 8 lanes per row, each 8 of the 64 columns
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
      // columns: 4 lanes per column, folded into this CTA's slot (read back only by this CTA)
      OnlineLSE<acc_t> col = tile_column_stats<acc_t>(tile, mask, scale, r0, n, c0, m);
      const int64_t j = c0 + col_of_thread;
      if (col_writer && j < m) {
        if (!first_block) {
          OnlineLSE<acc_t> prev{slot_max[j], slot_sum[j]};
          prev.merge(col);
          col = prev;
        }
        slot_max[j] = col.max;
        slot_sum[j] = col.sum;
      }
      __syncthreads();  // the next tile overwrites `tile`
    }
    for (int offset = 1; offset < kThreadsPerRow; offset <<= 1) {
      const acc_t om = __shfl_xor_sync(kFullMask, run.max, offset);
      const acc_t os = __shfl_xor_sync(kFullMask, run.sum, offset);
      run.merge(om, os);
    }
    if (p == 0 && i < n) row_lse[i] = run.value();
  }
}

// col_lse[j] = the merge of the slots' (max, sum) pairs of column j, in slot order.
template <typename acc_t>
__global__ void col_merge_kernel(const acc_t* part_max, const acc_t* part_sum, int64_t parts, int64_t m,
                                 acc_t* col_lse) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= m) return;
  OnlineLSE<acc_t> run = OnlineLSE<acc_t>::empty();
  for (int64_t s = 0; s < parts; ++s) run.merge(part_max[s * m + j], part_sum[s * m + j]);
  col_lse[j] = run.value();
}

// d_a[e] += the partials of splits 1.. (split_ws, [splits - 1][count]) in split order.
template <typename acc_t>
__global__ void split_sum_kernel(acc_t* d_a, const acc_t* split_ws, int64_t parts, int64_t count) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= count) return;
  acc_t v = d_a[e];
  for (int64_t s = 0; s < parts; ++s) v += split_ws[s * count + e];
  d_a[e] = v;
}

// blockIdx.x: the 32-row block; blockIdx.y: the chunk [y * dc, y * dc + dc) of D this CTA accumulates
// (dc a multiple of kGradStrip; one chunk unless D exceeds the shared accumulator); blockIdx.z: the split
// of the columns [z * split_cols, z * split_cols + split_cols) (split_cols a multiple of kCols), whose
// partial goes to d_a (split 0) or split_ws.
template <typename in_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 2)
    grad_kernel(const in_t* a, int64_t n, const in_t* b, int64_t m, int64_t d, int64_t dc, const acc_t* scale_ptr,
                const acc_t* g_bound_ptr, MaskArgs mask_args, const acc_t* g_a, const acc_t* lse_a,
                const acc_t* g_b, const acc_t* lse_b, acc_t* d_a, acc_t* d_scale_parts, int64_t split_cols,
                acc_t* split_ws) {
  using Gemm = typename TileGemmFor<in_t, acc_t>::type;
  using Product = typename GradProductFor<in_t, acc_t>::type;
  __shared__ typename Gemm::Smem sm;
  __shared__ __align__(32) acc_t tile[kRows][kTileLd];  // WMMA stores need 256-bit alignment
  __shared__ typename Product::Smem psm;
  __shared__ acc_t warp_parts[kThreads / 32];
  extern __shared__ __align__(128) unsigned char dynamic_smem[];
  acc_t* acc = reinterpret_cast<acc_t*>(dynamic_smem);  // [kRows][ld]: this CTA's d_a block (chunk of D)
  const int ld = static_cast<int>(dc) + kAccPad;

  const PairMask mask = to_pair_mask(mask_args);
  const acc_t scale = *scale_ptr;
  const acc_t factor = Product::ds_factor(*g_bound_ptr);
  const int r = threadIdx.x / kThreadsPerRow, p = threadIdx.x % kThreadsPerRow;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kRows, i = r0 + r;
  const int64_t k_begin = static_cast<int64_t>(blockIdx.y) * dc;
  const int64_t k_len = d - k_begin < dc ? d - k_begin : dc;
  const bool want_d_scale = d_scale_parts != nullptr && blockIdx.y == 0;
  const int64_t c_begin = static_cast<int64_t>(blockIdx.z) * split_cols;
  const int64_t c_end = m - c_begin < split_cols ? m : c_begin + split_cols;
  acc_t* out = blockIdx.z == 0 ? d_a : split_ws + (static_cast<int64_t>(blockIdx.z) - 1) * n * d;
  const acc_t gi = i < n ? g_a[i] : acc_t(0), li = i < n ? lse_a[i] : acc_t(0);
  const int64_t pos_i = i < n ? mask.pos_row[i] : -1;
  acc_t d_scale = 0;

  for (int e = threadIdx.x; e < kRows * ld; e += kThreads) acc[e] = acc_t(0);
  // orders the zeroing before the read-back even when the column loop (whose barriers order it otherwise)
  // runs no iteration
  __syncthreads();

  for (int64_t c0 = c_begin; c0 < c_end; c0 += kCols) {
    Gemm::run(a, n, b, m, d, r0, c0, sm, tile);
    for (int q = 0; q < kCols / kThreadsPerRow; ++q) {
      const int c = q * kThreadsPerRow + p;
      const int64_t j = c0 + c;
      acc_t ds = 0;
      if (i < n && j < m) {
        const acc_t dot = tile[r][c];
        ds = contrastive_score_grad(scale * dot, mask.in_row(i, j), mask.in_col(i, j), pos_i == j,
                                    mask.pos_col[j] == i, gi, li, g_b[j], lse_b[j]);
        d_scale += ds * dot;
      }
      tile[r][c] = ds * factor;  // each thread rewrites only the entries it read
    }
    Product::accumulate(psm, sm, tile, b, m, d, c0, k_begin, k_len, acc, ld);  // barriers before and after
  }

  const acc_t out_scale = scale / factor;  // factor is a power of two: exact
  for (int e = threadIdx.x; e < kRows * k_len; e += kThreads) {
    const int rr = static_cast<int>(e / k_len);
    const int64_t kk = e % k_len, row = r0 + rr;
    if (row < n) out[row * d + k_begin + kk] = out_scale * acc[rr * ld + kk];
  }
  if (want_d_scale) {
    d_scale = warp_sum(d_scale);
    if (threadIdx.x % 32 == 0) warp_parts[threadIdx.x / 32] = d_scale;
    __syncthreads();
    if (threadIdx.x == 0) {
      acc_t total = 0;
      for (int w = 0; w < kThreads / 32; ++w) total += warp_parts[w];
      d_scale_parts[static_cast<int64_t>(blockIdx.z) * gridDim.x + blockIdx.x] = total;
    }
  }
}

// The D chunk of the backward and its dynamic shared memory: the whole (64-rounded) D when the
// accumulator fits the device's opt-in shared memory (less the kernel's static part) and kMaxAccBytes,
// else the fewest equal chunks that fit.
template <typename acc_t, typename Kernel>
cudaError_t grad_config(Kernel kernel, int64_t d, int64_t* dc, int64_t* chunks, size_t* dyn_bytes) {
  int device = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status != cudaSuccess) return status;
  int optin = 0;
  status = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (status != cudaSuccess) return status;
  cudaFuncAttributes attr;
  status = cudaFuncGetAttributes(&attr, kernel);
  if (status != cudaSuccess) return status;
  int64_t avail = static_cast<int64_t>(optin) - static_cast<int64_t>(attr.sharedSizeBytes);
  if (avail > kMaxAccBytes) avail = kMaxAccBytes;
  const int64_t row_bytes = kRows * static_cast<int64_t>(sizeof(acc_t));
  const int64_t max_dc = (avail / row_bytes - kAccPad) / kGradStrip * kGradStrip;
  if (max_dc < kGradStrip) return cudaErrorInvalidConfiguration;
  // D = 0 still runs one chunk (d_scale_parts is written; d_a has no elements)
  const int64_t d_round = d > 0 ? (d + kGradStrip - 1) / kGradStrip * kGradStrip : kGradStrip;
  const int64_t want = (d_round + max_dc - 1) / max_dc;
  const int64_t per_chunk = d > 0 ? (d + want - 1) / want : 1;
  *dc = (per_chunk + kGradStrip - 1) / kGradStrip * kGradStrip;  // <= max_dc
  *chunks = d > 0 ? (d + *dc - 1) / *dc : 1;                       // every chunk non-empty
  if (*chunks > 65535) return cudaErrorInvalidConfiguration;
  *dyn_bytes = static_cast<size_t>(row_bytes * (*dc + kAccPad));
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(*dyn_bytes));
}

template <typename in_t, typename acc_t>
int64_t col_parts(int64_t rows, int64_t cols) {
  const int64_t row_blocks = (rows + kRows - 1) / kRows;
  int device = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, lse_kernel<in_t, acc_t>, kThreads, 0) != cudaSuccess)
    return 0;
  int64_t parts = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
  int64_t budget = (int64_t(256) << 20) / (2 * static_cast<int64_t>(sizeof(acc_t)) * (cols > 0 ? cols : 1));
  if (budget < 16) budget = 16;
  if (parts > budget) parts = budget;
  if (parts > 512) parts = 512;
  if (parts > row_blocks) parts = row_blocks;
  return parts > 0 ? parts : 1;
}

int64_t grad_splits(int64_t rows, int64_t cols, int64_t d, int64_t acc_bytes) {
  const int64_t row_blocks = (rows + kRows - 1) / kRows;
  const int64_t tiles = (cols + kCols - 1) / kCols;
  constexpr int64_t kMinTilesPerSplit = 4;
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 0;
  // counted as one D chunk (D <= 768 in float): more chunks only mean more CTAs per split
  if (row_blocks >= sms) return 1;  // at least a CTA per SM already: splits would only add partials
  const int64_t wanted_ctas = 2 * static_cast<int64_t>(sms);
  int64_t splits = (wanted_ctas + row_blocks - 1) / row_blocks;
  if (splits > tiles / kMinTilesPerSplit) splits = tiles / kMinTilesPerSplit;
  const int64_t part_bytes = rows * (d > 0 ? d : 1) * acc_bytes;
  const int64_t budget = (int64_t(256) << 20) / (part_bytes > 0 ? part_bytes : 1) + 1;
  if (splits > budget) splits = budget;
  if (splits > 65535) splits = 65535;
  if (splits < 1) return 1;
  // equal whole-tile shares, every split non-empty
  const int64_t per_split = (tiles + splits - 1) / splits;
  return (tiles + per_split - 1) / per_split;
}

}  // namespace

int64_t contrastive_grad_splits(Matrix a, Matrix b) {
  const int64_t acc_bytes = a.dtype == DType::kFloat64 ? 8 : 4;
  return grad_splits(a.rows, b.rows, a.cols, acc_bytes);
}

int64_t contrastive_col_parts(Matrix a, Matrix b) {
  switch (a.dtype) {
    case DType::kFloat32: return col_parts<float, float>(a.rows, b.rows);
    case DType::kFloat16: return col_parts<__half, float>(a.rows, b.rows);
    case DType::kBFloat16: return col_parts<__nv_bfloat16, float>(a.rows, b.rows);
    case DType::kFloat64: return col_parts<double, double>(a.rows, b.rows);
  }
  return 0;
}

cudaError_t contrastive_lse(Matrix a, Matrix b, const void* scale, MaskArgs mask, void* row_lse, void* col_lse,
                            void* workspace, int64_t parts, cudaStream_t stream) {
  if (parts < 1 || parts > 0x7fffffff) return cudaErrorInvalidValue;
  DCD_DISPATCH_DTYPE(a.dtype, {
    acc_t* part_max = static_cast<acc_t*>(workspace);
    acc_t* part_sum = part_max + parts * b.rows;
    lse_kernel<in_t, acc_t><<<static_cast<unsigned>(parts), kThreads, 0, stream>>>(
        static_cast<const in_t*>(a.data), a.rows, static_cast<const in_t*>(b.data), b.rows, a.cols,
        static_cast<const acc_t*>(scale), mask, static_cast<acc_t*>(row_lse), part_max, part_sum);
    cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
    col_merge_kernel<acc_t><<<ceil_div(b.rows, 256), 256, 0, stream>>>(part_max, part_sum, parts, b.rows,
                                                                      static_cast<acc_t*>(col_lse));
    return cudaGetLastError();
  })
}

cudaError_t contrastive_grad(Matrix a, Matrix b, const void* scale, const void* g_bound, MaskArgs mask,
                             const void* g_a, const void* lse_a, const void* g_b, const void* lse_b, void* d_a,
                             void* d_scale_parts, int64_t splits, void* split_ws, cudaStream_t stream) {
  if (splits < 1 || splits > 65535 || (splits > 1 && split_ws == nullptr)) return cudaErrorInvalidValue;
  DCD_DISPATCH_DTYPE(a.dtype, {
    auto kernel = grad_kernel<in_t, acc_t>;
    int64_t dc = 0, chunks = 0;
    size_t dyn = 0;
    cudaError_t status = grad_config<acc_t>(kernel, a.cols, &dc, &chunks, &dyn);
    if (status != cudaSuccess) return status;
    const int64_t tiles = (b.rows + kCols - 1) / kCols;
    const int64_t split_cols = splits > 1 ? (tiles + splits - 1) / splits * kCols : (tiles > 0 ? tiles : 1) * kCols;
    if (splits > 1 && (splits - 1) * split_cols >= b.rows) return cudaErrorInvalidValue;  // an empty split
    const dim3 grid(ceil_div(a.rows, kRows), static_cast<unsigned>(chunks), static_cast<unsigned>(splits));
    kernel<<<grid, kThreads, dyn, stream>>>(
        static_cast<const in_t*>(a.data), a.rows, static_cast<const in_t*>(b.data), b.rows, a.cols, dc,
        static_cast<const acc_t*>(scale), static_cast<const acc_t*>(g_bound), mask,
        static_cast<const acc_t*>(g_a), static_cast<const acc_t*>(lse_a), static_cast<const acc_t*>(g_b),
        static_cast<const acc_t*>(lse_b), static_cast<acc_t*>(d_a), static_cast<acc_t*>(d_scale_parts), split_cols,
        static_cast<acc_t*>(split_ws));
    status = cudaGetLastError();
    if (status != cudaSuccess || splits == 1) return status;
    const int64_t count = a.rows * a.cols;
    if (count == 0) return cudaSuccess;
    split_sum_kernel<acc_t><<<ceil_div(count, 256), 256, 0, stream>>>(
        static_cast<acc_t*>(d_a), static_cast<const acc_t*>(split_ws), splits - 1, count);
    return cudaGetLastError();
  })
}

}  // namespace cuda_kernels
}  // namespace dcd
