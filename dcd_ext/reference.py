"""Plain-PyTorch references of the four DCD operators (docs/design.md section 3).

They materialise the full similarity matrix, so they are the naive baseline of the benchmarks and the
independent oracle of the tests. All math runs in float32 (float64 for float64 inputs); outputs follow
the conventions of :mod:`dcd_ext.ops`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from dcd_ext.losses.candidates import candidate_loss  # the per-anchor candidate math, shared
from dcd_ext.outputs import DCDLossOutput, DistillOutput

NEG_INF = float("-inf")


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def similarity_topk(query: Tensor, keys: Tensor, k: int, query_ids: Optional[Tensor] = None,
                    key_ids: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Top-k inner products per query row, descending, ties to the smaller key index."""
    n, m = query.shape[0], keys.shape[0]
    scores = query.float() @ keys.float().T
    if query_ids is not None and key_ids is not None:
        scores = scores.masked_fill(query_ids.view(-1, 1) == key_ids.view(1, -1), NEG_INF)
    values = torch.full((n, k), NEG_INF, dtype=torch.float32, device=query.device)
    indices = torch.full((n, k), -1, dtype=torch.int64, device=query.device)
    kk = min(k, m)
    if kk > 0 and n > 0:
        # A stable descending sort keeps equal scores in ascending index order.
        sv, si = torch.sort(scores, dim=1, descending=True, stable=True)
        sv, si = sv[:, :kk], si[:, :kk]
        allowed = sv != NEG_INF
        values[:, :kk] = torch.where(allowed, sv, values[:, :kk])
        indices[:, :kk] = torch.where(allowed, si, indices[:, :kk])
    return values, indices


def default_positions(n: int, m: int, pos: Optional[Tensor], device) -> Tensor:
    if pos is not None:
        return pos.to(torch.int64)
    if n != m:
        raise ValueError("positions are required when the number of images and texts differ")
    return torch.arange(n, device=device)


def contrastive_loss(img: Tensor, txt: Tensor, logit_scale: Tensor, pos_row: Optional[Tensor] = None,
                     pos_col: Optional[Tensor] = None, img_ids: Optional[Tensor] = None,
                     txt_ids: Optional[Tensor] = None, row_weight: Optional[Tensor] = None,
                     col_weight: Optional[Tensor] = None) -> Tensor:
    """Bidirectional InfoNCE with id masking, optional positions and per-row/column weights."""
    dt = compute_dtype(img, txt)
    n, m = img.shape[0], txt.shape[0]
    pos_row = default_positions(n, m, pos_row, img.device)
    pos_col = default_positions(m, n, pos_col, img.device)
    s = logit_scale.to(dt) * (img.to(dt) @ txt.to(dt).T)
    rows, cols = torch.arange(n, device=img.device), torch.arange(m, device=img.device)
    is_pos_row = cols.view(1, -1) == pos_row.view(-1, 1)
    is_pos_col = rows.view(-1, 1) == pos_col.view(1, -1)
    if img_ids is not None and txt_ids is not None:
        same = img_ids.view(-1, 1) == txt_ids.view(1, -1)
    else:
        same = torch.zeros(n, m, dtype=torch.bool, device=img.device)
    row_lse = torch.logsumexp(s.masked_fill(same & ~is_pos_row, NEG_INF), dim=1)
    col_lse = torch.logsumexp(s.masked_fill(same & ~is_pos_col, NEG_INF), dim=0)

    def side(lse: Tensor, pos: Tensor, weight: Optional[Tensor], pos_scores) -> Tensor:
        has = pos >= 0
        if not bool(has.any()):
            return s.new_zeros(())
        w = torch.ones_like(lse) if weight is None else weight.to(dt)
        w = w[has]
        terms = lse[has] - pos_scores(has, pos[has])
        denom = w.sum()
        return torch.where(denom != 0, (w * terms).sum() / denom, s.new_zeros(()))

    row_part = side(row_lse, pos_row, row_weight, lambda has, p: s[has.nonzero().view(-1), p])
    col_part = side(col_lse, pos_col, col_weight, lambda has, p: s[p, has.nonzero().view(-1)])
    return 0.5 * (row_part + col_part)


def candidate_logits(anchors: Tensor, pool: Tensor, cand: Tensor, logit_scale: Tensor) -> Tensor:
    dt = compute_dtype(anchors, pool)
    gathered = pool.to(dt)[cand.clamp_min(0)]  # [N, K+1, D]
    return logit_scale.to(dt) * torch.einsum("nd,nkd->nk", anchors.to(dt), gathered)


def distill_loss(anchors: Tensor, pool: Tensor, cand: Tensor, teacher: Tensor, logit_scale: Tensor,
                 temperature: float = 1.0, kind: str = "kl", weighting: str = "dcd") -> DistillOutput:
    """One direction of the candidate terms: distillation, hard term and their dynamic weights.

    Candidate slots holding -1 (m >= 1) are absent from every softmax and mean.
    """
    dt = compute_dtype(anchors, pool)
    valid = cand >= 0
    z = candidate_logits(anchors, pool, cand, logit_scale)
    # the per-anchor terms on these logits are the logits-in candidate loss (one implementation of the math)
    return candidate_loss(z, teacher.to(dt), temperature, kind, weighting, valid)


def dynamic_contrastive_loss(img: Tensor, txt: Tensor, logit_scale: Tensor, i2t_cand: Tensor,
                             i2t_teacher: Tensor, t2i_cand: Tensor, t2i_teacher: Tensor,
                             img_ids: Optional[Tensor] = None, txt_ids: Optional[Tensor] = None,
                             alpha: float = 0.2, temperature: float = 1.0, kind: str = "kl",
                             weighting: str = "dcd", con_weight: float = 1.0) -> DCDLossOutput:
    """The full DCD objective: lambda * L_con + alpha * L_dist + (1 - alpha) * L_hard."""
    con = contrastive_loss(img, txt, logit_scale, img_ids=img_ids, txt_ids=txt_ids)
    i2t = distill_loss(img, txt, i2t_cand, i2t_teacher, logit_scale, temperature, kind, weighting)
    t2i = distill_loss(txt, img, t2i_cand, t2i_teacher, logit_scale, temperature, kind, weighting)
    dist = 0.5 * (i2t.dist + t2i.dist)
    hard = 0.5 * (i2t.hard + t2i.hard)
    loss = con_weight * con + alpha * dist + (1 - alpha) * hard
    return DCDLossOutput(loss, con, dist, hard, i2t.dist_weight, i2t.hard_weight,
                         t2i.dist_weight, t2i.hard_weight)
