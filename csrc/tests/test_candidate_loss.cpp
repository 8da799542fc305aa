// Per-anchor candidate math: values against a direct transcription of docs/design.md sections 3.2-3.3,
// the gradient against central finite differences, and the float hard term / teacher CE / hard gradient
// against double where the positive dominates (where lse - z_0 cancels to 0 in float).
#include <memory>
#include <random>
#include <vector>

#include "check.h"
#include "dcd/candidate_loss.h"

using dcd::DistillKind;

static std::vector<double> softmax(const std::vector<double>& x, const std::vector<bool>& valid, double tau) {
  double mx = -INFINITY, s = 0;
  for (size_t m = 0; m < x.size(); ++m)
    if (valid[m]) mx = std::max(mx, x[m] / tau);
  std::vector<double> p(x.size(), 0.0);
  for (size_t m = 0; m < x.size(); ++m)
    if (valid[m]) s += (p[m] = std::exp(x[m] / tau - mx));
  for (double& v : p) v /= s;
  return p;
}

static double objective(const std::vector<double>& t, const std::vector<double>& z, const std::vector<bool>& valid,
                        double tau, DistillKind kind, double cd, double ch) {
  std::unique_ptr<bool[]> vb(new bool[valid.size()]);
  for (size_t m = 0; m < valid.size(); ++m) vb[m] = valid[m];
  auto s = dcd::candidate_row_stats(t.data(), z.data(), vb.get(), static_cast<int>(t.size()), tau, kind);
  return cd * s.dist + ch * s.hard;
}

int main() {
  std::mt19937 rng(5);
  std::normal_distribution<double> normal(0.0, 2.0);
  for (int trial = 0; trial < 200; ++trial) {
    const int k1 = 1 + trial % 12;
    const double tau = 0.5 + (trial % 4) * 0.5;
    const DistillKind kind = trial % 2 ? DistillKind::kKL : DistillKind::kMSE;
    std::vector<double> t(k1), z(k1);
    std::vector<bool> valid(k1, true);
    for (int m = 0; m < k1; ++m) {
      t[m] = normal(rng);
      z[m] = normal(rng);
      if (m > 0 && rng() % 4 == 0) valid[m] = false;
    }
    std::unique_ptr<bool[]> vb(new bool[k1]);
    for (int m = 0; m < k1; ++m) vb[m] = valid[m];
    auto s = dcd::candidate_row_stats(t.data(), z.data(), vb.get(), k1, tau, kind);

    // direct transcription
    auto p = softmax(t, valid, tau), q = softmax(z, valid, tau), p1 = softmax(t, valid, 1.0), q1 = softmax(z, valid, 1.0);
    double d = 0, ent = 0;
    int count = 0;
    for (int m = 0; m < k1; ++m) {
      if (!valid[m]) continue;
      ++count;
      if (kind == DistillKind::kKL) d += p[m] * (std::log(p[m]) - std::log(q[m]));
      else d += (t[m] - z[m]) * (t[m] - z[m]);
      ent -= p1[m] * std::log(p1[m]);
    }
    d = kind == DistillKind::kKL ? d * tau * tau : d / count;
    CHECK_NEAR(s.dist, d, 1e-10);
    CHECK_NEAR(s.hard, -std::log(q1[0]), 1e-10);
    CHECK_NEAR(s.ce_teacher, -std::log(p1[0]), 1e-10);
    CHECK_NEAR(s.entropy, ent, 1e-10);

    // gradient by finite differences
    const double cd = 0.7, ch = 1.3, h = 1e-6;
    std::vector<double> dz(k1);
    dcd::candidate_row_grad(t.data(), z.data(), vb.get(), k1, tau, kind, cd, ch, dz.data());
    for (int m = 0; m < k1; ++m) {
      if (!valid[m]) {
        CHECK(dz[m] == 0.0);
        continue;
      }
      auto zp = z, zm = z;
      zp[m] += h;
      zm[m] -= h;
      const double fd = (objective(t, zp, valid, tau, kind, cd, ch) - objective(t, zm, valid, tau, kind, cd, ch)) / (2 * h);
      CHECK_NEAR(dz[m], fd, 1e-6);
    }
  }

  // float against double, positive dominant (the logit scale 100 case), not dominant, and with absent slots
  const std::vector<std::vector<double>> rows = {
      {11.53, -3.18}, {11.53, -3.18, -5.0, 2.0}, {40.0, 1.0, -2.0}, {-3.0, 5.0, 1.0}, {2.0, 2.0, 2.0}, {7.0}};
  for (const auto& zd : rows) {
    const int k1 = static_cast<int>(zd.size());
    std::unique_ptr<bool[]> vb(new bool[k1]);
    std::vector<bool> valid(k1, true);
    std::vector<float> zf(k1), tf(k1), dz(k1);
    std::vector<double> td(k1);
    for (int m = 0; m < k1; ++m) {
      vb[m] = valid[m] = !(k1 == 4 && m == 2);
      zf[m] = static_cast<float>(zd[m]);
      td[m] = 0.75 * zd[m] + 2.0 * (m == 0);  // a teacher that also favours the positive
      tf[m] = static_cast<float>(td[m]);
    }
    std::vector<double> zr(zf.begin(), zf.end()), tr(tf.begin(), tf.end());  // the float inputs, exactly
    auto s = dcd::candidate_row_stats(tf.data(), zf.data(), vb.get(), k1, 1.0f, DistillKind::kKL);
    // -log(p_0) itself rounds to 0 in double once p_0 is within 1e-16 of 1; log1p of the others' mass does not
    double others = 0, t_others = 0;
    auto q = softmax(zr, valid, 1.0), p = softmax(tr, valid, 1.0);
    for (int m = 1; m < k1; ++m) others += q[m], t_others += p[m];
    const double hard_exact = -std::log1p(-others), ce_exact = -std::log1p(-t_others);
    CHECK(std::fabs(s.hard - hard_exact) <= 1e-5 * hard_exact + 1e-30);
    CHECK(std::fabs(s.ce_teacher - ce_exact) <= 1e-5 * ce_exact + 1e-30);
    // d h / dz = softmax(z) - onehot(0), relative accuracy in every slot (dz[0] = -others)
    dcd::candidate_row_grad(tf.data(), zf.data(), vb.get(), k1, 1.0f, DistillKind::kKL, 0.0f, 1.0f, dz.data());
    for (int m = 0; m < k1; ++m) {
      const double want = valid[m] ? (m == 0 ? -others : q[m]) : 0.0;
      CHECK(std::fabs(dz[m] - want) <= 1e-5 * std::fabs(want) + 1e-30);
    }
  }
  return dcd_test::report("candidate_loss");
}
