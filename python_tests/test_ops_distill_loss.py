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


def confident_rows(device="cpu"):
    """Candidates whose positive dominates at logit scale 100: row 0 has z = (11.53, -3.18), where the hard
    term is 4.1e-7 and lse(z) - z_0 rounds to exactly 0 in float32, and a teacher with CEt = 2.2e-4, so
    omega = 1 - exp(-h / CEt) = 0.00185; row 1 is confident too, with an absent slot."""
    anchors = torch.tensor([[1.0, 0.0], [0.6, 0.8]], device=device)
    pool = torch.tensor([[0.1153, 0.3], [-0.0318, 0.5], [-0.2, -0.1]], device=device)
    cand = torch.tensor([[0, 1, -1], [1, 2, 0]], device=device)
    teacher = torch.tensor([[4.0, -4.42, 0.0], [3.0, -5.0, -6.0]], device=device)
    return anchors, pool, cand, teacher, torch.tensor(100.0, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weighting", ["wsl", "dcd"])
def test_confident_rows_match_float64_at_scale_100(weighting, device):
    anchors, pool, cand, teacher, scale = confident_rows(device)
    exact = reference.distill_loss(anchors.double(), pool.double(), cand, teacher.double(), scale.double(),
                                   kind="mse", weighting=weighting)
    if weighting == "wsl":  # the case is the intended one
        assert abs(float(exact.dist_weight[0]) - 0.00185) < 1e-5
    for fn in (ops.distill_loss, reference.distill_loss):  # the float32 kernels and the float32 reference
        out = fn(anchors, pool, cand, teacher, scale, kind="mse", weighting=weighting)
        for name in ("hard", "dist_weight", "hard_weight"):
            torch.testing.assert_close(getattr(out, name).double().cpu(), getattr(exact, name).cpu(), rtol=1e-4,
                                       atol=1e-12, msg=lambda m: f"{fn.__module__} {name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_confident_rows_hard_gradient_matches_float64(device):
    """d h / dz = softmax(z) - onehot(0) keeps its relative accuracy where softmax(z)_0 rounds to 1."""
    anchors, pool, cand, teacher, scale = confident_rows(device)

    def hard_grads(fn, dtype):
        a, p, s = (leaf(x.to(dtype)) for x in (anchors, pool, scale))
        out = fn(a, p, cand, teacher.to(dtype), s, weighting="none")
        return torch.autograd.grad(out.hard, (a, p, s))

    exact = hard_grads(reference.distill_loss, torch.float64)
    for fn in (ops.distill_loss, reference.distill_loss):
        for g, e in zip(hard_grads(fn, torch.float32), exact):
            torch.testing.assert_close(g.double().cpu(), e.cpu(), rtol=1e-4, atol=1e-12)


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
