// Chunked candidate (distillation) terms: per chunk of anchors, gather each anchor's K+1 candidates
// ([rows, K+1, D]), one batched product for the dot products, and the per-anchor math of
// dcd/candidate_loss.h written as ATen ops over [rows, K+1]. The backward scatters the pool gradient
// with index_add_ (atomics on CUDA: not bitwise reproducible, unlike the fused kernels).
#include <limits>

#include "chunked/chunking.h"
#include "dcd/options.h"
#include "kernels.h"

namespace dcd {
namespace chunked {

namespace {
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

struct Operands {
  at::Tensor x, y, teacher, scale;  // anchors, pool, teacher logits in the accumulation dtype; scale []
  int64_t n, k1, d, chunk;

  explicit Operands(const DistillInputs& in) {
    const auto acc = acc_dtype(in.anchors, in.pool);
    x = in.anchors.to(acc).contiguous();
    y = in.pool.to(acc).contiguous();
    teacher = in.teacher.to(acc);
    scale = in.logit_scale.to(acc).reshape({});
    n = x.size(0);
    k1 = in.cand.size(1);
    d = x.size(1);
    chunk = chunk_size(k1 * d, n);  // rows of anchors whose gathered candidates fill one buffer
  }
};

// One chunk of anchors r0..r0+rows: validity, the gathered candidates [rows, K1, D] (pool row 0 in
// absent slots) and the dot products [rows, K1] (0 in absent slots).
struct Chunk {
  at::Tensor cand, valid, gathered, dots;

