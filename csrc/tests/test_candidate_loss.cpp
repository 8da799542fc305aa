// Per-anchor candidate math: values against a direct transcription of docs/design.md sections 3.2-3.3,
// and the gradient against central finite differences.
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
  return dcd_test::report("candidate_loss");
}
