// CPU similarity top-k. The work is a grid of (row block, column split) tasks: row blocks depend on N
// only, and when they are too few to keep every thread busy (a few queries against a large gallery)
// the columns are split too, each split keeping its own top-k lists, merged exactly afterwards. Each
// task multiplies its row block against column tiles (tile_gemm; wider tiles for small row blocks) and
// streams each tile through its lists: sorted insertion for short lists, collect-and-select for long
// ones (topk_tile.h). Split boundaries fall on tile boundaries, so every score is the same product
// whatever the split and thread count. The finite check rides on the same pass: a NaN or infinite
// input makes every score it touches non-finite, and the tile scan notices. No [N, M] buffer.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "cpu/tile_gemm.h"
#include "cpu/topk_tile.h"
#include "finite_check.h"
#include "kernels.h"

namespace dcd {
namespace cpu {

namespace {
constexpr int64_t kRowTile = 256;
constexpr int64_t kColTile = 1024;             // columns of a score tile of kRowTile rows
constexpr int64_t kTileElems = kRowTile * kColTile;
constexpr int64_t kTasksPerThread = 4;          // enough tasks to even out the threads' shares
constexpr int64_t kMaxSplitEntries = 1 << 24;   // bound on the extra lists of the column splits
constexpr int64_t kInsertK = 32;                // longer lists collect and select (TopkCollector)

struct TopkPlan {
  int64_t block, nblocks, col_tile, splits, split_tiles;
};

TopkPlan plan_for(int64_t n, int64_t m, int64_t k, int64_t threads) {
  TopkPlan p;
  p.nblocks = (n + kRowTile - 1) / kRowTile;
  p.block = (n + p.nblocks - 1) / p.nblocks;
  // small row blocks take wider tiles (the same tile size, up to 16 x kColTile): fewer, larger products
  p.col_tile = kColTile * std::max<int64_t>(1, std::min<int64_t>(16, kTileElems / (p.block * kColTile)));
  const int64_t tiles = (m + p.col_tile - 1) / p.col_tile;
  const int64_t wanted = (kTasksPerThread * std::max<int64_t>(threads, 1) + p.nblocks - 1) / p.nblocks;
  p.splits = std::max<int64_t>(1, std::min({wanted, tiles, 1 + kMaxSplitEntries / std::max<int64_t>(n * k, 1)}));
  p.split_tiles = (tiles + p.splits - 1) / p.splits;
  p.splits = (tiles + p.split_tiles - 1) / p.split_tiles;
  return p;
}

// Merges the lists of splits 1.. into split 0's (the outputs), in split order; exact (ties by index).
void merge_split_lists(int64_t n, int k, int64_t splits, const float* part_vals, const index_t* part_idx,
                       float* vals, index_t* idx) {
  at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
    std::vector<float> mv(k);
    std::vector<index_t> mi(k);
    for (int64_t r = r0; r < r1; ++r) {
      float* v = vals + r * k;
      index_t* i = idx + r * k;
      for (int64_t s = 1; s < splits; ++s) {
        const int64_t off = ((s - 1) * n + r) * k;
        merge_topk(v, i, part_vals + off, part_idx + off, k, mv.data(), mi.data());
        std::copy(mv.begin(), mv.end(), v);
        std::copy(mi.begin(), mi.end(), i);
      }
    }
  });
}

// Called when a score came out non-finite: names the argument that holds the bad value, or says the
// finite inputs' product overflowed.
[[noreturn]] void refuse_non_finite(const at::Tensor& query, const at::Tensor& keys) {
  check_finite(query, "query");
  check_finite(keys, "keys");
  TORCH_CHECK_VALUE(false, "query @ keys.T overflows float32 (query and keys are finite, but a score is not); "
                    "similarity_topk needs finite scores (normalise the embeddings)");
  __builtin_unreachable();
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> similarity_topk(const at::Tensor& query, const at::Tensor& keys, int64_t k,
                                                   const at::Tensor& query_ids, const at::Tensor& key_ids) {
  const int64_t n = query.size(0), m = keys.size(0);
  auto values = at::full({n, k}, -std::numeric_limits<float>::infinity(), query.options().dtype(at::kFloat));
  auto indices = at::full({n, k}, -1, query.options().dtype(at::kLong));
  if (n == 0 || m == 0) return {values, indices};
  if (k == 0) {  // nothing is scored, so the inputs are checked on their own
    check_finite(query, "query");
    check_finite(keys, "keys");
    return {values, indices};
  }

  // both operands in one dtype: bfloat16 only when both are bfloat16 and the CPU multiplies it natively
  const auto common = query.scalar_type() == keys.scalar_type() ? query.scalar_type() : at::kFloat;
  const auto op_dtype = operand_dtype(common, n);
  const auto key_ops = prepare_score_keys(keys, op_dtype, n);
  const index_t* qid = query_ids.defined() ? query_ids.data_ptr<int64_t>() : nullptr;
  const index_t* kid = key_ids.defined() ? key_ids.data_ptr<int64_t>() : nullptr;
  const TopkPlan plan = plan_for(n, m, k, at::get_num_threads());
  const int kk = static_cast<int>(k);
  const int64_t part_entries = (plan.splits - 1) * n * k;
  std::vector<float> part_vals(part_entries, -std::numeric_limits<float>::infinity());
  std::vector<index_t> part_idx(part_entries, -1);
  float* vals = values.data_ptr<float>();
  index_t* idx = indices.data_ptr<int64_t>();
  std::atomic<bool> non_finite{false};

  at::parallel_for(0, plan.nblocks * plan.splits, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> tile(static_cast<size_t>(plan.block * std::min(plan.col_tile, m)));
    bool bad = false;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / plan.splits, s = t % plan.splits;
      const int64_t r0 = b * plan.block, rows = std::min(plan.block, n - r0);
      const int64_t c_begin = s * plan.split_tiles * plan.col_tile;
      const int64_t c_end = std::min(m, c_begin + plan.split_tiles * plan.col_tile);
      // split s >= 1 keeps its lists in part_*, laid out [split - 1][row][k]
      float* out_v = s == 0 ? vals : part_vals.data() + (s - 1) * n * k;
      index_t* out_i = s == 0 ? idx : part_idx.data() + (s - 1) * n * k;
      const auto qb = query.narrow(0, r0, rows).to(op_dtype).contiguous();
      if (k <= kInsertK) {
        for (int64_t c0 = c_begin; c0 < c_end; c0 += plan.col_tile) {
          const int64_t cols = std::min(plan.col_tile, c_end - c0);
          score_tile(qb, key_ops, c0, cols, tile.data(), cols);
          bad |= topk_tile_update(tile.data(), r0, rows, c0, cols, cols, qid, kid, kk, out_v, out_i);
        }
        continue;
      }
      TopkCollector lists(rows, kk);
      for (int64_t c0 = c_begin; c0 < c_end; c0 += plan.col_tile) {
        const int64_t cols = std::min(plan.col_tile, c_end - c0);
        score_tile(qb, key_ops, c0, cols, tile.data(), cols);
        bad |= lists.update(tile.data(), rows, c0, cols, cols, qid, r0, kid);
      }
      for (int64_t r = 0; r < rows; ++r) lists.write(r, out_v + (r0 + r) * k, out_i + (r0 + r) * k);
    }
    if (bad) non_finite.store(true, std::memory_order_relaxed);
  });
  if (non_finite.load()) refuse_non_finite(query, keys);
  if (plan.splits > 1) merge_split_lists(n, kk, plan.splits, part_vals.data(), part_idx.data(), vals, idx);
  return {values, indices};
}

}  // namespace cpu
}  // namespace dcd
