// Fused similarity + top-k (docs/design.md section 7).
//
// Grid (row blocks, key splits). A CTA owns 64 query rows (256 threads; 128 rows and 512 threads when
// there are enough queries for a CTA per SM without splits) and one split, a contiguous range of
// kBN = 128-key tiles; it streams those tiles through the mma_tile producer (cp.async, three stages where
// two such CTAs fit an SM, else two; tensor cores for 16-bit inputs) into a shared-memory score tile,
// which never reaches global memory; the copies of the next tile's first steps overlap the selection.
// Each row is owned by one warp (rows warp, warp + warps, ...): one vote skips the row when none of its 128
// scores beats the row's threshold (the k-th value of its list); otherwise its lanes test 32 scores at a
// time, in increasing column order, and the survivors are appended, by ballot and prefix count, to
// a 32-entry candidate buffer of the row in shared memory. When a buffer would overflow (and at the end),
// the warp sorts it (ranks by comparison) and merges it into the row's sorted list in one parallel pass
// ("merge path", dcd/topk.h: each lane computes one output position; 32 positions per step, from the top
// down to the first changed one), then takes the new k-th value as threshold. Nothing is inserted
// serially, and a flush costs O((k + 32) / 32 * log 32) per lane, so k in the thousands stays cheap.
// Split 0 keeps its lists in the output, split s > 0 in workspace slice s - 1; a second kernel merges a
// row's splits pairwise in a tree. The top-k of the union under the (value, index) order is unique, so
// the result is bitwise the same for any split count or merge order (ties: the smaller key index).
#include <cstdint>

#include "cuda/mma_tile.cuh"
#include "dcd/topk.h"

