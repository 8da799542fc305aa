"""contrastive_loss forward + backward at the shapes of data-parallel training and queues: a few rows (one
rank's share of the batch, or a batch) against many columns (the gathered batch, or a queue). Beside the
naive autograd loss and the four products a fused forward + backward needs through torch's oneDNN."""

from __future__ import annotations

import pytest
import torch

from bench_utils import peak_extra_mib, run, unit_rows
from capabilities import require
from dcd_ext import ops, reference
from test_bench_contrastive_loss import four_products

# (rows, columns)
FULL = [(256, 65536), (512, 32768), (64, 262144)]
SMOKE = [(32, 4096)]
DIM = 256
IMPLS = ["dcd_ext", "onednn_4gemm", "naive"]


def positions(n: int, m: int):
    """Row i's positive is column i; the columns past the rows (the rest of the gathered batch) have none."""
    cols = torch.arange(m)
    return torch.arange(n), torch.where(cols < n, cols, torch.full_like(cols, -1))


def setup_call(impl: str, n: int, m: int, d: int):
    img = unit_rows(n, d, 0).requires_grad_()
    txt = unit_rows(m, d, 1).requires_grad_()
    scale = torch.tensor(1 / 0.07, requires_grad=True)
    if impl == "onednn_4gemm":
        return four_products(img.detach(), txt.detach())
    loss_fn = ops.contrastive_loss if impl == "dcd_ext" else reference.contrastive_loss
    pos_row, pos_col = positions(n, m)

    def step():
        img.grad = txt.grad = scale.grad = None
        loss = loss_fn(img, txt, scale, pos_row, pos_col)
        loss.backward()
        return loss.detach()

    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(FULL)))
def test_skinny_contrastive_loss_fwd_bwd(benchmark, full_sizes, impl, case):
    sizes = FULL if full_sizes else SMOKE
    if case >= len(sizes):
        pytest.skip("smoke run uses fewer sizes")
    n, m = sizes[case]
    if impl == "onednn_4gemm":
        require("onednn_float32")
    benchmark.group = f"contrastive_loss fwd+bwd {n} x {m} D={DIM} float32"
    out = run(benchmark, setup_call(impl, n, m, DIM))
    if impl != "onednn_4gemm":
        expected = reference.contrastive_loss(unit_rows(n, DIM, 0).double(), unit_rows(m, DIM, 1).double(),
                                              torch.tensor(1 / 0.07, dtype=torch.float64), *positions(n, m))
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    if full_sizes:
        benchmark.extra_info["peak_extra_mib"] = peak_extra_mib(
            "test_bench_skinny_loss", "setup_call", [impl, n, m, DIM], [impl, 32, 4096, DIM])
