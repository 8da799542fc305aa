"""Public DCD operators (``torch.ops.dcd_ext.*``): wrappers, fake kernels and autograd.

The math of every operator is docs/design.md section 3 and its contract section 4;
:mod:`dcd_ext.reference` holds plain-PyTorch versions.
Each operator runs blockwise and never allocates an N x M buffer.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from dcd_ext._loader import load_extension
from dcd_ext.loss_options import KINDS, WEIGHTINGS
from dcd_ext.outputs import DCDLossOutput, DistillOutput

load_extension()

__all__ = [
    "similarity_topk",
    "contrastive_loss",
    "distill_loss",
    "dynamic_contrastive_loss",
    "DCDLossOutput",
    "DistillOutput",
]

MATRIX_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INT_MAX = 2**31 - 1
ScaleLike = Union[Tensor, float]


# ------------------------------------------------------------------------------ argument conversion
# The argument checks live in C++ (csrc/checks.h), so torch.ops.dcd_ext.* called directly is as safe as
# these wrappers. The wrappers only convert what the schemas cannot take, with a TypeError naming the
# argument where a value cannot be converted.

def _tensors(required: dict, optional: Optional[dict] = None) -> None:
    for name, t in required.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (optional or {}).items():
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")


def _as_scale(logit_scale: ScaleLike, ref: Tensor) -> Tensor:
    if isinstance(logit_scale, Tensor):
        return logit_scale
    if isinstance(logit_scale, (int, float)) and not isinstance(logit_scale, bool):
        # a fill, not a host-to-device copy: no synchronisation on CUDA
        return torch.full((), float(logit_scale), dtype=torch.float32, device=ref.device)
    raise TypeError(f"logit_scale must be a tensor or a float, got {type(logit_scale).__name__}")


def _as_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def _as_str(value, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------------ operators

def similarity_topk(query: Tensor, keys: Tensor, k: int, query_ids: Optional[Tensor] = None,
                    key_ids: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Top-k of ``<query_i, keys_j>`` per row: ``(values [N, k] float32, indices [N, k] int64)``.

    Sorted descending, ties to the smaller index. A key whose id equals the query's id is never
    returned. Rows with fewer than k allowed keys are padded with ``-inf`` / ``-1``. Not differentiable.
    """
    _tensors(dict(query=query, keys=keys), dict(query_ids=query_ids, key_ids=key_ids))
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    return torch.ops.dcd_ext.similarity_topk(query, keys, k, query_ids, key_ids)


def contrastive_loss(img: Tensor, txt: Tensor, logit_scale: ScaleLike, pos_row: Optional[Tensor] = None,
                     pos_col: Optional[Tensor] = None, img_ids: Optional[Tensor] = None,
                     txt_ids: Optional[Tensor] = None, row_weight: Optional[Tensor] = None,
                     col_weight: Optional[Tensor] = None) -> Tensor:
    """Bidirectional InfoNCE ``L_con`` with id masking; memory O(N + M). Gradients for img, txt, logit_scale."""
    _tensors(dict(img=img, txt=txt), dict(pos_row=pos_row, pos_col=pos_col, img_ids=img_ids, txt_ids=txt_ids,
                                          row_weight=row_weight, col_weight=col_weight))
    scale = _as_scale(logit_scale, img)
    loss, _, _ = torch.ops.dcd_ext.contrastive_loss(img, txt, scale, pos_row, pos_col, img_ids, txt_ids,
                                                    row_weight, col_weight)
    return loss


def distill_loss(anchors: Tensor, pool: Tensor, cand: Tensor, teacher: Tensor, logit_scale: ScaleLike,
                 temperature: float = 1.0, kind: str = "kl", weighting: str = "dcd") -> DistillOutput:
    """One direction of the candidate terms: ``(dist, hard, dist_weight [N], hard_weight [N])``.

    ``cand[i, 0]`` is anchor i's positive in ``pool``; ``cand[i, m >= 1]`` its negatives, or -1 for an
    absent slot. ``kind`` and ``weighting`` name one of :data:`dcd_ext.loss_options.KINDS` and
    :data:`dcd_ext.loss_options.WEIGHTINGS`. Gradients flow to anchors, pool and logit_scale; the weights
    are constants.
    """
    _tensors(dict(anchors=anchors, pool=pool, cand=cand, teacher=teacher))
    scale = _as_scale(logit_scale, anchors)
    return DistillOutput(*torch.ops.dcd_ext.distill_loss(anchors, pool, cand, teacher, scale,
                                                          _as_float(temperature, "temperature"),
                                                          _as_str(kind, "kind"), _as_str(weighting, "weighting")))


