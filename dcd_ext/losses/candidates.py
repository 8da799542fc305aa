"""The candidate terms of the DCD loss from candidate logits [N, K+1] (docs/design.md sections 3.2-3.3).

The fused ``distill_loss`` operator computes the student's candidate logits itself, as embedding products
``z_im = σ·<x_i, y_cand[i,m]>``. A cross-encoder student (``dcd_ext.students.build_fusion_student``) has no
embeddings: it scores each (anchor, candidate) pair with its own joint layers, so its logits arrive as a
tensor. :func:`candidate_loss` is the same math on such a tensor: on logits equal to ``σ·<x_i, y_cand[i,m]>``
it returns the operator's ``(dist, hard, dist_weight, hard_weight)`` (tested), and its gradient flows into
whatever produced the logits.

:func:`dynamic_weights` is the one plain-PyTorch implementation of the per-sample weights; the float64
references of the operators (``dcd_ext.reference``) import it from here.

:func:`authors_candidate_loss` is the loss of the DCD authors' released code (``KD_loss.py``) for their
shallow cross-encoder student: ``α·T²·MSE(t, z) + (1 − α)·BCE`` of every candidate logit against the
label [1, 0, ..., 0], weighted per anchor by the teacher's normalised entropy.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..loss_options import KINDS, WEIGHTINGS
from ..outputs import DistillOutput

__all__ = ["AuthorsLossOutput", "authors_candidate_loss", "candidate_loss", "dynamic_weights"]

NEG_INF = float("-inf")


def lse_minus_first(x: Tensor, valid: Tensor) -> Tensor:
    """``logsumexp`` of each row's valid slots minus slot 0, without cancellation.

    It equals ``softplus(L - x_0)`` with ``L`` the log-sum-exp of the other valid slots. Where slot 0
    dominates the value is tiny (4.1e-7 for x = [11.53, -3.18]) and the plain difference rounds to 0 in
    float32.
    """
    others = valid[:, 1:]
    has_others = others.any(1)
    # rows without another valid slot take a finite placeholder, so their (unused) gradient is 0, not NaN
    lse_others = torch.logsumexp(torch.where(has_others.unsqueeze(1), x[:, 1:].masked_fill(~others, NEG_INF),
                                             torch.zeros_like(x[:, 1:])), dim=1)
    gap = torch.where(has_others, lse_others - x[:, 0], torch.full_like(lse_others, NEG_INF))
    return torch.logaddexp(torch.zeros_like(gap), gap)


def dynamic_weights(t: Tensor, z: Tensor, valid: Tensor, weighting: str) -> tuple[Tensor, Tensor]:
    """Per-sample (distillation, hard) weights of docs/design.md section 3.3, detached."""
    t, z = t.detach(), z.detach()
    n = t.shape[0]
    tm = t.masked_fill(~valid, NEG_INF)
    p1 = torch.softmax(tm, dim=1)
    ent = -(torch.where(valid, p1 * torch.log_softmax(tm, dim=1), torch.zeros_like(p1))).sum(1)
    mean_h = ent.mean()
    e = ent / mean_h if float(mean_h) > 0 else torch.ones_like(ent)
    sum_h = ent.sum()
    frac = ent / sum_h if float(sum_h) > 0 else torch.zeros_like(ent)
    rho = n * torch.softmax((1 - frac) ** 2, dim=0)
    ce_s = lse_minus_first(z, valid)
    ce_t = lse_minus_first(t, valid)
    omega = -torch.expm1(-torch.clamp(ce_s / (ce_t + 1e-7), min=0))
    ones = torch.ones_like(ent)
    if weighting == "none":
        return ones, ones
    if weighting == "entropy":
        return rho, e
    if weighting == "wsl":
        return omega, ones
    if weighting == "dcd":
        wd = rho * omega
        mean_wd = wd.mean()
        wd = wd / mean_wd if float(mean_wd) > 0 else torch.zeros_like(wd)
        return wd, e
    raise ValueError(f"weighting must be one of none, entropy, wsl, dcd; got {weighting!r}")


def _prepare(student_logits: Tensor, teacher_logits: Tensor, valid: Optional[Tensor],
             temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """(z, t, valid) in the accumulation dtype (float32, float64 if either input is float64), checked."""
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be floating, got {x.dtype}")
    if student_logits.dim() != 2 or student_logits.shape[0] < 1 or student_logits.shape[1] < 1:
        raise ValueError(f"student_logits must be [N, K+1] with N, K+1 >= 1; got {tuple(student_logits.shape)}")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher_logits must have the shape of student_logits {tuple(student_logits.shape)}; "
                         f"got {tuple(teacher_logits.shape)}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    if valid is None:
        valid = torch.ones_like(student_logits, dtype=torch.bool)
    elif valid.shape != student_logits.shape or valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor of shape {tuple(student_logits.shape)}")
    if not bool(valid[:, 0].all()):
        raise ValueError("valid[:, 0] must be True: slot 0 is every anchor's positive")
    valid = valid.to(student_logits.device)
    dt = torch.float64 if torch.float64 in (student_logits.dtype, teacher_logits.dtype) else torch.float32
    # absent slots carry any value (even inf/NaN): replace it so that no NaN reaches a masked gradient
    z = student_logits.to(dt).masked_fill(~valid, 0.0)
    t = teacher_logits.detach().to(device=student_logits.device, dtype=dt).masked_fill(~valid, 0.0)
    return z, t, valid


def candidate_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, kind: str = "kl",
                   weighting: str = "dcd", valid: Optional[Tensor] = None) -> DistillOutput:
    """One direction of the candidate terms from student logits ``z`` [N, K+1] (slot 0 the positive) and
    teacher logits ``t`` of the same shape: ``DistillOutput(dist, hard, dist_weight, hard_weight)``.

    ``valid`` [N, K+1] bool marks present slots (default all; slot 0 must be present); absent slots are
    left out of every softmax, LSE and mean, as ``cand = -1`` slots are in ``dcd_ext.ops.distill_loss``.
    ``kind`` in ``dcd_ext.loss_options.KINDS``, ``weighting`` in ``WEIGHTINGS``. Gradients flow into
    ``student_logits`` only (teacher logits and weights are constants)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}; got {weighting!r}")
    z, t, valid = _prepare(student_logits, teacher_logits, valid, temperature)
    zm, tm = z.masked_fill(~valid, NEG_INF), t.masked_fill(~valid, NEG_INF)
    tau = float(temperature)
    if kind == "kl":
        logp = torch.log_softmax(tm / tau, dim=1)
        logq = torch.log_softmax(zm / tau, dim=1)
        diff = torch.where(valid, logp - logq, torch.zeros_like(z))
        d = tau * tau * (logp.exp() * diff).sum(1)
    else:
        sq = torch.where(valid, (t - z) ** 2, torch.zeros_like(z))
        d = sq.sum(1) / valid.sum(1).to(z.dtype)
    h = lse_minus_first(z, valid)
    wd, wh = dynamic_weights(t, z, valid, weighting)
    return DistillOutput((wd * d).mean(), (wh * h).mean(), wd, wh)


