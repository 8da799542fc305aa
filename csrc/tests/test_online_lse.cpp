// OnlineLSE against a direct log-sum-exp, for any split of the data into merged blocks.
#include <random>
#include <vector>

#include "check.h"
#include "dcd/online_lse.h"

static double direct_lse(const std::vector<double>& x) {
  double mx = -INFINITY;
  for (double v : x) mx = v > mx ? v : mx;
  if (std::isinf(mx)) return mx;
  double s = 0;
  for (double v : x) s += std::exp(v - mx);
  return mx + std::log(s);
}

int main() {
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0.0, 30.0);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + trial % 57;
    std::vector<double> x(n);
    for (double& v : x) v = normal(rng);
    if (trial % 5 == 0) x[trial % n] = -INFINITY;  // masked entries
    // element by element
    auto a = dcd::OnlineLSE<double>::empty();
    for (double v : x) a.add(v);
    CHECK_NEAR(a.value(), direct_lse(x), 1e-12);
    // in blocks of random sizes, merged in order and out of order
    auto b = dcd::OnlineLSE<double>::empty();
    std::vector<dcd::OnlineLSE<double>> parts;
    for (int i = 0; i < n;) {
      const int len = 1 + static_cast<int>(rng() % 7);
      auto p = dcd::OnlineLSE<double>::empty();
      for (int j = i; j < n && j < i + len; ++j) p.add(x[j]);
      parts.push_back(p);
      i += len;
    }
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) b.merge(*it);
    CHECK_NEAR(b.value(), direct_lse(x), 1e-12);
    // float accumulation stays accurate for large logits (sigma = 100)
    auto f = dcd::OnlineLSE<float>::empty();
    for (double v : x) f.add(static_cast<float>(v * 3));
    std::vector<double> x3(x);
    for (double& v : x3) v = static_cast<float>(v * 3);
    CHECK_NEAR(f.value(), direct_lse(x3), 1e-5);
  }
  auto e = dcd::OnlineLSE<float>::empty();
  CHECK(std::isinf(e.value()) && e.value() < 0);
  e.add(-INFINITY);
  CHECK(std::isinf(e.value()) && e.value() < 0);
  return dcd_test::report("online_lse");
}
