// The vectorisable float exp used by the CPU tile loops: relative error and the underflow edge.
#include <random>

#include "check.h"
#include "dcd/math.h"

int main() {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uni(-87.0f, 0.5f);
  double worst = 0;
  for (int i = 0; i < 1000000; ++i) {
    const float x = uni(rng);
    const double want = std::exp(static_cast<double>(x));
    const double got = dcd::exp_nonpositive(x);
    worst = std::max(worst, std::fabs(got - want) / want);
  }
  std::printf("exp_nonpositive: worst relative error %.3g\n", worst);
  CHECK(worst < 4e-7);
  CHECK(dcd::exp_nonpositive(-INFINITY) == 0.0f);
  CHECK(dcd::exp_nonpositive(NAN) == 0.0f);
  CHECK(dcd::exp_nonpositive(-200.0f) == 0.0f);
  CHECK(dcd::exp_nonpositive(0.0f) == 1.0f);
  CHECK(dcd::exp_nonpositive(-INFINITY - 0.0) == 0.0);
  return dcd_test::report("exp_nonpositive");
}
