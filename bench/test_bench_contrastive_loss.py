"""contrastive_loss forward + backward against the naive autograd loss and open_clip's ClipLoss."""

from __future__ import annotations

import pytest
import torch

from bench_utils import peak_extra_mib, run, unit_rows
from dcd_ext import ops, reference

FULL = [4096, 8192]
SMOKE = [256]
DIM = 256
IMPLS = ["dcd_ext", "naive", "open_clip"]


def setup_call(impl: str, b: int, d: int):
    img = unit_rows(b, d, 0).requires_grad_()
    txt = unit_rows(b, d, 1).requires_grad_()
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    if impl == "dcd_ext":
        loss_fn = ops.contrastive_loss
    elif impl == "naive":
        loss_fn = reference.contrastive_loss
    else:
        from open_clip.loss import ClipLoss

        clip_loss = ClipLoss()
        loss_fn = clip_loss  # ClipLoss(image_features, text_features, logit_scale)

    def step():
        img.grad = txt.grad = scale.grad = None
        loss = loss_fn(img, txt, scale)
        loss.backward()
        return loss.detach()

    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(FULL)))
def test_contrastive_loss_fwd_bwd(benchmark, full_sizes, impl, case):
    sizes = FULL if full_sizes else SMOKE
    if case >= len(sizes):
        pytest.skip("smoke run uses fewer sizes")
    if impl == "open_clip":
        pytest.importorskip("open_clip")
    b = sizes[case]
    benchmark.group = f"contrastive_loss fwd+bwd B={b} D={DIM}"
    loss = run(benchmark, setup_call(impl, b, DIM))
    expected = reference.contrastive_loss(unit_rows(b, DIM, 0), unit_rows(b, DIM, 1), torch.tensor(1 / 0.07))
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)
    if full_sizes:
        benchmark.extra_info["peak_extra_mib"] = peak_extra_mib(
            "test_bench_contrastive_loss", "setup_call", [impl, b, DIM], [impl, 128, DIM])
