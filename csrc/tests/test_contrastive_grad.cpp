// The per-score contrastive gradient (dcd/contrastive_grad.h) against the formula of docs/design.md section 7
// written out with branches, in double and float, over every mask / positive combination, including
// rows and columns without a term (g = 0, lse = +inf).
#include <random>

#include "check.h"
#include "dcd/contrastive_grad.h"

static double direct(double s, bool in_row, bool in_col, bool row_pos, bool col_pos, double g_row, double lse_row,
                     double g_col, double lse_col) {
  double ds = 0;
  if (in_row && g_row != 0) ds += g_row * std::exp(s - lse_row);
  if (in_col && g_col != 0) ds += g_col * std::exp(s - lse_col);
  if (row_pos) ds -= g_row;
  if (col_pos) ds -= g_col;
  return ds;
}

int main() {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> uni(-20.0, 20.0), weight(0.0, 2.0);
  for (int trial = 0; trial < 4000; ++trial) {
    const int bits = trial % 16;
    const bool in_row = bits & 1, in_col = bits & 2, row_pos = (bits & 4) && in_row, col_pos = (bits & 8) && in_col;
    const double s = uni(rng);
    // a log-sum-exp is never below its own term, and is +inf where the coefficient is 0
    const bool row_term = trial % 5 != 0, col_term = trial % 7 != 0;
    const double g_row = row_term ? weight(rng) : 0.0, g_col = col_term ? weight(rng) : 0.0;
    const double lse_row = row_term ? s + std::fabs(uni(rng)) / 4 : INFINITY;
    const double lse_col = col_term ? s + std::fabs(uni(rng)) / 4 : INFINITY;
    const double want = direct(s, in_row, in_col, row_pos, col_pos, g_row, lse_row, g_col, lse_col);
    CHECK_NEAR(dcd::contrastive_score_grad(s, in_row, in_col, row_pos, col_pos, g_row, lse_row, g_col, lse_col), want,
               1e-13);
    const float got = dcd::contrastive_score_grad<float>(
        static_cast<float>(s), in_row, in_col, row_pos, col_pos, static_cast<float>(g_row),
        static_cast<float>(lse_row), static_cast<float>(g_col), static_cast<float>(lse_col));
    CHECK_NEAR(got, want, 1e-5);
  }
  // a masked-out score and a row without a term contribute exactly nothing
  CHECK(dcd::contrastive_score_grad(3.0, false, false, false, false, 1.0, 2.0, 1.0, 2.0) == 0.0);
  CHECK(dcd::contrastive_score_grad(3.0f, true, true, false, false, 0.0f, INFINITY, 0.0f, INFINITY) == 0.0f);
  return dcd_test::report("contrastive_grad");
}
