"""Results the ops cannot give are refused loudly, never returned as silent garbage: a second derivative
through the fused losses, and rankings of non-finite embeddings."""

from __future__ import annotations

import pytest
import torch

from dcd_ext import ops, reference


def pair(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1).requires_grad_()
    return img, txt, torch.tensor(10.0)


def candidates(n=6, k1=3):
    cand = (torch.arange(n).view(-1, 1) + torch.arange(k1).view(1, -1)) % n
    teacher = torch.linspace(-1, 2, n * k1).view(n, k1)
    return cand, teacher


def penalty(lib, name, img, txt, scale):
    cand, teacher = candidates(img.shape[0])
    if name == "contrastive_loss":
        loss = lib.contrastive_loss(img, txt, scale)
    elif name == "distill_loss":
        out = lib.distill_loss(img, txt, cand, teacher, scale, weighting="none")
        loss = out.dist + out.hard
    else:
        loss = lib.dynamic_contrastive_loss(img, txt, scale, cand, teacher, cand, teacher, weighting="none").loss
    grad, = torch.autograd.grad(loss, img, create_graph=True)
    return grad.square().sum()


@pytest.mark.parametrize("name", ["contrastive_loss", "distill_loss", "dynamic_contrastive_loss"])
def test_double_backward_is_refused_not_zero(name):
    img, txt, scale = pair()
    penalty(reference, name, img, txt, scale).backward()  # the scenario: a gradient penalty has a real gradient
    assert img.grad.abs().sum() > 0
    img.grad = None
    with pytest.raises(RuntimeError, match="double backward .* not supported"):
        penalty(ops, name, img, txt, scale).backward()


def test_first_order_gradients_still_flow():
    img, txt, scale = pair()
    ops.contrastive_loss(img, txt, scale).backward()
    want_img, want_txt = img.grad.clone(), txt.grad.clone()
    img.grad = txt.grad = None
    reference.contrastive_loss(img, txt, scale).backward()
    torch.testing.assert_close(want_img, img.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(want_txt, txt.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("which", ["query", "keys"])
def test_similarity_topk_refuses_non_finite_inputs(bad, which):
    query, keys = torch.randn(5, 4), torch.randn(9, 4)
    (query if which == "query" else keys)[2, 1] = bad
    with pytest.raises(ValueError, match=f"{which} holds 1 NaN or infinite values"):
        ops.similarity_topk(query, keys, 3)
    with pytest.raises(ValueError, match=f"{which} holds 1 NaN or infinite values"):
        torch.ops.dcd_ext.similarity_topk(query, keys, 3)
