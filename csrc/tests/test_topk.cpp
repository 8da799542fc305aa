// Streaming top-k insertion and list merging against a full stable sort.
#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "check.h"
#include "dcd/topk.h"

static void expected_topk(const std::vector<float>& v, int k, std::vector<float>& ev, std::vector<int64_t>& ei) {
  std::vector<int64_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  ev.assign(k, -INFINITY);
  ei.assign(k, -1);
  for (int i = 0; i < k && i < static_cast<int>(v.size()); ++i) {
    ev[i] = v[order[i]];
    ei[i] = order[i];
  }
}

int main() {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + trial % 97, k = 1 + trial % 23;
    std::vector<float> v(n);
    for (float& x : v) x = static_cast<float>(static_cast<int>(rng() % 9) - 4);  // many ties
    std::vector<float> vals(k, -INFINITY);
    std::vector<int64_t> idx(k, -1);
    for (int j = 0; j < n; ++j) dcd::topk_insert(vals.data(), idx.data(), k, v[j], j);
    std::vector<float> ev;
    std::vector<int64_t> ei;
    expected_topk(v, k, ev, ei);
    CHECK(vals == ev);
    CHECK(idx == ei);

    // two halves kept separately, then merged, give the same list
    const int half = n / 2;
    std::vector<float> va(k, -INFINITY), vb(k, -INFINITY), vo(k);
    std::vector<int64_t> ia(k, -1), ib(k, -1), io(k);
    for (int j = 0; j < half; ++j) dcd::topk_insert(va.data(), ia.data(), k, v[j], j);
    for (int j = half; j < n; ++j) dcd::topk_insert(vb.data(), ib.data(), k, v[j], j);
    dcd::merge_topk(vb.data(), ib.data(), va.data(), ia.data(), k, vo.data(), io.data());
    CHECK(vo == ev);
    CHECK(io == ei);
  }

  // in-place merge of a shorter sorted list with int32 offsets (the CUDA warp merge, serial form) equals
  // merge_topk at every chunk width, including k > number of entries and b lists with padding
  for (int trial = 0; trial < 400; ++trial) {
    const int n = 1 + trial % 131, k = 1 + (trial * 7) % 45, split = (trial * 13) % (n + 1);
    std::vector<float> v(n);
    for (float& x : v) x = static_cast<float>(static_cast<int>(rng() % 11) - 5);
    std::vector<float> av(k, -INFINITY), bfull(k, -INFINITY);
    std::vector<int64_t> ai(k, -1), bfull_i(k, -1);
    for (int j = 0; j < split; ++j) dcd::topk_insert(av.data(), ai.data(), k, v[j], j);
    for (int j = split; j < n; ++j) dcd::topk_insert(bfull.data(), bfull_i.data(), k, v[j], j);
    std::vector<float> ev;
    std::vector<int64_t> ei;
    expected_topk(v, k, ev, ei);
    // b as int32 offsets from `split`, padding kept (offset -1 marks it) and a random real count
    const int cap = trial % 3 == 0 ? k : 1 + trial % k;
    std::vector<float> bv;
    std::vector<int32_t> bo;
    for (int q = 0; q < k && static_cast<int>(bv.size()) < cap; ++q) {
      bv.push_back(bfull[q]);
      bo.push_back(bfull_i[q] >= 0 ? static_cast<int32_t>(bfull_i[q] - split) : -1);
    }
    std::vector<float> pv(k, -INFINITY), tv;
    std::vector<int64_t> pi(k, -1), ti;
    for (size_t q = 0; q < bv.size(); ++q) {
      pv[q] = bv[q];
      pi[q] = bo[q] >= 0 ? bo[q] + split : -1;
    }
    std::vector<float> want_v(k);
    std::vector<int64_t> want_i(k);
    dcd::merge_topk(av.data(), ai.data(), pv.data(), pi.data(), k, want_v.data(), want_i.data());
    if (cap == k) {
      CHECK(want_v == ev);
      CHECK(want_i == ei);
    }
    for (int width : {1, 5, 32, 64}) {
      tv = av;
      ti = ai;
      dcd::merge_topk_inplace(tv.data(), ti.data(), k, bv.data(), bo.data(), static_cast<int64_t>(split),
                              static_cast<int>(bv.size()), width);
      CHECK(tv == want_v);
      CHECK(ti == want_i);
    }
    // merging in either order gives the same list (the split merge's order does not matter)
    tv = pv;
    ti = pi;
    dcd::merge_topk_inplace(tv.data(), ti.data(), k, av.data(), ai.data(), int64_t{0}, k, 32);
    CHECK(tv == want_v);
    CHECK(ti == want_i);
  }
  // NaN never enters a list
  std::vector<float> vals(2, -INFINITY);
  std::vector<int64_t> idx(2, -1);
  CHECK(!dcd::topk_insert(vals.data(), idx.data(), 2, NAN, 0));
  CHECK(!dcd::topk_insert(vals.data(), idx.data(), 0, 1.0f, 0));
  return dcd_test::report("topk");
}
