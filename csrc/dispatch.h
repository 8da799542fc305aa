// Picks the kernels for a tensor's device: the device's own fused kernels, or the chunked ATen
// implementation when DCD_CPU_IMPL / DCD_CUDA_IMPL says "chunked" (default "fused"). The variables are
// read at every call, so one process can compare the two.
#pragma once

#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels.h"

namespace dcd {

struct DeviceKernels {
  ContrastiveLseFn contrastive_lse;
  ContrastiveLseGradFn contrastive_lse_grad;
  DistillStatsFn distill_stats;
  DistillGradFn distill_grad;
  SimilarityTopkFn similarity_topk;
};

// Whether the implementation variable `name` selects the chunked implementation.
inline bool chunked_selected(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0' || std::strcmp(v, "fused") == 0) return false;
  TORCH_CHECK_VALUE(std::strcmp(v, "chunked") == 0, name, " must be 'fused' or 'chunked', got '", std::string(v),
                    "'");
  return true;
}

inline const DeviceKernels& kernels_for(const at::Tensor& t) {
  static const DeviceKernels cpu_kernels{cpu::contrastive_lse, cpu::contrastive_lse_grad, cpu::distill_stats,
                                         cpu::distill_grad, cpu::similarity_topk};
  static const DeviceKernels chunked_kernels{chunked::contrastive_lse, chunked::contrastive_lse_grad,
                                             chunked::distill_stats, chunked::distill_grad,
                                             chunked::similarity_topk};
#ifdef DCD_WITH_CUDA
  static const DeviceKernels cuda_kernels{cuda::contrastive_lse, cuda::contrastive_lse_grad, cuda::distill_stats,
                                          cuda::distill_grad, cuda::similarity_topk};
  if (t.is_cuda()) return chunked_selected("DCD_CUDA_IMPL") ? chunked_kernels : cuda_kernels;
#endif
  TORCH_CHECK_VALUE(t.is_cpu(), "dcd_ext has no kernels for device ", t.device(),
                    " (CUDA kernels are built only where nvcc and a CUDA torch exist; see python -m dcd_ext.info)");
  return chunked_selected("DCD_CPU_IMPL") ? chunked_kernels : cpu_kernels;
}

}  // namespace dcd
