// A minimal assertion harness for the header tests: CHECK_* record failures, main returns their count.
#pragma once

#include <cmath>
#include <cstdio>

namespace dcd_test {
inline int& failures() {
  static int count = 0;
  return count;
}
inline void check_near(double a, double b, double tol, const char* what, const char* file, int line) {
  const double err = std::fabs(a - b);
  if (!(err <= tol * (1.0 + std::fabs(b))) && !(std::isinf(a) && std::isinf(b) && (a > 0) == (b > 0))) {
    std::printf("%s:%d: %s: %.17g vs %.17g (tol %g)\n", file, line, what, a, b, tol);
    ++failures();
  }
}
inline int report(const char* name) {
  std::printf("%s: %s (%d failures)\n", name, failures() == 0 ? "ok" : "FAILED", failures());
  return failures() == 0 ? 0 : 1;
}
}  // namespace dcd_test

#define CHECK_NEAR(a, b, tol) dcd_test::check_near((a), (b), (tol), #a " ~ " #b, __FILE__, __LINE__)
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::printf("%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      ++dcd_test::failures();                                         \
    }                                                                 \
  } while (0)
