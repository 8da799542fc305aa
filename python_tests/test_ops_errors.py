"""Bad input raises a Python exception that names the argument, through the wrappers and torch.ops."""

import pytest
import torch

from dcd_ext import ops


@pytest.fixture
def mats():
    return torch.randn(6, 4), torch.randn(6, 4)


def cand_teacher(n=6, k1=3):
    cand = torch.zeros(n, k1, dtype=torch.int64)
    cand[:, 0] = torch.arange(n)
    return cand, torch.randn(n, k1)


@pytest.mark.parametrize("call,exc,match", [
    (lambda q, k: ops.similarity_topk(q[0], k, 2), ValueError, "query must be 2-D"),
    (lambda q, k: ops.similarity_topk(q, k[:, :3], 2), ValueError, "same embedding width"),
    (lambda q, k: ops.similarity_topk(q, k, -1), ValueError, "k must be non-negative"),
    (lambda q, k: ops.similarity_topk(q, k, 2.5), TypeError, "k must be an int"),
    (lambda q, k: ops.similarity_topk(q.long(), k, 2), TypeError, "query must be a floating"),
    (lambda q, k: ops.similarity_topk(q, k, 2, torch.zeros(6, dtype=torch.int64)), ValueError, "given together"),
    (lambda q, k: ops.similarity_topk(q, k, 2, torch.zeros(5, dtype=torch.int64), torch.zeros(6, dtype=torch.int64)),
     ValueError, r"query_ids must have shape \[6\]"),
    (lambda q, k: ops.similarity_topk(q, k, 2, torch.zeros(6), torch.zeros(6)), TypeError, "query_ids must be int64"),
    (lambda q, k: ops.similarity_topk(q, k.to("meta"), 2), ValueError, "keys is on meta"),
])
def test_similarity_topk_errors(mats, call, exc, match):
    with pytest.raises(exc, match=match):
        call(*mats)


@pytest.mark.parametrize("call,exc,match", [
    (lambda a, b: ops.contrastive_loss(a, b[:5], 1.0), ValueError, "pos_row and pos_col are required"),
    (lambda a, b: ops.contrastive_loss(a, b, torch.ones(2)), ValueError, "logit_scale must be a floating tensor with one"),
    (lambda a, b: ops.contrastive_loss(a, b, "x"), TypeError, "logit_scale must be a tensor or a float"),
    (lambda a, b: ops.contrastive_loss(a[:0], b[:0], 1.0), ValueError, "non-empty"),
    (lambda a, b: ops.contrastive_loss(a, b, 1.0, pos_row=torch.arange(5)), ValueError, r"pos_row must have shape \[6\]"),
    (lambda a, b: ops.contrastive_loss(a, b, 1.0, pos_row=torch.arange(6) + 1), IndexError, "pos_row values must lie in"),
    (lambda a, b: ops.contrastive_loss(a, b, 1.0, pos_col=torch.full((6,), -2)), IndexError, "pos_col values must lie in"),
    (lambda a, b: ops.contrastive_loss(a, b, 1.0, row_weight=torch.ones(3)), ValueError, "row_weight must be"),
    (lambda a, b: ops.contrastive_loss(a, b.double()[:, :3], 1.0), ValueError, "same embedding width"),
])
def test_contrastive_loss_errors(mats, call, exc, match):
    with pytest.raises(exc, match=match):
        call(*mats)


@pytest.mark.parametrize("mutate,exc,match", [
    (lambda c, t: (c.float(), t), TypeError, "cand must be an int64"),
    (lambda c, t: (c[:, :0], t[:, :0]), ValueError, "cand must have shape"),
    (lambda c, t: (c, t[:, :2]), ValueError, "teacher must have the shape of cand"),
    (lambda c, t: (c + 10, t), IndexError, "cand values must lie in"),
    (lambda c, t: (torch.cat([torch.full((6, 1), -1), c[:, 1:]], 1), t), IndexError, "positives"),
    (lambda c, t: (c, t.long()), TypeError, "teacher must be a floating"),
])
def test_distill_loss_candidate_errors(mats, mutate, exc, match):
    cand, teacher = mutate(*cand_teacher())
    with pytest.raises(exc, match=match):
        ops.distill_loss(*mats, cand, teacher, 1.0)


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=0.0), "temperature must be a positive"),
    (dict(kind="l2"), "kind must be one of"),
    (dict(weighting="focal"), "weighting must be one of"),
])
def test_distill_loss_option_errors(mats, kw, match):
    with pytest.raises(ValueError, match=match):
        ops.distill_loss(*mats, *cand_teacher(), 1.0, **kw)


def test_dynamic_loss_names_the_bad_direction(mats):
    cand, teacher = cand_teacher()
    with pytest.raises(ValueError, match="t2i_teacher must have the shape of t2i_cand"):
        ops.dynamic_contrastive_loss(*mats, 1.0, cand, teacher, cand, teacher[:, :1])
    with pytest.raises(ValueError, match="paired row by row"):
        ops.dynamic_contrastive_loss(mats[0], mats[1][:4], 1.0, cand, teacher, cand[:4], teacher[:4])


def test_direct_torch_ops_calls_are_checked_too(mats):
    a, b = mats
    with pytest.raises(IndexError, match="pos_row values"):
        torch.ops.dcd_ext.contrastive_loss(a, b, torch.tensor(1.0), torch.arange(6) * 5, None, None, None, None, None)
    with pytest.raises(ValueError, match="k must be non-negative"):
        torch.ops.dcd_ext.similarity_topk(a, b, -3)
    cand, teacher = cand_teacher()
    with pytest.raises(IndexError, match="cand values"):
        torch.ops.dcd_ext.distill_loss(a, b, cand - 5, teacher, torch.tensor(1.0), 1.0, "kl", "dcd")
    with pytest.raises(ValueError, match="weighting must be one of"):
        torch.ops.dcd_ext.distill_loss(a, b, cand, teacher, torch.tensor(1.0), 1.0, "kl", "bogus")

