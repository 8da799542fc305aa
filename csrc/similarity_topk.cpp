// Device-agnostic glue of similarity_topk: checks, contiguity, then the device kernel.
#include <torch/library.h>

#include "checks.h"
#include "dispatch.h"

namespace dcd {
namespace {

std::tuple<at::Tensor, at::Tensor> similarity_topk(const at::Tensor& query, const at::Tensor& keys, int64_t k,
                                                   const c10::optional<at::Tensor>& query_ids,
                                                   const c10::optional<at::Tensor>& key_ids) {
  at::NoGradGuard no_grad;
  check_matrix(query, "query");
  check_matrix(keys, "keys");
  check_same_device(query, keys, "keys");
  TORCH_CHECK_VALUE(query.size(1) == keys.size(1), "query and keys must have the same width, got ", query.size(1),
                    " and ", keys.size(1));
  TORCH_CHECK_VALUE(k >= 0, "k must be non-negative, got ", k);
  TORCH_CHECK_VALUE(query_ids.has_value() == key_ids.has_value(), "query_ids and key_ids must be given together");
  at::Tensor qid, kid;
  if (query_ids.has_value()) {
    check_ids(*query_ids, query.size(0), query, "query_ids");
    check_ids(*key_ids, keys.size(0), query, "key_ids");
    qid = query_ids->contiguous();
    kid = key_ids->contiguous();
  }
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
