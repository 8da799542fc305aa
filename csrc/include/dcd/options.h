// The names of the distillation kinds and weighting schemes (docs/design.md sections 3.2-3.3), in the order of
// dcd_ext/loss_options.py (KINDS, WEIGHTINGS), which holds the same lists for Python. Torch-free.
#pragma once

#include <cstddef>
#include <string_view>

namespace dcd {

enum class DistillKind : int { kKL = 0, kMSE = 1 };
enum class Weighting : int { kNone = 0, kEntropy = 1, kWSL = 2, kDCD = 3 };

// Indexed by the enums above.
constexpr std::string_view kKindNames[] = {"kl", "mse"};
constexpr std::string_view kWeightingNames[] = {"none", "entropy", "wsl", "dcd"};

// The position of name in names, or -1.
template <std::size_t N>
constexpr int find_option(const std::string_view (&names)[N], std::string_view name) {
  for (std::size_t i = 0; i < N; ++i)
    if (names[i] == name) return static_cast<int>(i);
  return -1;
}

}  // namespace dcd
