// Streaming log-sum-exp: a running (max, sum of exp(x - max)) pair that merges associatively.
// Torch-free; used by the CPU and CUDA kernels alike.
#pragma once

#include "dcd/macros.h"
#include "dcd/math.h"

namespace dcd {

template <typename acc_t>
struct OnlineLSE {
  acc_t max;
  acc_t sum;

  DCD_HOST_DEVICE static OnlineLSE empty() {
    return OnlineLSE{neg_infinity<acc_t>(), acc_t(0)};
  }

  // Folds in a block whose maximum is block_max and whose sum of exp(x - block_max) is block_sum.
  DCD_HOST_DEVICE void merge(acc_t block_max, acc_t block_sum) {
    if (block_sum <= acc_t(0)) return;
    if (sum <= acc_t(0)) {
      max = block_max;
      sum = block_sum;
      return;
    }
    if (block_max > max) {
      sum = sum * exp_of(max - block_max) + block_sum;
      max = block_max;
    } else {
      sum += block_sum * exp_of(block_max - max);
    }
  }

  DCD_HOST_DEVICE void merge(const OnlineLSE& other) {
    merge(other.max, other.sum);
  }

  DCD_HOST_DEVICE void add(acc_t x) {
    if (!(x > neg_infinity<acc_t>())) return;
    merge(x, acc_t(1));
  }

  // log(sum_j exp(x_j)); -inf when nothing was added.
  DCD_HOST_DEVICE acc_t value() const {
    return sum > acc_t(0) ? max + log_of(sum) : neg_infinity<acc_t>();
  }
};

}  // namespace dcd
