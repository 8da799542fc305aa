// Torch glue of the CUDA kernels: tensors to raw pointers on the current device and stream, launch
// status checks. The kernels themselves (.cu files) include no torch headers.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <limits>

#include "cuda/launchers.h"
#include "finite_check.h"
#include "kernels.h"

namespace dcd {
namespace cuda {

namespace ck = cuda_kernels;

namespace {

ck::DType kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ck::DType::kFloat32;
    case at::kHalf: return ck::DType::kFloat16;
    case at::kBFloat16: return ck::DType::kBFloat16;
    case at::kDouble: return ck::DType::kFloat64;
    default: TORCH_INTERNAL_ASSERT(false, "the operator glue admits only the kernel dtypes, got ", t.scalar_type());
  }
  return ck::DType::kFloat32;
}

ck::Matrix matrix(const at::Tensor& t) {
  return ck::Matrix{t.data_ptr(), t.size(0), t.size(1), kernel_dtype(t)};
}

void check_launch(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, "dcd_ext CUDA kernel ", what, " failed: ", cudaGetErrorString(status));
}

// Both operands in one storage dtype (the kernels read a and b alike).
std::pair<at::Tensor, at::Tensor> common_dtype(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == b.scalar_type()) return {a, b};
  const auto t = at::promote_types(a.scalar_type(), b.scalar_type());
  return {a.to(t).contiguous(), b.to(t).contiguous()};
}

const int64_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<int64_t>() : nullptr;
}

at::Tensor scale_tensor(const at::Tensor& scale, at::ScalarType acc) {
  return scale.to(acc).reshape({1}).contiguous();
}

void check_candidates(int64_t k1) {
  TORCH_CHECK_VALUE(k1 <= ck::kMaxCandidates, "the CUDA distillation kernels take at most ", ck::kMaxCandidates,
                    " candidates per anchor (K + 1), got ", k1);
}

// The distillation inputs as the kernels read them: anchors and pool in one dtype, teacher logits and
// the scale in the accumulation dtype. Holds the tensors the raw pointers in args point into.
struct DistillOperands {
  at::Tensor x, y, teacher, scale;
  at::ScalarType acc;
  ck::DistillArgs args;

