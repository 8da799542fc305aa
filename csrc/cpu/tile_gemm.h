// Tile products of the CPU kernels, C (float32) = alpha * op(A) op(B) + beta * C, with A and B float32,
// bfloat16 or float16 and accumulation in float32. Which GEMM runs is decided at run time from the CPU
// and what torch offers (gemm_report says which):
// - float32 (and float16, widened once): torch's GEMM (MKL) on Intel CPUs, oneDNN's matmul elsewhere
//   (AMD), where MKL does not take its fast kernels; DCD_CPU_F32_GEMM=blas|onednn forces one.
// - bfloat16, multiplied natively where that is faster, so products are exact and only the accumulation
//   order differs from float32: with AMX, score tiles through torch's oneDNN brgemm micro-kernel on keys
//   packed once per call and the other products through MKL's bf16 x bf16 -> f32 GEMM; with AVX512_BF16
//   but no AMX on CPUs other than Intel's (AMD Zen 4), score tiles through our own kernel
//   (avx512_score_kernels.h) and the gradient products widened. Intel without AMX (where vdpbf16ps does half the
//   multiply-adds per cycle of float32 FMAs) takes that kernel only for similarity_topk with few query
//   rows (cheaper than widening the keys); otherwise bfloat16 is widened to float32 like float16.
//   DCD_CPU_GEMM=float32 always widens, native-bf16 multiplies natively wherever the CPU can, bf16-dot
//   takes the AVX512_BF16 kernel.
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace dcd {
namespace cpu {

// kBF16Native: every product in bf16 (AMX); kBF16Dot: score tiles in bf16 (avx512_score_kernels.h), the gradient
// products widened to float32; kFloat32: every product in float32.
enum class GemmPath { kFloat32, kBF16Native, kBF16Dot };

// Keys of the score products of one op call, prepared once: rows in the operand dtype and, where the
// brgemm micro-kernel runs, their transpose packed for it in chunks of kScoreChunk columns (O(M * D)).
struct ScoreKeys {
  at::Tensor rows;    // [m, k], operand dtype
  at::Tensor packed;  // brgemm only
  bool brgemm = false;
  bool dot = false;  // through bf16_dot_tile (avx512_score_kernels.h)
};
constexpr int64_t kScoreChunk = 64;

// score_rows: see gemm_path_for.
ScoreKeys prepare_score_keys(const at::Tensor& keys, at::ScalarType op_dtype, int64_t score_rows = -1);
// c[rows x cols] (ldc) = a @ keys.rows[c0 : c0 + cols]^T, a [rows, k] contiguous in the operand dtype;
// c0 a multiple of kScoreChunk.
void score_tile(const at::Tensor& a, const ScoreKeys& keys, int64_t c0, int64_t cols, float* c, int64_t ldc);

// The path for operands of this dtype (float64 never reaches here: it has its own kernels). score_rows:
// for products that are only scored (similarity_topk), the number of query rows, which the choice may
// depend on; -1 for the losses, whose gradient products follow the same path.
GemmPath gemm_path_for(at::ScalarType dtype, int64_t score_rows = -1);
// The dtype operands are kept in for gemm_path_for(dtype, score_rows): bfloat16 on the native paths,
// float32 otherwise.
at::ScalarType operand_dtype(at::ScalarType dtype, int64_t score_rows = -1);
// One line per input dtype naming the chosen path, and the CPU features it was chosen from.
std::string gemm_report();

// c[m x n] (ldc) = alpha * a @ b^T + beta * c: a [m, k], b [n, k], both row-major contiguous, same dtype.
void gemm_nt(const at::Tensor& a, const at::Tensor& b, float* c, int64_t ldc, float alpha, float beta);
// c[m x n] = alpha * a @ b + beta * c: a [m, k] (row-major, lda), b [k, n] contiguous.
void gemm_nn(const at::Tensor& a, const at::Tensor& b, float* c, int64_t ldc, float alpha, float beta);
// c[m x n] = alpha * a^T @ b + beta * c: a [k, m] (row-major), b [k, n] contiguous.
void gemm_tn(const at::Tensor& a, const at::Tensor& b, float* c, int64_t ldc, float alpha, float beta);

}  // namespace cpu
}  // namespace dcd
