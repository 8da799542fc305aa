// The CUDA top-k selection (csrc/cuda/similarity_topk.cu) as a host program, lanes as loops: per split,
// 128-column tiles tested 32 columns at a time against the row's threshold (strict >, columns in
// increasing order), survivors appended to a 32-entry buffer, flushes that rank-sort the buffer and merge
// it 32 output positions at a time from the top (dcd/topk.h), then the splits' tree merge. Keeps the
// kernel's tie and threshold argument checked on machines without a GPU; change both together.
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>
#include "check.h"
#include "dcd/topk.h"
using namespace dcd;
constexpr int kBN = 128, kCap = 32;

// warp_merge as the kernel does it: chunks of 32 from top, reads then writes, break when all b == 0
template <typename bidx_t>
void warp_merge(float* av, int64_t* ai, int k, const float* bv, const bidx_t* bi, int64_t base, int nb) {
  nb = topk_count_before(bv, bi, base, nb, av[k - 1], ai[k - 1]);
  if (nb == 0) return;
  const int top0 = topk_merge_top(ai, k, nb);
  for (int top = top0; top > 0; top -= 32) {
    float v[32]; int64_t ix[32]; int b[32]; bool act[32]; bool done = true;
    for (int lane = 0; lane < 32; ++lane) {
      int o = top - 32 + lane; act[lane] = o >= 0; b[lane] = 0;
      if (act[lane]) b[lane] = topk_merged_at(av, ai, bv, bi, base, nb, o, v[lane], ix[lane]);
      done = done && (!act[lane] || b[lane] == 0);
    }
    for (int lane = 0; lane < 32; ++lane) if (act[lane]) { av[top - 32 + lane] = v[lane]; ai[top - 32 + lane] = ix[lane]; }
    if (done) break;
  }
}
float flush(float* lv, int64_t* li, int k, float* bv, int32_t* bo, int cnt, int64_t base) {
  float mv[32]; int32_t mo[32]; int rank[32];
  for (int l = 0; l < cnt; ++l) { mv[l] = bv[l]; mo[l] = bo[l]; rank[l] = 0;
    for (int x = 0; x < cnt; ++x) rank[l] += topk_before(bv[x], (index_t)bo[x], mv[l], (index_t)mo[l]); }
  for (int l = 0; l < cnt; ++l) { bv[rank[l]] = mv[l]; bo[rank[l]] = mo[l]; }
  warp_merge(lv, li, k, bv, bo, base, cnt);
  return lv[k - 1];
}
int main() {
  std::mt19937 rng(5);
  int fails = 0;
  for (int trial = 0; trial < 300; ++trial) {
    int m = 1 + rng() % 3000, k = 1 + rng() % (trial % 3 == 0 ? 1100 : 40);
    int splits_req = 1 + rng() % 12;
    int tiles = (m + kBN - 1) / kBN;
    int per = (tiles + splits_req - 1) / splits_req, splits = (tiles + per - 1) / per;
    std::vector<float> s(m); for (auto& x : s) x = (float)((int)(rng() % 21) - 10);
    std::vector<int64_t> kid(m); for (auto& x : kid) x = rng() % 3; int64_t my = rng() % 4;
    if (trial % 10 == 0) for (auto& x : kid) x = my;  // the whole row masked
    std::vector<std::vector<float>> LV(splits, std::vector<float>(k, -INFINITY));
    std::vector<std::vector<int64_t>> LI(splits, std::vector<int64_t>(k, -1));
    for (int sp = 0; sp < splits; ++sp) {
      int64_t cb = (int64_t)sp * per * kBN, ce = std::min<int64_t>(m, cb + (int64_t)per * kBN);
      float thr = -INFINITY; int cnt = 0; float bv[kCap]; int32_t bo[kCap];
      for (int64_t c0 = cb; c0 < ce; c0 += kBN) {
        float tv[128]; for (int c = 0; c < 128; ++c) tv[c] = c0 + c < m ? s[c0 + c] : 0.f;
        bool any = false; for (int c = 0; c < 128; ++c) any = any || tv[c] > thr;
        if (!any) continue;
        for (int e = 0; e < 4; ++e) {
        bool pass[32]; float v[32]; unsigned ballot = 0;
        for (int l = 0; l < 32; ++l) { int64_t j = c0 + 32 * e + l; v[l] = tv[32 * e + l];
          pass[l] = j < ce && v[l] > thr && !(kid[j] == my); if (pass[l]) ballot |= 1u << l; }
        if (!ballot) continue;
        if (cnt + __builtin_popcount(ballot) > kCap) { thr = flush(LV[sp].data(), LI[sp].data(), k, bv, bo, cnt, cb); cnt = 0;
          ballot = 0; for (int l = 0; l < 32; ++l) { pass[l] = pass[l] && v[l] > thr; if (pass[l]) ballot |= 1u << l; } }
        for (int l = 0; l < 32; ++l) if (pass[l]) { int pos = cnt + __builtin_popcount(ballot & ((1u << l) - 1u)); bv[pos] = v[l]; bo[pos] = (int32_t)(c0 + 32 * e + l - cb); }
        cnt += __builtin_popcount(ballot);
        }
      }
      if (cnt > 0) flush(LV[sp].data(), LI[sp].data(), k, bv, bo, cnt, cb);
    }
    for (int stride = 1; stride < splits; stride *= 2)
      for (int sp = 0; sp + stride < splits; sp += 2 * stride)
        warp_merge(LV[sp].data(), LI[sp].data(), k, LV[sp + stride].data(), LI[sp + stride].data(), (int64_t)0, k);
    // expected
    std::vector<int64_t> ord; for (int j = 0; j < m; ++j) if (kid[j] != my) ord.push_back(j);
    std::stable_sort(ord.begin(), ord.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
    for (int o = 0; o < k; ++o) {
      float ev = o < (int)ord.size() ? s[ord[o]] : -INFINITY; int64_t ei = o < (int)ord.size() ? ord[o] : -1;
      if (LV[0][o] != ev || LI[0][o] != ei) { if (fails < 5) std::printf("trial %d m %d k %d splits %d pos %d: %g/%ld vs %g/%ld\n", trial, m, k, splits, o, LV[0][o], (long)LI[0][o], ev, (long)ei); ++fails; break; }
    }
  }
  CHECK(fails == 0);
  return dcd_test::report("topk_warp_sim");
}
