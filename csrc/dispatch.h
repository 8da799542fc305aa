// Picks the per-device kernels for a tensor's device.
#pragma once

#include "kernels.h"

namespace dcd {

struct DeviceKernels {
  ContrastiveLseFn contrastive_lse;
  ContrastiveLseGradFn contrastive_lse_grad;
  DistillStatsFn distill_stats;
  DistillGradFn distill_grad;
  SimilarityTopkFn similarity_topk;
};

inline const DeviceKernels& kernels_for(const at::Tensor& t) {
  static const DeviceKernels cpu_kernels{cpu::contrastive_lse, cpu::contrastive_lse_grad, cpu::distill_stats,
                                         cpu::distill_grad, cpu::similarity_topk};
#ifdef DCD_WITH_CUDA
  static const DeviceKernels cuda_kernels{cuda::contrastive_lse, cuda::contrastive_lse_grad, cuda::distill_stats,
                                          cuda::distill_grad, cuda::similarity_topk};
  if (t.is_cuda()) return cuda_kernels;
#endif
  TORCH_CHECK_VALUE(t.is_cpu(), "dcd_ext has no kernels for device ", t.device(),
                    " (CUDA kernels are built only where nvcc and a CUDA torch exist; see python -m dcd_ext.info)");
  return cpu_kernels;
}

}  // namespace dcd
