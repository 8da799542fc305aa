// The dcd_ext operator schemas, all in one place, and the Python module entry point. Kernels register
// per device in the other files; fake kernels and autograd are registered from dcd_ext/ops.py.
#include <Python.h>
#include <torch/library.h>

#include "cpu/tile_gemm.h"

extern "C" {
// Importing dcd_ext._C runs the static TORCH_LIBRARY registrations; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(dcd_ext, m) {
  m.def("similarity_topk(Tensor query, Tensor keys, int k, Tensor? query_ids=None, Tensor? key_ids=None)"
        " -> (Tensor values, Tensor indices)");
  m.def("contrastive_loss(Tensor img, Tensor txt, Tensor logit_scale, Tensor? pos_row=None, Tensor? pos_col=None,"
        " Tensor? img_ids=None, Tensor? txt_ids=None, Tensor? row_weight=None, Tensor? col_weight=None)"
        " -> (Tensor loss, Tensor row_lse, Tensor col_lse)");
  m.def("contrastive_loss_backward(Tensor grad, Tensor img, Tensor txt, Tensor logit_scale, Tensor? pos_row,"
        " Tensor? pos_col, Tensor? img_ids, Tensor? txt_ids, Tensor? row_weight, Tensor? col_weight,"
        " Tensor row_lse, Tensor col_lse) -> (Tensor, Tensor, Tensor)");
  m.def("distill_loss(Tensor anchors, Tensor pool, Tensor cand, Tensor teacher, Tensor logit_scale,"
        " float temperature=1.0, str kind=\"kl\", str weighting=\"dcd\")"
        " -> (Tensor dist, Tensor hard, Tensor dist_weight, Tensor hard_weight)");
  m.def("distill_loss_backward(Tensor grad_dist, Tensor grad_hard, Tensor anchors, Tensor pool, Tensor cand,"
        " Tensor teacher, Tensor logit_scale, float temperature, str kind, Tensor dist_weight,"
        " Tensor hard_weight) -> (Tensor, Tensor, Tensor)");
  m.def("dynamic_contrastive_loss(Tensor img, Tensor txt, Tensor logit_scale, Tensor i2t_cand, Tensor i2t_teacher,"
        " Tensor t2i_cand, Tensor t2i_teacher, Tensor? img_ids=None, Tensor? txt_ids=None, float alpha=0.2,"
        " float temperature=1.0, str kind=\"kl\", str weighting=\"dcd\", float con_weight=1.0)"
        " -> (Tensor loss, Tensor con, Tensor dist, Tensor hard, Tensor i2t_dist_weight, Tensor i2t_hard_weight,"
        " Tensor t2i_dist_weight, Tensor t2i_hard_weight)");
  // which GEMM the CPU kernels use for each input dtype, and the CPU features that decided it
  m.def("cpu_gemm_report() -> str", &dcd::cpu::gemm_report);
}
