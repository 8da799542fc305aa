#include "cpu/tile_gemm.h"

#include <ATen/native/CPUBlas.h>

#include <cstdlib>
#include <cstring>
#include <sstream>

extern "C" {
// MKL's mixed-precision GEMM, exported by torch's libtorch_cpu when torch is built with MKL. Declared
// weak: on a torch without it the symbol stays null and the float32 path is used.
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha, const void* a,
                            int lda, const void* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace dcd {
namespace cpu {

namespace {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

struct CpuFeatures {
  bool avx2 = false, avx512f = false, avx512_bf16 = false, amx_bf16 = false;
};

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
    f.amx_bf16 = __builtin_cpu_supports("amx-bf16");
#endif
    return f;
  }();
  return features;
}

// DCD_CPU_GEMM=float32 forces the float32 path (for comparisons and tests); anything else is automatic.
bool forced_float32() {
  const char* v = std::getenv("DCD_CPU_GEMM");
  return v != nullptr && std::strcmp(v, "float32") == 0;
}

bool bf16_native_available() {
  const auto& f = cpu_features();
  return cblas_gemm_bf16bf16f32 != nullptr && (f.avx512_bf16 || f.amx_bf16);
}

bool use_native(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 && bf16_native_available();
}

at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

at::Tensor float_view(float* c, int64_t m, int64_t n, int64_t ldc) {
  return at::from_blob(c, {m, n}, {ldc, 1}, at::TensorOptions().dtype(at::kFloat));
}

void native(int transa, int transb, int64_t m, int64_t n, int64_t k, float alpha, const at::Tensor& a, int64_t lda,
            const at::Tensor& b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_gemm_bf16bf16f32(kRowMajor, transa, transb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                         alpha, a.data_ptr(), static_cast<int>(lda), b.data_ptr(), static_cast<int>(ldb), beta, c,
                         static_cast<int>(ldc));
}
bool brgemm_available() {
  static const bool ok = at::native::cpublas::could_pack(at::kBFloat16);
  return ok;
}

constexpr int64_t kScoreRows = 32;  // rows per micro-kernel call

int64_t packed_width(int64_t cols) { return (cols + 15) / 16 * 16; }
}  // namespace

GemmPath gemm_path_for(at::ScalarType dtype) {
  if (dtype == at::kBFloat16 && !forced_float32() && bf16_native_available()) return GemmPath::kBF16Native;
  return GemmPath::kFloat32;
}

at::ScalarType operand_dtype(at::ScalarType dtype) {
  return gemm_path_for(dtype) == GemmPath::kBF16Native ? at::kBFloat16 : at::kFloat;
}

std::string gemm_report() {
  const auto& f = cpu_features();
  std::ostringstream out;
  out << "cpu features: avx2=" << f.avx2 << " avx512f=" << f.avx512f << " avx512_bf16=" << f.avx512_bf16
      << " amx_bf16=" << f.amx_bf16 << "; mkl bf16 gemm: " << (cblas_gemm_bf16bf16f32 ? "yes" : "no")
      << "; oneDNN brgemm bf16: " << (brgemm_available() ? "yes" : "no")
      << "; float32: torch GEMM (" << (at::hasMKL() ? "MKL" : "BLAS") << ")"
      << "; float16: widened to float32, torch GEMM"
      << "; bfloat16: "
      << (gemm_path_for(at::kBFloat16) == GemmPath::kBF16Native
              ? (brgemm_available() ? "native bf16 x bf16 -> f32 (scores: oneDNN brgemm; other products: MKL)"
                                    : "native bf16 x bf16 -> f32 (MKL)")
                                                                 : "widened to float32, torch GEMM")
      << (forced_float32() ? " (DCD_CPU_GEMM=float32)" : "");
  return out.str();
}

void gemm_nt(const at::Tensor& a, const at::Tensor& b, float* c, int64_t ldc, float alpha, float beta) {
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  if (use_native(a, b)) return native(kNoTrans, kTrans, m, n, k, alpha, a, k, b, k, beta, c, ldc);
  auto out = float_view(c, m, n, ldc);
  at::addmm_out(out, out, as_float(a), as_float(b).t(), beta, alpha);
}

void gemm_nn(const at::Tensor& a, const at::Tensor& b, float* c, int64_t ldc, float alpha, float beta) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  if (use_native(a, b)) return native(kNoTrans, kNoTrans, m, n, k, alpha, a, a.stride(0), b, n, beta, c, ldc);
  auto out = float_view(c, m, n, ldc);
  at::addmm_out(out, out, as_float(a), as_float(b), beta, alpha);
}

void gemm_tn(const at::Tensor& a, const at::Tensor& b, float* c, int64_t ldc, float alpha, float beta) {
  const int64_t k = a.size(0), m = a.size(1), n = b.size(1);
  if (use_native(a, b)) return native(kTrans, kNoTrans, m, n, k, alpha, a, a.stride(0), b, n, beta, c, ldc);
  auto out = float_view(c, m, n, ldc);
  at::addmm_out(out, out, as_float(a).t(), as_float(b), beta, alpha);
}

ScoreKeys prepare_score_keys(const at::Tensor& keys, at::ScalarType op_dtype) {
  ScoreKeys out;
  out.rows = keys.to(op_dtype).contiguous();
  const int64_t m = keys.size(0), k = keys.size(1);
  // the packed layout interleaves pairs along k, so k must be even
  out.brgemm = op_dtype == at::kBFloat16 && brgemm_available() && k % 2 == 0 && k > 0;
  if (!out.brgemm) return out;
  const auto kt = out.rows.t().contiguous();  // [k, m]
  const int64_t chunks = (m + kScoreChunk - 1) / kScoreChunk;
  out.packed = at::empty({chunks * kScoreChunk * k}, out.rows.options());
  auto* dst = out.packed.data_ptr<at::BFloat16>();
  for (int64_t c = 0; c < m; c += kScoreChunk) {
    const int64_t nb = std::min(kScoreChunk, m - c), width = packed_width(nb);
    // the packer takes whole groups of 16 columns: a short last chunk is padded with zero columns
    const auto chunk = width == nb ? kt.narrow(1, c, nb) : at::constant_pad_nd(kt.narrow(1, c, nb), {0, width - nb});
    const auto src = chunk.contiguous();
    at::native::cpublas::pack(k, width, width, width, at::kBFloat16, at::kBFloat16, src.data_ptr<at::BFloat16>(),
                              dst + c * k);
  }
  return out;
}

void score_tile(const at::Tensor& a, const ScoreKeys& keys, int64_t c0, int64_t cols, float* c, int64_t ldc) {
  if (!keys.brgemm) return gemm_nt(a, keys.rows.narrow(0, c0, cols), c, ldc, 1.0f, 0.0f);
  const int64_t rows = a.size(0), k = a.size(1), m = keys.rows.size(0);
  const auto* pa = a.data_ptr<at::BFloat16>();
  const auto* pb = keys.packed.data_ptr<at::BFloat16>();
  for (int64_t r = 0; r < rows; r += kScoreRows) {
    const int64_t mb = std::min(kScoreRows, rows - r);
    for (int64_t j = c0; j < c0 + cols; j += kScoreChunk) {
      const int64_t nb = std::min(kScoreChunk, m - j);
      at::native::cpublas::brgemm(mb, nb, k, k, packed_width(nb), ldc, false, pa + r * k, pb + j * k,
                                  c + r * ldc + (j - c0), true);
    }
  }
  // leave no tile configuration behind: other AMX users on this thread (MKL) configure and release their own
  at::native::cpublas::brgemm_release(true);
}

}  // namespace cpu
}  // namespace dcd