def dynamic_contrastive_loss(img: Tensor, txt: Tensor, logit_scale: ScaleLike, i2t_cand: Tensor,
                             i2t_teacher: Tensor, t2i_cand: Tensor, t2i_teacher: Tensor,
                             img_ids: Optional[Tensor] = None, txt_ids: Optional[Tensor] = None,
                             alpha: float = 0.2, temperature: float = 1.0, kind: str = "kl",
                             weighting: str = "dcd", con_weight: float = 1.0) -> DCDLossOutput:
    """The fused DCD loss ``con_weight * L_con + alpha * L_dist + (1 - alpha) * L_hard``.

    ``img[i]`` and ``txt[i]`` are a positive pair; ``i2t_cand`` indexes ``txt`` and ``t2i_cand`` indexes
    ``img``; distillation and hard terms are averaged over the two directions.
    """
    _tensors(dict(img=img, txt=txt, i2t_cand=i2t_cand, i2t_teacher=i2t_teacher, t2i_cand=t2i_cand,
                  t2i_teacher=t2i_teacher), dict(img_ids=img_ids, txt_ids=txt_ids))
    scale = _as_scale(logit_scale, img)
    return DCDLossOutput(*torch.ops.dcd_ext.dynamic_contrastive_loss(
        img, txt, scale, i2t_cand, i2t_teacher, t2i_cand, t2i_teacher, img_ids, txt_ids, _as_float(alpha, "alpha"),
        _as_float(temperature, "temperature"), _as_str(kind, "kind"), _as_str(weighting, "weighting"),
        _as_float(con_weight, "con_weight")))


# ------------------------------------------------------------------------- fake kernels (meta)
# They repeat the C++ shape, dtype and device checks, with the same messages and exception types, so
# torch.compile traces and meta tensors reject bad input too; index values are checked in C++ only.

