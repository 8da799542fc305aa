// The CUDA top-k selection (csrc/cuda/similarity_topk.cu) as a host program, lanes as loops: per key
// split, 128-column tiles whose four 32-column chunks are tested in increasing column order against the
// row's threshold (strict >), survivors appended to a 32-entry buffer by ballot and prefix count, flushes
// that rank-sort the buffer and merge it 32 output positions at a time from the top (dcd/topk.h), then
// the splits' tree merge. Keeps the kernel's tie and threshold argument checked on machines without a
// GPU; change both together.
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>

#include "check.h"
#include "dcd/topk.h"

namespace {

using dcd::index_t;
constexpr int kBN = 128, kCap = 32, kWarp = 32;

int popcount(unsigned x) { return __builtin_popcount(x); }

// warp_merge: chunks of 32 positions from the top, every lane reads before any lane writes, stop once
// the lowest position of a chunk has no b entry before it
template <typename bidx_t>
void warp_merge(float* av, index_t* ai, int k, const float* bv, const bidx_t* bi, index_t base, int nb) {
  nb = dcd::topk_count_before(bv, bi, base, nb, av[k - 1], ai[k - 1]);
  if (nb == 0) return;
  for (int top = dcd::topk_merge_top(ai, k, nb); top > 0; top -= kWarp) {
    float v[kWarp];
    index_t ix[kWarp];
    bool done = true;
    for (int lane = 0; lane < kWarp; ++lane) {
      const int o = top - kWarp + lane;
      if (o < 0) continue;
      const int b = dcd::topk_merged_at(av, ai, bv, bi, base, nb, o, v[lane], ix[lane]);
      done = done && b == 0;
    }
    for (int lane = 0; lane < kWarp; ++lane) {
      const int o = top - kWarp + lane;
      if (o < 0) continue;
      av[o] = v[lane];
      ai[o] = ix[lane];
    }
    if (done) break;
  }
}

// flush_candidates: rank sort of the buffer, merge, the new threshold
float flush(float* lv, index_t* li, int k, float* bv, int32_t* bo, int cnt, index_t base) {
  float mv[kWarp];
  int32_t mo[kWarp];
  int rank[kWarp];
  for (int lane = 0; lane < cnt; ++lane) {
    mv[lane] = bv[lane];
    mo[lane] = bo[lane];
    rank[lane] = 0;
    for (int x = 0; x < cnt; ++x) rank[lane] += dcd::topk_before(bv[x], index_t{bo[x]}, mv[lane], index_t{mo[lane]});
  }
  for (int lane = 0; lane < cnt; ++lane) {
    bv[rank[lane]] = mv[lane];
    bo[rank[lane]] = mo[lane];
  }
  warp_merge(lv, li, k, bv, bo, base, cnt);
  return lv[k - 1];
}

// One row against one split [cb, ce) of the scores s (masked where kid == my).
void select_split(const std::vector<float>& s, const std::vector<index_t>& kid, index_t my, index_t cb, index_t ce,
                  int k, float* lv, index_t* li) {
  const index_t m = static_cast<index_t>(s.size());
  float thr = -INFINITY, bv[kCap];
  int32_t bo[kCap];
  int cnt = 0;
  for (index_t c0 = cb; c0 < ce; c0 += kBN) {
    float tile[kBN];  // zero-filled past the matrix end, as the producer does
    for (int c = 0; c < kBN; ++c) tile[c] = c0 + c < m ? s[c0 + c] : 0.0f;
    bool any = false;
    for (int c = 0; c < kBN; ++c) any = any || tile[c] > thr;
    if (!any) continue;
    for (int e = 0; e < kBN / kWarp; ++e) {
      bool pass[kWarp];
      unsigned ballot = 0;
      for (int lane = 0; lane < kWarp; ++lane) {
        const index_t j = c0 + kWarp * e + lane;
        pass[lane] = j < ce && tile[kWarp * e + lane] > thr && kid[j] != my;
        if (pass[lane]) ballot |= 1u << lane;
      }
      if (ballot == 0) continue;
      if (cnt + popcount(ballot) > kCap) {
        thr = flush(lv, li, k, bv, bo, cnt, cb);
        cnt = 0;
        ballot = 0;
        for (int lane = 0; lane < kWarp; ++lane) {
          pass[lane] = pass[lane] && tile[kWarp * e + lane] > thr;
          if (pass[lane]) ballot |= 1u << lane;
        }
      }
      for (int lane = 0; lane < kWarp; ++lane) {
        if (!pass[lane]) continue;
        const int pos = cnt + popcount(ballot & ((1u << lane) - 1u));
        bv[pos] = tile[kWarp * e + lane];
        bo[pos] = static_cast<int32_t>(c0 + kWarp * e + lane - cb);
      }
      cnt += popcount(ballot);
    }
  }
  if (cnt > 0) flush(lv, li, k, bv, bo, cnt, cb);
}

}  // namespace

int main() {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    const int m = 1 + static_cast<int>(rng() % 3000);
    const int k = 1 + static_cast<int>(rng() % (trial % 3 == 0 ? 1100 : 40));
    const int tiles = (m + kBN - 1) / kBN, wanted = 1 + static_cast<int>(rng() % 12);
    const int per = (tiles + wanted - 1) / wanted, splits = (tiles + per - 1) / per;
    std::vector<float> s(m);
    for (float& x : s) x = static_cast<float>(static_cast<int>(rng() % 21) - 10);  // many ties
    std::vector<index_t> kid(m);
    for (index_t& x : kid) x = rng() % 3;
    const index_t my = rng() % 4;
    if (trial % 10 == 0) std::fill(kid.begin(), kid.end(), my);  // the whole row masked

    std::vector<std::vector<float>> lv(splits, std::vector<float>(k, -INFINITY));
    std::vector<std::vector<index_t>> li(splits, std::vector<index_t>(k, -1));
    for (int sp = 0; sp < splits; ++sp) {
      const index_t cb = index_t{sp} * per * kBN, ce = std::min<index_t>(m, cb + index_t{per} * kBN);
      select_split(s, kid, my, cb, ce, k, lv[sp].data(), li[sp].data());
    }
    for (int stride = 1; stride < splits; stride *= 2) {
      for (int sp = 0; sp + stride < splits; sp += 2 * stride) {
        warp_merge(lv[sp].data(), li[sp].data(), k, lv[sp + stride].data(), li[sp + stride].data(), index_t{0}, k);
      }
    }

    std::vector<index_t> order;  // the contract: descending, ties to the smaller index, padded
    for (int j = 0; j < m; ++j) {
      if (kid[j] != my) order.push_back(j);
    }
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return s[a] > s[b]; });
    for (int o = 0; o < k; ++o) {
      const bool real = o < static_cast<int>(order.size());
      const float want_v = real ? s[order[o]] : -INFINITY;
      const index_t want_i = real ? order[o] : -1;
      if (lv[0][o] != want_v || li[0][o] != want_i) {
        std::printf("trial %d (m %d, k %d, %d splits) position %d: %g/%lld, want %g/%lld\n", trial, m, k, splits, o,
                    lv[0][o], static_cast<long long>(li[0][o]), want_v, static_cast<long long>(want_i));
        CHECK(false);
        break;
      }
    }
  }
  return dcd_test::report("topk_warp_sim");
}