  Chunk(const Operands& o, const at::Tensor& cand_all, int64_t r0, int64_t rows) {
    cand = cand_all.narrow(0, r0, rows);
    valid = cand.ge(0);
    gathered = o.y.index_select(0, cand.clamp_min(0).reshape({-1})).view({rows, o.k1, o.d});
    auto raw = at::bmm(gathered, o.x.narrow(0, r0, rows).unsqueeze(2)).squeeze(2);
    dots = raw.masked_fill(valid.logical_not(), 0);
  }
};

at::Tensor masked(const at::Tensor& x, const at::Tensor& valid) {
  return x.masked_fill(valid.logical_not(), kNegInf);
}

// LSE over the valid slots minus slot 0, without cancellation (lse_minus_first of candidate_loss.h).
at::Tensor lse_minus_first(const at::Tensor& x, const at::Tensor& valid) {
  const int64_t k1 = x.size(1);
  if (k1 == 1) return at::zeros({x.size(0)}, x.options());
  auto others = masked(x.narrow(1, 1, k1 - 1), valid.narrow(1, 1, k1 - 1));
  auto x0 = x.select(1, 0);
  auto mx = at::amax(others, {1});
  auto s = at::exp(others - at::maximum(mx, x0).unsqueeze(1)).sum(1);
  auto behind = (mx - x0) + at::log(at::exp(x0 - mx) + s);
  return at::where(x0.ge(mx), at::log1p(s), behind);
}

// log-softmax over the valid slots (-inf in the others)
at::Tensor masked_log_softmax(const at::Tensor& x, const at::Tensor& valid) {
  auto xm = masked(x, valid);
  return xm - at::logsumexp(xm, {1}, /*keepdim=*/true);
}

at::Tensor valid_sum(const at::Tensor& v, const at::Tensor& valid) {
  return at::where(valid, v, at::zeros({}, v.options())).sum(1);
}

// [rows, 4]: dist, hard, teacher entropy, teacher CE (candidate_row_stats of candidate_loss.h).
at::Tensor row_stats(const at::Tensor& t, const at::Tensor& z, const at::Tensor& valid, double tau, DistillKind kind) {
  const double inv_tau = 1.0 / tau;
  auto logp1 = masked_log_softmax(t, valid);
  auto entropy = -valid_sum(at::exp(logp1) * logp1, valid);
  at::Tensor dist;
  if (kind == DistillKind::kKL) {
    auto logp = masked_log_softmax(t * inv_tau, valid), logq = masked_log_softmax(z * inv_tau, valid);
    dist = valid_sum(at::exp(logp) * (logp - logq), valid) * (tau * tau);
  } else {
    dist = valid_sum((t - z).square(), valid) / valid.sum(1).to(z.scalar_type());
  }
  return at::stack({dist, lse_minus_first(z, valid), entropy, lse_minus_first(t, valid)}, 1);
}

// dz = coef_dist d(dist)/dz + coef_hard d(hard)/dz, 0 in absent slots (candidate_row_grad).
at::Tensor row_grad(const at::Tensor& t, const at::Tensor& z, const at::Tensor& valid, double tau, DistillKind kind,
                    const at::Tensor& coef_dist, const at::Tensor& coef_hard) {
  const double inv_tau = 1.0 / tau;
  at::Tensor g_dist;
  if (kind == DistillKind::kKL) {
    auto p = at::exp(masked_log_softmax(t * inv_tau, valid)), q = at::exp(masked_log_softmax(z * inv_tau, valid));
    g_dist = (q - p) * tau;
  } else {
    g_dist = (t - z) * -2 / valid.sum(1, /*keepdim=*/true).to(z.scalar_type());
  }
  // d(hard)/dz = softmax(z) - onehot(0); slot 0 takes -sum of the others, which avoids the cancellation
  auto g_hard = at::exp(masked_log_softmax(z, valid));
  g_hard.select(1, 0).copy_(-g_hard.narrow(1, 1, z.size(1) - 1).sum(1));
  auto dz = coef_dist.unsqueeze(1) * g_dist + coef_hard.unsqueeze(1) * g_hard;
  return at::where(valid, dz, at::zeros({}, dz.options()));
}

}  // namespace

at::Tensor distill_stats(const DistillInputs& in) {
  const AutocastOff no_autocast;
  const Operands o(in);
  const auto kind = static_cast<DistillKind>(in.kind);
  auto stats = at::empty({o.n, 4}, o.x.options());
  for (int64_t r0 = 0; r0 < o.n; r0 += o.chunk) {
    const int64_t rows = std::min(o.chunk, o.n - r0);
    const Chunk c(o, in.cand, r0, rows);
    stats.narrow(0, r0, rows).copy_(row_stats(o.teacher.narrow(0, r0, rows), c.dots * o.scale, c.valid,
                                              in.temperature, kind));
  }
  return stats;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distill_grad(const DistillInputs& in, const at::Tensor& coef_dist,
                                                            const at::Tensor& coef_hard) {
  const AutocastOff no_autocast;
  const Operands o(in);
  const auto kind = static_cast<DistillKind>(in.kind);
  auto d_anchor = at::empty_like(o.x), d_pool = at::zeros_like(o.y);
  auto d_scale = at::zeros({}, o.x.options());
  for (int64_t r0 = 0; r0 < o.n; r0 += o.chunk) {
    const int64_t rows = std::min(o.chunk, o.n - r0);
    const Chunk c(o, in.cand, r0, rows);
    auto dz = row_grad(o.teacher.narrow(0, r0, rows), c.dots * o.scale, c.valid, in.temperature, kind,
                       coef_dist.narrow(0, r0, rows), coef_hard.narrow(0, r0, rows));
    d_scale.add_((dz * c.dots).sum());
    d_anchor.narrow(0, r0, rows).copy_(at::bmm(dz.unsqueeze(1), c.gathered).squeeze(1));
    auto contrib = (dz.unsqueeze(2) * o.x.narrow(0, r0, rows).unsqueeze(1)).reshape({-1, o.d});
    d_pool.index_add_(0, c.cand.clamp_min(0).reshape({-1}), contrib);
  }
  // the scale stays on the device (reading it would synchronise): it multiplies the sums once at the end
  return {d_anchor.mul_(o.scale), d_pool.mul_(o.scale), d_scale};
}

}  // namespace chunked
}  // namespace dcd
