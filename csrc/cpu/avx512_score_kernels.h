// Score tiles through AVX-512 kernels of our own, where a library GEMM does not fit:
// - bf16_dot_tile, bfloat16 on CPUs with AVX512_BF16 (AMD Zen 4, Intel without AMX):
//     c[rows x cols] (ldc) = a[rows x k] (lda) @ b[cols x k]^T (ldb),
//   a and b bfloat16 row-major (their raw bits), c float32. vdpbf16ps multiplies pairs of bf16 exactly and
//   adds them in float32, so the scores equal the float32 product of the rounded inputs up to summation
//   order (the instruction counts subnormal inputs as zero; embeddings never hold values below 1e-38 that
//   matter). Two rows or more: the keys are packed per block of 48 (pairs of k interleaved across keys,
//   transposed in registers, O(48 k) scratch per thread), and a micro-tile of 8 rows x 48 keys broadcasts
//   one pair of each row against three key vectors: 24 accumulators, 11 loads per 24 dot products, no
//   reduction at the end. One row (a single query against a gallery): nothing is packed; 16 keys at a
//   time, each with its own accumulator summing 32 positions of k per step, reduced together at the end
//   (45 shuffles and adds per 16 scores).
// - f32_row_scores, one float32 row against many keys the same way (16 positions of k per step): a single
//   query against a gallery is a matrix-vector product that BLAS runs tile by tile; this reads the keys
//   once at memory speed.
// A short k is read with masked loads (zeros past k, which is never read beyond), and a short block of keys
// is padded with zero keys (packed) or repeats its last key (one row), keeping only the valid scores.
//
// Torch-free, so the C++ tests check them against a scalar reference on any CPU that has the instructions.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DCD_BF16_DOT_X86 1
#define DCD_AVX512F_TARGET __attribute__((target("avx512f")))
#define DCD_BF16_DOT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace dcd {
namespace cpu {

#ifdef DCD_BF16_DOT_X86

// GCC 12's AVX-512 intrinsics seed their unused merge operand with a self-initialised placeholder, which
// -Wuninitialized reports at every inlined call.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Whether this CPU (and its OS) runs bf16_dot_tile.
inline bool bf16_dot_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

namespace bf16_dot_detail {

// The reduction below leaves the sum of acc[s] in lane 4 * (s % 4) + s / 4; the accumulator of key j of a
// one-row block therefore sits in slot 4 * (j % 4) + j / 4, so that lane j holds key j's score.
constexpr int slot_of(int lane) { return 4 * (lane % 4) + lane / 4; }

// Lane 4 * (s % 4) + s / 4 of the result = the sum of the 16 lanes of acc[s].
DCD_AVX512F_TARGET inline __m512 sum16(const __m512* acc) {
  __m512 s1[8], s2[4], s3[2];
  for (int t = 0; t < 8; ++t) {  // quarters 0, 1: acc[2t] folded to 8 lanes; quarters 2, 3: acc[2t + 1]
    const __m512 a = acc[2 * t], b = acc[2 * t + 1];
    s1[t] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int t = 0; t < 4; ++t) {  // quarter q: acc[4t + q] folded to 4 lanes
    const __m512 a = s1[2 * t], b = s1[2 * t + 1];
    s2[t] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  for (int t = 0; t < 2; ++t) {  // quarter q: lanes 0-1 acc[8t + q], lanes 2-3 acc[8t + 4 + q]
    const __m512 a = s2[2 * t], b = s2[2 * t + 1];
    s3[t] = _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xDD));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(s3[0], s3[1], 0x88), _mm512_shuffle_ps(s3[0], s3[1], 0xDD));
}

// Many rows: keys packed per block of kPackKeys as pairs of k interleaved across keys, so one vector holds
// one pair of 16 keys; each row's pair is broadcast against it (no reduction at the end).
constexpr int kPackRows = 8, kPackVecs = 3, kPackKeys = 16 * kPackVecs;

// r[i] becomes column i of the 16 x 16 matrix of 32-bit words whose row j was r[j].
DCD_BF16_DOT_TARGET inline void transpose16(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0xDD);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xDD);
  }
}

