// Device-agnostic glue of the candidate (distillation) terms: checks, the batch-level dynamic weights
// (a handful of O(N) vector ops over the per-anchor stats the device kernels compute) and the means.
#include <torch/library.h>

#include "checks.h"
#include "dcd/candidate_loss.h"
#include "dispatch.h"

namespace dcd {
namespace {

int parse_kind(c10::string_view kind) {
  if (kind == "kl") return static_cast<int>(DistillKind::kKL);
  if (kind == "mse") return static_cast<int>(DistillKind::kMSE);
  TORCH_CHECK_VALUE(false, "kind must be 'kl' or 'mse', got '", std::string(kind), "'");
  return 0;
}

void check_weighting(c10::string_view w) {
  TORCH_CHECK_VALUE(w == "none" || w == "entropy" || w == "wsl" || w == "dcd",
                    "weighting must be one of 'none', 'entropy', 'wsl', 'dcd', got '", std::string(w), "'");
}

DistillInputs prepare(const at::Tensor& anchors, const at::Tensor& pool, const at::Tensor& cand,
                      const at::Tensor& teacher, const at::Tensor& scale, double temperature, c10::string_view kind) {
  check_matrix(anchors, "anchors");
  check_matrix(pool, "pool");
  check_same_device(anchors, pool, "pool");
  check_scale(scale, anchors);
  const int64_t n = anchors.size(0), p = pool.size(0);
  TORCH_CHECK_VALUE(anchors.size(1) == pool.size(1), "anchors and pool must have the same width, got ",
                    anchors.size(1), " and ", pool.size(1));
  TORCH_CHECK_VALUE(n > 0, "anchors must be non-empty");
  TORCH_CHECK_VALUE(cand.dim() == 2 && cand.size(0) == n && cand.size(1) >= 1,
                    "cand must have shape [", n, ", K+1] with K+1 >= 1, got ", cand.sizes());
  TORCH_CHECK_TYPE(cand.scalar_type() == at::kLong, "cand must be int64, got ", cand.scalar_type());
  check_same_device(anchors, cand, "cand");
  TORCH_CHECK_VALUE(teacher.sizes() == cand.sizes(), "teacher must have the shape of cand ", cand.sizes(), ", got ",
                    teacher.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(teacher.scalar_type()), "teacher must be floating, got ", teacher.scalar_type());
  check_same_device(anchors, teacher, "teacher");
  TORCH_CHECK_VALUE(temperature > 0, "temperature must be positive, got ", temperature);
  auto mm = at::aminmax(cand);
  TORCH_CHECK_INDEX(std::get<1>(mm).item<int64_t>() < p && std::get<0>(mm).item<int64_t>() >= -1,
                    "cand values must lie in [-1, ", p, ")");
  TORCH_CHECK_INDEX(cand.select(1, 0).ge(0).all().item<bool>(), "cand[:, 0] (the positives) must be valid indices");
  // detached: worker threads run with grad mode on
  return DistillInputs{anchors.detach().contiguous(), pool.detach().contiguous(), cand.contiguous(),
                       teacher.detach().contiguous(), scale.detach(),
                       temperature, parse_kind(kind)};
}

// (distillation weight, hard weight) per anchor, docs/design.md section 3.3 (zero-sum cases: section 3.5).
std::tuple<at::Tensor, at::Tensor> dynamic_weights(const at::Tensor& stats, c10::string_view weighting) {
  const auto n = static_cast<double>(stats.size(0));
  auto hard = stats.select(1, 1), entropy = stats.select(1, 2), ce_teacher = stats.select(1, 3);
  auto ones = at::ones_like(entropy);
  if (weighting == "none") return {ones, ones.clone()};  // two outputs must not alias
  auto sum_h = entropy.sum();
  auto e = at::where(sum_h.gt(0), entropy * (n / sum_h), ones);
  auto frac = at::where(sum_h.gt(0), entropy / sum_h, at::zeros_like(entropy));
  auto rho = at::softmax((1 - frac).square(), 0) * n;
  auto omega = 1 - at::exp(-at::clamp_min(hard / (ce_teacher + 1e-7), 0));
  if (weighting == "entropy") return {rho, e};
  if (weighting == "wsl") return {omega, ones};
  auto wd = rho * omega;
  auto mean_wd = wd.mean();
  return {at::where(mean_wd.gt(0), wd / mean_wd, at::zeros_like(wd)), e};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> distill_loss(
    const at::Tensor& anchors, const at::Tensor& pool, const at::Tensor& cand, const at::Tensor& teacher,
    const at::Tensor& scale, double temperature, c10::string_view kind, c10::string_view weighting) {
  check_weighting(weighting);
  at::NoGradGuard no_grad;  // kernels run below autograd; their inner ATen calls must not record
  auto in = prepare(anchors, pool, cand, teacher, scale, temperature, kind);
  auto stats = kernels_for(anchors).distill_stats(in);
  auto w = dynamic_weights(stats, weighting);
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
