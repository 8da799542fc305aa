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
  // NaN never enters a list
  std::vector<float> vals(2, -INFINITY);
  std::vector<int64_t> idx(2, -1);
  CHECK(!dcd::topk_insert(vals.data(), idx.data(), 2, NAN, 0));
  CHECK(!dcd::topk_insert(vals.data(), idx.data(), 0, 1.0f, 0));
  return dcd_test::report("topk");
}
