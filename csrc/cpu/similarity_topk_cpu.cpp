// CPU similarity top-k: parallel over row blocks; each block multiplies against column tiles (tile_gemm:
// native bf16 products where the CPU has them, float32 otherwise) and streams the tile through per-row
// top-k lists that live in the outputs. Keys are converted to the operand dtype once, not per block.
// No [N, M] buffer.
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "cpu/tile_gemm.h"
#include "cpu/topk_tile.h"
#include "kernels.h"

namespace dcd {
namespace cpu {

namespace {
constexpr int64_t kRowTile = 256;
constexpr int64_t kColTile = 1024;
}  // namespace

std::tuple<at::Tensor, at::Tensor> similarity_topk(const at::Tensor& query, const at::Tensor& keys, int64_t k,
                                                   const at::Tensor& query_ids, const at::Tensor& key_ids) {
  const int64_t n = query.size(0), m = keys.size(0);
  auto values = at::full({n, k}, -std::numeric_limits<float>::infinity(), query.options().dtype(at::kFloat));
  auto indices = at::full({n, k}, -1, query.options().dtype(at::kLong));
  if (n == 0 || m == 0 || k == 0) return {values, indices};

  // both operands in one dtype: bfloat16 only when both are bfloat16 and the CPU multiplies it natively
  const auto common = query.scalar_type() == keys.scalar_type() ? query.scalar_type() : at::kFloat;
  const auto op_dtype = operand_dtype(common);
  const auto key_ops = prepare_score_keys(keys, op_dtype);
  const index_t* qid = query_ids.defined() ? query_ids.data_ptr<int64_t>() : nullptr;
  const index_t* kid = key_ids.defined() ? key_ids.data_ptr<int64_t>() : nullptr;
  float* vals = values.data_ptr<float>();
  index_t* idx = indices.data_ptr<int64_t>();
  const int64_t block = row_block_size(n, at::get_num_threads(), kRowTile);
  const int64_t nblocks = (n + block - 1) / block;

  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> tile(static_cast<size_t>(block * std::min(kColTile, m)));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t r0 = b * block, rows = std::min(block, n - r0);
      const auto qb = query.narrow(0, r0, rows).to(op_dtype).contiguous();
      for (int64_t c0 = 0; c0 < m; c0 += kColTile) {
        const int64_t cols = std::min(kColTile, m - c0);
        score_tile(qb, key_ops, c0, cols, tile.data(), cols);
        topk_tile_update(tile.data(), r0, rows, c0, cols, cols, qid, kid, static_cast<int>(k), vals, idx);
      }
    }
  });
  return {values, indices};
}

}  // namespace cpu
}  // namespace dcd
