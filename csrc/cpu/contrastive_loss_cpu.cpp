// CPU kernels of the fused contrastive loss: a forward that keeps only the row and column
// log-sum-exps, and a backward that recomputes each tile once and produces both directions' gradients.
// Parallel over row blocks; column statistics and text gradients are accumulated per thread and
// reduced at the end (O(threads * M) and O(threads * M * D) extra memory, never O(N * M)). With fewer
// rows than columns the kernels run on the transposed problem (the loss treats its two directions
// alike), so the many columns are what the threads share and the per-thread partials stay small.
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

#include "cpu/contrastive_tile.h"
#include "cpu/tile_gemm.h"
#include "kernels.h"

namespace dcd {
namespace cpu {

namespace {
constexpr int64_t kRowTile = 256;
constexpr int64_t kColTile = 512;

PairMask make_mask(const ContrastiveInputs& in) {
  PairMask mask;
  mask.img_ids = in.img_ids.defined() ? in.img_ids.data_ptr<int64_t>() : nullptr;
  mask.txt_ids = in.txt_ids.defined() ? in.txt_ids.data_ptr<int64_t>() : nullptr;
  mask.pos_row = in.pos_row.data_ptr<int64_t>();
  mask.pos_col = in.pos_col.data_ptr<int64_t>();
  return mask;
}

// Operand dtype of the tile products: float64 inputs stay float64; otherwise tile_gemm's choice (bfloat16
// where the CPU multiplies it natively, float32 otherwise).
template <typename acc_t>
at::ScalarType tile_operand_dtype(const at::Tensor& img, const at::Tensor& txt) {
  if (std::is_same<acc_t, double>::value) return at::kDouble;
  return operand_dtype(img.scalar_type() == txt.scalar_type() ? img.scalar_type() : at::kFloat);
}

// tile (rows x cols, ld cols) = ub @ txt[c0 : c0 + cols]^T in the accumulation dtype.
template <typename acc_t>
void tile_product(const at::Tensor& ub, const ScoreKeys& txt, int64_t c0, at::Tensor& tile) {
  if constexpr (std::is_same<acc_t, double>::value) {
    at::mm_out(tile, ub, txt.rows.narrow(0, c0, tile.size(1)).t());
  } else {
    score_tile(ub, txt, c0, tile.size(1), tile.data_ptr<float>(), tile.size(1));
  }
}

// Calls fn(tid, geometry, ub, vt, tile) for every (row block, column tile), tile = ub @ vt^T in the
// accumulation dtype, parallel over row blocks; ub and vt are in the operand dtype (txt converted once).
// before_block/after_block bracket each row block.
template <typename acc_t, typename BlockBegin, typename TileFn, typename BlockEnd>
void for_each_tile(const at::Tensor& img, const at::Tensor& txt, BlockBegin before_block, TileFn on_tile,
                   BlockEnd after_block) {
  const int64_t n = img.size(0), m = txt.size(0);
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  const auto op = tile_operand_dtype<acc_t>(img, txt);
  const auto txt_ops = prepare_score_keys(txt, op);
  const int64_t col_tile = std::min(kColTile, m);
  // few columns (the transposed skinny case: 64 rows against a queue) take taller row blocks, so the
  // tiles stay kRowTile x kColTile large and the products fewer and larger
  const int64_t block = row_block_size(n, at::get_num_threads(), kRowTile * std::max<int64_t>(1, kColTile / col_tile));
  const int64_t nblocks = (n + block - 1) / block;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    const int tid = at::get_thread_num();
    auto tile_buf = at::empty({block * col_tile}, img.options().dtype(acc));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * block, rows = std::min(block, n - r0);
      auto ub = img.narrow(0, r0, rows).to(op).contiguous();
      before_block(tid, r0, rows);
      for (int64_t c0 = 0; c0 < m; c0 += col_tile) {
        const int64_t cols = std::min(col_tile, m - c0);
        auto vt = txt_ops.rows.narrow(0, c0, cols);
        auto tile = tile_buf.narrow(0, 0, rows * cols).view({rows, cols});
        tile_product<acc_t>(ub, txt_ops, c0, tile);
        on_tile(tid, TileGeometry{r0, rows, c0, cols, cols}, ub, vt, tile);
      }
      after_block(tid, r0, rows);
    }
  });
}

