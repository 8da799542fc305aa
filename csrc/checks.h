// Argument checks shared by the operator glue. They raise ValueError/IndexError/TypeError in Python
// (the public wrappers in dcd_ext/ops.py check first with friendlier messages; these keep direct
// torch.ops calls from ever reaching a kernel with bad input).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace dcd {

inline void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D, got ", t.dim(), "-D");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), name, " is on ", b.device(), " but the inputs are on ", a.device());
}

inline void check_scale(const at::Tensor& scale, const at::Tensor& like) {
  TORCH_CHECK_VALUE(scale.numel() == 1, "logit_scale must have exactly one element, got ", scale.numel());
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()), "logit_scale must be floating, got ", scale.scalar_type());
  check_same_device(like, scale, "logit_scale");
}

// An int64 vector of length n on like's device, values in [lo, hi).
inline void check_index_vector(const at::Tensor& t, int64_t n, int64_t lo, int64_t hi, const at::Tensor& like,
                               const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, name, " must have shape [", n, "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  check_same_device(like, t, name);
  if (n > 0 && hi > lo) {
    auto mm = at::aminmax(t);
    const int64_t mn = std::get<0>(mm).item<int64_t>(), mx = std::get<1>(mm).item<int64_t>();
    TORCH_CHECK_INDEX(mn >= lo && mx < hi, name, " values must lie in [", lo, ", ", hi, "), got [", mn, ", ", mx, "]");
  }
}

inline void check_ids(const at::Tensor& t, int64_t n, const at::Tensor& like, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, name, " must have shape [", n, "], got ", t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  check_same_device(like, t, name);
}

inline at::Tensor defined_or_empty(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

}  // namespace dcd