namespace dcd {
namespace cuda_kernels {

namespace {

// Two CTA shapes: 64 query rows and 256 threads (two CTAs per SM; few queries, with key splits) and 128
// rows and 512 threads (one CTA per SM; enough queries for a CTA per SM without splits: half the key
// traffic from L2 per product). Each warp computes a 32 x 32 block of the score tile either way.
constexpr int kSmallBM = 64, kSmallThreads = 256;
constexpr int kLargeBM = 128, kLargeThreads = 512;
constexpr int kBN = 128;         // keys per tile
constexpr int kScoreLd = kBN + 4;
constexpr int kCap = 32;         // candidate buffer entries per row
constexpr int kMaxSplitTiles = 1 << 23;  // buffered key offsets are int32: at most 2^30 keys per split
static_assert(kBN == 128, "the selection reads four 32-column chunks");

template <typename in_t, int kStages, int kBM, int kThreads>
using TopkProducer = mma_tile::Producer<in_t, kBM, kBN, kThreads, kStages>;

// Dynamic shared memory: the stages, the score tile, the candidate buffers, per-row threshold and count
// (64 rows: 80 KB with 2 stages, 95 KB with 3; 128 rows: 139 KB with 2, 159 KB with 3).
template <typename in_t, int kStages, int kBM, int kThreads>
struct TopkSmem {
  static constexpr std::size_t kStageBase = 0;
  static constexpr std::size_t kTile = kStageBase + TopkProducer<in_t, kStages, kBM, kThreads>::kSmemBytes;
  static constexpr std::size_t kBufV = kTile + sizeof(float) * kBM * kScoreLd;
  static constexpr std::size_t kBufI = kBufV + sizeof(float) * kBM * kCap;
  static constexpr std::size_t kThr = kBufI + sizeof(int32_t) * kBM * kCap;
  static constexpr std::size_t kCnt = kThr + sizeof(float) * kBM;
  static constexpr std::size_t kBytes = kCnt + sizeof(int) * kBM;
  static_assert(kTile % 128 == 0 && kBufV % 16 == 0, "alignment");
};

// Merges the sorted entries b[0..nb) (indices base + bi[q]) into the sorted length-k list (av, ai) in
// place: the warp form of dcd::merge_topk_inplace (32 positions per step, top down). All lanes call it.
template <typename bidx_t>
__device__ void warp_merge(float* av, int64_t* ai, int k, const float* bv, const bidx_t* bi, int64_t base, int nb) {
  const int lane = threadIdx.x % 32;
  nb = topk_count_before(bv, bi, base, nb, av[k - 1], ai[k - 1]);  // same value in every lane
  if (nb == 0) return;
  const int top0 = topk_merge_top(ai, k, nb);
  for (int top = top0; top > 0; top -= 32) {
    const int o = top - 32 + lane;
    const bool active = o >= 0;
    float v = 0.0f;
    int64_t i = -1;
    int b = 0;
    if (active) b = topk_merged_at(av, ai, bv, bi, base, nb, o, v, i);
    const bool done = __all_sync(kFullMask, !active || b == 0);  // positions below are unchanged
    __syncwarp();  // every lane has read before any lane writes
    if (active) {
      av[o] = v;
      ai[o] = i;
    }
    __syncwarp();
    if (done) break;
  }
}

// Sorts a row's candidate buffer (distinct offsets, so ranks are a permutation) and merges it into the
// row's list. All lanes call it; returns the list's new k-th value. Not inlined: flushes are rare, and
// the selection loop keeps its registers.
__device__ __noinline__ float flush_candidates(float* lv, int64_t* li, int k, float* bv, int32_t* bo, int cnt,
                                               int64_t base) {
  const int lane = threadIdx.x % 32;
  float mv = 0.0f;
  int32_t mo = 0;
  int rank = 0;
  if (lane < cnt) {
    mv = bv[lane];
    mo = bo[lane];
    for (int x = 0; x < cnt; ++x) {
      rank += topk_before(bv[x], static_cast<index_t>(bo[x]), mv, static_cast<index_t>(mo));
    }
  }
  __syncwarp();
  if (lane < cnt) {
    bv[rank] = mv;
    bo[rank] = mo;
  }
  __syncwarp();
  warp_merge(lv, li, k, bv, bo, base, cnt);
  return lv[k - 1];
}

// 128 registers a thread: two 256-thread CTAs or one 512-thread CTA per SM; float64's 4 x 8 double
// accumulators need more (it uses the small shape only, one CTA per SM).
template <typename in_t, int kThreads>
constexpr int kMinBlocks = std::is_same<in_t, double>::value ? 1 : 65536 / (128 * kThreads);

template <typename in_t, int kStages, int kBM, int kThreads>
__global__ void __launch_bounds__(kThreads, (kMinBlocks<in_t, kThreads>))
    similarity_topk_kernel(const in_t* __restrict__ q, int64_t n, const in_t* __restrict__ keys, int64_t m, int64_t d,
                           int k, const int64_t* __restrict__ qid, const int64_t* __restrict__ kid, float* out_v,
                           int64_t* out_i, float* ws_v, int64_t* ws_i, int64_t tiles_per_split, bool vec,
                           int* non_finite) {
  using P = TopkProducer<in_t, kStages, kBM, kThreads>;
  using L = TopkSmem<in_t, kStages, kBM, kThreads>;
  constexpr int kWarps = kThreads / 32;
  extern __shared__ __align__(128) unsigned char smem[];
  in_t* stages = reinterpret_cast<in_t*>(smem + L::kStageBase);
  float* tile = reinterpret_cast<float*>(smem + L::kTile);
  float* buf_v = reinterpret_cast<float*>(smem + L::kBufV);
  int32_t* buf_i = reinterpret_cast<int32_t*>(smem + L::kBufI);
  float* thr_s = reinterpret_cast<float*>(smem + L::kThr);
  int* cnt_s = reinterpret_cast<int*>(smem + L::kCnt);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int64_t split = blockIdx.y;
  const int64_t col_begin = split * tiles_per_split * kBN;
  const int64_t col_end = col_begin + tiles_per_split * kBN < m ? col_begin + tiles_per_split * kBN : m;
  float* list_v = split == 0 ? out_v : ws_v + (split - 1) * n * k;
  int64_t* list_i = split == 0 ? out_i : ws_i + (split - 1) * n * k;

  // each warp initialises its rows' lists (padding) and buffers
  for (int r = warp; r < kBM && r0 + r < n; r += kWarps) {
    float* lv = list_v + (r0 + r) * k;
    int64_t* li = list_i + (r0 + r) * k;
    for (int x = lane; x < k; x += 32) {
      lv[x] = neg_infinity<float>();
      li[x] = -1;
    }
    if (lane == 0) {
      thr_s[r] = neg_infinity<float>();
      cnt_s[r] = 0;
    }
  }
  __syncwarp();

  const int steps = P::k_steps(d);
  const int64_t tiles = (col_end - col_begin + kBN - 1) / kBN;
  typename P::Frag acc;
  P::zero(acc);
  // The K steps of all tiles form one sequence; the copy of a step runs kStages - 1 steps ahead of its
  // products, into the stages in turn, and each thread commits one copy group per step (empty or not),
  // so "all but the kStages - 2 latest groups done" means the current step has landed. Counters, not
  // divisions, track the positions.
  int64_t load_tile = 0;
  int load_step = 0, load_stage = 0, read_stage = 0;
  auto issue = [&]() {
    if (load_tile < tiles) {
      P::load(q, n, keys, m, d, r0, col_begin + load_tile * kBN, load_step, stages + load_stage * P::kStageElems,
              vec);
      if (++load_step == steps) {
        load_step = 0;
        ++load_tile;
      }
    }
    mma_tile::copy_commit();
    load_stage = load_stage + 1 == kStages ? 0 : load_stage + 1;
  };
  for (int p = 0; p < kStages - 1; ++p) issue();
  for (int64_t t = 0; t < tiles; ++t) {
    for (int step = 0; step < steps; ++step) {
      mma_tile::copy_wait<kStages - 2>();
      __syncthreads();  // this step visible; every thread is past the previous step (whose stage is
                        // refilled next) and past the last selection (the score tile is free)
      issue();
      P::mma(acc, stages + read_stage * P::kStageElems);
      read_stage = read_stage + 1 == kStages ? 0 : read_stage + 1;
    }

    // the tile is complete: scores to shared memory, then each warp selects for its rows
    const int64_t c0 = col_begin + t * kBN;
    P::store(acc, tile, kScoreLd);
    __syncthreads();
    for (int r = warp; r < kBM && r0 + r < n; r += kWarps) {
      const int64_t i = r0 + r;
      float* lv = list_v + i * k;
      int64_t* li = list_i + i * k;
      float* bv = buf_v + r * kCap;
      int32_t* bo = buf_i + r * kCap;
      float thr = thr_s[r];
      // lane l holds columns l, l + 32, l + 64, l + 96, and one vote decides the common case (no score
      // of the row beats its threshold). Columns are tested in increasing order, which the strict
      // `v > thr` needs: a later column equal to the k-th value ranks after it (larger index).
      float v[kBN / 32];
      bool bad = false;
#pragma unroll
      for (int e = 0; e < kBN / 32; ++e) {
        v[e] = tile[r * kScoreLd + 32 * e + lane];
        bad = bad || (c0 + 32 * e + lane < col_end && !isfinite(v[e]));
      }
      // the finite check of the inputs, at no extra pass: a NaN or infinite input makes every score it
      // enters non-finite (the glue turns the flag into a device-side assertion)
      if (__any_sync(kFullMask, bad) && lane == 0) *non_finite = 1;
      if (!__any_sync(kFullMask, v[0] > thr || v[1] > thr || v[2] > thr || v[3] > thr)) continue;
      const int64_t my_id = qid ? qid[i] : 0;
      int cnt = cnt_s[r];
#pragma unroll
      for (int e = 0; e < kBN / 32; ++e) {
        const int64_t j = c0 + 32 * e + lane;
        bool pass = j < col_end && v[e] > thr && !(kid && kid[j] == my_id);
        unsigned ballot = __ballot_sync(kFullMask, pass);
        if (ballot == 0) continue;
        if (cnt + __popc(ballot) > kCap) {
          thr = flush_candidates(lv, li, k, bv, bo, cnt, col_begin);
          cnt = 0;
          pass = pass && v[e] > thr;
          ballot = __ballot_sync(kFullMask, pass);
        }
        if (pass) {
          const int pos = cnt + __popc(ballot & ((1u << lane) - 1u));
          bv[pos] = v[e];
          bo[pos] = static_cast<int32_t>(j - col_begin);
        }
        cnt += __popc(ballot);
        __syncwarp();
      }
      if (lane == 0) {
        thr_s[r] = thr;
        cnt_s[r] = cnt;
      }
      __syncwarp();
    }
    P::zero(acc);  // after the selection: the accumulators are dead while it runs
  }

  // the rest of every buffer
  for (int r = warp; r < kBM && r0 + r < n; r += kWarps) {
    const int cnt = cnt_s[r];
    if (cnt > 0) flush_candidates(list_v + (r0 + r) * k, list_i + (r0 + r) * k, k, buf_v + r * kCap,
                                  buf_i + r * kCap, cnt, col_begin);
  }
}

// One CTA per row: the splits' lists merged pairwise in a tree (split s absorbs s + stride), each pair by
// one warp. Lists hold unique top-k sets, so the result does not depend on the order. Short lists
// (k <= 32, e.g. search) are merged in the warp's shared-memory scratch, so the merge's dependent binary
// searches wait on shared memory instead of L2.
constexpr int kMergeMaxWarps = 32, kMergeSmemK = 32;

__global__ void __launch_bounds__(32 * kMergeMaxWarps)
    similarity_topk_merge_kernel(float* out_v, int64_t* out_i, float* ws_v, int64_t* ws_i, int64_t n,
                                             int k, int splits) {
  __shared__ float scratch_v[kMergeMaxWarps][2][kMergeSmemK];
  __shared__ int64_t scratch_i[kMergeMaxWarps][2][kMergeSmemK];
  const int64_t i = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  for (int stride = 1; stride < splits; stride *= 2) {
    for (int s = warp * 2 * stride; s + stride < splits; s += warps * 2 * stride) {
      const int t = s + stride;
      float* av = s == 0 ? out_v + i * k : ws_v + ((s - 1) * n + i) * k;
      int64_t* ai = s == 0 ? out_i + i * k : ws_i + ((s - 1) * n + i) * k;
      const float* bv = ws_v + ((t - 1) * n + i) * k;
      const int64_t* bi = ws_i + ((t - 1) * n + i) * k;
      if (k <= kMergeSmemK) {
        float* sv = scratch_v[warp][0];
        int64_t* si = scratch_i[warp][0];
        if (lane < k) {
          sv[lane] = av[lane];
          si[lane] = ai[lane];
          scratch_v[warp][1][lane] = bv[lane];
          scratch_i[warp][1][lane] = bi[lane];
        }
        __syncwarp();
        warp_merge(sv, si, k, scratch_v[warp][1], scratch_i[warp][1], int64_t{0}, k);
        __syncwarp();
        if (lane < k) {
          av[lane] = sv[lane];
          ai[lane] = si[lane];
        }
        __syncwarp();
      } else {
        warp_merge(av, ai, k, bv, bi, int64_t{0}, k);
      }
    }
    __syncthreads();
  }
}

template <typename in_t, int kStages, int kBM, int kThreads>
cudaError_t launch_topk(Matrix query, Matrix keys, int k, const int64_t* qid, const int64_t* kid, float* values,
                        int64_t* indices, int64_t splits, int64_t per_split, float* ws_v, int64_t* ws_i,
                        int* non_finite, cudaStream_t stream) {
  using P = TopkProducer<in_t, kStages, kBM, kThreads>;
  const int64_t n = query.rows, m = keys.rows, d = query.cols;
  if ((n + kBM - 1) / kBM > 0x7fffffff) return cudaErrorInvalidValue;
  const auto* qp = static_cast<const in_t*>(query.data);
  const auto* kp = static_cast<const in_t*>(keys.data);
  const bool vec = P::vector_loads(qp, kp, d);
  const std::size_t smem = TopkSmem<in_t, kStages, kBM, kThreads>::kBytes;
  auto kernel = similarity_topk_kernel<in_t, kStages, kBM, kThreads>;
  cudaError_t status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (status != cudaSuccess) return status;
  const dim3 grid(ceil_div(n, kBM), static_cast<unsigned>(splits));
  kernel<<<grid, kThreads, smem, stream>>>(qp, n, kp, m, d, k, qid, kid, values, indices, ws_v, ws_i, per_split, vec,
                                           non_finite);
  status = cudaGetLastError();
  if (status != cudaSuccess || splits == 1) return status;
  const int64_t warps = splits / 2 < 1 ? 1 : (splits / 2 > kMergeMaxWarps ? kMergeMaxWarps : splits / 2);
  similarity_topk_merge_kernel<<<static_cast<unsigned>(n), static_cast<unsigned>(32 * warps), 0, stream>>>(
      values, indices, ws_v, ws_i, n, k, static_cast<int>(splits));
  return cudaGetLastError();
}

// The CTA shape (large when there is one split, enough 128-row blocks for every SM and room for it; never
// for float64) and the stage count (three where the CTAs per SM of that shape fit with three, else two).
// The small shape needs 80 KB a CTA (sm_80 and newer; an sm_75 GPU's 64 KB fails the launch with a
// clear error from the glue).
template <typename in_t>
cudaError_t dispatch_shape(Matrix query, Matrix keys, int k, const int64_t* qid, const int64_t* kid, float* values,
                           int64_t* indices, int64_t splits, float* ws_v, int64_t* ws_i, int* non_finite,
                           cudaStream_t stream) {
  const int64_t tiles = (keys.rows + kBN - 1) / kBN;
  if (splits < 1) splits = 1;
  const int64_t per_split = (tiles + splits - 1) / splits;
  if (per_split > kMaxSplitTiles) return cudaErrorInvalidValue;
  splits = (tiles + per_split - 1) / per_split;  // no empty split
  if (splits > 1 && (ws_v == nullptr || ws_i == nullptr)) return cudaErrorInvalidValue;
  if (splits > 65535) return cudaErrorInvalidValue;
  int device = 0, smem_per_sm = 0, smem_per_block = 0, sms = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess)
    status = cudaDeviceGetAttribute(&smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  if (status == cudaSuccess)
    status = cudaDeviceGetAttribute(&smem_per_block, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (status != cudaSuccess) return status;
  const std::size_t per_sm = static_cast<std::size_t>(smem_per_sm);
  const std::size_t per_block = static_cast<std::size_t>(smem_per_block);
  constexpr std::size_t kReserved = 1024;  // per CTA, sm_80+
  if constexpr (!std::is_same<in_t, double>::value) {
    // (the large shape needs 139 KB a CTA: A100, H100 and newer; GPUs with less use the small shape)
    if (splits == 1 && (query.rows + kLargeBM - 1) / kLargeBM >= static_cast<int64_t>(sms) &&
        per_block >= TopkSmem<in_t, 2, kLargeBM, kLargeThreads>::kBytes) {
      if (per_sm >= TopkSmem<in_t, 3, kLargeBM, kLargeThreads>::kBytes + kReserved &&
          per_block >= TopkSmem<in_t, 3, kLargeBM, kLargeThreads>::kBytes) {
        return launch_topk<in_t, 3, kLargeBM, kLargeThreads>(query, keys, k, qid, kid, values, indices, splits,
                                                             per_split, ws_v, ws_i, non_finite, stream);
      }
      return launch_topk<in_t, 2, kLargeBM, kLargeThreads>(query, keys, k, qid, kid, values, indices, splits,
                                                           per_split, ws_v, ws_i, non_finite, stream);
    }
  }
  if (per_sm >= 2 * (TopkSmem<in_t, 3, kSmallBM, kSmallThreads>::kBytes + kReserved) &&
      per_block >= TopkSmem<in_t, 3, kSmallBM, kSmallThreads>::kBytes) {
    return launch_topk<in_t, 3, kSmallBM, kSmallThreads>(query, keys, k, qid, kid, values, indices, splits, per_split,
                                                         ws_v, ws_i, non_finite, stream);
  }
  return launch_topk<in_t, 2, kSmallBM, kSmallThreads>(query, keys, k, qid, kid, values, indices, splits, per_split,
                                                       ws_v, ws_i, non_finite, stream);
}

}  // namespace

int64_t similarity_topk_splits(int64_t n, int64_t m, int64_t k, int sm_count) {
  if (n <= 0 || m <= 0 || k <= 0) return 1;
  const int64_t row_blocks = (n + kSmallBM - 1) / kSmallBM, tiles = (m + kBN - 1) / kBN;
  const int64_t target = 2 * static_cast<int64_t>(sm_count < 1 ? 1 : sm_count);  // two CTAs per SM
  int64_t s = row_blocks >= target ? 1 : (target + row_blocks - 1) / row_blocks;
  const int64_t by_k = m / (2 * k);                  // a split scans at least 2k keys (merge cost ~ k)
  const int64_t by_ws = 1 + (int64_t{1} << 22) / (n * k);  // workspace (s - 1) n k <= 2^22 entries
  s = s < by_k ? s : by_k;
  s = s < by_ws ? s : by_ws;
  s = s < tiles ? s : tiles;
  s = s < 65535 ? s : 65535;
  const int64_t min_s = (tiles + kMaxSplitTiles - 1) / kMaxSplitTiles;  // int32 offsets within a split
  s = s > min_s ? s : min_s;
  s = s > 1 ? s : 1;
  const int64_t per_split = (tiles + s - 1) / s;
  return (tiles + per_split - 1) / per_split;
}

cudaError_t similarity_topk(Matrix query, Matrix keys, int64_t k, const int64_t* query_ids, const int64_t* key_ids,
                            float* values, int64_t* indices, int64_t splits, float* ws_values, int64_t* ws_indices,
                            int* non_finite, cudaStream_t stream) {
  if (query.rows == 0 || keys.rows == 0 || k == 0) return cudaSuccess;
  if (k > 0x7fffffff) return cudaErrorInvalidValue;
  DCD_DISPATCH_DTYPE(query.dtype, {
    static_assert(sizeof(acc_t) > 0, "");
    return dispatch_shape<in_t>(query, keys, static_cast<int>(k), query_ids, key_ids, values, indices, splits,
                                 ws_values, ws_indices, non_finite, stream);
  })
}

}  // namespace cuda_kernels
}  // namespace dcd
