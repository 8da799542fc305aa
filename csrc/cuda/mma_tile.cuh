// A second, faster tile producer (for similarity_topk; tile_gemm.cuh stays as the contrastive and
// distillation kernels use it). A CTA of kThreads threads computes S[r][c] = <a_{r0+r}, b_{c0+c}> for a
// kBM x kBN tile by streaming D through shared memory in stages of 64 bytes per row (32 float16/bfloat16,
// 16 float32 or 8 float64 elements), kStages deep:
//   - loads: 16-byte cp.async copies (sm_80+; a plain 16-byte load and store before) with zero-fill for
//     rows past the matrix end and for the D tail, when D * sizeof(element) is a multiple of 16 and both
//     base pointers are 16-byte aligned; otherwise a scalar, zero-filled element loop (any D);
//   - pipeline: kStages stages (2 or 3); step s + kStages - 1 is issued right after the one barrier of
//     step s, so it lands while the steps before it multiply (one barrier per K step; the caller drives
//     the loop, see similarity_topk.cu);
//   - products: float16 (sm_70+) and bfloat16 (sm_80+) on tensor cores, WMMA m16n16k16 with float
//     accumulation, the warps a (kBM / 32) x (rest) grid, each warp a 32-row block of 16 x 16 fragments
//     (32 x 32 for the 64 x 128 / 8-warp and 128 x 128 / 16-warp tiles); float32, float64 and 16-bit
//     inputs without tensor cores on an exact SIMT path (products of the same rounded inputs, float
//     accumulation, double for float64), each thread a (kBM / (threads / 16)) x 8 block.
// The shared-memory layout and size do not depend on the architecture or the path, so the host launch is
// the same for every device pass. Torch-free.
#pragma once

#include <mma.h>

#include <cstddef>
#include <type_traits>

#include "cuda/common.cuh"

namespace dcd {
namespace cuda_kernels {
namespace mma_tile {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
#define DCD_MMA_TILE_F16 1
#else
#define DCD_MMA_TILE_F16 0
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define DCD_MMA_TILE_BF16 1
#else
#define DCD_MMA_TILE_BF16 0
#endif

// 16-byte global-to-shared copy; `valid == false` writes 16 zero bytes (src is then never read).
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes) : "memory");
#else
  uint4 v = make_uint4(0u, 0u, 0u, 0u);
  if (valid) v = *reinterpret_cast<const uint4*>(src);
  *reinterpret_cast<uint4*>(dst) = v;
#endif
}

__device__ __forceinline__ void copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `kPending` of this thread's most recent copy groups are still in flight (a
// barrier then makes all threads' completed copies visible).
template <int kPending>
__device__ __forceinline__ void copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

