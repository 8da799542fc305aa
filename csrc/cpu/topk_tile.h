// CPU streaming top-k over a tile of scores (rows r0.., cols c0.., leading dimension ld). Each row's
// running list lives in the given arrays (k values, k indices per row). Columns are scanned in
// increasing order, so ties keep the smaller index. Torch-free.
#pragma once

#include <algorithm>
#include <limits>
#include <vector>

#include "dcd/macros.h"
#include "dcd/topk.h"

namespace dcd {
namespace cpu {

// Once a list is warm, one scan rejects a whole block of scores; a block with a score above the threshold is
// scanned again by groups, and only a group with one is walked score by score.
constexpr index_t kBlock = 256, kGroup = 16;

// Whether any of s[0..n) exceeds threshold (NaN never does); adds to `poison` a sum that is NaN exactly when
// one of them is NaN or infinite (v * 0 is NaN for those, +-0 otherwise). Integer and float sum reductions,
// which compilers vectorise; a boolean OR reduction they vectorise poorly (about 1-2 ns per score).
template <typename acc_t>
inline bool scan_scores(const acc_t* s, index_t n, float threshold, float& poison) {
  int above = 0;
  float z = 0.0f;
#pragma omp simd reduction(+ : above, z)
  for (index_t j = 0; j < n; ++j) {
    const float v = static_cast<float>(s[j]);
    above += v > threshold ? 1 : 0;
    z += v * 0.0f;
  }
  poison += z;
  return above > 0;
}

// Calls take(j, v) for every score v = row[j] above `threshold`, in column order; take may raise threshold
// (the same variable). Every score goes into `poison` (see scan_scores), kept or not.
template <typename acc_t, typename Take>
inline void scan_row(const acc_t* row, index_t cols, float& threshold, float& poison, Take take) {
  float unused = 0.0f;
  for (index_t b0 = 0; b0 < cols; b0 += kBlock) {
    const index_t b1 = b0 + kBlock < cols ? b0 + kBlock : cols;
    if (!scan_scores(row + b0, b1 - b0, threshold, poison)) continue;
    for (index_t j0 = b0; j0 < b1; j0 += kGroup) {
      const index_t j1 = j0 + kGroup < b1 ? j0 + kGroup : b1;
      if (!scan_scores(row + j0, j1 - j0, threshold, unused)) continue;
      for (index_t j = j0; j < j1; ++j) {
        const float v = static_cast<float>(row[j]);
        if (v > threshold) take(j, v);
      }
    }
  }
}

// Merges a tile into the rows' sorted lists. Returns whether the tile holds a non-finite score.
template <typename acc_t>
bool topk_tile_update(const acc_t* scores, index_t r0, index_t rows, index_t c0, index_t cols, index_t ld,
                      const index_t* query_ids, const index_t* key_ids, int k, float* values, index_t* indices) {
  if (k <= 0) return false;
  float poison = 0.0f;
  for (index_t r = 0; r < rows; ++r) {
    float* vals = values + (r0 + r) * k;
    index_t* idx = indices + (r0 + r) * k;
    float threshold = vals[k - 1];
    const index_t qid = query_ids ? query_ids[r0 + r] : 0;
    scan_row(scores + r * ld, cols, threshold, poison, [&](index_t j, float v) {
      if (key_ids && key_ids[c0 + j] == qid) return;
      topk_insert(vals, idx, k, v, c0 + j);
      threshold = vals[k - 1];
    });
  }
  return !(poison == 0.0f);
}

}  // namespace cpu
}  // namespace dcd

namespace dcd {
namespace cpu {

// Long lists (large k, e.g. a re-ranking depth of 1000): inserting every survivor into a sorted list
// costs O(k) each, and a fresh list lets k ln(M / k) of them in. Instead each row collects its survivors
// (scores above the row's k-th best so far) unsorted, and when 2k have gathered, keeps the k best with
// one selection (linear time) and raises its threshold to the k-th; the final k are sorted once. The
// order is the lists' (value descending, then index ascending), a strict total order, so the result is
// the same as inserting one by one.
class TopkCollector {
 public:
  TopkCollector(index_t rows, int k) : k_(k), entries_(rows), threshold_(rows, -inf()) {}

  // One tile of scores (rows r0.. of the lists' rows; this collector's row r is list row r0 + r). Returns
  // whether it holds a non-finite score.
  template <typename acc_t>
  bool update(const acc_t* scores, index_t rows, index_t c0, index_t cols, index_t ld, const index_t* query_ids,
              index_t r0, const index_t* key_ids) {
    float poison = 0.0f;
    for (index_t r = 0; r < rows; ++r) {
      const index_t qid = query_ids ? query_ids[r0 + r] : 0;
      auto& entries = entries_[r];
      float threshold = threshold_[r];
      scan_row(scores + r * ld, cols, threshold, poison, [&](index_t j, float v) {
        if (key_ids && key_ids[c0 + j] == qid) return;
        entries.push_back({v, c0 + j});
        if (static_cast<index_t>(entries.size()) >= 2 * static_cast<index_t>(k_)) threshold = keep_best(r);
      });
      threshold_[r] = threshold;
    }
    return !(poison == 0.0f);
  }

  // Writes row r's sorted list (padded with (-inf, -1)) to vals_out / idx_out (k entries each).
  void write(index_t r, float* vals_out, index_t* idx_out) {
    keep_best(r);
    auto& entries = entries_[r];
    std::sort(entries.begin(), entries.end(), before);
    for (int o = 0; o < k_; ++o) {
      const bool real = o < static_cast<int>(entries.size());
      vals_out[o] = real ? entries[o].value : -inf();
      idx_out[o] = real ? entries[o].index : -1;
    }
  }

 private:
  struct Entry {
    float value;
    index_t index;
  };
  static bool before(const Entry& a, const Entry& b) { return topk_before(a.value, a.index, b.value, b.index); }
  static float inf() { return std::numeric_limits<float>::infinity(); }

  // Keeps row r's k best entries (in place, unsorted) and returns the new threshold: the k-th best value
  // once k are kept, -inf before.
  float keep_best(index_t r) {
    auto& entries = entries_[r];
    if (static_cast<int>(entries.size()) < k_) return -inf();
    std::nth_element(entries.begin(), entries.begin() + (k_ - 1), entries.end(), before);
    entries.resize(k_);
    return entries[k_ - 1].value;
  }

  int k_;
  std::vector<std::vector<Entry>> entries_;
  std::vector<float> threshold_;
};

}  // namespace cpu
}  // namespace dcd
