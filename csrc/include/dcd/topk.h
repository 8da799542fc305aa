// Sorted top-k lists kept in caller-owned arrays. Values descending; among equal values the smaller
// index first, which holds as long as candidates arrive in increasing index order (every kernel scans
// keys that way, or merges lists with merge_topk, which breaks ties by index explicitly).
// Empty slots hold (-inf, -1). Torch-free.
#pragma once

#include "dcd/macros.h"

namespace dcd {

// Inserts (v, j) into a full-length-k list if it beats the current k-th entry. Returns whether it did.
template <typename val_t>
DCD_HOST_DEVICE bool topk_insert(val_t* vals, index_t* idx, int k, val_t v, index_t j) {
  if (k <= 0 || !(v > vals[k - 1])) return false;
  int p = k - 1;
  while (p > 0 && vals[p - 1] < v) {
    vals[p] = vals[p - 1];
    idx[p] = idx[p - 1];
    --p;
  }
  vals[p] = v;
  idx[p] = j;
  return true;
}

// True when (va, ia) ranks before (vb, ib): larger value, or equal value and smaller valid index.
template <typename val_t>
DCD_HOST_DEVICE bool topk_before(val_t va, index_t ia, val_t vb, index_t ib) {
  if (va != vb) return va > vb;
  if (ia < 0) return false;
  if (ib < 0) return true;
  return ia < ib;
}

// Merges two sorted lists of length k into out (length k). out may not alias a or b.
template <typename val_t>
DCD_HOST_DEVICE void merge_topk(const val_t* va, const index_t* ia, const val_t* vb, const index_t* ib,
                                int k, val_t* vo, index_t* io) {
  int a = 0, b = 0;
  for (int o = 0; o < k; ++o) {
    if (topk_before(va[a], ia[a], vb[b], ib[b])) {
      vo[o] = va[a];
      io[o] = ia[a];
      ++a;
    } else {
      vo[o] = vb[b];
      io[o] = ib[b];
      ++b;
    }
  }
}

// ---- merging a sorted candidate list into a top-k list in place (the CUDA kernels' warp merge) ----
// A list `a` of length k (sorted, padding (-inf, -1) at the tail) absorbs a sorted list `b` of nb
// entries whose indices are base + bi[q] (bi may be a narrower type, e.g. int32 offsets). The merged
// top-k is the unique first k of the union under topk_before (indices are distinct), so any merge
// order gives the same, bitwise-identical list. Output positions are computed independently
// ("merge path"), which lets a warp fill 32 positions at a time from the top: position o reads only
// a[0..o], so writing positions >= o0 never clobbers what positions < o0 still read.

// How many leading entries of b are real (index >= 0) and rank before (v, i); b is sorted, so this
// predicate holds on a prefix and a binary search finds it.
template <typename val_t, typename bidx_t>
DCD_HOST_DEVICE int topk_count_before(const val_t* bv, const bidx_t* bi, index_t base, int nb, val_t v, index_t i) {
  int lo = 0, hi = nb;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    const index_t bj = static_cast<index_t>(bi[mid]);
    if (bj >= 0 && topk_before(bv[mid], base + bj, v, i)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The entry at position o (0 <= o < k) of merge(a[0..k), b[0..nb)), where every b entry is real and
// ranks before a[k-1] (callers pass nb = topk_count_before(b, ..., a[k-1])). Returns how many b entries
// precede position o (monotone in o: 0 means positions 0..o are a's unchanged). Reads a[0..o] only.
template <typename val_t, typename bidx_t>
DCD_HOST_DEVICE int topk_merged_at(const val_t* av, const index_t* ai, const val_t* bv, const bidx_t* bi,
                                   index_t base, int nb, int o, val_t& v, index_t& i) {
  int lo = o - nb > 0 ? o - nb : 0, hi = o;  // a-count among the first o outputs (o <= k - 1 < k = na)
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    const int q = o - 1 - mid;
    if (topk_before(av[mid], ai[mid], bv[q], base + static_cast<index_t>(bi[q]))) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  const int b = o - lo;
  if (b < nb && !topk_before(av[lo], ai[lo], bv[b], base + static_cast<index_t>(bi[b]))) {
    v = bv[b];
    i = base + static_cast<index_t>(bi[b]);
  } else {
    v = av[lo];
    i = ai[lo];
  }
  return b;
}

// One past the last position a merge of nb entries into a can change: a's real entries plus nb (the
// positions above hold padding before and after), at most k.
DCD_HOST_DEVICE int topk_merge_top(const index_t* ai, int k, int nb) {
  int lo = 0, hi = k;  // a's real entries form a prefix (padding has index -1)
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (ai[mid] >= 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return k - lo > nb ? lo + nb : k;
}

// Serial form of the warp merge: positions are filled top-down in chunks of `width`, each chunk read
// completely before it is written (a warp's lanes are one chunk). Stops below the first b entry.
template <typename val_t, typename bidx_t>
DCD_HOST_DEVICE void merge_topk_inplace(val_t* av, index_t* ai, int k, const val_t* bv, const bidx_t* bi,
                                        index_t base, int nb, int width) {
  if (k <= 0) return;
  nb = topk_count_before(bv, bi, base, nb, av[k - 1], ai[k - 1]);
  if (nb == 0) return;
  const int last = topk_merge_top(ai, k, nb);
  constexpr int kMaxWidth = 64;
  val_t cv[kMaxWidth];
  index_t ci[kMaxWidth];
  width = width < 1 ? 1 : (width > kMaxWidth ? kMaxWidth : width);
  for (int top = last; top > 0; top -= width) {
    const int low = top - width > 0 ? top - width : 0;
    bool done = false;
    for (int o = low; o < top; ++o) {
      const int b = topk_merged_at(av, ai, bv, bi, base, nb, o, cv[o - low], ci[o - low]);
      if (o == low) done = b == 0;
    }
    for (int o = low; o < top; ++o) {
      av[o] = cv[o - low];
      ai[o] = ci[o - low];
    }
    if (done) return;
  }
}

}  // namespace dcd