def _check_device(t: Tensor, name: str, ref: Tensor, ref_name: str) -> None:
    torch._check_value(t.device == ref.device, lambda: f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def _check_matrix_pair(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    for t, name in ((a, a_name), (b, b_name)):
        torch._check_value(t.dim() == 2, lambda: f"{name} must be 2-D [rows, dim], got shape {list(t.shape)}")
        torch._check_type(t.dtype in MATRIX_DTYPES, lambda: f"{name} must be a floating tensor (float32, "
                                                            f"float16, bfloat16 or float64), got {t.dtype}")
    _check_device(b, b_name, a, a_name)
    torch._check_value(a.shape[1] == b.shape[1], lambda: f"{a_name} and {b_name} must have the same embedding "
                                                         f"width, got {a.shape[1]} and {b.shape[1]}")


def _check_scale(scale: Tensor, ref: Tensor, ref_name: str) -> None:
    torch._check_value(scale.numel() == 1, lambda: "logit_scale must be a floating tensor with one element, "
                                                   f"got shape {list(scale.shape)}")
    torch._check_type(scale.is_floating_point(), lambda: "logit_scale must be a floating tensor with one "
                                                         f"element, got dtype {scale.dtype}")
    _check_device(scale, "logit_scale", ref, ref_name)


def _check_vector(t: Optional[Tensor], name: str, n, index: bool, ref: Tensor, ref_name: str) -> None:
    if t is None:
        return
    if index:
        torch._check_type(t.dtype == torch.int64, lambda: f"{name} must be int64, got {t.dtype}")
    else:
        torch._check_type(t.is_floating_point(), lambda: f"{name} must be a floating tensor, got {t.dtype}")
    torch._check_value(t.dim() == 1 and t.shape[0] == n, lambda: f"{name} must have shape [{n}], got {list(t.shape)}")
    _check_device(t, name, ref, ref_name)


def _check_id_pair(a, a_name: str, n, b, b_name: str, m, ref: Tensor, ref_name: str) -> None:
    torch._check_value((a is None) == (b is None), lambda: f"{a_name} and {b_name} must be given together")
    _check_vector(a, a_name, n, True, ref, ref_name)
    _check_vector(b, b_name, m, True, ref, ref_name)


def _check_candidates(cand: Tensor, cand_name: str, teacher: Tensor, teacher_name: str, anchors: Tensor,
                      anchors_name: str) -> None:
    n = anchors.shape[0]
    torch._check_type(cand.dtype == torch.int64, lambda: f"{cand_name} must be an int64 tensor, got {cand.dtype}")
    torch._check_value(cand.dim() == 2 and cand.shape[0] == n and cand.shape[1] >= 1,
                       lambda: f"{cand_name} must have shape [{n}, K+1] with K+1 >= 1, got {list(cand.shape)}")
    _check_device(cand, cand_name, anchors, anchors_name)
    torch._check_type(teacher.is_floating_point(), lambda: f"{teacher_name} must be a floating tensor, got "
                                                           f"{teacher.dtype}")
    torch._check_value(teacher.shape == cand.shape, lambda: f"{teacher_name} must have the shape of {cand_name} "
                                                            f"{list(cand.shape)}, got {list(teacher.shape)}")
    _check_device(teacher, teacher_name, anchors, anchors_name)


def _check_options(temperature: float, kind: str, weighting: str) -> None:
    torch._check_value(temperature > 0, lambda: f"temperature must be a positive number, got {temperature}")
    for name, value, choices in (("kind", kind, KINDS), ("weighting", weighting, WEIGHTINGS)):
        torch._check_value(value in choices, lambda: f"{name} must be one of "
                                                     f"{', '.join(repr(c) for c in choices)}; got {value!r}")


def _acc_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32


@torch.library.register_fake("dcd_ext::similarity_topk")
def _similarity_topk_fake(query, keys, k, query_ids=None, key_ids=None):
    _check_matrix_pair(query, "query", keys, "keys")
    torch._check_value(k >= 0, lambda: f"k must be non-negative, got {k}")
    torch._check_value(k <= INT_MAX, lambda: f"k must be at most {INT_MAX} (the kernels index the top-k lists with "
                                             f"int), got {k}")
    _check_id_pair(query_ids, "query_ids", query.shape[0], key_ids, "key_ids", keys.shape[0], query, "query")
    n = query.shape[0]
    return query.new_empty((n, k), dtype=torch.float32), query.new_empty((n, k), dtype=torch.int64)


@torch.library.register_fake("dcd_ext::contrastive_loss")
def _contrastive_loss_fake(img, txt, logit_scale, pos_row=None, pos_col=None, img_ids=None, txt_ids=None,
                           row_weight=None, col_weight=None):
    _check_matrix_pair(img, "img", txt, "txt")
    n, m = img.shape[0], txt.shape[0]
    torch._check_value(n > 0 and m > 0, lambda: f"img and txt must be non-empty, got {n} and {m} rows")
    _check_scale(logit_scale, img, "img")
    torch._check_value(n == m or (pos_row is not None and pos_col is not None),
                       lambda: f"pos_row and pos_col are required when img and txt differ in length ({n} vs {m})")
    _check_vector(pos_row, "pos_row", n, True, img, "img")
    _check_vector(pos_col, "pos_col", m, True, img, "img")
    _check_id_pair(img_ids, "img_ids", n, txt_ids, "txt_ids", m, img, "img")
    _check_vector(row_weight, "row_weight", n, False, img, "img")
    _check_vector(col_weight, "col_weight", m, False, img, "img")
    acc = _acc_dtype(img, txt)
    return img.new_empty((), dtype=acc), img.new_empty((n,), dtype=acc), img.new_empty((m,), dtype=acc)


@torch.library.register_fake("dcd_ext::contrastive_loss_backward")
def _contrastive_loss_backward_fake(grad, img, txt, logit_scale, *rest):
    return torch.empty_like(img), torch.empty_like(txt), torch.empty_like(logit_scale)


@torch.library.register_fake("dcd_ext::distill_loss")
def _distill_loss_fake(anchors, pool, cand, teacher, logit_scale, temperature=1.0, kind="kl", weighting="dcd"):
    _check_matrix_pair(anchors, "anchors", pool, "pool")
    n = anchors.shape[0]
    torch._check_value(n > 0, lambda: "anchors must be non-empty")
    _check_scale(logit_scale, anchors, "anchors")
    _check_candidates(cand, "cand", teacher, "teacher", anchors, "anchors")
    _check_options(temperature, kind, weighting)
    acc = _acc_dtype(anchors, pool)
    return (anchors.new_empty((), dtype=acc), anchors.new_empty((), dtype=acc),
            anchors.new_empty((n,), dtype=acc), anchors.new_empty((n,), dtype=acc))


@torch.library.register_fake("dcd_ext::distill_loss_backward")
def _distill_loss_backward_fake(grad_dist, grad_hard, anchors, pool, cand, teacher, logit_scale, *rest):
    return torch.empty_like(anchors), torch.empty_like(pool), torch.empty_like(logit_scale)


# ------------------------------------------------------------------------------------- autograd

def _contrastive_setup(ctx, inputs, output):
    img, txt, scale, pos_row, pos_col, img_ids, txt_ids, row_weight, col_weight = inputs
    _, row_lse, col_lse = output
    ctx.save_for_backward(img, txt, scale, pos_row, pos_col, img_ids, txt_ids, row_weight, col_weight,
                          row_lse, col_lse)


def _contrastive_backward(ctx, grad_loss, grad_row_lse, grad_col_lse):
    saved = ctx.saved_tensors
    if grad_loss is None:
        return (None,) * 9
    d_img, d_txt, d_scale = torch.ops.dcd_ext.contrastive_loss_backward(grad_loss, *saved)
    return d_img, d_txt, d_scale, None, None, None, None, None, None


torch.library.register_autograd("dcd_ext::contrastive_loss", _contrastive_backward, setup_context=_contrastive_setup)


def _distill_setup(ctx, inputs, output):
    anchors, pool, cand, teacher, scale, temperature, kind, _weighting = inputs
    _, _, dist_weight, hard_weight = output
    ctx.save_for_backward(anchors, pool, cand, teacher, scale, dist_weight, hard_weight)
    ctx.temperature, ctx.kind = temperature, kind


def _distill_backward(ctx, grad_dist, grad_hard, grad_wd, grad_wh):
    anchors, pool, cand, teacher, scale, dist_weight, hard_weight = ctx.saved_tensors
    if grad_dist is None and grad_hard is None:
        return (None,) * 8
    zero = dist_weight.new_zeros(())
    grad_dist = zero if grad_dist is None else grad_dist
    grad_hard = zero if grad_hard is None else grad_hard
    d_anchor, d_pool, d_scale = torch.ops.dcd_ext.distill_loss_backward(
        grad_dist, grad_hard, anchors, pool, cand, teacher, scale, ctx.temperature, ctx.kind, dist_weight,
        hard_weight)
    return d_anchor, d_pool, None, None, d_scale, None, None, None


torch.library.register_autograd("dcd_ext::distill_loss", _distill_backward, setup_context=_distill_setup)


def _refuse_double_backward(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"dcd_ext.ops.{op}: double backward (the gradient of a gradient, e.g. a gradient penalty after "
            f"torch.autograd.grad(..., create_graph=True)) is not supported by the fused kernels; use "
            f"dcd_ext.reference.{op} for that term")

    def setup(ctx, inputs, output):
        pass

    torch.library.register_autograd(f"dcd_ext::{op}_backward", backward, setup_context=setup)


# The gradients are themselves differentiable functions of the inputs; without an autograd formula for
# the backward ops their own gradients would silently come out as zero.
for _op in ("contrastive_loss", "distill_loss"):
    _refuse_double_backward(_op)
