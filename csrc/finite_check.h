// The finite check of similarity_topk's inputs, for the paths that do not fold it into their score scan
// (k = 0, the chunked implementation) and for naming the argument once the CPU kernel's scan has found a
// non-finite score: a NaN score has no place in a ranking, and skipping it silently (what a plain ">"
// comparison does) would hide it. CPU tensors get a ValueError naming the argument and the count; CUDA
// tensors a device-side assert with the same message (no host sync).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace dcd {

inline void check_finite(const at::Tensor& t, const char* name) {
  if (t.numel() == 0) return;
  if (t.is_cuda()) {
    at::_assert_async(at::isfinite(t).all(),
                      std::string(name) + " holds NaN or infinite values; similarity_topk needs finite inputs");
    return;
  }
  const int64_t bad = at::logical_not(at::isfinite(t)).sum().item<int64_t>();
  TORCH_CHECK_VALUE(bad == 0, name, " holds ", bad, " NaN or infinite values; similarity_topk needs finite inputs ",
                    "(a NaN has no rank)");
}

}  // namespace dcd
