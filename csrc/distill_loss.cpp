// Device-agnostic glue of the candidate (distillation) terms: checks, the batch-level dynamic weights
// (a handful of O(N) vector ops over the per-anchor stats the device kernels compute) and the means.
#include <torch/library.h>

#include "checks.h"
#include "dcd/candidate_loss.h"
#include "dispatch.h"

namespace dcd {
namespace {

DistillInputs prepare(const at::Tensor& anchors, const at::Tensor& pool, const at::Tensor& cand,
                      const at::Tensor& teacher, const at::Tensor& scale, double temperature, c10::string_view kind) {
  check_matrix_pair(anchors, "anchors", pool, "pool");
  TORCH_CHECK_VALUE(anchors.size(0) > 0, "anchors must be non-empty");
  check_scale(scale, anchors, "anchors");
  check_candidates(cand, "cand", teacher, "teacher", anchors, "anchors");
  check_temperature(temperature);
  const DistillKind k = parse_kind(kind);
  const int64_t p = pool.size(0);
  // last: the only check that reads values (on the host for CPU tensors, device-side on CUDA)
  check_index_ranges({{cand, "cand", -1, p}, {cand.select(1, 0), "cand[:, 0] (the positives)", 0, p}});
  // detached: worker threads run with grad mode on
  return DistillInputs{anchors.detach().contiguous(), pool.detach().contiguous(), cand.contiguous(),
                       teacher.detach().contiguous(), scale.detach(), temperature, static_cast<int>(k)};
}

// (distillation weight, hard weight) per anchor, docs/design.md section 3.3 (zero-sum cases: section 3.5).
std::tuple<at::Tensor, at::Tensor> dynamic_weights(const at::Tensor& stats, Weighting weighting) {
  const auto n = static_cast<double>(stats.size(0));
  auto hard = stats.select(1, 1), entropy = stats.select(1, 2), ce_teacher = stats.select(1, 3);
  auto ones = at::ones_like(entropy);
  if (weighting == Weighting::kNone) return {ones, ones.clone()};  // two outputs must not alias
  auto sum_h = entropy.sum();
  auto e = at::where(sum_h.gt(0), entropy * (n / sum_h), ones);
  auto frac = at::where(sum_h.gt(0), entropy / sum_h, at::zeros_like(entropy));
  auto rho = at::softmax((1 - frac).square(), 0) * n;
  auto omega = -at::expm1(-at::clamp_min(hard / (ce_teacher + 1e-7), 0));  // 1 - exp(-x), exact for small x
  if (weighting == Weighting::kEntropy) return {rho, e};
  if (weighting == Weighting::kWSL) return {omega, ones};
  auto wd = rho * omega;
  auto mean_wd = wd.mean();
  return {at::where(mean_wd.gt(0), wd / mean_wd, at::zeros_like(wd)), e};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> distill_loss(
    const at::Tensor& anchors, const at::Tensor& pool, const at::Tensor& cand, const at::Tensor& teacher,
    const at::Tensor& scale, double temperature, c10::string_view kind, c10::string_view weighting) {
  at::NoGradGuard no_grad;  // kernels run below autograd; their inner ATen calls must not record
  const Weighting w_kind = parse_weighting(weighting);
  auto in = prepare(anchors, pool, cand, teacher, scale, temperature, kind);
  auto stats = kernels_for(anchors).distill_stats(in);
  auto w = dynamic_weights(stats, w_kind);
  auto wd = std::get<0>(w).contiguous(), wh = std::get<1>(w).contiguous();
  return {(wd * stats.select(1, 0)).mean(), (wh * stats.select(1, 1)).mean(), wd, wh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distill_loss_backward(
    const at::Tensor& grad_dist, const at::Tensor& grad_hard, const at::Tensor& anchors, const at::Tensor& pool,
    const at::Tensor& cand, const at::Tensor& teacher, const at::Tensor& scale, double temperature,
    c10::string_view kind, const at::Tensor& dist_weight, const at::Tensor& hard_weight) {
  at::NoGradGuard no_grad;  // kernels run below autograd; their inner ATen calls must not record
  auto in = prepare(anchors, pool, cand, teacher, scale, temperature, kind);
  const auto acc = acc_dtype(anchors, pool);
  const double n = static_cast<double>(anchors.size(0));
  TORCH_CHECK_VALUE(dist_weight.sizes() == hard_weight.sizes() && dist_weight.dim() == 1 &&
                        dist_weight.size(0) == anchors.size(0),
                    "dist_weight and hard_weight must have shape [", anchors.size(0), "]");
  auto coef_dist = (grad_dist.to(acc).reshape({}) * dist_weight.to(acc) / n).contiguous();
  auto coef_hard = (grad_hard.to(acc).reshape({}) * hard_weight.to(acc) / n).contiguous();
  auto grads = kernels_for(anchors).distill_grad(in, coef_dist, coef_hard);
  return {std::get<0>(grads).to(anchors.scalar_type()), std::get<1>(grads).to(pool.scalar_type()),
          std::get<2>(grads).to(scale.scalar_type()).reshape(scale.sizes())};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcd_ext, CPU, m) {
  m.impl("distill_loss", &distill_loss);
  m.impl("distill_loss_backward", &distill_loss_backward);
}
#ifdef DCD_WITH_CUDA
TORCH_LIBRARY_IMPL(dcd_ext, CUDA, m) {
  m.impl("distill_loss", &distill_loss);
  m.impl("distill_loss_backward", &distill_loss_backward);
}
#endif

}  // namespace dcd
