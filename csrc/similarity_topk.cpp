// Device-agnostic glue of similarity_topk: checks, contiguity, then the device kernel (each kernel refuses
// non-finite inputs itself: the CPU kernel on the score tiles it computes anyway).
#include <torch/library.h>

#include "checks.h"
#include "dispatch.h"

namespace dcd {
namespace {

std::tuple<at::Tensor, at::Tensor> similarity_topk(const at::Tensor& query, const at::Tensor& keys, int64_t k,
                                                   const c10::optional<at::Tensor>& query_ids,
                                                   const c10::optional<at::Tensor>& key_ids) {
  at::NoGradGuard no_grad;
  check_matrix_pair(query, "query", keys, "keys");
  check_k(k);
  check_id_pair(query_ids, "query_ids", query.sym_size(0), key_ids, "key_ids", keys.sym_size(0), query, "query");
  const at::Tensor qid = query_ids.has_value() ? query_ids->contiguous() : at::Tensor();
  const at::Tensor kid = key_ids.has_value() ? key_ids->contiguous() : at::Tensor();
  return kernels_for(query).similarity_topk(query.detach().contiguous(), keys.detach().contiguous(), k, qid, kid);
}

}  // namespace

TORCH_LIBRARY_IMPL(dcd_ext, CPU, m) {
  m.impl("similarity_topk", &similarity_topk);
}
#ifdef DCD_WITH_CUDA
TORCH_LIBRARY_IMPL(dcd_ext, CUDA, m) {
  m.impl("similarity_topk", &similarity_topk);
}
#endif

}  // namespace dcd
