// Chunked contrastive loss: one score GEMM per column chunk. The forward folds each chunk into the
// row log-sum-exps (online, logaddexp over chunks) and finishes the chunk's column log-sum-exps (a chunk
// holds every row); the backward recomputes each chunk's scores, forms dS (docs/design.md section 7) and
// accumulates d_img += dS txt_chunk, d_txt_chunk = dS^T img (both times the scale at the end) and
// d_scale += sum(dS * dots).
#include <limits>

#include "chunked/chunking.h"
#include "kernels.h"

namespace dcd {
namespace chunked {

namespace {

// Which entries of the chunk (all rows x columns c0..c0+cols) enter the row and the column denominators
// (PairMask of dcd/pair_mask.h); undefined without ids (everything enters).
struct ChunkMask {
  at::Tensor in_row, in_col;
};

ChunkMask chunk_mask(const ContrastiveInputs& in, int64_t c0, int64_t cols) {
  if (!in.img_ids.defined()) return {};
  const auto idx = in.pos_row.options();
  auto col_index = at::arange(c0, c0 + cols, idx).view({1, -1});
  auto row_index = at::arange(in.img.size(0), idx).view({-1, 1});
  auto differ = in.img_ids.view({-1, 1}).ne(in.txt_ids.narrow(0, c0, cols).view({1, -1}));
  return {differ.logical_or(in.pos_row.view({-1, 1}).eq(col_index)),
          differ.logical_or(in.pos_col.narrow(0, c0, cols).view({1, -1}).eq(row_index))};
}

at::Tensor masked(const at::Tensor& s, const at::Tensor& keep) {
  if (!keep.defined()) return s;
  return s.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> contrastive_lse(const ContrastiveInputs& in) {
  const AutocastOff no_autocast;
  const int64_t n = in.img.size(0), m = in.txt.size(0);
  const auto acc = acc_dtype(in.img, in.txt);
  const ScoreOperands ops(in.img, in.txt, acc);
  auto scale = in.logit_scale.to(acc).reshape({});
  auto row_lse = at::full({n}, -std::numeric_limits<double>::infinity(), in.img.options().dtype(acc));
  auto col_lse = at::empty({m}, row_lse.options());
  const int64_t chunk = chunk_size(n, m);
  for (int64_t c0 = 0; c0 < m; c0 += chunk) {
    const int64_t cols = std::min(chunk, m - c0);
    auto s = ops.scores(c0, cols).mul_(scale);
    const auto mask = chunk_mask(in, c0, cols);
    row_lse = at::logaddexp(row_lse, at::logsumexp(masked(s, mask.in_row), {1}));
    col_lse.narrow(0, c0, cols).copy_(at::logsumexp(masked(s, mask.in_col), {0}));
  }
  return {row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_grad(const ContrastiveInputs& in, const at::Tensor& g_row,
                                                                    const at::Tensor& lse_row, const at::Tensor& g_col,
                                                                    const at::Tensor& lse_col) {
  const AutocastOff no_autocast;
  const int64_t n = in.img.size(0), m = in.txt.size(0);
  const auto acc = acc_dtype(in.img, in.txt);
  const ScoreOperands ops(in.img, in.txt, acc);
  // the gradient products take dS in the accumulation dtype, so their operands are converted once
  const auto img = in.img.to(acc).contiguous(), txt = in.txt.to(acc).contiguous();
  auto scale = in.logit_scale.to(acc).reshape({});
  auto d_img = at::zeros({n, img.size(1)}, img.options()), d_txt = at::empty({m, txt.size(1)}, img.options());
  auto d_scale = at::zeros({}, img.options());
  const auto idx = in.pos_row.options();
  const auto gr = g_row.view({-1, 1}), lr = lse_row.view({-1, 1});
  const auto row_index = at::arange(n, idx).view({-1, 1});
  const int64_t chunk = chunk_size(n, m);
  for (int64_t c0 = 0; c0 < m; c0 += chunk) {
    const int64_t cols = std::min(chunk, m - c0);
    auto dots = ops.scores(c0, cols);
    auto s = dots * scale;
    const auto mask = chunk_mask(in, c0, cols);
    // a row (column) with g = 0 has lse = +inf, so its exp is exactly 0 (docs/design.md section 7)
    const auto gc = g_col.narrow(0, c0, cols).view({1, -1}), lc = lse_col.narrow(0, c0, cols).view({1, -1});
    auto ds = at::exp(masked(s, mask.in_row) - lr).mul_(gr);
    ds.add_(at::exp(masked(s, mask.in_col) - lc).mul_(gc));
    const auto zero = at::zeros({}, ds.options());
    const auto row_pos = in.pos_row.view({-1, 1}).eq(at::arange(c0, c0 + cols, idx).view({1, -1}));
    const auto col_pos = in.pos_col.narrow(0, c0, cols).view({1, -1}).eq(row_index);
    ds.sub_(at::where(row_pos, gr, zero)).sub_(at::where(col_pos, gc, zero));
    d_scale.add_((ds * dots).sum());
    d_img.addmm_(ds, txt.narrow(0, c0, cols));
    auto d_txt_chunk = d_txt.narrow(0, c0, cols);
    at::mm_out(d_txt_chunk, ds.t(), img);
  }
  // the scale is a device tensor (reading it would synchronise), so it multiplies the sums once at the end
  return {d_img.mul_(scale), d_txt.mul_(scale), d_scale};
}

}  // namespace chunked
}  // namespace dcd
