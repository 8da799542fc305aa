// Scalar math with one definition on host and device. Torch-free.
#pragma once

#include <cmath>

#include "dcd/macros.h"

namespace dcd {

DCD_HOST_DEVICE float exp_of(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return std::exp(x);
#endif
}
DCD_HOST_DEVICE double exp_of(double x) {
  return exp(x);
}
DCD_HOST_DEVICE float log_of(float x) {
#if defined(__CUDA_ARCH__)
  return __logf(x);
#else
  return std::log(x);
#endif
}
DCD_HOST_DEVICE double log_of(double x) {
  return log(x);
}
// log(1 + x), accurate for tiny x (where log_of(1 + x) rounds to 0)
DCD_HOST_DEVICE float log1p_of(float x) {
#if defined(__CUDA_ARCH__)
  return log1pf(x);
#else
  return std::log1p(x);
#endif
}
DCD_HOST_DEVICE double log1p_of(double x) {
  return log1p(x);
}

// exp(x) for x <= 0 in float, branch-free so compilers vectorise loops over it; relative error below
// 2e-7 on [-87, 0] and exactly 0 below -87 (so exp(-inf) == 0).
DCD_HOST_DEVICE float exp_nonpositive(float x) {
  const float lo = -87.0f;
  // a plain select (not a branch around the math) keeps the whole body vectorisable
  const float xc = x > lo ? x : lo;
  // exp(x) = 2^n * exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2]. Adding 1.5 * 2^23
  // rounds to an integer without floor(), which compilers only vectorise under -fno-trapping-math.
  union Bits {
    int i;
    float f;
  };
  const float magic = 12582912.0f;
  Bits t;
  t.f = xc * 1.44269504088896341f + magic;
  const float n = t.f - magic;
  const int ni = t.i - 0x4B400000;  // the bits of magic
  float r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606765330187045e-06f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  Bits scale;
  scale.i = (ni + 127) << 23;
  const float y = p * scale.f;
  return x >= lo ? y : 0.0f;  // 0 below the float range, for -inf and for NaN
}
DCD_HOST_DEVICE double exp_nonpositive(double x) {
  return x > -static_cast<double>(INFINITY) ? exp(x) : 0.0;  // 0 for -inf and NaN, as above
}

}  // namespace dcd
