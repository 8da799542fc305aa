"""The logits-in candidate terms (dcd_ext.losses.candidates): the fused operator's math on [N, K+1] logits, and the
DCD authors' loss against a direct transcription of its formula."""

import itertools
import math

import pytest
import torch

from dcd_ext import ops, reference
from dcd_ext.losses.candidates import authors_candidate_loss, candidate_loss, dynamic_weights
from dcd_ext.loss_options import KINDS, WEIGHTINGS
from op_helpers import leaf, unit_rows


def candidates(n, p, k1, gen):
    cand = torch.randint(0, p, (n, k1), generator=gen)
    cand[:, 0] = torch.arange(n) % p
    cand[::4, -1] = -1
    cand[1::7, 1] = -1
    return cand


@pytest.mark.parametrize("kind,weighting", list(itertools.product(KINDS, WEIGHTINGS)))
def test_on_embedding_logits_it_is_the_fused_operator(kind, weighting, gen):
    """z = σ<x_i, y_cand[i,m]> gives distill_loss's (dist, hard, weights) and, through z, its gradients."""
    n, p, k1, d = 29, 37, 7, 11
    anchors, pool = leaf(unit_rows(n, d, gen)), leaf(unit_rows(p, d, gen))
    scale = leaf(torch.tensor(9.0))
    cand = candidates(n, p, k1, gen)
    teacher = torch.randn(n, k1, generator=gen) * 3
    op = ops.distill_loss(anchors, pool, cand, teacher, scale, 2.0, kind, weighting)
    op_grads = torch.autograd.grad(0.3 * op.dist + 1.7 * op.hard, (anchors, pool, scale))
    z = reference.candidate_logits(anchors, pool, cand, scale)
    mine = candidate_loss(z, teacher, 2.0, kind, weighting, valid=cand >= 0)
    grads = torch.autograd.grad(0.3 * mine.dist + 1.7 * mine.hard, (anchors, pool, scale))
    for a, b in zip(mine, op):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, op_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_absent_slots_are_ignored_whatever_they_hold(gen):
    z = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    valid = torch.ones(6, 5, dtype=torch.bool)
    valid[2, 3:] = False
    clean = candidate_loss(z, t, 1.0, "kl", "dcd", valid)
    dirty_t = t.clone()
    dirty_t[2, 3], dirty_t[2, 4] = float("inf"), float("nan")
    dirty_z = torch.where(valid, z, torch.full_like(z, float("nan")))
    dirty = candidate_loss(dirty_z, dirty_t, 1.0, "kl", "dcd", valid)
    for a, b in zip(clean, dirty):
        torch.testing.assert_close(a, b)
    (grad,) = torch.autograd.grad(dirty.hard + dirty.dist, z)
    assert torch.isfinite(grad).all() and (grad[2, 3:] == 0).all()
    # dropping the absent slots altogether gives the anchor's same terms
    alone = candidate_loss(z[2:3, :3], t[2:3, :3], 1.0, "kl", "none")
    per_anchor = candidate_loss(z, t, 1.0, "kl", "none", valid)
    assert alone.hard.item() == pytest.approx(
        (torch.logsumexp(z[2, :3], 0) - z[2, 0]).item())
    assert per_anchor.hard.item() == pytest.approx(
        sum((torch.logsumexp(z[i][valid[i]], 0) - z[i, 0]).item() for i in range(6)) / 6)


def direct_authors_loss(z, t, valid, temperature, alpha):
    """The authors' formula written out: nn.MSELoss over the present slots times T^2, and per anchor the mean
    BCE of every present slot against [1, 0, ..., 0] weighted by H_i / mean(H), H the teacher's entropy."""
    n = z.shape[0]
    zs = [z[i][valid[i]] for i in range(n)]
    ts = [t[i][valid[i]] for i in range(n)]
    mse = torch.nn.MSELoss()(torch.cat(zs), torch.cat(ts)) * temperature ** 2
    entropies = []
    for row in ts:
        p = [math.exp(v) for v in row.tolist()]
        total = sum(p)
        entropies.append(-sum(q / total * math.log(q / total) for q in p))
    mean_h = sum(entropies) / n
    bce = []
    for i in range(n):
        labels = torch.zeros_like(zs[i])
        labels[0] = 1.0
        bce.append(torch.nn.BCEWithLogitsLoss()(zs[i], labels) * (entropies[i] / mean_h))
    hard = torch.stack(bce).mean()
    return alpha * mse + (1 - alpha) * hard, mse, hard, torch.tensor(entropies) / mean_h


@pytest.mark.parametrize("temperature,alpha,absent", [(1.0, 0.2, False), (2.0, 0.2, True), (0.5, 0.7, True)])
def test_authors_loss_is_its_formula(temperature, alpha, absent, gen):
    n, k1 = 9, 6
    z = (torch.randn(n, k1, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    t = torch.randn(n, k1, generator=gen, dtype=torch.float64) * 2
    valid = torch.ones(n, k1, dtype=torch.bool)
    if absent:
        valid[1, 4:] = False
        valid[5, 2] = False
    out = authors_candidate_loss(z, t, temperature, alpha, valid)
    loss, mse, hard, weights = direct_authors_loss(z, t, valid, temperature, alpha)
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(out.dist, mse)
    torch.testing.assert_close(out.hard, hard)
    torch.testing.assert_close(out.hard_weight, weights.double())
    (g_out,) = torch.autograd.grad(out.loss, z)
    (g_ref,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(g_out, g_ref)


def test_authors_hard_weight_is_the_entropy_weighting_of_dcd(gen):
    z, t = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    valid = torch.ones(5, 4, dtype=torch.bool)
    _, e = dynamic_weights(t, z, valid, "entropy")
    torch.testing.assert_close(authors_candidate_loss(z, t).hard_weight, e)


def test_checks_name_the_argument():
    z = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="kind"):
        candidate_loss(z, z, kind="l2")
    with pytest.raises(ValueError, match="weighting"):
        candidate_loss(z, z, weighting="focal")
    with pytest.raises(ValueError, match="teacher_logits"):
        candidate_loss(z, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="temperature"):
        candidate_loss(z, z, temperature=0.0)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1, 0] = False
    with pytest.raises(ValueError, match="slot 0"):
        authors_candidate_loss(z, z, valid=valid)
    with pytest.raises(TypeError, match="student_logits"):
        candidate_loss(torch.zeros(3, 4, dtype=torch.long), z)


def test_teacher_logits_get_no_gradient(gen):
    z = torch.randn(4, 3, generator=gen, requires_grad=True)
    t = torch.randn(4, 3, generator=gen, requires_grad=True)
    out = candidate_loss(z, t, kind="mse", weighting="dcd")
    (out.dist + out.hard).backward()
    assert t.grad is None and z.grad is not None
