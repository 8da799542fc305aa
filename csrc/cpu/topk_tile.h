// CPU streaming top-k over a tile of scores (rows r0.., cols c0.., leading dimension ld). Each row's
// running list lives in the given arrays (k values, k indices per row). Columns are scanned in
// increasing order, so ties keep the smaller index. Torch-free.
#pragma once

#include "dcd/macros.h"
#include "dcd/topk.h"

namespace dcd {
namespace cpu {

// Returns whether the tile holds a non-finite score (checked on every score, kept or not, in the same
// vector pass that rejects the groups no score of which enters a list).
template <typename acc_t>
bool topk_tile_update(const acc_t* scores, index_t r0, index_t rows, index_t c0, index_t cols, index_t ld,
                      const index_t* query_ids, const index_t* key_ids, int k, float* values, index_t* indices) {
  if (k <= 0) return false;
  constexpr index_t kGroup = 16;  // one vector compare rejects a whole group once the list is warm
  bool non_finite = false;
  for (index_t r = 0; r < rows; ++r) {
    const acc_t* sr = scores + r * ld;
    float* vals = values + (r0 + r) * k;
    index_t* idx = indices + (r0 + r) * k;
    float threshold = vals[k - 1];
    const index_t qid = query_ids ? query_ids[r0 + r] : 0;
    for (index_t j0 = 0; j0 < cols; j0 += kGroup) {
      const index_t j1 = j0 + kGroup < cols ? j0 + kGroup : cols;
      bool any = false, bad = false;
#pragma omp simd reduction(|| : any, bad)
      for (index_t j = j0; j < j1; ++j) {
        const float v = static_cast<float>(sr[j]);
        any = any || v > threshold;
        bad = bad || !(v - v == 0.0f);  // inf - inf and NaN - NaN are NaN
      }
      non_finite = non_finite || bad;
      if (!any) continue;
      for (index_t j = j0; j < j1; ++j) {
        const float v = static_cast<float>(sr[j]);
        if (!(v > threshold)) continue;
        if (key_ids && key_ids[c0 + j] == qid) continue;
        topk_insert(vals, idx, k, v, c0 + j);
        threshold = vals[k - 1];
      }
    }
  }
  return non_finite;
}

}  // namespace cpu
}  // namespace dcd
