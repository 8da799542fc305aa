// The fused DCD objective as a composite of the other operators: it runs on every device they run on,
// traces through torch.compile and gets its gradients from theirs.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "checks.h"

namespace dcd {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_contrastive(const at::Tensor& img, const at::Tensor& txt,
                                                                const at::Tensor& scale, const OptTensor& img_ids,
                                                                const OptTensor& txt_ids) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dcd_ext::contrastive_loss", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&,
                           const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&)>();
  return op.call(img, txt, scale, c10::nullopt, c10::nullopt, img_ids, txt_ids, c10::nullopt, c10::nullopt);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_distill(
    const at::Tensor& anchors, const at::Tensor& pool, const at::Tensor& cand, const at::Tensor& teacher,
    const at::Tensor& scale, double temperature, c10::string_view kind, c10::string_view weighting) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dcd_ext::distill_loss", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, double, c10::string_view, c10::string_view)>();
  return op.call(anchors, pool, cand, teacher, scale, temperature, kind, weighting);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
dynamic_contrastive_loss(const at::Tensor& img, const at::Tensor& txt, const at::Tensor& scale,
                         const at::Tensor& i2t_cand, const at::Tensor& i2t_teacher, const at::Tensor& t2i_cand,
                         const at::Tensor& t2i_teacher, const OptTensor& img_ids, const OptTensor& txt_ids,
                         double alpha, double temperature, c10::string_view kind, c10::string_view weighting,
                         double con_weight) {
  // the argument names of this operator (the inner calls would name their own); shapes only, since these
  // also run on fake tensors under torch.compile: the inner operators check the index values
  check_matrix_pair(img, "img", txt, "txt");
  TORCH_CHECK_VALUE(img.sym_size(0) == txt.sym_size(0) && img.sym_size(0) > 0,
                    "img and txt must be non-empty and paired row by row, got ", img.sym_size(0), " and ",
                    txt.sym_size(0), " rows");
  check_scale(scale, img, "img");
  check_candidates(i2t_cand, "i2t_cand", i2t_teacher, "i2t_teacher", img, "img");
  check_candidates(t2i_cand, "t2i_cand", t2i_teacher, "t2i_teacher", txt, "txt");
  check_id_pair(img_ids, "img_ids", img.sym_size(0), txt_ids, "txt_ids", txt.sym_size(0), img, "img");
  check_temperature(temperature);
  parse_kind(kind);
  parse_weighting(weighting);
  auto con = std::get<0>(call_contrastive(img, txt, scale, img_ids, txt_ids));
  auto i2t = call_distill(img, txt, i2t_cand, i2t_teacher, scale, temperature, kind, weighting);
  auto t2i = call_distill(txt, img, t2i_cand, t2i_teacher, scale, temperature, kind, weighting);
  auto dist = (std::get<0>(i2t) + std::get<0>(t2i)) * 0.5;
  auto hard = (std::get<1>(i2t) + std::get<1>(t2i)) * 0.5;
  auto loss = con * con_weight + dist * alpha + hard * (1.0 - alpha);
  return {loss, con, dist, hard, std::get<2>(i2t), std::get<3>(i2t), std::get<2>(t2i), std::get<3>(t2i)};
}

}  // namespace

TORCH_LIBRARY_IMPL(dcd_ext, CompositeImplicitAutograd, m) {
  m.impl("dynamic_contrastive_loss", &dynamic_contrastive_loss);
}

}  // namespace dcd