// packed[p * kPackKeys + j] = pair p of key j, zero past k and for j >= nk: 16 keys x 16 pairs at a time,
// read with masked loads (nothing past k) and transposed in registers.
DCD_BF16_DOT_TARGET inline void pack_keys(const uint16_t* b, int64_t ldb, int nk, int64_t k, uint32_t* packed) {
  const int64_t pairs = (k + 1) / 2;
  for (int g = 0; g < kPackVecs; ++g) {
    for (int64_t p0 = 0; p0 < pairs; p0 += 16) {
      const int64_t left = k - 2 * p0;
      const __mmask32 m = left >= 32 ? __mmask32(0xFFFFFFFFu) : static_cast<__mmask32>((uint64_t{1} << left) - 1);
      __m512i r[16];
      for (int j = 0; j < 16; ++j) {
        const int key = 16 * g + j;
        r[j] = key < nk ? _mm512_maskz_loadu_epi16(m, b + key * ldb + 2 * p0) : _mm512_setzero_si512();
      }
      transpose16(r);
      const int64_t n = pairs - p0 < 16 ? pairs - p0 : 16;
      for (int64_t i = 0; i < n; ++i) _mm512_storeu_si512(packed + (p0 + i) * kPackKeys + 16 * g, r[i]);
    }
  }
}

template <int R>
DCD_BF16_DOT_TARGET inline void packed_micro_tile(const uint16_t* a, int64_t lda, const uint32_t* packed, int64_t k,
                                                  float* c, int64_t ldc, int nk) {
  __m512 acc[R][kPackVecs];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < kPackVecs; ++v) acc[i][v] = _mm512_setzero_ps();
  const int64_t full = k / 2;
  for (int64_t p = 0; p < full; ++p) {
    __m512i bv[kPackVecs];
    for (int v = 0; v < kPackVecs; ++v) bv[v] = _mm512_loadu_si512(packed + p * kPackKeys + 16 * v);
    for (int i = 0; i < R; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + i * lda + 2 * p, 4);
      const __m512i av = _mm512_set1_epi32(pair);
      for (int v = 0; v < kPackVecs; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], (__m512bh)av, (__m512bh)bv[v]);
    }
  }
  if (k % 2 != 0) {  // the last pair holds one value: the row's next element must not be read
    __m512i bv[kPackVecs];
    for (int v = 0; v < kPackVecs; ++v) bv[v] = _mm512_loadu_si512(packed + full * kPackKeys + 16 * v);
    for (int i = 0; i < R; ++i) {
      const __m512i av = _mm512_set1_epi32(static_cast<int32_t>(a[i * lda + k - 1]));
      for (int v = 0; v < kPackVecs; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], (__m512bh)av, (__m512bh)bv[v]);
    }
  }
  for (int v = 0; v < kPackVecs; ++v) {
    const int n = nk - 16 * v;
    if (n <= 0) break;
    const __mmask16 m = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
    for (int i = 0; i < R; ++i) _mm512_mask_storeu_ps(c + i * ldc + 16 * v, m, acc[i][v]);
  }
}

}  // namespace bf16_dot_detail

// One row against many keys: c[j] = a . b[j] for j < cols (a [k], b [cols x k] with row stride ldb), 16 keys
// at a time read in place, each with its own accumulator, reduced together by sum16. bfloat16 (32 positions
// of k per step) and float32 (16).
DCD_BF16_DOT_TARGET inline void bf16_row_scores(const uint16_t* a, const uint16_t* b, int64_t ldb, int64_t cols,
                                                int64_t k, float* c) {
  using bf16_dot_detail::slot_of;
  for (int64_t j0 = 0; j0 < cols; j0 += 16) {
    const int nc = static_cast<int>(cols - j0 < 16 ? cols - j0 : 16);
    const uint16_t* br[16];
    for (int j = 0; j < 16; ++j) br[j] = b + (j0 + (j < nc ? j : nc - 1)) * ldb;
    __m512 acc[16];
    for (int s = 0; s < 16; ++s) acc[s] = _mm512_setzero_ps();
    for (int64_t p = 0; p < k; p += 32) {
      const __mmask32 m = k - p >= 32 ? __mmask32(0xFFFFFFFFu) : static_cast<__mmask32>((uint64_t{1} << (k - p)) - 1);
      const __m512i av = _mm512_maskz_loadu_epi16(m, a + p);
      for (int j = 0; j < 16; ++j)
        acc[slot_of(j)] = _mm512_dpbf16_ps(acc[slot_of(j)], (__m512bh)av, (__m512bh)_mm512_maskz_loadu_epi16(m, br[j] + p));
    }
    _mm512_mask_storeu_ps(c + j0, static_cast<__mmask16>(nc == 16 ? 0xFFFF : (1u << nc) - 1),
                          bf16_dot_detail::sum16(acc));
  }
}

