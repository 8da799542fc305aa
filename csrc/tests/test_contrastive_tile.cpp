// CPU contrastive tile routines: statistics folded tile by tile equal the direct masked log-sum-exps,
// and the tile gradient equals the direct formula.
#include <random>
#include <vector>

#include "check.h"
#include "cpu/contrastive_tile.h"

using dcd::index_t;

int main() {
  std::mt19937 rng(9);
  std::normal_distribution<double> normal(0.0, 1.0);
  const index_t n = 23, m = 37, row_tile = 8, col_tile = 10;
  const double scale = 7.5;
  std::vector<double> c(n * m);
  for (double& v : c) v = normal(rng);
  std::vector<index_t> img_ids(n), txt_ids(m), pos_row(n), pos_col(m, -1);
  for (index_t i = 0; i < n; ++i) img_ids[i] = i / 3;
  for (index_t j = 0; j < m; ++j) txt_ids[j] = j % 9;
  for (index_t i = 0; i < n; ++i) {
    pos_row[i] = (i * 5) % m;
    pos_col[pos_row[i]] = i;
  }
  std::vector<double> tile;
  // tile = c[r0 : r0 + nr, c0 : c0 + nc], row-major with leading dimension nc
  auto copy_tile = [&](index_t r0, index_t nr, index_t c0, index_t nc) {
    tile.assign(nr * nc, 0);
    for (index_t r = 0; r < nr; ++r)
      for (index_t j = 0; j < nc; ++j) tile[r * nc + j] = c[(r0 + r) * m + c0 + j];
  };
  for (int with_ids = 0; with_ids < 2; ++with_ids) {
    dcd::PairMask mask{with_ids ? img_ids.data() : nullptr, with_ids ? txt_ids.data() : nullptr, pos_row.data(),
                       pos_col.data()};
    std::vector<dcd::OnlineLSE<double>> rows(n, dcd::OnlineLSE<double>::empty());
    std::vector<double> col_max(m, -INFINITY), col_sum(m, 0.0), scratch(col_tile);
    for (index_t r0 = 0; r0 < n; r0 += row_tile) {
      const index_t nr = std::min(row_tile, n - r0);
      for (index_t c0 = 0; c0 < m; c0 += col_tile) {
        const index_t nc = std::min(col_tile, m - c0);
        copy_tile(r0, nr, c0, nc);
        dcd::cpu::contrastive_tile_stats(tile.data(), dcd::cpu::TileGeometry{r0, nr, c0, nc, nc}, scale, mask,
                                         rows.data() + r0, col_max.data() + c0, col_sum.data() + c0, scratch.data());
      }
    }
    std::vector<double> lse_r(n), lse_c(m);
    for (index_t i = 0; i < n; ++i) {
      double s = 0;
      for (index_t j = 0; j < m; ++j)
        if (mask.in_row(i, j)) s += std::exp(scale * c[i * m + j]);
      lse_r[i] = std::log(s);
      CHECK_NEAR(rows[i].value(), lse_r[i], 1e-12);
    }
    for (index_t j = 0; j < m; ++j) {
      double s = 0;
      for (index_t i = 0; i < n; ++i)
        if (mask.in_col(i, j)) s += std::exp(scale * c[i * m + j]);
      lse_c[j] = s > 0 ? std::log(s) : -INFINITY;
      dcd::OnlineLSE<double> col{col_max[j], col_sum[j]};
      CHECK_NEAR(col.value(), lse_c[j], 1e-12);
    }
    // gradient tile over the whole matrix at once
    std::vector<double> g_r(n), g_c(m), lr(n), lc(m);
    for (index_t i = 0; i < n; ++i) {
      g_r[i] = i % 4 == 0 ? 0.0 : 0.1 * (i + 1);
      lr[i] = g_r[i] != 0 ? lse_r[i] : INFINITY;
    }
    for (index_t j = 0; j < m; ++j) {
      g_c[j] = pos_col[j] < 0 ? 0.0 : 0.05 * (j + 1);
      lc[j] = g_c[j] != 0 ? lse_c[j] : INFINITY;
    }
    // the gradient folded tile by tile over the same tiling as above
    std::vector<double> ds(c);
    double dscale = 0;
    for (index_t r0 = 0; r0 < n; r0 += row_tile) {
      const index_t nr = std::min(row_tile, n - r0);
      for (index_t c0 = 0; c0 < m; c0 += col_tile) {
        const index_t nc = std::min(col_tile, m - c0);
        copy_tile(r0, nr, c0, nc);
        dscale += dcd::cpu::contrastive_tile_grad(tile.data(), dcd::cpu::TileGeometry{r0, nr, c0, nc, nc}, scale, mask,
                                                  g_r.data(), lr.data(), g_c.data(), lc.data());
        for (index_t r = 0; r < nr; ++r)
          for (index_t j = 0; j < nc; ++j) ds[(r0 + r) * m + c0 + j] = tile[r * nc + j];
      }
    }
    double expect_dscale = 0;
    for (index_t i = 0; i < n; ++i)
      for (index_t j = 0; j < m; ++j) {
        const double s = scale * c[i * m + j];
        double e = 0;
        if (mask.in_row(i, j) && g_r[i] != 0) e += g_r[i] * std::exp(s - lse_r[i]);
        if (mask.in_col(i, j) && g_c[j] != 0) e += g_c[j] * std::exp(s - lse_c[j]);
        if (pos_row[i] == j) e -= g_r[i];
        if (pos_col[j] == i) e -= g_c[j];
        CHECK_NEAR(ds[i * m + j], e, 1e-12);
        expect_dscale += e * c[i * m + j];
      }
    CHECK_NEAR(dscale, expect_dscale, 1e-10);
  }
  return dcd_test::report("contrastive_tile");
}
