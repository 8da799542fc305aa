"""On CUDA the operators never wait for the device: a training-like step runs under
torch.cuda.set_sync_debug_mode("error") and captures in a CUDA graph, and out-of-range indices fail on the
device (the exact host check is opt-in, DCD_CHECK_INDICES=1). Both implementations (DCD_CUDA_IMPL).

Skipped where there is no GPU or the CUDA kernels were not built.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dcd_ext import ops
from op_helpers import cuda_ready, leaf, unit_rows

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA device and CUDA kernels")]

IMPLS = ["fused", "chunked"]
B, D, K = 256, 64, 7


def problem(gen, dtype=torch.bfloat16):
    img = unit_rows(B, D, gen, dtype=dtype).cuda()
    txt = unit_rows(B, D, gen, dtype=dtype).cuda()
    ids = (torch.arange(B) // 5).cuda()
    teacher = torch.randn(B, K + 1, generator=gen).cuda()
    return img, txt, ids, teacher


def step(img, txt, scale, ids, teacher):
    """Mining, the contrastive term and both candidate directions, forward and backward."""
    positives = torch.arange(img.shape[0], device=img.device).view(-1, 1)
    _, i2t = ops.similarity_topk(img.detach(), txt.detach(), K, ids, ids)
    _, t2i = ops.similarity_topk(txt.detach(), img.detach(), K, ids, ids)
    i2t_cand, t2i_cand = torch.cat([positives, i2t], 1), torch.cat([positives, t2i], 1)
    con = ops.contrastive_loss(img, txt, scale, img_ids=ids, txt_ids=ids)
    a = ops.distill_loss(img, txt, i2t_cand, teacher, scale)
    b = ops.distill_loss(txt, img, t2i_cand, teacher, scale)
    loss = con + 0.1 * (a.dist + b.dist) + 0.4 * (a.hard + b.hard)
    return (loss, *torch.autograd.grad(loss, (img, txt, scale)), i2t_cand, t2i_cand)


@pytest.mark.parametrize("impl", IMPLS)
def test_training_step_never_synchronises(impl, monkeypatch, gen):
    monkeypatch.setenv("DCD_CUDA_IMPL", impl)
    monkeypatch.delenv("DCD_CHECK_INDICES", raising=False)
    img, txt, ids, teacher = problem(gen)
    args = (leaf(img), leaf(txt), leaf(torch.tensor(20.0, device="cuda")), ids, teacher)
    expected = step(*args)  # warm-up: allocator, cuBLAS handles and other lazy initialisation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = step(*args)
        plain = ops.contrastive_loss(args[0], args[1], 20.0)  # a Python number as the scale: a fill, no copy
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for x, y in zip(got, expected):
        if impl == "fused":  # no atomics: bitwise reproducible
            assert torch.equal(x, y)
        else:  # index_add_ sums in any order; a bfloat16 gradient may round one unit differently
            torch.testing.assert_close(x, y, rtol=1e-2, atol=1e-3)
    assert torch.isfinite(got[0]) and torch.isfinite(plain)
    for x in got[1:4]:
        assert torch.isfinite(x).all() and x.abs().sum() > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_training_step_replays_as_a_cuda_graph(impl, monkeypatch, gen):
    monkeypatch.setenv("DCD_CUDA_IMPL", impl)
    monkeypatch.delenv("DCD_CHECK_INDICES", raising=False)
    img, txt, ids, teacher = problem(gen, torch.float32)
    static = (leaf(img), leaf(txt), leaf(torch.tensor(20.0, device="cuda")), ids, teacher)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step(*static)
    # new inputs in the captured buffers; the replay must compute them, as an eager step does
    new_img, new_txt, _, new_teacher = problem(torch.Generator().manual_seed(99), torch.float32)
    with torch.no_grad():
        static[0].copy_(new_img)
        static[1].copy_(new_txt)
        static[4].copy_(new_teacher)
    graph.replay()
    torch.cuda.synchronize()
    eager = step(*static)
    for x, y in zip(captured, eager):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


BAD_INDEX_SCRIPT = textwrap.dedent("""
    import torch
    from dcd_ext import ops
    img = torch.nn.functional.normalize(torch.randn(4, 8, device="cuda"), dim=1)
    scale, pos_row, pos_col = (torch.tensor(1.0, device="cuda"), torch.tensor([0, 9, 1, 2], device="cuda"),
                               torch.arange(4, device="cuda"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    loss = ops.contrastive_loss(img, img, scale, pos_row, pos_col)
    torch.cuda.set_sync_debug_mode(0)
    print("returned without a sync", flush=True)
    torch.cuda.synchronize()
    print("no assertion fired", flush=True)
""")


def test_out_of_range_indices_fail_on_the_device():
    # a device-side assertion leaves the CUDA context unusable, so it runs in a process of its own
    env = {k: v for k, v in os.environ.items() if k != "DCD_CHECK_INDICES"}
    out = subprocess.run([sys.executable, "-c", BAD_INDEX_SCRIPT], capture_output=True, text=True, timeout=300,
                         env=env)
    assert "returned without a sync" in out.stdout, out.stderr
    assert "no assertion fired" not in out.stdout
    assert out.returncode != 0 and "device-side assert" in out.stderr, out.stderr


NAN_QUERY_SCRIPT = textwrap.dedent("""
    import os, torch
    from dcd_ext import ops
    q = torch.randn(5, 8, device="cuda")
    q[2, 3] = float("nan")
    keys = torch.randn(40, 8, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    ops.similarity_topk(q, keys, 4)
    torch.cuda.set_sync_debug_mode(0)
    print("returned without a sync", flush=True)
    torch.cuda.synchronize()
    print("no assertion fired", flush=True)
""")


@pytest.mark.parametrize("impl", ["fused", "chunked"])
def test_non_finite_similarity_topk_inputs_fail_on_the_device(impl):
    env = {**os.environ, "DCD_CUDA_IMPL": impl}
    out = subprocess.run([sys.executable, "-c", NAN_QUERY_SCRIPT], capture_output=True, text=True, timeout=300,
                         env=env)
    assert "returned without a sync" in out.stdout, out.stderr
    assert "no assertion fired" not in out.stdout
    assert out.returncode != 0 and "query holds NaN or infinite values" in out.stderr, out.stderr
