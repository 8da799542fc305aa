"""Bad input raises a Python exception that names the argument.

The checks live in C++, so every bad input is tried through both entry points, the wrappers in
dcd_ext.ops and torch.ops.dcd_ext called directly, which must raise the same exception type and message.
Only argument conversion (a float logit_scale, a non-int k, a non-tensor argument) is the wrappers' own.
"""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from dcd_ext import ops
from dcd_ext.loss_options import KINDS, WEIGHTINGS

ENTRIES = [pytest.param(ops, id="wrapper"), pytest.param(torch.ops.dcd_ext, id="torch.ops")]


@pytest.fixture
def mats():
    return torch.randn(6, 4), torch.randn(6, 4)


def one():
    return torch.tensor(1.0)


def cand_teacher(n=6, k1=3):
    cand = torch.zeros(n, k1, dtype=torch.int64)
    cand[:, 0] = torch.arange(n)
    return cand, torch.randn(n, k1)


def ids(n):
    return torch.zeros(n, dtype=torch.int64)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("call,exc,match", [
    (lambda op, q, k: op.similarity_topk(q[0], k, 2), ValueError, r"query must be 2-D \[rows, dim\], got shape \[4\]"),
    (lambda op, q, k: op.similarity_topk(q, k[:, :3], 2), ValueError,
     "query and keys must have the same embedding width, got 4 and 3"),
    (lambda op, q, k: op.similarity_topk(q, k, -1), ValueError, "k must be non-negative, got -1"),
    (lambda op, q, k: op.similarity_topk(q, k, 2**31), ValueError, "k must be at most 2147483647"),
    (lambda op, q, k: op.similarity_topk(q.long(), k, 2), TypeError, "query must be a floating tensor"),
    (lambda op, q, k: op.similarity_topk(q, k.to(torch.float8_e4m3fn), 2), TypeError,
     r"keys must be a floating tensor \(float32, float16, bfloat16 or float64\)"),
    (lambda op, q, k: op.similarity_topk(q, k, 2, ids(6)), ValueError, "query_ids and key_ids must be given together"),
    (lambda op, q, k: op.similarity_topk(q, k, 2, ids(5), ids(6)), ValueError,
     r"query_ids must have shape \[6\], got \[5\]"),
    (lambda op, q, k: op.similarity_topk(q, k, 2, torch.zeros(6), torch.zeros(6)), TypeError, "query_ids must be int64"),
    (lambda op, q, k: op.similarity_topk(q, k.to("meta"), 2), ValueError, "keys is on meta but query is on cpu"),
])
def test_similarity_topk_errors(mats, entry, call, exc, match):
    with pytest.raises(exc, match=match):
        call(entry, *mats)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("call,exc,match", [
    (lambda op, a, b: op.contrastive_loss(a, b[:5], one()), ValueError,
     r"pos_row and pos_col are required when img and txt differ in length \(6 vs 5\)"),
    (lambda op, a, b: op.contrastive_loss(a, b[:5], one(), pos_row=torch.zeros(6, dtype=torch.int64)), ValueError,
     "pos_row and pos_col are required"),
    (lambda op, a, b: op.contrastive_loss(a, b, torch.ones(2)), ValueError,
     r"logit_scale must be a floating tensor with one element, got shape \[2\]"),
    (lambda op, a, b: op.contrastive_loss(a, b, torch.tensor(1)), TypeError,
     "logit_scale must be a floating tensor with one element, got dtype Long"),
    (lambda op, a, b: op.contrastive_loss(a, b, one().to("meta")), ValueError, "logit_scale is on meta but img is on cpu"),
    (lambda op, a, b: op.contrastive_loss(a[:0], b[:0], one()), ValueError, "img and txt must be non-empty"),
    (lambda op, a, b: op.contrastive_loss(a, b, one(), pos_row=torch.arange(5)), ValueError,
     r"pos_row must have shape \[6\]"),
    (lambda op, a, b: op.contrastive_loss(a, b, one(), pos_col=torch.arange(6.0)), TypeError, "pos_col must be int64"),
    (lambda op, a, b: op.contrastive_loss(a, b, one(), pos_row=torch.arange(6) + 1), IndexError,
     r"pos_row values must lie in \[-1, 6\), got \[1, 6\]"),
    (lambda op, a, b: op.contrastive_loss(a, b, one(), pos_col=torch.full((6,), -2)), IndexError,
     r"pos_col values must lie in \[-1, 6\), got \[-2, -2\]"),
    (lambda op, a, b: op.contrastive_loss(a, b, one(), img_ids=ids(6)), ValueError,
     "img_ids and txt_ids must be given together"),
    (lambda op, a, b: op.contrastive_loss(a, b, one(), row_weight=torch.ones(3)), ValueError,
     r"row_weight must have shape \[6\], got \[3\]"),
    (lambda op, a, b: op.contrastive_loss(a, b, one(), col_weight=torch.ones(6, dtype=torch.int64)), TypeError,
     "col_weight must be a floating tensor, got Long"),
    (lambda op, a, b: op.contrastive_loss(a, b.double()[:, :3], one()), ValueError,
     "img and txt must have the same embedding width"),
    (lambda op, a, b: op.contrastive_loss(a, b.to("meta"), one()), ValueError, "txt is on meta but img is on cpu"),
])
def test_contrastive_loss_errors(mats, entry, call, exc, match):
    with pytest.raises(exc, match=match):
        call(entry, *mats)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("mutate,exc,match", [
    (lambda c, t: (c.float(), t), TypeError, "cand must be an int64 tensor, got Float"),
    (lambda c, t: (c[:, :0], t[:, :0]), ValueError, r"cand must have shape \[6, K\+1\] with K\+1 >= 1, got \[6, 0\]"),
    (lambda c, t: (c[:5], t[:5]), ValueError, r"cand must have shape \[6, K\+1\]"),
    (lambda c, t: (c, t[:, :2]), ValueError, r"teacher must have the shape of cand \[6, 3\], got \[6, 2\]"),
    (lambda c, t: (c + 10, t), IndexError, r"cand values must lie in \[-1, 6\), got \[10, 15\]"),
    (lambda c, t: (torch.cat([torch.full((6, 1), -1), c[:, 1:]], 1), t), IndexError,
     r"cand\[:, 0\] \(the positives\) values must lie in \[0, 6\)"),
    (lambda c, t: (c, t.long()), TypeError, "teacher must be a floating tensor, got Long"),
    (lambda c, t: (c, t.to("meta")), ValueError, "teacher is on meta but anchors is on cpu"),
])
def test_distill_loss_candidate_errors(mats, entry, mutate, exc, match):
    cand, teacher = mutate(*cand_teacher())
    with pytest.raises(exc, match=match):
        entry.distill_loss(*mats, cand, teacher, one())


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kw,match", [
    (dict(temperature=0.0), "temperature must be a positive number, got 0"),
    (dict(temperature=float("nan")), "temperature must be a positive number"),
    (dict(kind="l2"), "kind must be one of 'kl', 'mse'; got 'l2'"),
    (dict(weighting="focal"), "weighting must be one of 'none', 'entropy', 'wsl', 'dcd'; got 'focal'"),
])
def test_distill_loss_option_errors(mats, entry, kw, match):
    with pytest.raises(ValueError, match=match):
        entry.distill_loss(*mats, *cand_teacher(), one(), **kw)


