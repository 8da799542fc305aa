"""distill_loss and the fused dynamic_contrastive_loss against the reference at training sizes."""

from __future__ import annotations

import pytest
import torch

from bench_utils import peak_extra_mib, run, unit_rows
from dcd_ext import ops, reference

FULL = [1024, 8192]
SMOKE = [128]
DIM, K1 = 256, 8


def inputs(b: int, d: int):
    g = torch.Generator().manual_seed(2)
    img = unit_rows(b, d, 0).requires_grad_()
    txt = unit_rows(b, d, 1).requires_grad_()
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    cand = torch.randint(0, b, (b, K1), generator=g)
    cand[:, 0] = torch.arange(b)
    teacher = torch.randn(b, K1, generator=g) * 3
    ids = torch.arange(b) // 5
    return img, txt, scale, cand, teacher, ids


def setup_call(impl: str, op: str, b: int, d: int):
    img, txt, scale, cand, teacher, ids = inputs(b, d)
    lib = ops if impl == "dcd_ext" else reference

    def step():
        img.grad = txt.grad = scale.grad = None
        if op == "distill":
            out = lib.distill_loss(img, txt, cand, teacher, scale)
            loss = out.dist + out.hard
        else:
            loss = lib.dynamic_contrastive_loss(img, txt, scale, cand, teacher, cand, teacher, ids, ids).loss
        loss.backward()
        return loss.detach()

    return step


@pytest.mark.parametrize("impl", ["dcd_ext", "naive"])
@pytest.mark.parametrize("op", ["distill", "dynamic"])
@pytest.mark.parametrize("case", range(len(FULL)))
def test_candidate_losses(benchmark, full_sizes, impl, op, case):
    sizes = FULL if full_sizes else SMOKE
    if case >= len(sizes):
        pytest.skip("smoke run uses fewer sizes")
    b = sizes[case]
    benchmark.group = f"{op}_loss fwd+bwd B={b} D={DIM} K+1={K1}"
    loss = run(benchmark, setup_call(impl, op, b, DIM))
    expected = setup_call("naive", op, b, DIM)()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    if full_sizes:
        benchmark.extra_info["peak_extra_mib"] = peak_extra_mib(
            "test_bench_distill_loss", "setup_call", [impl, op, b, DIM], [impl, op, 64, DIM])
