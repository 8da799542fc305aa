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

}  // namespace dcd
