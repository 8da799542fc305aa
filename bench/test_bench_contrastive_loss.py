"""contrastive_loss forward + backward against the naive autograd loss and open_clip's ClipLoss, beside the
ceiling: the four B x B x D products a fused forward + backward needs, through torch's oneDNN."""

from __future__ import annotations

import pytest
import torch

from bench_utils import onednn_product, peak_extra_mib, run, unit_rows
from capabilities import require
from dcd_ext import ops, reference

FULL = [(4096, "float32"), (8192, "float32"), (8192, "bfloat16")]
SMOKE = [(256, "float32"), (256, "bfloat16")]
DIM = 256
IMPLS = ["dcd_ext", "onednn_4gemm", "naive", "open_clip"]


def four_products(img: torch.Tensor, txt: torch.Tensor):
    """S = img txt^T (forward), S again (backward recompute), dS txt and dS^T img: four GEMM-equivalents."""
    def run():
        s = onednn_product(img, txt)
        onednn_product(img, txt)
        onednn_product(s, txt.T.contiguous())
        return onednn_product(s.T.contiguous(), img.T.contiguous())
    return run


def setup_call(impl: str, b: int, d: int, dtype: str = "float32"):
    img = unit_rows(b, d, 0, getattr(torch, dtype)).requires_grad_()
    txt = unit_rows(b, d, 1, getattr(torch, dtype)).requires_grad_()
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    if impl == "onednn_4gemm":
        return four_products(img.detach(), txt.detach())
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
    b, dtype = sizes[case]
    if impl == "open_clip":
        require("open_clip")
    if impl == "onednn_4gemm":
        require(f"onednn_{dtype}")
    benchmark.group = f"contrastive_loss fwd+bwd B={b} D={DIM} {dtype}"
    out = run(benchmark, setup_call(impl, b, DIM, dtype))
    if impl != "onednn_4gemm":
        rounded = [unit_rows(b, DIM, seed, getattr(torch, dtype)).double() for seed in (0, 1)]
        expected = reference.contrastive_loss(*rounded, torch.tensor(1 / 0.07, dtype=torch.float64))
        tol = 1e-4 if dtype == "float32" else 2e-2  # the naive ways compute a bf16 loss in bf16
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    if full_sizes:
        benchmark.extra_info["peak_extra_mib"] = peak_extra_mib(
            "test_bench_contrastive_loss", "setup_call", [impl, b, DIM, dtype], [impl, 128, DIM, dtype])
