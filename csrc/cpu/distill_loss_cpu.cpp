// CPU kernels of the candidate (distillation) terms: per-anchor gathers of K+1 dot products, the
// per-anchor math of dcd/candidate_loss.h, and its gradient scattered back to anchors and pool.
#include <ATen/Parallel.h>

#include <memory>
#include <vector>

#include "dcd/candidate_loss.h"
#include "kernels.h"

namespace dcd {
namespace cpu {

namespace {

template <typename acc_t>
acc_t dot(const acc_t* a, const acc_t* b, int64_t d) {
  acc_t s = 0;
  for (int64_t e = 0; e < d; ++e) s += a[e] * b[e];
  return s;
}

template <typename acc_t>
struct DistillView {
  at::Tensor x, y;  // anchors and pool in the accumulation dtype
  const acc_t *xp, *yp, *tp;
  const int64_t* cand;
  int64_t n, k1, d;
  acc_t scale, tau;
  DistillKind kind;

  explicit DistillView(const DistillInputs& in, at::Tensor& teacher_acc) {
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    x = in.anchors.to(acc).contiguous();
    y = in.pool.to(acc).contiguous();
    teacher_acc = in.teacher.to(acc).contiguous();
    xp = x.data_ptr<acc_t>();
    yp = y.data_ptr<acc_t>();
    tp = teacher_acc.data_ptr<acc_t>();
    cand = in.cand.data_ptr<int64_t>();
    n = x.size(0);
    k1 = in.cand.size(1);
    d = x.size(1);
    scale = static_cast<acc_t>(in.logit_scale.item<double>());
    tau = static_cast<acc_t>(in.temperature);
    kind = static_cast<DistillKind>(in.kind);
  }

  // One anchor's candidates: dots[m] = <x_i, y_cand[i, m]>, z[m] = scale * dots[m] (0 for absent slots)
  // and the validity mask; one per thread, refilled by load() for each anchor.
  struct Row {
    std::vector<acc_t> z, dots;
    std::unique_ptr<bool[]> valid;
    explicit Row(int64_t k1) : z(k1), dots(k1), valid(new bool[k1]) {}
  };

  void load(int64_t i, Row& row) const {
    for (int64_t m = 0; m < k1; ++m) {
      const int64_t c = cand[i * k1 + m];
      row.valid[m] = c >= 0;
      row.dots[m] = row.valid[m] ? dot(xp + i * d, yp + c * d, d) : acc_t(0);
      row.z[m] = scale * row.dots[m];
    }
  }
};

template <typename acc_t>
at::Tensor stats_impl(const DistillInputs& in) {
  at::Tensor teacher;
  DistillView<acc_t> v(in, teacher);
  auto stats = at::empty({v.n, 4}, v.x.options());
  acc_t* sp = stats.template data_ptr<acc_t>();
  at::parallel_for(0, v.n, 64, [&](int64_t i0, int64_t i1) {
    typename DistillView<acc_t>::Row row(v.k1);
    for (int64_t i = i0; i < i1; ++i) {
      v.load(i, row);
      auto r = candidate_row_stats(v.tp + i * v.k1, row.z.data(), row.valid.get(), static_cast<int>(v.k1), v.tau,
                                   v.kind);
      sp[i * 4 + 0] = r.dist;
      sp[i * 4 + 1] = r.hard;
      sp[i * 4 + 2] = r.entropy;
      sp[i * 4 + 3] = r.ce_teacher;
    }
  });
  return stats;
}

template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> grad_impl(const DistillInputs& in, const at::Tensor& coef_dist,
                                                         const at::Tensor& coef_hard) {
  at::Tensor teacher;
  DistillView<acc_t> v(in, teacher);
  auto opts = v.x.options();
  auto dz = at::empty({v.n, v.k1}, opts);
  auto d_anchor = at::zeros({v.n, v.d}, opts), d_pool = at::zeros_like(v.y);
  const acc_t *cd = coef_dist.data_ptr<acc_t>(), *ch = coef_hard.data_ptr<acc_t>();
  acc_t *dzp = dz.template data_ptr<acc_t>(), *dxp = d_anchor.template data_ptr<acc_t>(), *dyp = d_pool.template data_ptr<acc_t>();
  std::vector<acc_t> d_scale_rows(v.n, 0);
  at::parallel_for(0, v.n, 64, [&](int64_t i0, int64_t i1) {
    typename DistillView<acc_t>::Row row(v.k1);
    for (int64_t i = i0; i < i1; ++i) {
      v.load(i, row);
      acc_t* dzi = dzp + i * v.k1;
      candidate_row_grad(v.tp + i * v.k1, row.z.data(), row.valid.get(), static_cast<int>(v.k1), v.tau, v.kind,
                         cd[i], ch[i], dzi);
      acc_t ds = 0;
      for (int64_t m = 0; m < v.k1; ++m) {
        if (!row.valid[m]) continue;
        const acc_t* yc = v.yp + v.cand[i * v.k1 + m] * v.d;
        const acc_t w = v.scale * dzi[m];
        for (int64_t e = 0; e < v.d; ++e) dxp[i * v.d + e] += w * yc[e];
        ds += dzi[m] * row.dots[m];
      }
      d_scale_rows[i] = ds;
    }
  });
  // candidates repeat across anchors, so the pool gradient is a serial scatter (O(N * K1 * D))
  for (int64_t i = 0; i < v.n; ++i) {
    for (int64_t m = 0; m < v.k1; ++m) {
      const int64_t c = v.cand[i * v.k1 + m];
      if (c < 0) continue;
      const acc_t w = v.scale * dzp[i * v.k1 + m];
      const acc_t* xi = v.xp + i * v.d;
      acc_t* dyc = dyp + c * v.d;
      for (int64_t e = 0; e < v.d; ++e) dyc[e] += w * xi[e];
    }
  }
  acc_t d_scale = 0;
  for (acc_t s : d_scale_rows) d_scale += s;
  return {d_anchor, d_pool, at::scalar_tensor(d_scale, opts)};
}
}  // namespace

at::Tensor distill_stats(const DistillInputs& in) {
  if (acc_dtype(in.anchors, in.pool) == at::kDouble) return stats_impl<double>(in);
  return stats_impl<float>(in);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distill_grad(const DistillInputs& in, const at::Tensor& coef_dist,
                                                            const at::Tensor& coef_hard) {
  if (acc_dtype(in.anchors, in.pool) == at::kDouble) return grad_impl<double>(in, coef_dist, coef_hard);
  return grad_impl<float>(in, coef_dist, coef_hard);
}

}  // namespace cpu
}  // namespace dcd
