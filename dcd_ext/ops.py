"""Public DCD operators (``torch.ops.dcd_ext.*``) with argument checks, fake kernels and autograd.

The math of every operator is docs/design.md section 3 and its contract section 4;
:mod:`dcd_ext.reference` holds plain-PyTorch versions.
Each operator runs blockwise and never allocates an N x M buffer.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from dcd_ext._loader import load_extension
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

TOPK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
KINDS = ("kl", "mse")
WEIGHTINGS = ("none", "entropy", "wsl", "dcd")
ScaleLike = Union[Tensor, float]


# ----------------------------------------------------------------------------------------- checks

def _matrix(t, name: str, dtypes=None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [rows, dim], got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")


def _same_device(ref: Tensor, t: Tensor, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def _same_width(a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{a_name} and {b_name} must have the same embedding width, got {a.shape[1]} and {b.shape[1]}")


def _int_vector(t, n: int, name: str, ref: Tensor, ref_name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must have shape [{n}], got {tuple(t.shape)}")
    _same_device(ref, t, name, ref_name)


def _pair_of_ids(a, b, n: int, m: int, a_name: str, b_name: str, ref: Tensor, ref_name: str) -> None:
    if (a is None) != (b is None):
        raise ValueError(f"{a_name} and {b_name} must be given together")
    if a is not None:
        _int_vector(a, n, a_name, ref, ref_name)
        _int_vector(b, m, b_name, ref, ref_name)


def _as_scale(logit_scale: ScaleLike, ref: Tensor) -> Tensor:
    if isinstance(logit_scale, (int, float)) and not isinstance(logit_scale, bool):
        return torch.tensor(float(logit_scale), dtype=torch.float32, device=ref.device)
    if not isinstance(logit_scale, Tensor):
        raise TypeError(f"logit_scale must be a tensor or a float, got {type(logit_scale).__name__}")
    if logit_scale.numel() != 1 or not logit_scale.is_floating_point():
        raise ValueError(f"logit_scale must be a floating tensor with one element, got shape "
                         f"{tuple(logit_scale.shape)} and dtype {logit_scale.dtype}")
    _same_device(ref, logit_scale, "logit_scale", "the embeddings")
    return logit_scale


def _weights(w, n: int, name: str, ref: Tensor) -> None:
    if w is None:
        return
    if not isinstance(w, Tensor) or not w.is_floating_point() or w.dim() != 1 or w.shape[0] != n:
        raise ValueError(f"{name} must be a floating tensor of shape [{n}]")
    _same_device(ref, w, name, "img")


def _choice(value, choices, name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _acc_dtype(a: Tensor, b: Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32


# ------------------------------------------------------------------------------------ operators

def similarity_topk(query: Tensor, keys: Tensor, k: int, query_ids: Optional[Tensor] = None,
                    key_ids: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Top-k of ``<query_i, keys_j>`` per row: ``(values [N, k] float32, indices [N, k] int64)``.

    Sorted descending, ties to the smaller index. A key whose id equals the query's id is never
    returned. Rows with fewer than k allowed keys are padded with ``-inf`` / ``-1``. Not differentiable.
    """
    _matrix(query, "query", TOPK_DTYPES)
    _matrix(keys, "keys", TOPK_DTYPES)
    _same_device(query, keys, "keys", "query")
    _same_width(query, keys, "query", "keys")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    _pair_of_ids(query_ids, key_ids, query.shape[0], keys.shape[0], "query_ids", "key_ids", query, "query")
    return torch.ops.dcd_ext.similarity_topk(query, keys, k, query_ids, key_ids)


def contrastive_loss(img: Tensor, txt: Tensor, logit_scale: ScaleLike, pos_row: Optional[Tensor] = None,
                     pos_col: Optional[Tensor] = None, img_ids: Optional[Tensor] = None,
                     txt_ids: Optional[Tensor] = None, row_weight: Optional[Tensor] = None,
                     col_weight: Optional[Tensor] = None) -> Tensor:
    """Bidirectional InfoNCE ``L_con`` with id masking; memory O(N + M). Gradients for img, txt, logit_scale."""
    _matrix(img, "img")
    _matrix(txt, "txt")
    _same_device(img, txt, "txt", "img")
    _same_width(img, txt, "img", "txt")
    n, m = img.shape[0], txt.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"img and txt must be non-empty, got {n} and {m} rows")
    scale = _as_scale(logit_scale, img)
    if pos_row is None and pos_col is None and n != m:
        raise ValueError(f"pos_row and pos_col are required when img and txt differ in length ({n} vs {m})")
    if pos_row is not None:
        _int_vector(pos_row, n, "pos_row", img, "img")
    if pos_col is not None:
        _int_vector(pos_col, m, "pos_col", img, "img")
    _pair_of_ids(img_ids, txt_ids, n, m, "img_ids", "txt_ids", img, "img")
    _weights(row_weight, n, "row_weight", img)
    _weights(col_weight, m, "col_weight", img)
    loss, _, _ = torch.ops.dcd_ext.contrastive_loss(img, txt, scale, pos_row, pos_col, img_ids, txt_ids,
                                                    row_weight, col_weight)
    return loss


