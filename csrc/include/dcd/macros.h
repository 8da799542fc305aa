// Portability macros shared by the CPU and CUDA kernels. Torch-free.
#pragma once

#if defined(__CUDACC__)
#define DCD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DCD_HOST_DEVICE inline
#endif

#include <cmath>
#include <cstdint>

namespace dcd {

using index_t = std::int64_t;

template <typename T>
DCD_HOST_DEVICE T neg_infinity() {
  return -static_cast<T>(INFINITY);
}

template <typename T>
DCD_HOST_DEVICE T max_of(T a, T b) {
  return a > b ? a : b;
}

template <typename T>
DCD_HOST_DEVICE T min_of(T a, T b) {
  return a < b ? a : b;
}

}  // namespace dcd
