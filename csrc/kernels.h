// Per-device kernel entry points behind the device-agnostic operator glue. Each takes validated,
// contiguous tensors; positions are materialised (never undefined); id tensors may be undefined.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace dcd {

struct ContrastiveInputs {
  at::Tensor img, txt, logit_scale;  // [N, D], [M, D], one element
  at::Tensor pos_row, pos_col;       // int64 [N], [M]
  at::Tensor img_ids, txt_ids;       // int64 [N], [M], or both undefined
};

// Row and column log-sum-exps (float32, float64 for float64 inputs) of the masked score matrix.
using ContrastiveLseFn = std::tuple<at::Tensor, at::Tensor> (*)(const ContrastiveInputs&);
// Gradients of sum_i g_row[i] * l_i + sum_j g_col[j] * m_j (the row and column terms, positives
// included) with respect to img, txt and the logit scale. lse_* are +inf where g_* is 0.
using ContrastiveLseGradFn = std::tuple<at::Tensor, at::Tensor, at::Tensor> (*)(
    const ContrastiveInputs&, const at::Tensor& g_row, const at::Tensor& lse_row, const at::Tensor& g_col,
    const at::Tensor& lse_col);

struct DistillInputs {
  at::Tensor anchors, pool, cand, teacher, logit_scale;  // [N, D], [P, D], int64 [N, K1], [N, K1], one
  double temperature;
  int kind;  // dcd::DistillKind
};

// Per-anchor stats [N, 4]: dist d_i, hard h_i, teacher entropy H_i, teacher CE CEt_i.
using DistillStatsFn = at::Tensor (*)(const DistillInputs&);
// Gradients of sum_i coef_dist[i] * d_i + coef_hard[i] * h_i for anchors, pool and the logit scale.
using DistillGradFn = std::tuple<at::Tensor, at::Tensor, at::Tensor> (*)(
    const DistillInputs&, const at::Tensor& coef_dist, const at::Tensor& coef_hard);

using SimilarityTopkFn = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& query, const at::Tensor& keys,
                                                                 int64_t k, const at::Tensor& query_ids,
                                                                 const at::Tensor& key_ids);

namespace cpu {
std::tuple<at::Tensor, at::Tensor> contrastive_lse(const ContrastiveInputs&);
std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_grad(const ContrastiveInputs&, const at::Tensor&,
                                                                    const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&);
at::Tensor distill_stats(const DistillInputs&);
std::tuple<at::Tensor, at::Tensor, at::Tensor> distill_grad(const DistillInputs&, const at::Tensor&,
                                                            const at::Tensor&);
std::tuple<at::Tensor, at::Tensor> similarity_topk(const at::Tensor&, const at::Tensor&, int64_t,
                                                   const at::Tensor&, const at::Tensor&);
}  // namespace cpu

// The chunked ATen implementation (csrc/chunked/): library GEMMs on column chunks and ATen epilogues,
// for every device; selected with DCD_CPU_IMPL / DCD_CUDA_IMPL (dispatch.h).
namespace chunked {
std::tuple<at::Tensor, at::Tensor> contrastive_lse(const ContrastiveInputs&);
std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_grad(const ContrastiveInputs&, const at::Tensor&,
                                                                    const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&);
at::Tensor distill_stats(const DistillInputs&);
std::tuple<at::Tensor, at::Tensor, at::Tensor> distill_grad(const DistillInputs&, const at::Tensor&,
                                                            const at::Tensor&);
std::tuple<at::Tensor, at::Tensor> similarity_topk(const at::Tensor&, const at::Tensor&, int64_t,
                                                   const at::Tensor&, const at::Tensor&);
}  // namespace chunked

#ifdef DCD_WITH_CUDA
namespace cuda {
std::tuple<at::Tensor, at::Tensor> contrastive_lse(const ContrastiveInputs&);
std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_grad(const ContrastiveInputs&, const at::Tensor&,
                                                                    const at::Tensor&, const at::Tensor&,
                                                                    const at::Tensor&);
at::Tensor distill_stats(const DistillInputs&);
std::tuple<at::Tensor, at::Tensor, at::Tensor> distill_grad(const DistillInputs&, const at::Tensor&,
                                                            const at::Tensor&);
std::tuple<at::Tensor, at::Tensor> similarity_topk(const at::Tensor&, const at::Tensor&, int64_t,
                                                   const at::Tensor&, const at::Tensor&);
}  // namespace cuda
#endif

// Accumulation dtype of the fused kernels: float64 for float64 inputs, float32 otherwise.
inline at::ScalarType acc_dtype(const at::Tensor& a, const at::Tensor& b) {
  return (a.scalar_type() == at::kDouble || b.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

// Rows per block so that every thread gets work, capped at the tile height.
inline int64_t row_block_size(int64_t n, int64_t threads, int64_t cap) {
  int64_t per_thread = (n + threads - 1) / (threads > 0 ? threads : 1);
  return std::max<int64_t>(1, std::min<int64_t>(cap, per_thread));
}

}  // namespace dcd