template <typename T>
__device__ __forceinline__ T zero_value() { return T(0); }
template <>
__device__ __forceinline__ __half zero_value<__half>() { return __float2half(0.0f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero_value<__nv_bfloat16>() { return __float2bfloat16(0.0f); }

template <typename in_t>
struct UsesTensorCores : std::false_type {};
template <>
struct UsesTensorCores<__half> : std::integral_constant<bool, DCD_MMA_TILE_F16 != 0> {};
template <>
struct UsesTensorCores<__nv_bfloat16> : std::integral_constant<bool, DCD_MMA_TILE_BF16 != 0> {};

template <typename in_t>
using simt_acc_t = typename std::conditional<std::is_same<in_t, double>::value, double, float>::type;

// Products of one stage into per-thread accumulators: the tensor-core path...
template <typename in_t, int kBM, int kBN, int kThreads, int kLd, int kBK, bool kTensor>
struct StageMma {
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kWarpRows = kBM / 32;  // each warp 32 rows (two fragments) ...
  static constexpr int kWarpCols = kWarps / kWarpRows;
  static constexpr int kFM = 2, kFN = kBN / kWarpCols / 16;  // ... and kBN / kWarpCols columns
  static_assert(kBM % 32 == 0 && kWarps % kWarpRows == 0 && kBN % (16 * kWarpCols) == 0 && kFN >= 1 &&
                    kBK % 16 == 0,
                "tile shape");
  using Acc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  struct Frag {
    Acc c[kFM][kFN];
  };

  __device__ static void zero(Frag& f) {
#pragma unroll
    for (int i = 0; i < kFM; ++i)
#pragma unroll
      for (int j = 0; j < kFN; ++j) nvcuda::wmma::fill_fragment(f.c[i][j], 0.0f);
  }

  __device__ static void run(Frag& f, const in_t* sa, const in_t* sb) {
    namespace wmma = nvcuda::wmma;
    const int warp = threadIdx.x / 32, wr = warp / kWarpCols, wc = warp % kWarpCols;
#pragma unroll
    for (int ks = 0; ks < kBK; ks += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, in_t, wmma::row_major> fa[kFM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, in_t, wmma::col_major> fb[kFN];
#pragma unroll
      for (int i = 0; i < kFM; ++i) wmma::load_matrix_sync(fa[i], sa + ((wr * kFM + i) * 16) * kLd + ks, kLd);
#pragma unroll
      for (int j = 0; j < kFN; ++j) wmma::load_matrix_sync(fb[j], sb + ((wc * kFN + j) * 16) * kLd + ks, kLd);
#pragma unroll
      for (int i = 0; i < kFM; ++i)
#pragma unroll
        for (int j = 0; j < kFN; ++j) wmma::mma_sync(f.c[i][j], fa[i], fb[j], f.c[i][j]);
    }
  }

  // tile: kBM rows of ld floats, 32-byte aligned, ld a multiple of 4 (WMMA store rules)
  __device__ static void store(const Frag& f, float* tile, int ld) {
    const int warp = threadIdx.x / 32, wr = warp / kWarpCols, wc = warp % kWarpCols;
#pragma unroll
    for (int i = 0; i < kFM; ++i)
#pragma unroll
      for (int j = 0; j < kFN; ++j)
        nvcuda::wmma::store_matrix_sync(tile + ((wr * kFM + i) * 16) * ld + (wc * kFN + j) * 16, f.c[i][j], ld,
                                        nvcuda::wmma::mem_row_major);
  }
};

// ...and the exact SIMT path: thread (ty, tx) of a (kThreads / 16) x 16 grid owns rows ty + kTY i and
// columns tx + 16 j.
template <typename in_t, int kBM, int kBN, int kThreads, int kLd, int kBK>
struct StageMma<in_t, kBM, kBN, kThreads, kLd, kBK, false> {
  static constexpr int kTY = kThreads / 16;
  static_assert(kThreads % 16 == 0 && kBM % kTY == 0 && kBN % 16 == 0, "SIMT tile shape");
  using acc_t = simt_acc_t<in_t>;
  static constexpr int kTM = kBM / kTY, kTN = kBN / 16;
  struct Frag {
    acc_t c[kTM][kTN];
  };

  __device__ static void zero(Frag& f) {
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) f.c[i][j] = acc_t(0);
  }

  __device__ static void run(Frag& f, const in_t* sa, const in_t* sb) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll 4
    for (int kk = 0; kk < kBK; ++kk) {
      acc_t av[kTM], bv[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) av[i] = to_acc<acc_t>(sa[(ty + kTY * i) * kLd + kk]);
#pragma unroll
      for (int j = 0; j < kTN; ++j) bv[j] = to_acc<acc_t>(sb[(tx + 16 * j) * kLd + kk]);
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) f.c[i][j] += av[i] * bv[j];
    }
  }

  __device__ static void store(const Frag& f, float* tile, int ld) {
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16;
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) tile[(ty + kTY * i) * ld + tx + 16 * j] = static_cast<float>(f.c[i][j]);
  }
};

