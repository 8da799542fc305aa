// Per-anchor math of the candidate (distillation) terms of docs/design.md section 3.2 (the batch-level
// dynamic weights of section 3.3 are a handful of vector ops over these stats, done in the operator glue).
// Inputs for one anchor: teacher logits t[K1], student logits z[K1] and a validity mask (slot 0, the
// positive, is always valid; absent slots follow section 3.5). Torch-free.
#pragma once

#include "dcd/macros.h"
#include "dcd/math.h"
#include "dcd/options.h"

namespace dcd {

template <typename acc_t>
struct CandidateRowStats {
  acc_t dist;       // d_i
  acc_t hard;       // h_i = LSE_m z_m - z_0 (also the student's CE, CEs_i)
  acc_t entropy;    // H_i of softmax(t) at T = 1
  acc_t ce_teacher; // CEt_i = LSE_m t_m - t_0
};

// max and log-sum-exp of scale * x over the valid slots
template <typename acc_t>
DCD_HOST_DEVICE acc_t masked_lse(const acc_t* x, const bool* valid, int k1, acc_t scale) {
  acc_t mx = neg_infinity<acc_t>();
  for (int m = 0; m < k1; ++m)
    if (valid[m]) mx = max_of(mx, scale * x[m]);
  acc_t s = 0;
  for (int m = 0; m < k1; ++m)
    if (valid[m]) s += exp_of(scale * x[m] - mx);
  return mx + log_of(s);
}

// LSE_m x_m - x_0 over the valid slots, without cancellation. Where x_0 dominates the difference is
// tiny (4.1e-7 for x = {11.53, -3.18}) and lse - x_0 rounds to exactly 0 in float; so with
// mx = max_{m>=1} x_m it is log1p(sum_{m>=1} exp(x_m - x_0)) when x_0 >= mx, and otherwise
// (mx - x_0) + log(exp(x_0 - mx) + sum_{m>=1} exp(x_m - mx)), which is at least log 2.
template <typename acc_t>
DCD_HOST_DEVICE acc_t lse_minus_first(const acc_t* x, const bool* valid, int k1) {
  acc_t mx = neg_infinity<acc_t>();
  for (int m = 1; m < k1; ++m)
    if (valid[m]) mx = max_of(mx, x[m]);
  const acc_t ref = max_of(mx, x[0]);
  acc_t s = 0;
  for (int m = 1; m < k1; ++m)
    if (valid[m]) s += exp_of(x[m] - ref);
  if (x[0] >= mx) return log1p_of(s);
  return (mx - x[0]) + log_of(exp_of(x[0] - mx) + s);
}

template <typename acc_t>
DCD_HOST_DEVICE CandidateRowStats<acc_t> candidate_row_stats(const acc_t* t, const acc_t* z, const bool* valid,
                                                             int k1, acc_t temperature, DistillKind kind) {
  CandidateRowStats<acc_t> r;
  const acc_t inv_tau = acc_t(1) / temperature;
  const acc_t lse_t1 = masked_lse(t, valid, k1, acc_t(1));
  r.hard = lse_minus_first(z, valid, k1);
  r.ce_teacher = lse_minus_first(t, valid, k1);
  acc_t ent = 0;
  for (int m = 0; m < k1; ++m) {
    if (!valid[m]) continue;
    acc_t logp1 = t[m] - lse_t1;
    ent -= exp_of(logp1) * logp1;
  }
  r.entropy = ent;
  acc_t d = 0;
  if (kind == DistillKind::kKL) {
    const acc_t lse_t = masked_lse(t, valid, k1, inv_tau);
    const acc_t lse_z = masked_lse(z, valid, k1, inv_tau);
    for (int m = 0; m < k1; ++m) {
      if (!valid[m]) continue;
      acc_t logp = t[m] * inv_tau - lse_t;
      acc_t logq = z[m] * inv_tau - lse_z;
      d += exp_of(logp) * (logp - logq);
    }
    d *= temperature * temperature;
  } else {
    int count = 0;
    for (int m = 0; m < k1; ++m) {
      if (!valid[m]) continue;
      acc_t diff = t[m] - z[m];
      d += diff * diff;
      ++count;
    }
    d /= acc_t(count);
  }
  r.dist = d;
  return r;
}

// dz[m] = coef_dist * d(d_i)/dz_m + coef_hard * d(h_i)/dz_m (0 for invalid slots).
template <typename acc_t>
DCD_HOST_DEVICE void candidate_row_grad(const acc_t* t, const acc_t* z, const bool* valid, int k1,
                                        acc_t temperature, DistillKind kind, acc_t coef_dist,
                                        acc_t coef_hard, acc_t* dz) {
  const acc_t inv_tau = acc_t(1) / temperature;
  const acc_t lse_z1 = masked_lse(z, valid, k1, acc_t(1));
  acc_t lse_t = 0, lse_z = 0;
  int count = 0;
  if (kind == DistillKind::kKL) {
    lse_t = masked_lse(t, valid, k1, inv_tau);
    lse_z = masked_lse(z, valid, k1, inv_tau);
  } else {
    for (int m = 0; m < k1; ++m) count += valid[m] ? 1 : 0;
  }
  // d(h_i)/dz = softmax(z) - onehot(0); slot 0 goes last and takes -sum_{m>=1} softmax(z)_m, which
  // equals softmax(z)_0 - 1 without its cancellation
  acc_t p_others = 0;
  for (int m = k1 - 1; m >= 0; --m) {
    if (!valid[m]) {
      dz[m] = 0;
      continue;
    }
    acc_t g_dist;
    if (kind == DistillKind::kKL) {
      acc_t p = exp_of(t[m] * inv_tau - lse_t);
      acc_t q = exp_of(z[m] * inv_tau - lse_z);
      g_dist = temperature * (q - p);
    } else {
      g_dist = acc_t(-2) * (t[m] - z[m]) / acc_t(count);
    }
    acc_t g_hard = -p_others;
    if (m > 0) {
      g_hard = exp_of(z[m] - lse_z1);
      p_others += g_hard;
    }
    dz[m] = coef_dist * g_dist + coef_hard * g_hard;
  }
}

}  // namespace dcd
