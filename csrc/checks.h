// The argument checks of every operator: the one layer where bad input becomes a Python ValueError
// (TORCH_CHECK_VALUE), TypeError (TORCH_CHECK_TYPE) or IndexError (TORCH_CHECK_INDEX) whose message
// names the argument as the public Python signature does, so torch.ops.dcd_ext.* called directly is as
// safe as the dcd_ext.ops wrappers (which only convert arguments). The fake kernels in dcd_ext/ops.py
// repeat the shape checks for torch.compile traces. Sizes are read as SymInts because the composite
// dynamic_contrastive_loss runs these checks on fake tensors while it is traced.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "dcd/options.h"

namespace dcd {

using OptTensor = c10::optional<at::Tensor>;

inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2, name, " must be 2-D [rows, dim], got shape ", t.sym_sizes());
  TORCH_CHECK_TYPE(is_kernel_dtype(t.scalar_type()), name,
                   " must be a floating tensor (float32, float16, bfloat16 or float64), got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
                    ref.device());
}

// The two embedding matrices of an operator: 2-D, kernel dtypes, one device, one width.
inline void check_matrix_pair(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  check_matrix(a, a_name);
  check_matrix(b, b_name);
  check_same_device(b, b_name, a, a_name);
  TORCH_CHECK_VALUE(a.sym_size(1) == b.sym_size(1), a_name, " and ", b_name,
                    " must have the same embedding width, got ", a.sym_size(1), " and ", b.sym_size(1));
}

inline void check_scale(const at::Tensor& scale, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(scale.sym_numel() == 1, "logit_scale must be a floating tensor with one element, got shape ",
                    scale.sym_sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()),
                   "logit_scale must be a floating tensor with one element, got dtype ", scale.scalar_type());
  check_same_device(scale, "logit_scale", ref, ref_name);
}

// A per-row vector of length n on ref's device: int64 (ids, positions) or floating (weights).
inline void check_vector(const at::Tensor& t, const char* name, const c10::SymInt& n, bool index, const at::Tensor& ref,
                         const char* ref_name) {
  if (index) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
  } else {
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ", t.scalar_type());
  }
  TORCH_CHECK_VALUE(t.dim() == 1 && t.sym_size(0) == n, name, " must have shape [", n, "], got ", t.sym_sizes());
  check_same_device(t, name, ref, ref_name);
}

// Id vectors come in pairs: a_ids [n] for one side, b_ids [m] for the other.
inline void check_id_pair(const OptTensor& a, const char* a_name, const c10::SymInt& n, const OptTensor& b,
                          const char* b_name, const c10::SymInt& m, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK_VALUE(a.has_value() == b.has_value(), a_name, " and ", b_name, " must be given together");
  if (!a.has_value()) return;
  check_vector(*a, a_name, n, true, ref, ref_name);
  check_vector(*b, b_name, m, true, ref, ref_name);
}

// cand [N, K+1] int64 and teacher logits of the same shape, for the N rows of anchors.
inline void check_candidates(const at::Tensor& cand, const char* cand_name, const at::Tensor& teacher,
                             const char* teacher_name, const at::Tensor& anchors, const char* anchors_name) {
  TORCH_CHECK_TYPE(cand.scalar_type() == at::kLong, cand_name, " must be an int64 tensor, got ", cand.scalar_type());
  TORCH_CHECK_VALUE(cand.dim() == 2 && cand.sym_size(0) == anchors.sym_size(0) && cand.sym_size(1) >= 1, cand_name,
                    " must have shape [", anchors.sym_size(0), ", K+1] with K+1 >= 1, got ", cand.sym_sizes());
  check_same_device(cand, cand_name, anchors, anchors_name);
  TORCH_CHECK_TYPE(at::isFloatingType(teacher.scalar_type()), teacher_name, " must be a floating tensor, got ",
                   teacher.scalar_type());
  TORCH_CHECK_VALUE(teacher.sym_sizes() == cand.sym_sizes(), teacher_name, " must have the shape of ", cand_name, " ",
                    cand.sym_sizes(), ", got ", teacher.sym_sizes());
  check_same_device(teacher, teacher_name, anchors, anchors_name);
}

