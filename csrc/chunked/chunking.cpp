#include "chunked/chunking.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>

namespace dcd {
namespace chunked {

namespace {
constexpr int64_t kChunkElements = int64_t(1) << 26;

// DCD_CHUNK_COLS, or 0 when unset; read at every call so tests can cross chunk boundaries at small sizes.
int64_t chunk_override() {
  const char* v = std::getenv("DCD_CHUNK_COLS");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(v, &end, 10);
  TORCH_CHECK_VALUE(errno == 0 && end != v && *end == '\0' && n > 0, "DCD_CHUNK_COLS must be a positive integer, got '",
                    std::string(v), "'");
  return static_cast<int64_t>(n);
}

bool is_low_precision(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16;
}
}  // namespace

int64_t chunk_size(int64_t rows, int64_t total) {
  const int64_t upper = std::max<int64_t>(total, 1);
  const int64_t forced = chunk_override();
  if (forced > 0) return std::min(forced, upper);
  return std::min(upper, std::max<int64_t>(256, kChunkElements / std::max<int64_t>(rows, 1)));
}

ScoreOperands::ScoreOperands(const at::Tensor& a_in, const at::Tensor& b_in, at::ScalarType acc_in) : acc(acc_in) {
  // at::mm with a float32 output from float16/bfloat16 operands exists on CUDA only
  const bool native = a_in.is_cuda() && acc == at::kFloat && a_in.scalar_type() == b_in.scalar_type() &&
                      is_low_precision(a_in.scalar_type());
  a = native ? a_in : a_in.to(acc).contiguous();
  b = native ? b_in : b_in.to(acc).contiguous();
}

at::Tensor ScoreOperands::scores(int64_t c0, int64_t cols) const {
  const auto chunk = b.narrow(0, c0, cols).t();
  if (a.scalar_type() != acc) return at::mm(a, chunk, acc);
  return at::mm(a, chunk);
}

}  // namespace chunked
}  // namespace dcd
