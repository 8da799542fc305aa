// Chunked similarity top-k: one GEMM per key chunk, then at::topk over the running list and the chunk.
// at::topk does not say which of several equal values it keeps, so each (score, key index) pair is
// packed into one int64 whose order is "score descending, then index ascending": the top-k of those
// integers is exactly the contract's list, ties included.
#include <limits>

#include "chunked/chunking.h"
#include "finite_check.h"
#include "kernels.h"

namespace dcd {
namespace chunked {

namespace {
constexpr int64_t kLow = int64_t(1) << 32;

// Packs float32 scores (no NaN) of keys first..first + cols into order-preserving int64 keys: the float's
// bits as a signed integer that orders like the float (-0.0 and +0.0 alike) in the high half, and
// 2^32 - 1 - key index in the low half.
at::Tensor pack(const at::Tensor& scores, int64_t first) {
  auto bits = scores.contiguous().view(at::kInt);
  auto ordered = at::where(bits.lt(0), bits.bitwise_xor(0x7fffffff).add(1), bits).to(at::kLong);
  auto index = at::arange(first, first + scores.size(1), scores.options().dtype(at::kLong));
  return ordered * kLow + (kLow - 1 - index);
}

// The inverse of pack: float32 scores and key indices, with (-inf, -1) for -inf scores (padding).
std::tuple<at::Tensor, at::Tensor> unpack(const at::Tensor& keys) {
  auto ordered = at::div(keys, kLow, "floor");
  auto index = (kLow - 1) - (keys - ordered * kLow);
  auto o32 = ordered.to(at::kInt);
  auto values = at::where(o32.lt(0), o32.sub(1).bitwise_xor(0x7fffffff), o32).contiguous().view(at::kFloat);
  auto padding = at::isneginf(values);
  return {values, at::where(padding, at::full_like(index, -1), index)};
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> similarity_topk(const at::Tensor& query, const at::Tensor& keys, int64_t k,
                                                   const at::Tensor& query_ids, const at::Tensor& key_ids) {
  const AutocastOff no_autocast;
  check_finite(query, "query");
  check_finite(keys, "keys");
  const int64_t n = query.size(0), m = keys.size(0);
  const float ninf = -std::numeric_limits<float>::infinity();
  auto values = at::full({n, k}, ninf, query.options().dtype(at::kFloat));
  auto indices = at::full({n, k}, -1, query.options().dtype(at::kLong));
  if (n == 0 || m == 0 || k == 0) return {values, indices};
  TORCH_CHECK_VALUE(m < kLow, "the chunked similarity_topk takes fewer than 2^32 keys, got ", m);

  const ScoreOperands ops(query, keys, at::kFloat);
  const int64_t chunk = chunk_size(n, m);
  at::Tensor best = at::empty({n, 0}, indices.options());  // packed, sorted, at most k per row
  for (int64_t c0 = 0; c0 < m; c0 += chunk) {
    const int64_t cols = std::min(chunk, m - c0);
    auto s = ops.scores(c0, cols);
    auto drop = at::isnan(s);  // NaN never enters a list (nor does -inf: it unpacks as padding)
    if (query_ids.defined()) drop.logical_or_(query_ids.view({-1, 1}).eq(key_ids.narrow(0, c0, cols).view({1, -1})));
    s.masked_fill_(drop, ninf);
    auto merged = at::cat({best, pack(s, c0)}, 1);
    best = std::get<0>(at::topk(merged, std::min(k, merged.size(1)), 1, /*largest=*/true, /*sorted=*/true));
  }
  auto [v, i] = unpack(best);
  values.narrow(1, 0, best.size(1)).copy_(v);
  indices.narrow(1, 0, best.size(1)).copy_(i);
  return {values, indices};
}

}  // namespace chunked
}  // namespace dcd
