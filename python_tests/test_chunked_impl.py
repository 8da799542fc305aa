"""The chunked ATen implementation (DCD_CPU_IMPL=chunked) against the CPU kernels and the float64 reference.

The same cases run on CUDA with DCD_CUDA_IMPL=chunked in test_cuda_ops.py. DCD_CHUNK_COLS makes the
chunks small, so every case crosses chunk boundaries and ends in a partial chunk.
"""

import itertools

import pytest
import torch

from chunked_cases import (CHUNKS, CONTRASTIVE_CASES, DISTILL_SHAPES, DTYPES, TOPK_CASES, check_contrastive,
                           check_distill, check_distill_ignores_absent_teacher_values, check_dynamic, check_topk)
from dcd_ext import ops
from op_helpers import unit_rows


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TOPK_CASES)
def test_similarity_topk(name, dtype, chunk, monkeypatch, gen):
    check_topk(monkeypatch, "cpu", chunk, name, dtype, gen)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CONTRASTIVE_CASES)
def test_contrastive_loss(name, dtype, chunk, monkeypatch, gen):
    check_contrastive(monkeypatch, "cpu", chunk, name, dtype, gen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,weighting", list(itertools.product(["kl", "mse"], ["none", "entropy", "wsl", "dcd"])))
@pytest.mark.parametrize("shape", DISTILL_SHAPES)
def test_distill_loss(shape, kind, weighting, dtype, monkeypatch, gen):
    check_distill(monkeypatch, "cpu", 16, shape, kind, weighting, dtype, gen)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_distill_loss_chunks(chunk, monkeypatch, gen):
    check_distill(monkeypatch, "cpu", chunk, DISTILL_SHAPES[0], "kl", "dcd", torch.float32, gen)


def test_distill_loss_ignores_absent_teacher_values(monkeypatch, gen):
    check_distill_ignores_absent_teacher_values(monkeypatch, "cpu", gen)


@pytest.mark.parametrize("chunk", [5, 4096])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dynamic_contrastive_loss(dtype, chunk, monkeypatch, gen):
    check_dynamic(monkeypatch, "cpu", chunk, dtype, gen)


def test_the_variables_select_the_implementation(monkeypatch, gen):
    img = unit_rows(6, 4, gen)
    # DCD_CHUNK_COLS is read by the chunked implementation only, so a bad value shows which one ran
    monkeypatch.setenv("DCD_CHUNK_COLS", "zero")
    assert torch.isfinite(ops.contrastive_loss(img, img, 2.0))
    monkeypatch.setenv("DCD_CPU_IMPL", "chunked")
    with pytest.raises(ValueError, match="DCD_CHUNK_COLS must be a positive integer, got 'zero'"):
        ops.contrastive_loss(img, img, 2.0)
    with pytest.raises(ValueError, match="DCD_CHUNK_COLS must be a positive integer"):
        ops.similarity_topk(img, img, 2)
    monkeypatch.setenv("DCD_CPU_IMPL", "tiled")
    with pytest.raises(ValueError, match="DCD_CPU_IMPL must be 'fused' or 'chunked', got 'tiled'"):
        ops.similarity_topk(img, img, 2)
    monkeypatch.setenv("DCD_CPU_IMPL", "fused")
    assert ops.similarity_topk(img, img, 2)[1].shape == (6, 2)


def test_chunked_backward_of_a_fused_forward(monkeypatch, gen):
    """The two implementations share the forward's saved statistics, so switching between them is safe."""
    img, txt = unit_rows(30, 8, gen).requires_grad_(), unit_rows(30, 8, gen).requires_grad_()
    loss = ops.contrastive_loss(img, txt, 5.0)
    fused = torch.autograd.grad(loss, (img, txt), retain_graph=True)
    monkeypatch.setenv("DCD_CPU_IMPL", "chunked")
    monkeypatch.setenv("DCD_CHUNK_COLS", "7")
    mixed = torch.autograd.grad(loss, (img, txt))
    for a, b in zip(mixed, fused):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["fused", "chunked"])
def test_autocast_leaves_the_products_alone(impl, monkeypatch, gen):
    """Under torch.autocast the ATen products inside the ops keep their dtypes: float32 stays float32."""
    monkeypatch.setenv("DCD_CPU_IMPL", impl)
    monkeypatch.setenv("DCD_CHUNK_COLS", "16")
    n, d, k1 = 70, 40, 6
    img, txt = unit_rows(n, d, gen), unit_rows(n, d, gen)
    cand = torch.randint(0, n, (n, k1), generator=gen)
    cand[:, 0] = torch.arange(n)
    teacher = torch.randn(n, k1, generator=gen)

    def run():
        a, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
        loss = ops.contrastive_loss(a, t, 20.0) + ops.distill_loss(a, t, cand, teacher, 20.0).hard
        return (loss, *torch.autograd.grad(loss, (a, t)), ops.similarity_topk(img, txt, 5)[0])

    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = run()
    for x, y in zip(cast, plain):
        assert x.dtype == y.dtype == torch.float32
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_similarity_topk_refuses_non_finite_inputs_in_both_implementations(monkeypatch):
    query, keys = torch.randn(6, 5), torch.randn(30, 5)
    query[3, 1] = float("nan")
    for impl in ("fused", "chunked"):
        monkeypatch.setenv("DCD_CPU_IMPL", impl)
        with pytest.raises(ValueError, match="query holds 1 NaN or infinite values"):
            ops.similarity_topk(query, keys, 4)