class AuthorsLossOutput(NamedTuple):
    loss: Tensor  # alpha * dist + (1 - alpha) * hard
    dist: Tensor  # T^2 * MSE(t, z) over every valid slot
    hard: Tensor  # mean over anchors of e_i * (mean over valid slots of BCE(z_im, y_m))
    hard_weight: Tensor  # e_i = H_i / mean(H), the teacher's normalised entropy (constants)


def authors_candidate_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
                           alpha: float = 0.2, valid: Optional[Tensor] = None) -> AuthorsLossOutput:
    """The DCD authors' loss for one candidate direction (their ``KD_loss.py``):

    - ``dist = T² · mean over valid (i, m) of (t_im − z_im)²`` (``nn.MSELoss``; their per-sample weight on
      it multiplies an already averaged MSE, so it changes nothing and is left out);
    - ``hard = mean_i e_i · mean_m BCEWithLogits(z_im, y_m)`` with ``y = [1, 0, ..., 0]`` and
      ``e_i = H_i / mean(H)``, ``H_i`` the entropy of ``softmax(t_i)`` (the ``entropy`` weighting's hard
      weight of :func:`dynamic_weights`);
    - ``loss = alpha · dist + (1 − alpha) · hard``.
    """
    z, t, valid = _prepare(student_logits, teacher_logits, valid, temperature)
    tau = float(temperature)
    count = valid.sum().to(z.dtype)
    dist = tau * tau * torch.where(valid, (t - z) ** 2, torch.zeros_like(z)).sum() / count
    labels = torch.zeros_like(z)
    labels[:, 0] = 1.0
    bce = F.binary_cross_entropy_with_logits(z, labels, reduction="none")
    per_anchor = torch.where(valid, bce, torch.zeros_like(bce)).sum(1) / valid.sum(1).to(z.dtype)
    _, e = dynamic_weights(t, z, valid, "entropy")
    hard = (e * per_anchor).mean()
    return AuthorsLossOutput(alpha * dist + (1 - alpha) * hard, dist, hard, e)
