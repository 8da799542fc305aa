// The per-score gradient of the contrastive term (docs/design.md section 7), shared by the CPU tile routine
// and the CUDA backward kernel. Torch-free.
#pragma once

#include "dcd/macros.h"
#include "dcd/math.h"

namespace dcd {

// dL/ds of one score s = s_ij for L = sum_i g_row[i] l_i + sum_j g_col[j] m_j:
//   g_row (exp(s - lse_row) [in_row] - [row_pos]) + g_col (exp(s - lse_col) [in_col] - [col_pos])
// where in_row / in_col say whether s enters row i's / column j's denominator and row_pos / col_pos
// whether it is row i's / column j's positive. lse_* must be +inf where the matching g_* is 0.
// Branch-free, so CPU loops over it vectorise.
template <typename acc_t>
DCD_HOST_DEVICE acc_t contrastive_score_grad(acc_t s, bool in_row, bool in_col, bool row_pos, bool col_pos,
                                             acc_t g_row, acc_t lse_row, acc_t g_col, acc_t lse_col) {
  const acc_t ninf = neg_infinity<acc_t>();
  acc_t ds = g_row * exp_nonpositive((in_row ? s : ninf) - lse_row) +
             g_col * exp_nonpositive((in_col ? s : ninf) - lse_col);
  ds -= row_pos ? g_row : acc_t(0);
  ds -= col_pos ? g_col : acc_t(0);
  return ds;
}

}  // namespace dcd