def _check_candidates(anchors: Tensor, pool: Tensor, cand: Tensor, teacher: Tensor, names: tuple[str, str]) -> None:
    cand_name, teacher_name = names
    if not isinstance(cand, Tensor) or cand.dtype != torch.int64:
        raise TypeError(f"{cand_name} must be an int64 tensor")
    if cand.dim() != 2 or cand.shape[0] != anchors.shape[0] or cand.shape[1] < 1:
        raise ValueError(f"{cand_name} must have shape [{anchors.shape[0]}, K+1], got {tuple(cand.shape)}")
    if not isinstance(teacher, Tensor) or not teacher.is_floating_point():
        raise TypeError(f"{teacher_name} must be a floating tensor")
    if teacher.shape != cand.shape:
        raise ValueError(f"{teacher_name} must have the shape of {cand_name} {tuple(cand.shape)}, "
                         f"got {tuple(teacher.shape)}")
    _same_device(anchors, cand, cand_name, "the embeddings")
    _same_device(anchors, teacher, teacher_name, "the embeddings")


def _check_distill_options(temperature, kind, weighting) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    _choice(kind, KINDS, "kind")
    _choice(weighting, WEIGHTINGS, "weighting")


def distill_loss(anchors: Tensor, pool: Tensor, cand: Tensor, teacher: Tensor, logit_scale: ScaleLike,
                 temperature: float = 1.0, kind: str = "kl", weighting: str = "dcd") -> DistillOutput:
    """One direction of the candidate terms: ``(dist, hard, dist_weight [N], hard_weight [N])``.

    ``cand[i, 0]`` is anchor i's positive in ``pool``; ``cand[i, m >= 1]`` its negatives, or -1 for an
    absent slot. Gradients flow to anchors, pool and logit_scale; the weights are constants.
    """
    _matrix(anchors, "anchors")
    _matrix(pool, "pool")
    _same_device(anchors, pool, "pool", "anchors")
    _same_width(anchors, pool, "anchors", "pool")
    if anchors.shape[0] == 0:
        raise ValueError("anchors must be non-empty")
    scale = _as_scale(logit_scale, anchors)
    _check_candidates(anchors, pool, cand, teacher, ("cand", "teacher"))
    _check_distill_options(temperature, kind, weighting)
    return DistillOutput(*torch.ops.dcd_ext.distill_loss(anchors, pool, cand, teacher, scale, float(temperature),
                                                          kind, weighting))


def dynamic_contrastive_loss(img: Tensor, txt: Tensor, logit_scale: ScaleLike, i2t_cand: Tensor,
                             i2t_teacher: Tensor, t2i_cand: Tensor, t2i_teacher: Tensor,
                             img_ids: Optional[Tensor] = None, txt_ids: Optional[Tensor] = None,
                             alpha: float = 0.2, temperature: float = 1.0, kind: str = "kl",
                             weighting: str = "dcd", con_weight: float = 1.0) -> DCDLossOutput:
    """The fused DCD loss ``con_weight * L_con + alpha * L_dist + (1 - alpha) * L_hard``.

    ``img[i]`` and ``txt[i]`` are a positive pair; ``i2t_cand`` indexes ``txt`` and ``t2i_cand`` indexes
    ``img``; distillation and hard terms are averaged over the two directions.
    """
    _matrix(img, "img")
    _matrix(txt, "txt")
    _same_device(img, txt, "txt", "img")
    _same_width(img, txt, "img", "txt")
    if img.shape[0] != txt.shape[0] or img.shape[0] == 0:
        raise ValueError(f"img and txt must be non-empty and paired row by row, got {img.shape[0]} and {txt.shape[0]}")
    scale = _as_scale(logit_scale, img)
    _check_candidates(img, txt, i2t_cand, i2t_teacher, ("i2t_cand", "i2t_teacher"))
    _check_candidates(txt, img, t2i_cand, t2i_teacher, ("t2i_cand", "t2i_teacher"))
    _pair_of_ids(img_ids, txt_ids, img.shape[0], txt.shape[0], "img_ids", "txt_ids", img, "img")
    _check_distill_options(temperature, kind, weighting)
    for name, value in (("alpha", alpha), ("con_weight", con_weight)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return DCDLossOutput(*torch.ops.dcd_ext.dynamic_contrastive_loss(
        img, txt, scale, i2t_cand, i2t_teacher, t2i_cand, t2i_teacher, img_ids, txt_ids, float(alpha),
        float(temperature), kind, weighting, float(con_weight)))


# ------------------------------------------------------------------------- fake kernels (meta)

@torch.library.register_fake("dcd_ext::similarity_topk")
def _similarity_topk_fake(query, keys, k, query_ids=None, key_ids=None):
    n = query.shape[0]
    return query.new_empty((n, k), dtype=torch.float32), query.new_empty((n, k), dtype=torch.int64)


@torch.library.register_fake("dcd_ext::contrastive_loss")
def _contrastive_loss_fake(img, txt, logit_scale, pos_row=None, pos_col=None, img_ids=None, txt_ids=None,
                           row_weight=None, col_weight=None):
    acc = _acc_dtype(img, txt)
    return (img.new_empty((), dtype=acc), img.new_empty((img.shape[0],), dtype=acc),
            img.new_empty((txt.shape[0],), dtype=acc))


@torch.library.register_fake("dcd_ext::contrastive_loss_backward")
def _contrastive_loss_backward_fake(grad, img, txt, logit_scale, *rest):
    return torch.empty_like(img), torch.empty_like(txt), torch.empty_like(logit_scale)


@torch.library.register_fake("dcd_ext::distill_loss")
def _distill_loss_fake(anchors, pool, cand, teacher, logit_scale, temperature=1.0, kind="kl", weighting="dcd"):
    acc = _acc_dtype(anchors, pool)
    n = anchors.shape[0]
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