inline bool f32_row_supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f");
}

DCD_AVX512F_TARGET inline void f32_row_scores(const float* a, const float* b, int64_t ldb, int64_t cols, int64_t k,
                                              float* c) {
  using bf16_dot_detail::slot_of;
  for (int64_t j0 = 0; j0 < cols; j0 += 16) {
    const int nc = static_cast<int>(cols - j0 < 16 ? cols - j0 : 16);
    const float* br[16];
    for (int j = 0; j < 16; ++j) br[j] = b + (j0 + (j < nc ? j : nc - 1)) * ldb;
    __m512 acc[16];
    for (int s = 0; s < 16; ++s) acc[s] = _mm512_setzero_ps();
    for (int64_t p = 0; p < k; p += 16) {
      const __mmask16 m = k - p >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (k - p)) - 1);
      const __m512 av = _mm512_maskz_loadu_ps(m, a + p);
      for (int j = 0; j < 16; ++j) acc[slot_of(j)] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, br[j] + p), acc[slot_of(j)]);
    }
    _mm512_mask_storeu_ps(c + j0, static_cast<__mmask16>(nc == 16 ? 0xFFFF : (1u << nc) - 1),
                          bf16_dot_detail::sum16(acc));
  }
}

DCD_BF16_DOT_TARGET inline void bf16_dot_tile(const uint16_t* a, int64_t lda, const uint16_t* b, int64_t ldb,
                                              int64_t rows, int64_t cols, int64_t k, float* c, int64_t ldc) {
  using namespace bf16_dot_detail;
  if (rows <= 0 || cols <= 0) return;
  if (rows > 1) {
    thread_local std::vector<uint32_t> packed;
    packed.resize(static_cast<size_t>((k + 1) / 2) * kPackKeys);
    using RowsFn = void (*)(const uint16_t*, int64_t, const uint32_t*, int64_t, float*, int64_t, int);
    static constexpr RowsFn by_rows[kPackRows] = {
        packed_micro_tile<1>, packed_micro_tile<2>, packed_micro_tile<3>, packed_micro_tile<4>,
        packed_micro_tile<5>, packed_micro_tile<6>, packed_micro_tile<7>, packed_micro_tile<8>};
    for (int64_t j0 = 0; j0 < cols; j0 += kPackKeys) {
      const int nk = static_cast<int>(cols - j0 < kPackKeys ? cols - j0 : kPackKeys);
      pack_keys(b + j0 * ldb, ldb, nk, k, packed.data());
      for (int64_t i0 = 0; i0 < rows; i0 += kPackRows) {
        const int nr = static_cast<int>(rows - i0 < kPackRows ? rows - i0 : kPackRows);
        by_rows[nr - 1](a + i0 * lda, lda, packed.data(), k, c + i0 * ldc + j0, ldc, nk);
      }
    }
    return;
  }
  bf16_row_scores(a, b, ldb, cols, k, c);
}

#pragma GCC diagnostic pop

#else

inline bool bf16_dot_supported() { return false; }
inline void bf16_dot_tile(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, int64_t, int64_t, float*,
                          int64_t) {}
inline bool f32_row_supported() { return false; }
inline void f32_row_scores(const float*, const float*, int64_t, int64_t, int64_t, float*) {}

#endif

}  // namespace cpu
}  // namespace dcd
