// Torch-free entry points of the CUDA kernels (implemented in the .cu files, called from
// kernels_cuda.cpp). Matrices are contiguous row-major; every function returns the launch status.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace dcd {
namespace cuda_kernels {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

struct Matrix {
  const void* data;
  int64_t rows, cols;
  DType dtype;
};

// Id masking and positives of a (rows a, columns b) score matrix; ids may be null (no masking).
struct MaskArgs {
  const int64_t* a_ids;
  const int64_t* b_ids;
  const int64_t* pos_a;  // [rows]: column of row i's positive or -1
  const int64_t* pos_b;  // [cols]: row of column j's positive or -1
};

// Largest K + 1 of the distillation kernels (per-warp candidate arrays live in shared memory).
constexpr int64_t kMaxCandidates = 256;

// How many key splits similarity_topk uses for these sizes on a device with sm_count multiprocessors:
// enough (row blocks x splits) CTAs to fill it when there are few queries, each split at least one key
// tile and 2k keys, the workspace at most 2^22 entries. 1 for large N.
int64_t similarity_topk_splits(int64_t n, int64_t m, int64_t k, int sm_count);

// values/indices [N, k] receive the result (any prior content); with splits > 1, ws_values/ws_indices hold
// (splits - 1) * N * k entries of workspace (split s > 0 keeps its partial lists there until the merge).
// *non_finite (device memory) is set to 1 when any score is NaN or infinite, i.e. when an input holds a
// NaN or infinity (or the product overflows); it is left alone otherwise.
cudaError_t similarity_topk(Matrix query, Matrix keys, int64_t k, const int64_t* query_ids, const int64_t* key_ids,
                            float* values, int64_t* indices, int64_t splits, float* ws_values, int64_t* ws_indices,
                            int* non_finite, cudaStream_t stream);

// Rows of `a` per CTA of the contrastive kernels: the length of d_scale_parts is ceil(rows / this).
constexpr int64_t kContrastiveRowsPerBlock = 32;

// Column-partial slots of the contrastive forward = its CTAs (each walks a fixed, strided set of 32-row
// blocks): one per row block up to the CTAs the device holds at once (one full wave, so no tail wave),
// and at most 512 and 256 MiB of workspace (slots x cols (max, sum) pairs) unless that leaves fewer
// than 16 slots. It depends on the shapes and the device only, so reruns on a device merge in the same
// order (bitwise-identical results); 0 when the device query fails.
int64_t contrastive_col_parts(Matrix a, Matrix b);

// Both log-sum-exps in one pass over the score tiles (acc = float, or double for float64 input):
//   row_lse[i] = log sum_{j allowed in row i} exp(scale <a_i, b_j>),
//   col_lse[j] = log sum_{i allowed in column j} exp(scale <a_i, b_j>).
// workspace holds 2 * parts * b.rows acc values (parts = contrastive_col_parts(a, b)):
// per CTA the running (max, sum) of every column, merged in slot order by a second kernel.
cudaError_t contrastive_lse(Matrix a, Matrix b, const void* scale, MaskArgs mask, void* row_lse, void* col_lse,
                            void* workspace, int64_t parts, cudaStream_t stream);

// Column splits of contrastive_grad for `a`'s rows against `b`'s: 1 when a has a 32-row block for every
// SM; otherwise enough equal splits of b's 64-column tiles (at least 4 tiles each) for two CTAs per SM,
// with at most 256 MiB of partial d_a. Depends on the shapes and the
// device only (bitwise-identical reruns on a device); 0 when the device query fails.
int64_t contrastive_grad_splits(Matrix a, Matrix b);

// d_a[i] = scale * sum_j ds_ij b_j with ds_ij = g_a[i] (exp(s_ij - lse_a[i]) [row rule] - [j == pos_a[i]])
//                                       + g_b[j] (exp(s_ij - lse_b[j]) [column rule] - [i == pos_b[j]]);
// every element of d_a is written (no initialisation needed). g_bound (acc scalar on the device) must be
// >= max |g_a| + max |g_b| (the bound of |ds|): the tensor-core path scales ds by a power of two from it
// before rounding ds to the 16-bit input type, so float16 neither overflows nor underflows. With splits
// > 1 (contrastive_grad_splits) split s covers an equal share of b's column tiles; split 0 writes d_a,
// the others (splits - 1) * a.rows * a.cols acc values of split_ws, added to d_a in split order. When
// d_scale_parts is non-null, d_scale_parts[s * row_blocks + block] = sum over the block's rows and split
// s's columns of ds_ij <a_i, b_j> (row_blocks = ceil(a.rows / kContrastiveRowsPerBlock)).
cudaError_t contrastive_grad(Matrix a, Matrix b, const void* scale, const void* g_bound, MaskArgs mask,
                             const void* g_a, const void* lse_a, const void* g_b, const void* lse_b, void* d_a,
                             void* d_scale_parts, int64_t splits, void* split_ws, cudaStream_t stream);

struct DistillArgs {
  Matrix anchors, pool;
  const int64_t* cand;  // [N, K1]
  const void* teacher;  // [N, K1], acc dtype
  int64_t k1;
  const void* scale;    // acc dtype scalar
  double temperature;
  int kind;             // dcd::DistillKind
};

// stats [N, 4] (acc dtype): dist, hard, teacher entropy, teacher CE per anchor.
cudaError_t distill_stats(DistillArgs args, void* stats, cudaStream_t stream);

// dz [N, K1] = coef_dist[i] d(d_i)/dz + coef_hard[i] d(h_i)/dz; d_anchor [N, D] and per-anchor
// d_scale_rows [N] (acc dtype). The pool gradient is a deterministic segmented sum (see
// distill_pool_grad).
cudaError_t distill_grad(DistillArgs args, const void* coef_dist, const void* coef_hard, void* dz, void* d_anchor,
                         void* d_scale_rows, cudaStream_t stream);

// Candidates per chunk of the pool-gradient segmented sum (see distill_pool_grad).
constexpr int64_t kPoolChunk = 128;

// d_pool[p] = scale * sum over (i, m) with cand[i, m] == p of dz[i, m] * anchors[i]. `order` is a stable
// sort of cand's flat indices by value, sorted_cand the sorted values (total = N * K1 entries) and
// seg_starts[s] where value s begins in that order (num_segments + 1 entries). Two deterministic
// stages: the sorted order is cut into chunks of kPoolChunk entries, one warp per chunk sums each run of
// equal values in order (runs inside a chunk are final; a chunk's first and last run go to the
// workspace, 2 * ceil(total / kPoolChunk) * D acc values); then one warp per value sums its chunk pieces
// in chunk order. A candidate shared by many anchors is thus kPoolChunk-long serial pieces plus one
// pass over its pieces, not one serial segment. Negative values (absent slots) are skipped; d_pool
// must hold zeros (rows no candidate names are not written).
cudaError_t distill_pool_grad(DistillArgs args, const void* dz, const int64_t* order, const int64_t* sorted_cand,
                              const int64_t* seg_starts, int64_t num_segments, void* workspace, void* d_pool,
                              cudaStream_t stream);

}  // namespace cuda_kernels
}  // namespace dcd
