#include "cpu/tile_gemm.h"

#include <ATen/native/CPUBlas.h>

#include "cpu/avx512_score_kernels.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

extern "C" {
// MKL's mixed-precision GEMM, exported by torch's libtorch_cpu when torch is built with MKL. Declared
// weak: on a torch without it the symbol stays null and the float32 path is used.
void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha, const void* a,
                            int lda, const void* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}

namespace at {
namespace native {
// oneDNN's matmul behind torch's addmm, exported by libtorch_cpu (ATen/native/mkldnn/Matmul.h, not shipped
// with the headers): result = beta * result + alpha * mat1 @ mat2, all operands in one dtype. Weak, like the
// MKL symbol: a torch without oneDNN leaves it null and float32 stays on torch's GEMM.
TORCH_API void mkldnn_matmul(const Tensor& mat1, const Tensor& mat2, const Tensor& result, float beta, float alpha)
    __attribute__((weak));
}  // namespace native
}  // namespace at

namespace dcd {
namespace cpu {

namespace {
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

struct CpuFeatures {
  bool intel = false, amd = false;
  bool avx2 = false, avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512_bf16 = false,
       amx_bf16 = false;
};

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    f.intel = __builtin_cpu_is("intel");
    f.amd = __builtin_cpu_is("amd");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512dq = __builtin_cpu_supports("avx512dq");
    f.avx2 = __builtin_cpu_supports("avx2");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512_bf16 = __builtin_cpu_supports("avx512bf16");
    f.amx_bf16 = __builtin_cpu_supports("amx-bf16");
#endif
    return f;
  }();
  return features;
}

std::string env_value(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

// DCD_CPU_GEMM: auto (default), float32 (bfloat16 widened to float32), native-bf16 (bfloat16 multiplied
// natively wherever the CPU can, even where that is slower: AMX, else the AVX512_BF16 kernel), bf16-dot (the
// AVX512_BF16 score kernel, even with AMX). Read at every call, like DCD_CPU_IMPL.
enum class Bf16Choice { kAuto, kFloat32, kNative, kDot };
Bf16Choice bf16_choice() {
  const std::string v = env_value("DCD_CPU_GEMM");
  if (v.empty() || v == "auto") return Bf16Choice::kAuto;
  if (v == "float32") return Bf16Choice::kFloat32;
  if (v == "bf16-dot") return Bf16Choice::kDot;
  TORCH_CHECK_VALUE(v == "native-bf16", "DCD_CPU_GEMM must be auto, float32, native-bf16 or bf16-dot, got '", v, "'");
  return Bf16Choice::kNative;
}

// AMX: score tiles through oneDNN's brgemm, the other products through MKL's bf16 GEMM.
bool amx_native_possible() { return cblas_gemm_bf16bf16f32 != nullptr && cpu_features().amx_bf16; }

bool f32_row_possible() {
  static const bool ok = f32_row_supported();
  return ok;
}

bool bf16_dot_possible() {
  static const bool ok = bf16_dot_supported();
  return ok;
}

// Intel without AMX: similarity_topk with at most this many query rows takes the AVX512_BF16 kernel, because
// widening the keys (a float32 copy of them, a pass over memory) costs more than the kernel's half-rate
// products up to about there (measured at 2 threads, 262144 keys: 32 rows 42 vs 127 ms, 128: 156 vs 204 ms,
// 256: 324 vs 305 ms, 1024: 1113 vs 914 ms).
constexpr int64_t kIntelDotMaxRows = 256;

// bfloat16 by default: AMX where the CPU has it; the AVX512_BF16 score kernel on other CPUs with that
// extension but no AMX except Intel's (AMD Zen 4: there vdpbf16ps does twice the multiply-adds per cycle
// of float32 FMAs); on Intel without AMX, where vdpbf16ps does half the multiply-adds per cycle of float32
// FMAs (measured: 95 vs 197 GFLOP/s per core), only for few query rows (score_rows, see above) and
// widened to float32 otherwise.
GemmPath bf16_path(int64_t score_rows) {
  switch (bf16_choice()) {
    case Bf16Choice::kFloat32: return GemmPath::kFloat32;
    case Bf16Choice::kDot:
      TORCH_CHECK_VALUE(bf16_dot_possible(), "DCD_CPU_GEMM=bf16-dot but this CPU has no AVX512_BF16");
      return GemmPath::kBF16Dot;
    case Bf16Choice::kNative:
      if (amx_native_possible()) return GemmPath::kBF16Native;
      return bf16_dot_possible() ? GemmPath::kBF16Dot : GemmPath::kFloat32;
    case Bf16Choice::kAuto: break;
  }
  if (amx_native_possible()) return GemmPath::kBF16Native;
  if (!bf16_dot_possible()) return GemmPath::kFloat32;
  if (!cpu_features().intel) return GemmPath::kBF16Dot;
  return score_rows >= 0 && score_rows <= kIntelDotMaxRows ? GemmPath::kBF16Dot : GemmPath::kFloat32;
}

// oneDNN's float32 matmul needs AVX-512 (BW/VL/DQ) in torch's device check.
bool onednn_f32_possible() {
  const auto& f = cpu_features();
  return at::native::mkldnn_matmul != nullptr && at::hasMKLDNN() && f.avx512bw && f.avx512vl && f.avx512dq;
}

// DCD_CPU_F32_GEMM: auto (default), blas (torch's GEMM: MKL where torch has it) or onednn. auto takes
// oneDNN on CPUs other than Intel's, where MKL does not run its fast kernels (AMD Zen 4: about 163 vs 271
// GFLOP/s on two cores), and torch's GEMM on Intel, where MKL is as fast as oneDNN.
bool use_onednn_f32() {
  const std::string v = env_value("DCD_CPU_F32_GEMM");
  if (v == "onednn") {
    TORCH_CHECK_VALUE(onednn_f32_possible(), "DCD_CPU_F32_GEMM=onednn but this torch or CPU has no oneDNN float32 "
                      "matmul (it needs AVX-512 BW/VL/DQ)");
    return true;
  }
  if (v == "blas") return false;
  TORCH_CHECK_VALUE(v.empty() || v == "auto", "DCD_CPU_F32_GEMM must be auto, blas or onednn, got '", v, "'");
  return onednn_f32_possible() && !cpu_features().intel;
}

bool use_native(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 &&
         bf16_path(-1) == GemmPath::kBF16Native;
}

at::Tensor as_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat ? t : t.to(at::kFloat); }

// out = beta * out + alpha * a @ b in float32 (a, b float32, possibly transposed views)
void f32_addmm(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, float beta, float alpha) {
  // oneDNN leaves the output unwritten for an empty inner dimension (D = 0): torch's GEMM writes beta * out
  if (out.is_contiguous() && a.size(1) > 0 && use_onednn_f32()) return at::native::mkldnn_matmul(a, b, out, beta, alpha);
  at::addmm_out(out, out, a, b, beta, alpha);
}

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

GemmPath gemm_path_for(at::ScalarType dtype, int64_t score_rows) {
  return dtype == at::kBFloat16 ? bf16_path(score_rows) : GemmPath::kFloat32;
}

at::ScalarType operand_dtype(at::ScalarType dtype, int64_t score_rows) {
  return gemm_path_for(dtype, score_rows) == GemmPath::kFloat32 ? at::kFloat : at::kBFloat16;
}

std::string gemm_report() {
  const auto& f = cpu_features();
  const bool onednn = use_onednn_f32();
  const char* f32_lib = onednn ? "oneDNN matmul" : (at::hasMKL() ? "torch GEMM (MKL)" : "torch GEMM (BLAS)");
  std::ostringstream out;
  out << "cpu: " << (f.intel ? "Intel" : (f.amd ? "AMD" : "other")) << "; features: avx2=" << f.avx2
      << " avx512f=" << f.avx512f << " avx512_bf16=" << f.avx512_bf16 << " amx_bf16=" << f.amx_bf16
      << "; mkl bf16 gemm: " << (cblas_gemm_bf16bf16f32 ? "yes" : "no")
      << "; avx512_bf16 kernel: " << (bf16_dot_possible() ? "yes" : "no")
      << "; oneDNN brgemm bf16: " << (brgemm_available() ? "yes" : "no")
      << "; oneDNN f32 matmul: " << (onednn_f32_possible() ? "yes" : "no") << "; float32: " << f32_lib
      << "; float16: widened to float32, " << f32_lib << "; bfloat16: ";
  switch (gemm_path_for(at::kBFloat16)) {
    case GemmPath::kBF16Native:
      out << (brgemm_available() ? "native bf16 x bf16 -> f32 (scores: oneDNN brgemm; other products: MKL)"
                                 : "native bf16 x bf16 -> f32 (MKL)");
      break;
    case GemmPath::kBF16Dot:
      out << "native bf16 x bf16 -> f32 (scores: dcd_ext AVX512_BF16 kernel; gradient products: widened to "
             "float32, "
          << f32_lib << ")";
      break;
    case GemmPath::kFloat32:
      out << "widened to float32, " << f32_lib;
      if (gemm_path_for(at::kBFloat16, kIntelDotMaxRows) == GemmPath::kBF16Dot)
        out << "; similarity_topk with at most " << kIntelDotMaxRows
            << " query rows: dcd_ext AVX512_BF16 kernel (cheaper than widening the keys; more rows: widened, "
               "faster than AVX512_BF16 products on Intel without AMX)";
      break;
  }
  const std::string gemm = env_value("DCD_CPU_GEMM"), f32 = env_value("DCD_CPU_F32_GEMM");
  if (!gemm.empty()) out << " (DCD_CPU_GEMM=" << gemm << ")";
  if (!f32.empty()) out << " (DCD_CPU_F32_GEMM=" << f32 << ")";
  return out.str();
}

void gemm_nt(const at::Tensor& a, const at::Tensor& b, float* c, int64_t ldc, float alpha, float beta) {
  const int64_t m = a.size(0), n = b.size(0), k = a.size(1);
  if (use_native(a, b)) return native(kNoTrans, kTrans, m, n, k, alpha, a, k, b, k, beta, c, ldc);
  auto out = float_view(c, m, n, ldc);
  f32_addmm(out, as_float(a), as_float(b).t(), beta, alpha);
}

void gemm_nn(const at::Tensor& a, const at::Tensor& b, float* c, int64_t ldc, float alpha, float beta) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  if (use_native(a, b)) return native(kNoTrans, kNoTrans, m, n, k, alpha, a, a.stride(0), b, n, beta, c, ldc);
  auto out = float_view(c, m, n, ldc);
  f32_addmm(out, as_float(a), as_float(b), beta, alpha);
}

