// Shared device helpers of the CUDA kernels: element conversion, warp reductions and dtype dispatch.
// Torch-free (compiled by nvcc alone).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda/launchers.h"
#include "dcd/macros.h"

namespace dcd {
namespace cuda_kernels {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(float v) { return static_cast<acc_t>(v); }
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(double v) { return static_cast<acc_t>(v); }
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(__half v) { return static_cast<acc_t>(__half2float(v)); }
template <typename acc_t>
__device__ __forceinline__ acc_t to_acc(__nv_bfloat16 v) { return static_cast<acc_t>(__bfloat162float(v)); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// Runs BODY with in_t (the storage type) and acc_t (float for float32/16/bf16, double for float64)
// bound to DTYPE's types; BODY must return a cudaError_t.
#define DCD_DISPATCH_DTYPE(DTYPE, ...)                                                 \
  switch (DTYPE) {                                                                     \
    case ::dcd::cuda_kernels::DType::kFloat32: {                                       \
      using in_t = float;                                                              \
      using acc_t = float;                                                             \
      __VA_ARGS__                                                                      \
    }                                                                                  \
    case ::dcd::cuda_kernels::DType::kFloat16: {                                       \
      using in_t = __half;                                                             \
      using acc_t = float;                                                             \
      __VA_ARGS__                                                                      \
    }                                                                                  \
    case ::dcd::cuda_kernels::DType::kBFloat16: {                                      \
      using in_t = __nv_bfloat16;                                                      \
      using acc_t = float;                                                             \
      __VA_ARGS__                                                                      \
    }                                                                                  \
    case ::dcd::cuda_kernels::DType::kFloat64: {                                       \
      using in_t = double;                                                             \
      using acc_t = double;                                                            \
      __VA_ARGS__                                                                      \
    }                                                                                  \
  }                                                                                    \
  return cudaErrorInvalidValue;

}  // namespace cuda_kernels
}  // namespace dcd
