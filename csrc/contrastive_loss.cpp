// Device-agnostic glue of the fused contrastive loss: checks, default positions, the forward's positive
// terms and the per-row/column weights (O(N + M) vector work), around the device kernels that stream
// the tiles (the backward kernels fold the positive terms into their tiles).
#include <torch/library.h>

#include <limits>

#include "checks.h"
#include "dispatch.h"

namespace dcd {
namespace {

ContrastiveInputs prepare(const at::Tensor& img, const at::Tensor& txt, const at::Tensor& scale,
                          const OptTensor& pos_row, const OptTensor& pos_col, const OptTensor& img_ids,
                          const OptTensor& txt_ids, const OptTensor& row_weight, const OptTensor& col_weight) {
  check_matrix_pair(img, "img", txt, "txt");
  const int64_t n = img.size(0), m = txt.size(0);
  TORCH_CHECK_VALUE(n > 0 && m > 0, "img and txt must be non-empty, got ", n, " and ", m, " rows");
  check_scale(scale, img, "img");
  TORCH_CHECK_VALUE(n == m || (pos_row.has_value() && pos_col.has_value()),
                    "pos_row and pos_col are required when img and txt differ in length (", n, " vs ", m, ")");
  if (pos_row.has_value()) check_vector(*pos_row, "pos_row", n, true, img, "img");
  if (pos_col.has_value()) check_vector(*pos_col, "pos_col", m, true, img, "img");
  check_id_pair(img_ids, "img_ids", n, txt_ids, "txt_ids", m, img, "img");
  if (row_weight.has_value()) check_vector(*row_weight, "row_weight", n, false, img, "img");
  if (col_weight.has_value()) check_vector(*col_weight, "col_weight", m, false, img, "img");
  std::vector<IndexRange> ranges;
  if (pos_row.has_value()) ranges.push_back({*pos_row, "pos_row", -1, m});
  if (pos_col.has_value()) ranges.push_back({*pos_col, "pos_col", -1, n});
  check_index_ranges(ranges);

  ContrastiveInputs in;
  in.img = img.detach().contiguous();  // detached: worker threads run with grad mode on
  in.txt = txt.detach().contiguous();
  in.logit_scale = scale.detach();
  auto idx_opts = img.options().dtype(at::kLong);
  in.pos_row = pos_row.has_value() ? pos_row->contiguous() : at::arange(n, idx_opts);
  in.pos_col = pos_col.has_value() ? pos_col->contiguous() : at::arange(m, idx_opts);
  if (img_ids.has_value()) {
    in.img_ids = img_ids->contiguous();
    in.txt_ids = txt_ids->contiguous();
  }
  return in;
}

// Normalised weights a_i / sum(a) over the entries that have a term (0 elsewhere, all 0 if the sum is 0).
at::Tensor term_weights(const at::Tensor& pos, const OptTensor& weight, at::ScalarType acc) {
  auto has = pos.ge(0).to(acc);
  auto w = weight.has_value() ? weight->to(acc) * has : has;
  auto total = w.sum();
  return at::where(total.ne(0), w / total, at::zeros_like(w));
}

// <img_i, txt_pos[i]> for every row (rows without a positive read row 0; their weight is 0). In chunks of
// rows, so the gathered rows never take O(N * D) memory (a queue of 262144 texts of D = 256 would gather 256 MiB).
at::Tensor positive_dots(const at::Tensor& a, const at::Tensor& b, const at::Tensor& pos, at::ScalarType acc) {
  constexpr int64_t kChunkElements = int64_t{1} << 22;
  const int64_t rows = a.size(0), chunk = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(a.size(1), 1));
  if (rows <= chunk) return (a.to(acc) * b.index_select(0, pos.clamp_min(0)).to(acc)).sum(1);
  auto out = at::empty({rows}, a.options().dtype(acc));
  for (int64_t r = 0; r < rows; r += chunk) {
    const int64_t c = std::min(chunk, rows - r);
    auto part = out.narrow(0, r, c);
    at::sum_out(part, a.narrow(0, r, c).to(acc) * b.index_select(0, pos.narrow(0, r, c).clamp_min(0)).to(acc),
                1);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_loss(
    const at::Tensor& img, const at::Tensor& txt, const at::Tensor& scale, const OptTensor& pos_row,
    const OptTensor& pos_col, const OptTensor& img_ids, const OptTensor& txt_ids, const OptTensor& row_weight,
    const OptTensor& col_weight) {
  at::NoGradGuard no_grad;  // kernels run below autograd; their inner ATen calls must not record
  auto in = prepare(img, txt, scale, pos_row, pos_col, img_ids, txt_ids, row_weight, col_weight);
  const auto acc = acc_dtype(img, txt);
  auto lse = kernels_for(img).contrastive_lse(in);
  auto row_lse = std::get<0>(lse), col_lse = std::get<1>(lse);
  auto s = scale.to(acc).reshape({});
  auto wr = term_weights(in.pos_row, row_weight, acc), wc = term_weights(in.pos_col, col_weight, acc);
  auto row_terms = row_lse - s * positive_dots(in.img, in.txt, in.pos_row, acc);
  auto col_terms = col_lse - s * positive_dots(in.txt, in.img, in.pos_col, acc);
  auto row_part = at::where(wr.ne(0), wr * row_terms, at::zeros_like(wr)).sum();
  auto col_part = at::where(wc.ne(0), wc * col_terms, at::zeros_like(wc)).sum();
  return {(row_part + col_part) * 0.5, row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_loss_backward(
    const at::Tensor& grad, const at::Tensor& img, const at::Tensor& txt, const at::Tensor& scale,
    const OptTensor& pos_row, const OptTensor& pos_col, const OptTensor& img_ids, const OptTensor& txt_ids,
    const OptTensor& row_weight, const OptTensor& col_weight, const at::Tensor& row_lse, const at::Tensor& col_lse) {
  at::NoGradGuard no_grad;  // kernels run below autograd; their inner ATen calls must not record
  auto in = prepare(img, txt, scale, pos_row, pos_col, img_ids, txt_ids, row_weight, col_weight);
  const auto acc = acc_dtype(img, txt);
  auto g = grad.to(acc).reshape({}) * 0.5;
  auto g_row = (g * term_weights(in.pos_row, row_weight, acc)).contiguous();
  auto g_col = (g * term_weights(in.pos_col, col_weight, acc)).contiguous();
  const double inf = std::numeric_limits<double>::infinity();
  auto lse_row = at::where(g_row.ne(0), row_lse.to(acc), at::full_like(g_row, inf)).contiguous();
  auto lse_col = at::where(g_col.ne(0), col_lse.to(acc), at::full_like(g_col, inf)).contiguous();
  auto grads = kernels_for(img).contrastive_lse_grad(in, g_row, lse_row, g_col, lse_col);
  return {std::get<0>(grads).to(img.scalar_type()), std::get<1>(grads).to(txt.scalar_type()),
          std::get<2>(grads).to(scale.scalar_type()).reshape(scale.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcd_ext, CPU, m) {
  m.impl("contrastive_loss", &contrastive_loss);
  m.impl("contrastive_loss_backward", &contrastive_loss_backward);
}
#ifdef DCD_WITH_CUDA
TORCH_LIBRARY_IMPL(dcd_ext, CUDA, m) {
  m.impl("contrastive_loss", &contrastive_loss);
  m.impl("contrastive_loss_backward", &contrastive_loss_backward);
}
#endif

}  // namespace dcd
