"""distill_loss and dynamic_contrastive_loss against the plain-PyTorch reference."""

import itertools

import pytest
import torch

from dcd_ext import ops, reference
from op_helpers import DEVICES, assert_close, leaf, unit_rows

KINDS = ["kl", "mse"]
WEIGHTINGS = ["none", "entropy", "wsl", "dcd"]


def candidates(n: int, p: int, k1: int, gen, absent: bool = True) -> torch.Tensor:
    cand = torch.randint(0, p, (n, k1), generator=gen)
    cand[:, 0] = torch.arange(n) % p
    if absent and k1 > 2:
        cand[::5, -1] = -1
        cand[3::11, 1] = -1
    return cand


def distill_outputs(fn, anchors, pool, cand, teacher, scale, **kw):
    anchors, pool, scale = leaf(anchors), leaf(pool), leaf(scale)
    out = fn(anchors, pool, cand, teacher, scale, **kw)
    grads = torch.autograd.grad(out.dist * 0.3 + out.hard * 1.7, (anchors, pool, scale))
    return out, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind,weighting", list(itertools.product(KINDS, WEIGHTINGS)))
def test_matches_reference(kind, weighting, device, gen):
    n, p, k1, d = 53, 71, 8, 19
    anchors, pool = unit_rows(n, d, gen, device=device), unit_rows(p, d, gen, device=device)
    cand = candidates(n, p, k1, gen).to(device)
    teacher = (torch.randn(n, k1, generator=gen) * 3).to(device)
    scale = torch.tensor(12.0, device=device)
    kw = dict(temperature=2.0, kind=kind, weighting=weighting)
    out, grads = distill_outputs(ops.distill_loss, anchors, pool, cand, teacher, scale, **kw)
    ref, ref_grads = distill_outputs(reference.distill_loss, anchors, pool, cand, teacher, scale, **kw)
    for a, b in zip(out, ref):
        assert_close(a, b, torch.float32)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, torch.float32, scale=10.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n,p,k1,d", [(1, 1, 1, 1), (5, 3, 4, 2), (130, 37, 17, 65)])
def test_sizes_and_dtypes(n, p, k1, d, dtype, device, gen):
    anchors = unit_rows(n, d, gen, dtype=dtype, device=device)
    pool = unit_rows(p, d, gen, dtype=dtype, device=device)
    cand = candidates(n, p, k1, gen).to(device)
    teacher = torch.randn(n, k1, generator=gen).to(device)
    scale = torch.tensor(5.0, device=device)
    out, grads = distill_outputs(ops.distill_loss, anchors, pool, cand, teacher, scale)
    ref, ref_grads = distill_outputs(reference.distill_loss, anchors, pool, cand, teacher, scale)
    for a, b in zip(out, ref):
        assert_close(a, b, dtype)
    assert grads[0].dtype == dtype and grads[1].dtype == dtype and grads[2].dtype == scale.dtype
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, dtype, scale=10.0)


def test_one_hot_teacher_has_zero_entropy_weights_are_defined(gen):
    n, k1 = 6, 4
    anchors, pool = unit_rows(n, 3, gen), unit_rows(n, 3, gen)
    cand = candidates(n, n, k1, gen, absent=False)
    teacher = torch.full((n, k1), -1e4)
    teacher[:, 0] = 1e4  # H_i = 0 for every anchor
    for weighting in WEIGHTINGS:
        out = ops.distill_loss(anchors, pool, cand, teacher, 4.0, weighting=weighting)
        ref = reference.distill_loss(anchors, pool, cand, teacher, torch.tensor(4.0), weighting=weighting)
        for a, b in zip(out, ref):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_dcd_weights_have_mean_one_and_follow_student_lag(gen):
    n, k1 = 64, 6
    anchors, pool = unit_rows(n, 16, gen), unit_rows(n, 16, gen)
    cand = candidates(n, n, k1, gen, absent=False)
    teacher = torch.randn(n, k1, generator=gen)
    teacher[:, 0] += 3  # the teacher ranks the positive first
    out = ops.distill_loss(anchors, pool, cand, teacher, 10.0, weighting="dcd")
    torch.testing.assert_close(out.dist_weight.mean(), torch.tensor(1.0))
    assert (out.dist_weight >= 0).all()
    torch.testing.assert_close(out.hard_weight.mean(), torch.tensor(1.0))


def test_gradcheck_float64(gen):
    n, p, k1 = 6, 5, 4
    anchors = unit_rows(n, 3, gen, dtype=torch.float64).requires_grad_()
    pool = unit_rows(p, 3, gen, dtype=torch.float64).requires_grad_()
    scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    cand = candidates(n, p, k1, gen)
    cand[2, 3] = -1
    teacher = torch.randn(n, k1, generator=gen, dtype=torch.float64)
    # "none" and "entropy" weights do not depend on the student, so finite differences see the same math
    for kind in KINDS:
        for weighting in ("none", "entropy"):
            def fn(a, b, s):
                out = ops.distill_loss(a, b, cand, teacher, s, 1.5, kind, weighting)
                return out.dist, out.hard

            assert torch.autograd.gradcheck(fn, (anchors, pool, scale))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_dynamic_contrastive_loss_matches_reference(weighting, device, gen):
    b, k1, d = 48, 8, 24
    img, txt = unit_rows(b, d, gen, device=device), unit_rows(b, d, gen, device=device)
    ids = (torch.arange(b) // 3).to(device)
    i2t, t2i = candidates(b, b, k1, gen).to(device), candidates(b, b, k1, gen).to(device)
    ti2t, tt2i = torch.randn(b, k1, generator=gen).to(device), torch.randn(b, k1, generator=gen).to(device)
    scale = torch.tensor(20.0, device=device)
    kw = dict(img_ids=ids, txt_ids=ids, alpha=0.3, temperature=1.5, kind="kl", weighting=weighting, con_weight=0.7)

    def run(fn):
        a, t, s = leaf(img), leaf(txt), leaf(scale)
        out = fn(a, t, s, i2t, ti2t, t2i, tt2i, **kw)
        return out, torch.autograd.grad(out.loss, (a, t, s))

    out, grads = run(ops.dynamic_contrastive_loss)
    ref, ref_grads = run(reference.dynamic_contrastive_loss)
    assert isinstance(out, ops.DCDLossOutput)
    for a, r in zip(out, ref):
        assert_close(a, r, torch.float32)
    torch.testing.assert_close(out.loss, 0.7 * out.con + 0.3 * out.dist + 0.7 * out.hard)
    for g, r in zip(grads, ref_grads):
        assert_close(g, r, torch.float32, scale=10.0)