  explicit DistillOperands(const DistillInputs& in) {
    check_candidates(in.cand.size(1));
    acc = acc_dtype(in.anchors, in.pool);
    std::tie(x, y) = common_dtype(in.anchors, in.pool);
    teacher = in.teacher.to(acc).contiguous();
    scale = scale_tensor(in.logit_scale, acc);
    args = ck::DistillArgs{matrix(x), matrix(y), in.cand.data_ptr<int64_t>(), teacher.data_ptr(), in.cand.size(1),
                           scale.data_ptr(), in.temperature, in.kind};
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> similarity_topk(const at::Tensor& query, const at::Tensor& keys, int64_t k,
                                                   const at::Tensor& query_ids, const at::Tensor& key_ids) {
  c10::cuda::CUDAGuard guard(query.device());
  if (k == 0) {  // nothing is scored, so the inputs are checked on their own
    check_finite(query, "query");
    check_finite(keys, "keys");
  }
  const int64_t n = query.size(0);
  auto values = at::full({n, k}, -std::numeric_limits<float>::infinity(), query.options().dtype(at::kFloat));
  auto indices = at::full({n, k}, -1, query.options().dtype(at::kLong));
  auto [q, kk] = common_dtype(query, keys);
  // key splits for few queries against many keys (P5): partial lists in a workspace, merged on the device
  int sms = 0;  // a device attribute: no synchronisation
  check_launch(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, query.get_device()),
               "similarity_topk (device attribute)");
  const int64_t splits = ck::similarity_topk_splits(n, kk.size(0), k, sms);
  at::Tensor ws_v, ws_i;
  if (splits > 1) {
    ws_v = at::empty({splits - 1, n, k}, values.options());
    ws_i = at::empty({splits - 1, n, k}, indices.options());
  }
  // the kernel flags a non-finite score (a NaN or infinite input makes every score it enters one), so the
  // finite check costs no pass over the inputs; the flag becomes a device-side assertion, no host sync
  auto non_finite = at::zeros({1}, query.options().dtype(at::kInt));
  check_launch(ck::similarity_topk(matrix(q), matrix(kk), k, ptr_or_null(query_ids), ptr_or_null(key_ids),
                                   values.data_ptr<float>(), indices.data_ptr<int64_t>(), splits,
                                   splits > 1 ? ws_v.data_ptr<float>() : nullptr,
                                   splits > 1 ? ws_i.data_ptr<int64_t>() : nullptr, non_finite.data_ptr<int>(),
                                   c10::cuda::getCurrentCUDAStream()),
               "similarity_topk");
  at::_assert_async(non_finite.eq(0).all(), "query or keys hold NaN or infinite values (or query @ keys.T overflows "
                    "float32); similarity_topk needs finite inputs");
  return {values, indices};
}

std::tuple<at::Tensor, at::Tensor> contrastive_lse(const ContrastiveInputs& in) {
  c10::cuda::CUDAGuard guard(in.img.device());
  const auto acc = acc_dtype(in.img, in.txt);
  auto [u, v] = common_dtype(in.img, in.txt);
  auto scale = scale_tensor(in.logit_scale, acc);
  auto opts = u.options().dtype(acc);
  auto row_lse = at::empty({u.size(0)}, opts);
  auto col_lse = at::empty({v.size(0)}, opts);
  const int64_t *ii = ptr_or_null(in.img_ids), *ti = ptr_or_null(in.txt_ids);
  const int64_t *pr = in.pos_row.data_ptr<int64_t>(), *pc = in.pos_col.data_ptr<int64_t>();
  // the kernel's CTAs walk row blocks of its first operand: with fewer images than texts it runs on the
  // transposed problem (PairMask is symmetric under the swap), so the many texts fill the GPU and the
  // per-CTA column slots hold the few images
  const bool swap = u.size(0) < v.size(0);
  const at::Tensor& a = swap ? v : u;
  const at::Tensor& b = swap ? u : v;
  const ck::MaskArgs mask = swap ? ck::MaskArgs{ti, ii, pc, pr} : ck::MaskArgs{ii, ti, pr, pc};
  // per-CTA column (max, sum) slots of the one-pass forward (launchers.h: at most 512 x cols, 256 MiB)
  const int64_t parts = ck::contrastive_col_parts(matrix(a), matrix(b));
  TORCH_CHECK(parts > 0, "dcd_ext CUDA kernel contrastive_loss: device query failed: ",
              cudaGetErrorString(cudaGetLastError()));
  auto workspace = at::empty({2 * parts * b.size(0)}, opts);
  check_launch(ck::contrastive_lse(matrix(a), matrix(b), scale.data_ptr(), mask,
                                   (swap ? col_lse : row_lse).data_ptr(), (swap ? row_lse : col_lse).data_ptr(),
                                   workspace.data_ptr(), parts, c10::cuda::getCurrentCUDAStream()),
               "contrastive_loss");
  return {row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_grad(const ContrastiveInputs& in, const at::Tensor& g_row,
                                                                    const at::Tensor& lse_row, const at::Tensor& g_col,
                                                                    const at::Tensor& lse_col) {
  c10::cuda::CUDAGuard guard(in.img.device());
  const auto acc = acc_dtype(in.img, in.txt);
  auto [u, v] = common_dtype(in.img, in.txt);
  auto scale = scale_tensor(in.logit_scale, acc);
  auto opts = u.options().dtype(acc);
  // the kernels write every element of their d_* blocks
  auto d_img = at::empty({u.size(0), u.size(1)}, opts), d_txt = at::empty({v.size(0), v.size(1)}, opts);
  // column splits where one side's rows are too few to fill the GPU (launchers.h), each direction its own
  const int64_t row_splits = ck::contrastive_grad_splits(matrix(u), matrix(v));
  const int64_t col_splits = ck::contrastive_grad_splits(matrix(v), matrix(u));
  TORCH_CHECK(row_splits > 0 && col_splits > 0, "dcd_ext CUDA kernel contrastive_loss backward: device query failed: ",
              cudaGetErrorString(cudaGetLastError()));
  const int64_t ws_elems = std::max((row_splits - 1) * u.numel(), (col_splits - 1) * v.numel());
  auto split_ws = ws_elems > 0 ? at::empty({ws_elems}, opts) : at::Tensor();
  void* ws = ws_elems > 0 ? split_ws.data_ptr() : nullptr;
  const int64_t blocks = (u.size(0) + ck::kContrastiveRowsPerBlock - 1) / ck::kContrastiveRowsPerBlock;
  auto d_scale_parts = at::empty({blocks * row_splits}, opts);
  // max |dS| <= max |g_row| + max |g_col|, on the device (no host read): the 16-bit tensor-core
  // products pre-scale dS by a power of two from it
  auto g_bound = (g_row.abs().max() + g_col.abs().max()).to(acc).reshape({1}).contiguous();
  const int64_t *ii = ptr_or_null(in.img_ids), *ti = ptr_or_null(in.txt_ids);
  const int64_t *pr = in.pos_row.data_ptr<int64_t>(), *pc = in.pos_col.data_ptr<int64_t>();
  auto stream = c10::cuda::getCurrentCUDAStream();
  check_launch(ck::contrastive_grad(matrix(u), matrix(v), scale.data_ptr(), g_bound.data_ptr(),
                                    ck::MaskArgs{ii, ti, pr, pc}, g_row.data_ptr(), lse_row.data_ptr(),
                                    g_col.data_ptr(), lse_col.data_ptr(), d_img.data_ptr(), d_scale_parts.data_ptr(),
                                    row_splits, ws, stream),
               "contrastive_loss backward (rows)");
  check_launch(ck::contrastive_grad(matrix(v), matrix(u), scale.data_ptr(), g_bound.data_ptr(),
                                    ck::MaskArgs{ti, ii, pc, pr}, g_col.data_ptr(), lse_col.data_ptr(),
                                    g_row.data_ptr(), lse_row.data_ptr(), d_txt.data_ptr(), nullptr, col_splits, ws,
                                    stream),
               "contrastive_loss backward (columns)");
  return {d_img, d_txt, d_scale_parts.sum()};
}

at::Tensor distill_stats(const DistillInputs& in) {
  c10::cuda::CUDAGuard guard(in.anchors.device());
  DistillOperands ops(in);
  auto stats = at::empty({ops.x.size(0), 4}, ops.x.options().dtype(ops.acc));
  check_launch(ck::distill_stats(ops.args, stats.data_ptr(), c10::cuda::getCurrentCUDAStream()), "distill_loss");
  return stats;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distill_grad(const DistillInputs& in, const at::Tensor& coef_dist,
                                                            const at::Tensor& coef_hard) {
  c10::cuda::CUDAGuard guard(in.anchors.device());
  DistillOperands ops(in);
  auto opts = ops.x.options().dtype(ops.acc);
  const int64_t n = ops.x.size(0), k1 = in.cand.size(1);
  auto dz = at::empty({n, k1}, opts), d_anchor = at::empty({n, ops.x.size(1)}, opts);
  auto d_scale_rows = at::empty({n}, opts);
  auto stream = c10::cuda::getCurrentCUDAStream();
  check_launch(ck::distill_grad(ops.args, coef_dist.data_ptr(), coef_hard.data_ptr(), dz.data_ptr(),
                                d_anchor.data_ptr(), d_scale_rows.data_ptr(), stream),
               "distill_loss backward");
  // pool gradient: candidates grouped by pool index (stable sort) and summed per group in order; group p
  // (possibly empty) starts where searchsorted puts p, so the group count P is known without a host read
  auto sorted = at::sort(in.cand.reshape({-1}), /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto sorted_cand = std::get<0>(sorted).contiguous(), order = std::get<1>(sorted).contiguous();
  const int64_t p = ops.y.size(0);
  auto seg_starts = at::searchsorted(sorted_cand, at::arange(p + 1, sorted_cand.options())).contiguous();
  auto d_pool = at::zeros({p, ops.y.size(1)}, opts);
  // first / last run of every chunk of kPoolChunk sorted candidates (launchers.h)
  const int64_t chunks = (sorted_cand.numel() + ck::kPoolChunk - 1) / ck::kPoolChunk;
  auto workspace = at::empty({2 * chunks * ops.y.size(1)}, opts);
  check_launch(ck::distill_pool_grad(ops.args, dz.data_ptr(), order.data_ptr<int64_t>(), sorted_cand.data_ptr<int64_t>(),
                                     seg_starts.data_ptr<int64_t>(), p, workspace.data_ptr(), d_pool.data_ptr(),
                                     stream),
               "distill_loss backward (pool)");
  return {d_anchor, d_pool, d_scale_rows.sum()};
}

}  // namespace cuda
}  // namespace dcd