@pytest.mark.parametrize("entry", ENTRIES)
def test_distill_loss_other_errors(mats, entry):
    a, b = mats
    with pytest.raises(ValueError, match="anchors must be non-empty"):
        entry.distill_loss(a[:0], b, *cand_teacher(0), one())
    with pytest.raises(ValueError, match="anchors and pool must have the same embedding width"):
        entry.distill_loss(a, b[:, :2], *cand_teacher(), one())
    with pytest.raises(ValueError, match="logit_scale must be a floating tensor with one element"):
        entry.distill_loss(a, b, *cand_teacher(), torch.ones(1, 2))


def test_option_names_agree_with_the_kernels(mats):
    """The C++ parser lists exactly dcd_ext.loss_options' names, in order, and accepts each of them."""
    for name, choices in (("kind", KINDS), ("weighting", WEIGHTINGS)):
        listed = ", ".join(repr(c) for c in choices)
        with pytest.raises(ValueError, match=re.escape(f"{name} must be one of {listed}; got 'bogus'")):
            torch.ops.dcd_ext.distill_loss(*mats, *cand_teacher(), one(), **{name: "bogus"})
    for kind in KINDS:
        for weighting in WEIGHTINGS:
            out = torch.ops.dcd_ext.distill_loss(*mats, *cand_teacher(), one(), kind=kind, weighting=weighting)
            assert all(torch.isfinite(t).all() for t in out)


