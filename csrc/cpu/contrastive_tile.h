// CPU tile routines of the fused contrastive loss. A tile holds raw dot products c[r][j] of a row block
// (rows r0..r0+rows) against a column tile (cols c0..c0+cols), row-major with leading dimension ld;
// scores are s = scale * c. Loops are written branch-free so the compiler vectorises them. Torch-free.
#pragma once

#include "dcd/contrastive_grad.h"
#include "dcd/macros.h"
#include "dcd/math.h"
#include "dcd/online_lse.h"
#include "dcd/pair_mask.h"

namespace dcd {
namespace cpu {

struct TileGeometry {
  index_t r0, rows, c0, cols, ld;
};

// Folds the tile into the running row statistics (row_stats[rows], indexed from r0) and the running
// column statistics (col_max/col_sum[cols], indexed from c0). scratch holds cols values.
template <typename acc_t>
void contrastive_tile_stats(const acc_t* c, const TileGeometry& g, acc_t scale, const PairMask& mask,
                            OnlineLSE<acc_t>* row_stats, acc_t* col_max, acc_t* col_sum, acc_t* tile_col_max) {
  const acc_t ninf = neg_infinity<acc_t>();
  const bool ids = mask.has_ids();
  for (index_t j = 0; j < g.cols; ++j) tile_col_max[j] = ninf;
  for (index_t r = 0; r < g.rows; ++r) {
    const acc_t* cr = c + r * g.ld;
    const index_t i = g.r0 + r;
    acc_t mx = ninf;
    if (ids) {
#pragma omp simd reduction(max : mx)
      for (index_t j = 0; j < g.cols; ++j) {
        acc_t s = scale * cr[j];
        mx = max_of(mx, mask.in_row(i, g.c0 + j) ? s : ninf);
        tile_col_max[j] = max_of(tile_col_max[j], mask.in_col(i, g.c0 + j) ? s : ninf);
      }
    } else {
#pragma omp simd reduction(max : mx)
      for (index_t j = 0; j < g.cols; ++j) {
        acc_t s = scale * cr[j];
        mx = max_of(mx, s);
        tile_col_max[j] = max_of(tile_col_max[j], s);
      }
    }
    acc_t sum = 0;
    if (ids) {
#pragma omp simd reduction(+ : sum)
      for (index_t j = 0; j < g.cols; ++j)
        sum += mask.in_row(i, g.c0 + j) ? exp_nonpositive(scale * cr[j] - mx) : acc_t(0);
    } else {
#pragma omp simd reduction(+ : sum)
      for (index_t j = 0; j < g.cols; ++j) sum += exp_nonpositive(scale * cr[j] - mx);
    }
    row_stats[r].merge(mx, sum);
  }
  // rescale the running column sums to the new maxima, then add this tile
  const index_t cols = g.cols;
  acc_t* __restrict cmax = col_max;
  acc_t* __restrict csum = col_sum;
  const acc_t* __restrict tmax = tile_col_max;
#pragma omp simd
  for (index_t j = 0; j < cols; ++j) {
    acc_t m_new = max_of(cmax[j], tmax[j]);
    csum[j] *= exp_nonpositive(cmax[j] - m_new);
    cmax[j] = m_new;
  }
  for (index_t r = 0; r < g.rows; ++r) {
    const acc_t* __restrict cr = c + r * g.ld;
    const index_t i = g.r0 + r;
    if (ids) {
#pragma omp simd
      for (index_t j = 0; j < cols; ++j) {
        const acc_t e = exp_nonpositive(scale * cr[j] - cmax[j]);
        csum[j] += mask.in_col(i, g.c0 + j) ? e : acc_t(0);
      }
    } else {
#pragma omp simd
      for (index_t j = 0; j < cols; ++j) csum[j] += exp_nonpositive(scale * cr[j] - cmax[j]);
    }
  }
}

// Overwrites the tile with dL/ds of sum_i g_row[i] l_i + sum_j g_col[j] m_j (contrastive_score_grad).
// lse_* must be +inf where the matching g_* is 0. Returns sum(ds * c), the logit-scale gradient part.
template <typename acc_t>
acc_t contrastive_tile_grad(acc_t* c, const TileGeometry& g, acc_t scale, const PairMask& mask,
                            const acc_t* g_row, const acc_t* lse_row, const acc_t* g_col, const acc_t* lse_col) {
  acc_t dscale = 0;
  for (index_t r = 0; r < g.rows; ++r) {
    acc_t* cr = c + r * g.ld;
    const index_t i = g.r0 + r;
    const index_t pos_j = mask.pos_row[i] - g.c0;  // the tile column of row i's positive
    const acc_t gr = g_row[i], lr = lse_row[i];
    const acc_t* gc = g_col + g.c0;
    const acc_t* lc = lse_col + g.c0;
    const index_t* pc = mask.pos_col + g.c0;
    acc_t acc = 0;
    if (mask.has_ids()) {
#pragma omp simd reduction(+ : acc)
      for (index_t j = 0; j < g.cols; ++j) {
        const acc_t ds = contrastive_score_grad(scale * cr[j], mask.in_row(i, g.c0 + j), mask.in_col(i, g.c0 + j),
                                                j == pos_j, pc[j] == i, gr, lr, gc[j], lc[j]);
        acc += ds * cr[j];
        cr[j] = ds;
      }
    } else {
#pragma omp simd reduction(+ : acc)
      for (index_t j = 0; j < g.cols; ++j) {
        const acc_t ds = contrastive_score_grad(scale * cr[j], true, true, j == pos_j, pc[j] == i, gr, lr, gc[j], lc[j]);
        acc += ds * cr[j];
        cr[j] = ds;
      }
    }
    dscale += acc;
  }
  return dscale;
}

}  // namespace cpu
}  // namespace dcd