// d_img rows += scale * dS @ vt and d_txt rows += scale * dS^T @ ub, dS = the gradient tile (in place of
// the scores), its products in the operand dtype of ub/vt.
template <typename acc_t>
void tile_grad_products(const at::Tensor& ds, const at::Tensor& ub, const at::Tensor& vt, acc_t scale,
                        at::Tensor d_img_rows, at::Tensor d_txt_rows) {
  if constexpr (std::is_same<acc_t, double>::value) {
    d_img_rows.addmm_(ds, vt, 1, scale);
    d_txt_rows.addmm_(ds.t(), ub, 1, scale);
  } else {
    // in bf16 only where every product is (the score-only bf16 kernel widens these)
    const auto ds_op = gemm_path_for(ub.scalar_type()) == GemmPath::kBF16Native ? ds.to(ub.scalar_type()) : ds;
    gemm_nn(ds_op, vt, d_img_rows.data_ptr<float>(), d_img_rows.stride(0), scale, 1.0f);
    gemm_tn(ds_op, ub, d_txt_rows.data_ptr<float>(), d_txt_rows.stride(0), scale, 1.0f);
  }
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> lse_impl(const ContrastiveInputs& in) {
  const int64_t n = in.img.size(0), m = in.txt.size(0);
  const int threads = at::get_num_threads();
  const acc_t scale = static_cast<acc_t>(in.logit_scale.item<double>());
  const PairMask mask = make_mask(in);
  const acc_t ninf = neg_infinity<acc_t>();
  std::vector<acc_t> col_max(static_cast<size_t>(threads) * m, ninf), col_sum(static_cast<size_t>(threads) * m, 0);
  std::vector<std::vector<OnlineLSE<acc_t>>> row_stats(threads);
  std::vector<std::vector<acc_t>> tile_col_max(threads, std::vector<acc_t>(std::min(kColTile, m)));
  auto opts = in.img.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  auto row_lse = at::empty({n}, opts), col_lse = at::empty({m}, opts);
  acc_t* row_out = row_lse.template data_ptr<acc_t>();

  for_each_tile<acc_t>(
      in.img, in.txt,
      [&](int tid, int64_t, int64_t rows) { row_stats[tid].assign(rows, OnlineLSE<acc_t>::empty()); },
      [&](int tid, const TileGeometry& g, const at::Tensor&, const at::Tensor&, const at::Tensor& tile) {
        contrastive_tile_stats(tile.data_ptr<acc_t>(), g, scale, mask, row_stats[tid].data(),
                               col_max.data() + tid * m + g.c0, col_sum.data() + tid * m + g.c0,
                               tile_col_max[tid].data());
      },
      [&](int tid, int64_t r0, int64_t rows) {
        for (int64_t r = 0; r < rows; ++r) row_out[r0 + r] = row_stats[tid][r].value();
      });

  acc_t* col_out = col_lse.template data_ptr<acc_t>();
  for (int64_t j = 0; j < m; ++j) {
    OnlineLSE<acc_t> s = OnlineLSE<acc_t>::empty();
    for (int t = 0; t < threads; ++t) s.merge(col_max[t * m + j], col_sum[t * m + j]);
    col_out[j] = s.value();
  }
  return {row_lse, col_lse};
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_grad_impl(const ContrastiveInputs& in, const at::Tensor& g_row,
                                                              const at::Tensor& lse_row, const at::Tensor& g_col,
                                                              const at::Tensor& lse_col) {
  const int64_t m = in.txt.size(0), d = in.img.size(1);
  const int threads = at::get_num_threads();
  const acc_t scale = static_cast<acc_t>(in.logit_scale.item<double>());
  const PairMask mask = make_mask(in);
  auto opts = in.img.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  auto d_img = at::zeros({in.img.size(0), d}, opts);
  auto d_txt_parts = at::zeros({threads, m, d}, opts);
  std::vector<acc_t> d_scale(threads, 0);
  const acc_t *gr = g_row.data_ptr<acc_t>(), *lr = lse_row.data_ptr<acc_t>();
  const acc_t *gc = g_col.data_ptr<acc_t>(), *lc = lse_col.data_ptr<acc_t>();

  for_each_tile<acc_t>(
      in.img, in.txt, [](int, int64_t, int64_t) {},
      [&](int tid, const TileGeometry& g, const at::Tensor& ub, const at::Tensor& vt, const at::Tensor& tile) {
        d_scale[tid] += contrastive_tile_grad(tile.data_ptr<acc_t>(), g, scale, mask, gr, lr, gc, lc);
        tile_grad_products<acc_t>(tile, ub, vt, scale, d_img.narrow(0, g.r0, g.rows),
                                  d_txt_parts[tid].narrow(0, g.c0, g.cols));
      },
      [](int, int64_t, int64_t) {});

  acc_t total = 0;
  for (acc_t v : d_scale) total += v;
  return {d_img, d_txt_parts.sum(0), at::scalar_tensor(total, opts)};
}
// The shapes alone decide, so a forward and its backward always take the same orientation.
bool runs_transposed(const ContrastiveInputs& in) { return in.img.size(0) < in.txt.size(0); }

// The same loss with images and texts exchanged: its row terms are the original's column terms.
ContrastiveInputs transposed(const ContrastiveInputs& in) {
  ContrastiveInputs t;
  t.img = in.txt;
  t.txt = in.img;
  t.logit_scale = in.logit_scale;
  t.pos_row = in.pos_col;
  t.pos_col = in.pos_row;
  t.img_ids = in.txt_ids;
  t.txt_ids = in.img_ids;
  return t;
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor> lse_oriented(const ContrastiveInputs& in) {
  if (!runs_transposed(in)) return lse_impl<acc_t>(in);
  auto [col_lse, row_lse] = lse_impl<acc_t>(transposed(in));
  return {row_lse, col_lse};
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> lse_grad_oriented(const ContrastiveInputs& in, const at::Tensor& g_row,
                                                                  const at::Tensor& lse_row, const at::Tensor& g_col,
                                                                  const at::Tensor& lse_col) {
  if (!runs_transposed(in)) return lse_grad_impl<acc_t>(in, g_row, lse_row, g_col, lse_col);
  auto [d_txt, d_img, d_scale] = lse_grad_impl<acc_t>(transposed(in), g_col, lse_col, g_row, lse_row);
  return {d_img, d_txt, d_scale};
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> contrastive_lse(const ContrastiveInputs& in) {
  if (acc_dtype(in.img, in.txt) == at::kDouble) return lse_oriented<double>(in);
  return lse_oriented<float>(in);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_grad(const ContrastiveInputs& in, const at::Tensor& g_row,
                                                                    const at::Tensor& lse_row, const at::Tensor& g_col,
                                                                    const at::Tensor& lse_col) {
  if (acc_dtype(in.img, in.txt) == at::kDouble) return lse_grad_oriented<double>(in, g_row, lse_row, g_col, lse_col);
  return lse_grad_oriented<float>(in, g_row, lse_row, g_col, lse_col);
}

}  // namespace cpu
}  // namespace dcd