void gemm_tn(const at::Tensor& a, const at::Tensor& b, float* c, int64_t ldc, float alpha, float beta) {
  const int64_t k = a.size(0), m = a.size(1), n = b.size(1);
  if (use_native(a, b)) return native(kTrans, kNoTrans, m, n, k, alpha, a, a.stride(0), b, n, beta, c, ldc);
  auto out = float_view(c, m, n, ldc);
  f32_addmm(out, as_float(a).t(), as_float(b), beta, alpha);
}

ScoreKeys prepare_score_keys(const at::Tensor& keys, at::ScalarType op_dtype, int64_t score_rows) {
  // a bad value of either switch is refused whichever path this call takes
  bf16_choice();
  use_onednn_f32();
  ScoreKeys out;
  out.rows = keys.to(op_dtype).contiguous();
  out.dot = op_dtype == at::kBFloat16 && gemm_path_for(at::kBFloat16, score_rows) == GemmPath::kBF16Dot;
  const int64_t m = keys.size(0), k = keys.size(1);
  // the packed layout interleaves pairs along k, so k must be even
  out.brgemm = !out.dot && op_dtype == at::kBFloat16 && brgemm_available() && k % 2 == 0 && k > 0;
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
  if (keys.dot) {
    const int64_t k = a.size(1);
    const auto* pa = reinterpret_cast<const uint16_t*>(a.data_ptr<at::BFloat16>());
    const auto* pb = reinterpret_cast<const uint16_t*>(keys.rows.data_ptr<at::BFloat16>()) + c0 * k;
    return bf16_dot_tile(pa, k, pb, k, a.size(0), cols, k, c, ldc);
  }
  if (a.size(0) == 1 && a.scalar_type() == at::kFloat && keys.rows.scalar_type() == at::kFloat && f32_row_possible())
    return f32_row_scores(a.data_ptr<float>(), keys.rows.data_ptr<float>() + c0 * a.size(1), a.size(1), cols,
                          a.size(1), c);
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
