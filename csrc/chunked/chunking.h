// Shared pieces of the chunked ATen implementation (csrc/chunked/): how wide a chunk is, and the score
// products of one chunk. The chunked implementation is the baseline a user would write with library
// GEMMs (cuBLAS on CUDA, BLAS on CPU) and small ATen epilogues; it runs on every device and never holds
// more than a few [rows, chunk] buffers.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace dcd {
namespace chunked {

// Columns (keys, texts) per chunk for a problem with `rows` rows and `total` columns; for the candidate
// terms, anchors per chunk. DCD_CHUNK_COLS (a positive integer) overrides the default, which keeps one
// [rows, chunk] float32 buffer near 2^26 elements (256 MiB). Always in [1, max(total, 1)].
int64_t chunk_size(int64_t rows, int64_t total);

// Every entry point holds one: the operators' own autocast fallthrough leaves autocast on for the ATen
// calls inside, which would recast the products (bmm, mm) and break the accumulation dtypes chosen here.
struct AutocastOff {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// The two operands of the score products a @ b[c0 : c0 + cols]^T, prepared once per call. Scores come
// out in `acc` (float32, or float64 when either input is float64). On CUDA, float16/bfloat16 operands
// of one dtype stay as they are and cuBLAS multiplies them with float32 output; everything else is
// converted to `acc` once.
struct ScoreOperands {
  at::Tensor a, b;
  at::ScalarType acc;

  ScoreOperands(const at::Tensor& a, const at::Tensor& b, at::ScalarType acc);
  at::Tensor scores(int64_t c0, int64_t cols) const;  // [a.rows, cols] in acc
};

}  // namespace chunked
}  // namespace dcd
