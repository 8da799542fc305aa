// Candidate (distillation) terms on CUDA: one warp per anchor gathers its K+1 dot products (lanes split
// D), then lane 0 runs the per-anchor math of dcd/candidate_loss.h, the same code the CPU kernels use.
// The pool gradient is a two-stage segmented sum over candidates sorted by pool index (fixed-size
// chunks, then each value's chunk pieces in chunk order), so it needs no atomics, is bitwise
// reproducible, and a candidate shared by many anchors is not one long serial segment.
#include "cuda/common.cuh"
#include "dcd/candidate_loss.h"

namespace dcd {
namespace cuda_kernels {

namespace {

constexpr int kWarps = 4;  // anchors per CTA

template <typename acc_t>
struct RowScratch {
  acc_t z[kMaxCandidates];
  acc_t t[kMaxCandidates];
  acc_t dots[kMaxCandidates];
  acc_t dz[kMaxCandidates];
  bool valid[kMaxCandidates];
};

// Fills the warp's scratch with row i's dot products, logits, teacher logits and validity.
template <typename in_t, typename acc_t>
__device__ void load_row(const in_t* x, const in_t* y, const int64_t* cand, const acc_t* teacher, int64_t k1,
                         int64_t d, acc_t scale, int64_t i, RowScratch<acc_t>& row) {
  const int lane = threadIdx.x % 32;
  for (int64_t mi = 0; mi < k1; ++mi) {
    const int64_t c = cand[i * k1 + mi];
    acc_t part = 0;
    if (c >= 0)
      for (int64_t e = lane; e < d; e += 32) part += to_acc<acc_t>(x[i * d + e]) * to_acc<acc_t>(y[c * d + e]);
    part = warp_sum(part);
    if (lane == 0) {
      row.valid[mi] = c >= 0;
      row.dots[mi] = part;
      row.z[mi] = scale * part;
      row.t[mi] = teacher[i * k1 + mi];
    }
  }
  __syncwarp();
}

template <typename in_t, typename acc_t>
__global__ void stats_kernel(const in_t* x, int64_t n, const in_t* y, int64_t d, const int64_t* cand,
                             const acc_t* teacher, int64_t k1, const acc_t* scale_ptr, acc_t temperature,
                             DistillKind kind, acc_t* stats) {
  __shared__ RowScratch<acc_t> rows[kWarps];
  const int warp = threadIdx.x / 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (i >= n) return;
  RowScratch<acc_t>& row = rows[warp];
  load_row(x, y, cand, teacher, k1, d, *scale_ptr, i, row);
  if (threadIdx.x % 32 == 0) {
    auto s = candidate_row_stats(row.t, row.z, row.valid, static_cast<int>(k1), temperature, kind);
    stats[i * 4 + 0] = s.dist;
    stats[i * 4 + 1] = s.hard;
    stats[i * 4 + 2] = s.entropy;
    stats[i * 4 + 3] = s.ce_teacher;
  }
}

template <typename in_t, typename acc_t>
__global__ void grad_kernel(const in_t* x, int64_t n, const in_t* y, int64_t d, const int64_t* cand,
                            const acc_t* teacher, int64_t k1, const acc_t* scale_ptr, acc_t temperature,
                            DistillKind kind, const acc_t* coef_dist, const acc_t* coef_hard, acc_t* dz,
                            acc_t* d_anchor, acc_t* d_scale_rows) {
  __shared__ RowScratch<acc_t> rows[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (i >= n) return;
  const acc_t scale = *scale_ptr;
  RowScratch<acc_t>& row = rows[warp];
  load_row(x, y, cand, teacher, k1, d, scale, i, row);
  if (lane == 0) {
    candidate_row_grad(row.t, row.z, row.valid, static_cast<int>(k1), temperature, kind, coef_dist[i],
                       coef_hard[i], row.dz);
    acc_t ds = 0;
    for (int64_t mi = 0; mi < k1; ++mi) {
      dz[i * k1 + mi] = row.dz[mi];
      ds += row.dz[mi] * row.dots[mi];
    }
    d_scale_rows[i] = ds;
  }
  __syncwarp();
  for (int64_t e = lane; e < d; e += 32) {
    acc_t acc = 0;
    for (int64_t mi = 0; mi < k1; ++mi) {
      if (!row.valid[mi]) continue;
      acc += row.dz[mi] * to_acc<acc_t>(y[cand[i * k1 + mi] * d + e]);
    }
    d_anchor[i * d + e] = scale * acc;
  }
}

// The pool gradient, stage 1: warp w sums chunk w of the sorted candidates ([w C, w C + C), C =
// kPoolChunk), run by run (a run: equal values) in sorted order. A run that starts and ends inside the
// chunk is a whole segment: written to d_pool. The chunk's first run (which may have begun in an
// earlier chunk) goes to first[w], its last run (which may go on) to last[w]; stage 2 adds the pieces.
constexpr int kPoolChunkInt = static_cast<int>(kPoolChunk);

template <typename in_t, typename acc_t>
__global__ void pool_chunk_kernel(const in_t* x, int64_t d, int64_t k1, int64_t total, const acc_t* scale_ptr,
                                  const acc_t* dz, const int64_t* order, const int64_t* sorted_cand, acc_t* first,
                                  acc_t* last, acc_t* d_pool) {
  __shared__ int64_t vals[kWarps][kPoolChunkInt];
  __shared__ int64_t rows[kWarps][kPoolChunkInt];
  __shared__ acc_t weights[kWarps][kPoolChunkInt];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  const int64_t s_begin = chunk * kPoolChunk;
  if (s_begin >= total) return;
  const int len = static_cast<int>(total - s_begin < kPoolChunk ? total - s_begin : kPoolChunk);
  for (int t = lane; t < len; t += 32) {
    const int64_t v = sorted_cand[s_begin + t];
    const int64_t flat = order[s_begin + t];
    vals[warp][t] = v;
    rows[warp][t] = flat / k1;
    weights[warp][t] = v >= 0 ? dz[flat] : acc_t(0);
  }
  __syncwarp();
  const acc_t scale = *scale_ptr;
  acc_t* first_row = first + chunk * d;
  acc_t* last_row = last + chunk * d;
  for (int64_t e = lane; e < d; e += 32) {
    acc_t sum = 0;
    int run_begin = 0;
    for (int t = 0; t <= len; ++t) {
      if (t == len || vals[warp][t] != vals[warp][run_begin]) {  // the run [run_begin, t) ends
        if (run_begin == 0) {
          first_row[e] = sum;
        } else if (t == len) {
          last_row[e] = sum;
        } else {
          const int64_t v = vals[warp][run_begin];
          if (v >= 0) d_pool[v * d + e] = scale * sum;
        }
        if (t == len) break;
        sum = 0;
        run_begin = t;
      }
      if (vals[warp][t] >= 0) sum += weights[warp][t] * to_acc<acc_t>(x[rows[warp][t] * d + e]);
    }
  }
}

// Stage 2: warp s finishes value s when its segment touches a chunk's first or last run: the sum of
// its pieces in chunk order (first[c] where the segment holds the chunk's first entry, else last[c]).
template <typename acc_t>
__global__ void pool_merge_kernel(int64_t d, int64_t total, const acc_t* scale_ptr, const int64_t* seg_starts,
                                  int64_t num_segments, const acc_t* first, const acc_t* last, acc_t* d_pool) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t seg = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (seg >= num_segments) return;
  const int64_t begin = seg_starts[seg], end = seg_starts[seg + 1];
  if (begin >= end) return;  // a pool row no candidate names
  const int64_t c0 = begin / kPoolChunk, c1 = (end - 1) / kPoolChunk;
  const int64_t c0_end = (c0 + 1) * kPoolChunk < total ? (c0 + 1) * kPoolChunk : total;
  if (c0 == c1 && begin > c0 * kPoolChunk && end < c0_end) return;  // inside one chunk: stage 1 wrote it
  const acc_t scale = *scale_ptr;
  for (int64_t e = lane; e < d; e += 32) {
    acc_t sum = 0;
    for (int64_t c = c0; c <= c1; ++c) sum += (begin <= c * kPoolChunk ? first : last)[c * d + e];
    d_pool[seg * d + e] = scale * sum;
  }
}

}  // namespace

cudaError_t distill_stats(DistillArgs args, void* stats, cudaStream_t stream) {
  if (args.k1 > kMaxCandidates) return cudaErrorInvalidValue;
  DCD_DISPATCH_DTYPE(args.anchors.dtype, {
    stats_kernel<in_t, acc_t><<<ceil_div(args.anchors.rows, kWarps), kWarps * 32, 0, stream>>>(
        static_cast<const in_t*>(args.anchors.data), args.anchors.rows, static_cast<const in_t*>(args.pool.data),
        args.anchors.cols, args.cand, static_cast<const acc_t*>(args.teacher), args.k1,
        static_cast<const acc_t*>(args.scale), static_cast<acc_t>(args.temperature),
        static_cast<DistillKind>(args.kind), static_cast<acc_t*>(stats));
    return cudaGetLastError();
  })
}

cudaError_t distill_grad(DistillArgs args, const void* coef_dist, const void* coef_hard, void* dz, void* d_anchor,
                         void* d_scale_rows, cudaStream_t stream) {
  if (args.k1 > kMaxCandidates) return cudaErrorInvalidValue;
  DCD_DISPATCH_DTYPE(args.anchors.dtype, {
    grad_kernel<in_t, acc_t><<<ceil_div(args.anchors.rows, kWarps), kWarps * 32, 0, stream>>>(
        static_cast<const in_t*>(args.anchors.data), args.anchors.rows, static_cast<const in_t*>(args.pool.data),
        args.anchors.cols, args.cand, static_cast<const acc_t*>(args.teacher), args.k1,
        static_cast<const acc_t*>(args.scale), static_cast<acc_t>(args.temperature),
        static_cast<DistillKind>(args.kind), static_cast<const acc_t*>(coef_dist),
        static_cast<const acc_t*>(coef_hard), static_cast<acc_t*>(dz), static_cast<acc_t*>(d_anchor),
        static_cast<acc_t*>(d_scale_rows));
    return cudaGetLastError();
  })
}

cudaError_t distill_pool_grad(DistillArgs args, const void* dz, const int64_t* order, const int64_t* sorted_cand,
                              const int64_t* seg_starts, int64_t num_segments, void* workspace, void* d_pool,
                              cudaStream_t stream) {
  const int64_t total = args.anchors.rows * args.k1;
  if (num_segments == 0 || total == 0) return cudaSuccess;
  const int64_t chunks = (total + kPoolChunk - 1) / kPoolChunk;
  const int64_t d = args.anchors.cols;
  DCD_DISPATCH_DTYPE(args.anchors.dtype, {
    acc_t* first = static_cast<acc_t*>(workspace);
    acc_t* last = first + chunks * d;
    pool_chunk_kernel<in_t, acc_t><<<ceil_div(chunks, kWarps), kWarps * 32, 0, stream>>>(
        static_cast<const in_t*>(args.anchors.data), d, args.k1, total, static_cast<const acc_t*>(args.scale),
        static_cast<const acc_t*>(dz), order, sorted_cand, first, last, static_cast<acc_t*>(d_pool));
    cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess) return status;
    pool_merge_kernel<acc_t><<<ceil_div(num_segments, kWarps), kWarps * 32, 0, stream>>>(
        d, total, static_cast<const acc_t*>(args.scale), seg_starts, num_segments, first, last,
        static_cast<acc_t*>(d_pool));
    return cudaGetLastError();
  })
}

}  // namespace cuda_kernels
}  // namespace dcd