template <typename in_t, int kBM_, int kBN_, int kThreads_, int kStages_>
struct Producer {
  static constexpr int kBM = kBM_, kBN = kBN_, kThreads = kThreads_, kStages = kStages_;
  static_assert(kStages >= 2, "at least double buffering");
  static constexpr int kRowBytes = 64;                                    // D bytes per row and stage
  static constexpr int kBK = kRowBytes / static_cast<int>(sizeof(in_t));  // D elements per stage
  static constexpr int kVec = 16 / static_cast<int>(sizeof(in_t));        // elements per 16-byte copy
  static constexpr int kLd = kBK + kVec;  // padded row: 80 bytes (WMMA: a multiple of 16 bytes)
  static constexpr int kStageElems = (kBM + kBN) * kLd;
  static constexpr std::size_t kStageBytes = static_cast<std::size_t>(kStageElems) * sizeof(in_t);
  static constexpr std::size_t kSmemBytes = kStages * kStageBytes;
  static constexpr bool kTensor = UsesTensorCores<in_t>::value;
  using Mma = StageMma<in_t, kBM, kBN, kThreads, kLd, kBK, kTensor>;
  using Frag = typename Mma::Frag;
  static_assert(kStageBytes % 128 == 0, "stages stay 128-byte aligned");

  // Whether the 16-byte copy path applies (host side: D and both base pointers; D = 0, whose pointers
  // may be null, takes the scalar path, which reads nothing).
  static bool vector_loads(const void* a, const void* b, int64_t d) {
    return d > 0 && d % kVec == 0 && reinterpret_cast<std::uintptr_t>(a) % 16 == 0 &&
           reinterpret_cast<std::uintptr_t>(b) % 16 == 0;
  }

  static __host__ __device__ int k_steps(int64_t d) {
    return d <= 0 ? 1 : static_cast<int>((d + kBK - 1) / kBK);
  }

  // Issues the copies of K step `step` (columns step * kBK ...) of a's rows r0.. and b's rows c0.. into
  // `stage` (kStageElems elements, 16-byte aligned): rows [0, kBM) from a, then kBN rows from b. The
  // caller commits the copy group (commit_group), one per K step, loads or not.
  __device__ static void load(const in_t* a, int64_t a_rows, const in_t* b, int64_t b_rows, int64_t d, int64_t r0,
                              int64_t c0, int step, in_t* stage, bool vec) {
    const int64_t k0 = static_cast<int64_t>(step) * kBK;
    if (vec) {
      constexpr int kChunks = kBK / kVec;  // 4 copies per row
      for (int e = threadIdx.x; e < (kBM + kBN) * kChunks; e += kThreads) {
        const int row = e / kChunks, ch = e % kChunks;
        const bool from_a = row < kBM;
        const int64_t g = from_a ? r0 + row : c0 + (row - kBM);
        const int64_t gk = k0 + ch * kVec;
        const in_t* base = from_a ? a : b;
        const bool valid = g < (from_a ? a_rows : b_rows) && gk < d;  // d % kVec == 0: all or nothing
        copy16(stage + row * kLd + ch * kVec, valid ? base + g * d + gk : base, valid);
      }
    } else {
      const in_t zero = zero_value<in_t>();
      for (int e = threadIdx.x; e < (kBM + kBN) * kBK; e += kThreads) {
        const int row = e / kBK, kk = e % kBK;
        const bool from_a = row < kBM;
        const int64_t g = from_a ? r0 + row : c0 + (row - kBM);
        const int64_t gk = k0 + kk;
        const in_t* base = from_a ? a : b;
        stage[row * kLd + kk] = (g < (from_a ? a_rows : b_rows) && gk < d) ? base[g * d + gk] : zero;
      }
    }
  }

  __device__ static void zero(Frag& f) { Mma::zero(f); }
  __device__ static void mma(Frag& f, const in_t* stage) { Mma::run(f, stage, stage + kBM * kLd); }
  __device__ static void store(const Frag& f, float* tile, int ld) { Mma::store(f, tile, ld); }
};

}  // namespace mma_tile
}  // namespace cuda_kernels
}  // namespace dcd