@pytest.mark.parametrize("entry", ENTRIES)
def test_dynamic_loss_names_the_bad_direction(mats, entry):
    cand, teacher = cand_teacher()
    with pytest.raises(ValueError, match=r"t2i_teacher must have the shape of t2i_cand \[6, 3\], got \[6, 1\]"):
        entry.dynamic_contrastive_loss(*mats, one(), cand, teacher, cand, teacher[:, :1])
    with pytest.raises(TypeError, match="i2t_cand must be an int64 tensor"):
        entry.dynamic_contrastive_loss(*mats, one(), cand.float(), teacher, cand, teacher)
    with pytest.raises(ValueError, match="paired row by row, got 6 and 4"):
        entry.dynamic_contrastive_loss(mats[0], mats[1][:4], one(), cand, teacher, cand[:4], teacher[:4])
    with pytest.raises(ValueError, match="img_ids and txt_ids must be given together"):
        entry.dynamic_contrastive_loss(*mats, one(), cand, teacher, cand, teacher, img_ids=ids(6))
    with pytest.raises(ValueError, match="weighting must be one of"):
        entry.dynamic_contrastive_loss(*mats, one(), cand, teacher, cand, teacher, weighting="focal")
    with pytest.raises(IndexError, match="cand values must lie in"):
        entry.dynamic_contrastive_loss(*mats, one(), cand, teacher, cand - 5, teacher)


@pytest.mark.parametrize("call,match", [
    (lambda a, b: ops.similarity_topk(a, b, 2.5), "k must be an int, got float"),
    (lambda a, b: ops.similarity_topk(a.tolist(), b, 2), "query must be a torch.Tensor, got list"),
    (lambda a, b: ops.contrastive_loss(a, b, "x"), "logit_scale must be a tensor or a float, got str"),
    (lambda a, b: ops.contrastive_loss(a, b, 1.0, pos_row=[0, 1]), "pos_row must be a torch.Tensor or None, got list"),
    (lambda a, b: ops.distill_loss(a, b, *cand_teacher(), 1.0, temperature="hot"), "temperature must be a number"),
    (lambda a, b: ops.distill_loss(a, b, *cand_teacher(), 1.0, kind=1), "kind must be a str, got int"),
    (lambda a, b: ops.dynamic_contrastive_loss(a, b, 1.0, *cand_teacher(), *cand_teacher(), alpha=None),
     "alpha must be a number, got NoneType"),
])
def test_wrapper_conversion_errors(mats, call, match):
    with pytest.raises(TypeError, match=match):
        call(*mats)


@pytest.mark.parametrize("call,exc,match", [
    (lambda q, k: torch.ops.dcd_ext.similarity_topk(q, k[:, :3], 2), ValueError, "same embedding width"),
    (lambda q, k: torch.ops.dcd_ext.similarity_topk(q, k, -2), ValueError, "k must be non-negative"),
    (lambda q, k: torch.ops.dcd_ext.contrastive_loss(q, k, torch.ones(()), torch.zeros(5, dtype=torch.int64)),
     ValueError, r"pos_row must have shape \[6\]"),
    (lambda q, k: torch.ops.dcd_ext.distill_loss(q, k, *cand_teacher(6, 2)[:1], torch.ones(6, 3), torch.ones(())),
     ValueError, "teacher must have the shape of cand"),
    (lambda q, k: torch.ops.dcd_ext.distill_loss(q, k, *cand_teacher(), torch.ones(()), 1.0, "l2"), ValueError,
     "kind must be one of"),
    (lambda q, k: torch.ops.dcd_ext.dynamic_contrastive_loss(q, k, torch.ones(()), *cand_teacher(),
                                                             *cand_teacher(5)), ValueError,
     r"t2i_cand must have shape \[6, K\+1\]"),
])
def test_fake_kernels_check_shapes(call, exc, match):
    """Under fake tensors (torch.compile traces) the fake kernels, and the composite's C++ checks, reject
    bad shapes with the eager exception and message."""
    with FakeTensorMode() as mode:
        q, k = mode.from_tensor(torch.randn(6, 4)), mode.from_tensor(torch.randn(6, 4))
        with pytest.raises(exc, match=match):
            call(q, k)


def test_torch_compile_trace_reports_bad_shapes(mats):
    torch._dynamo.reset()
    a, b = mats
    compiled = torch.compile(lambda x, y, w: ops.contrastive_loss(x, y, 2.0, row_weight=w), fullgraph=True,
                             backend="aot_eager")
    with pytest.raises(Exception, match=r"row_weight must have shape \[6\], got \[5\]"):
        compiled(a, b, torch.ones(5))