inline void check_temperature(double temperature) {
  TORCH_CHECK_VALUE(temperature > 0, "temperature must be a positive number, got ", temperature);
}

// "'a', 'b'": the choices as the error messages list them.
template <std::size_t N>
std::string quoted_list(const std::string_view (&names)[N]) {
  std::string out;
  for (std::size_t i = 0; i < N; ++i) out += (i ? ", '" : "'") + std::string(names[i]) + "'";
  return out;
}

inline DistillKind parse_kind(c10::string_view kind) {
  const int i = find_option(kKindNames, std::string_view(kind.data(), kind.size()));
  TORCH_CHECK_VALUE(i >= 0, "kind must be one of ", quoted_list(kKindNames), "; got '", std::string(kind), "'");
  return static_cast<DistillKind>(i);
}

inline Weighting parse_weighting(c10::string_view weighting) {
  const int i = find_option(kWeightingNames, std::string_view(weighting.data(), weighting.size()));
  TORCH_CHECK_VALUE(i >= 0, "weighting must be one of ", quoted_list(kWeightingNames), "; got '",
                    std::string(weighting), "'");
  return static_cast<Weighting>(i);
}

// Index values: each entry's values must lie in [lo, hi).
struct IndexRange {
  at::Tensor values;
  const char* name;
  int64_t lo, hi;
};

// DCD_CHECK_INDICES=1 forces the exact host check (IndexError) on every device.
inline bool host_index_checks_forced() {
  const char* v = std::getenv("DCD_CHECK_INDICES");
  return v != nullptr && (std::strcmp(v, "1") == 0 || std::strcmp(v, "true") == 0 || std::strcmp(v, "yes") == 0);
}

// CPU tensors (or DCD_CHECK_INDICES=1): raises IndexError for the first range with a value outside it,
// reading one flag per range to the host in a single copy; the offending extremes are read only on error.
// Other devices: one device-side assertion per range (at::_assert_async), so the ops never wait for the
// device; a bad value fails the next synchronising call with a device-side assertion instead.
inline void check_index_ranges(const std::vector<IndexRange>& ranges) {
  if (ranges.empty()) return;
  if (!ranges.front().values.is_cpu() && !host_index_checks_forced()) {
    for (const auto& r : ranges) {
      const std::string msg = std::string("dcd_ext: ") + r.name + " values must lie in [" + std::to_string(r.lo) +
                              ", " + std::to_string(r.hi) + ") (device-side check; DCD_CHECK_INDICES=1 checks on " +
                              "the host and raises IndexError)";
      at::_assert_async(r.values.ge(r.lo).logical_and(r.values.lt(r.hi)).all(), msg);
    }
    return;
  }
  std::vector<at::Tensor> bad;
  for (const auto& r : ranges) bad.push_back(r.values.lt(r.lo).logical_or(r.values.ge(r.hi)).any());
  const auto flags = at::stack(bad).to(at::kCPU);
  const bool* flag = flags.data_ptr<bool>();
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (!flag[i]) continue;
    const auto& r = ranges[i];
    auto mm = at::aminmax(r.values);
    TORCH_CHECK_INDEX(false, r.name, " values must lie in [", r.lo, ", ", r.hi, "), got [",
                      std::get<0>(mm).item<int64_t>(), ", ", std::get<1>(mm).item<int64_t>(), "]");
  }
}

inline void check_k(int64_t k) {
  TORCH_CHECK_VALUE(k >= 0, "k must be non-negative, got ", k);
  TORCH_CHECK_VALUE(k <= INT_MAX, "k must be at most ", INT_MAX, " (the kernels index the top-k lists with int), got ",
                    k);
}

}  // namespace dcd
