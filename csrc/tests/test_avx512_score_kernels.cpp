// avx512_score_kernels.h against scalar float64 references. bf16_dot_tile on the same bfloat16 values: every
// micro-tile shape and tail (rows, keys, k not a multiple of 32, strides wider than k), values past k never
// read, and a NaN or infinity in an input reaching exactly the scores of its row or key. f32_row_scores:
// key blocks of 1-16 and k around its 16-wide steps.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.h"
#include "cpu/avx512_score_kernels.h"

namespace {

uint16_t to_bf16(float x) {  // round to nearest even (finite inputs)
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
float from_bf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
constexpr uint16_t kNaN = 0x7FC0, kInf = 0x7F80;

struct Problem {
  int64_t rows, cols, k, lda, ldb, ldc;
  std::vector<uint16_t> a, b;
};

Problem make(int64_t rows, int64_t cols, int64_t k, int64_t pad, std::mt19937& gen) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Problem p{rows, cols, k, k + pad, k + pad, cols + 3, {}, {}};
  // values past k in each row are NaN: the kernel must never read them
  p.a.assign(rows * p.lda, kNaN);
  p.b.assign(cols * p.ldb, kNaN);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t t = 0; t < k; ++t) p.a[i * p.lda + t] = to_bf16(normal(gen));
  for (int64_t j = 0; j < cols; ++j)
    for (int64_t t = 0; t < k; ++t) p.b[j * p.ldb + t] = to_bf16(normal(gen));
  return p;
}

std::vector<float> run(const Problem& p) {
  std::vector<float> c(p.rows * p.ldc, -12345.0f);
  dcd::cpu::bf16_dot_tile(p.a.data(), p.lda, p.b.data(), p.ldb, p.rows, p.cols, p.k, c.data(), p.ldc);
  return c;
}

void check_against_reference(const Problem& p) {
  const auto c = run(p);
  for (int64_t i = 0; i < p.rows; ++i) {
    for (int64_t j = 0; j < p.cols; ++j) {
      double want = 0.0, magnitude = 0.0;
      for (int64_t t = 0; t < p.k; ++t) {
        const double x = double(from_bf16(p.a[i * p.lda + t])) * double(from_bf16(p.b[j * p.ldb + t]));
        want += x;
        magnitude += std::fabs(x);
      }
      // float32 summation of exact products: error below k * 2^-24 * sum |x|
      const double tol = (double(p.k) + 1.0) * std::ldexp(1.0, -24) * magnitude + 1e-30;
      const double got = c[i * p.ldc + j];
      if (!(std::fabs(got - want) <= tol)) {
        std::printf("rows %lld cols %lld k %lld: c[%lld][%lld] = %.9g, want %.9g (tol %.3g)\n", (long long)p.rows,
                    (long long)p.cols, (long long)p.k, (long long)i, (long long)j, got, want, tol);
        ++dcd_test::failures();
        return;
      }
    }
    for (int64_t j = p.cols; j < p.ldc; ++j) CHECK(c[i * p.ldc + j] == -12345.0f);  // nothing past cols
  }
}

void check_non_finite_reaches_its_row_and_key(std::mt19937& gen) {
  for (uint16_t bad : {kNaN, kInf}) {
    for (int64_t rows : {1, 3, 6}) {
      Problem p = make(rows, 37, 70, 5, gen);
      const int64_t r = rows - 1, t = 69, key = 36;
      std::vector<uint16_t> a0 = p.a;
      p.a[r * p.lda + t] = bad;
      auto c = run(p);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < p.cols; ++j) CHECK(std::isfinite(c[i * p.ldc + j]) == (i != r));
      p.a = a0;
      p.b[key * p.ldb + 0] = bad;
      c = run(p);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < p.cols; ++j) CHECK(std::isfinite(c[i * p.ldc + j]) == (j != key));
    }
  }
}

// f32_row_scores against a float64 reference: key blocks of 1-16, k around the 16-wide steps, values past k
// (NaN) never read.
void check_f32_row(std::mt19937& gen) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t k : {0, 1, 15, 16, 17, 64, 100})
    for (int64_t cols : {1, 5, 16, 17, 33, 100}) {
      const int64_t ldb = k + 3;
      std::vector<float> a(k + 1, std::numeric_limits<float>::quiet_NaN()), b(cols * ldb, a[0]);
      for (int64_t t = 0; t < k; ++t) a[t] = normal(gen);
      for (int64_t j = 0; j < cols; ++j)
        for (int64_t t = 0; t < k; ++t) b[j * ldb + t] = normal(gen);
      std::vector<float> c(cols + 2, -12345.0f);
      dcd::cpu::f32_row_scores(a.data(), b.data(), ldb, cols, k, c.data());
      for (int64_t j = 0; j < cols; ++j) {
        double want = 0.0, magnitude = 0.0;
        for (int64_t t = 0; t < k; ++t) {
          want += double(a[t]) * double(b[j * ldb + t]);
          magnitude += std::fabs(double(a[t]) * double(b[j * ldb + t]));
        }
        CHECK_NEAR(c[j], want, (double(k) + 1.0) * std::ldexp(1.0, -23) * magnitude / (1.0 + std::fabs(want)) + 1e-30);
      }
      CHECK(c[cols] == -12345.0f && c[cols + 1] == -12345.0f);
    }
}

}  // namespace

int main() {
  std::mt19937 gen(7);
  if (dcd::cpu::f32_row_supported()) check_f32_row(gen);
  if (!dcd::cpu::bf16_dot_supported()) {
    std::printf("test_avx512_score_kernels: bf16 kernel skipped (this CPU has no AVX512_BF16)\n");
    return dcd_test::report("test_avx512_score_kernels");
  }
  for (int64_t k : {0, 1, 2, 31, 32, 33, 64, 65, 100, 256})
    for (int64_t rows : {1, 2, 3, 4, 5, 7, 8, 9, 16})
      for (int64_t cols : {1, 3, 4, 5, 15, 16, 17, 33}) check_against_reference(make(rows, cols, k, k % 3, gen));
  check_against_reference(make(37, 300, 384, 0, gen));
  check_non_finite_reaches_its_row_and_key(gen);
  return dcd_test::report("test_avx512_score_kernels");
}
