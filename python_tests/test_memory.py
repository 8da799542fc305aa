"""Peak extra memory of the fused ops is a small fraction of the naive way's (measured in subprocesses)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from dcd_ext import ops, reference
    torch.manual_seed(0)
    which, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    lib = reference if which == "naive" else ops  # "chunked": ops under DCD_CPU_IMPL=chunked
    img = torch.nn.functional.normalize(torch.randn(n, d), dim=1).requires_grad_()
    txt = torch.nn.functional.normalize(torch.randn(n, d), dim=1).requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    ids = torch.arange(n) // 5
    # warm up the allocator, BLAS packing buffers and the kernels on a problem spanning a few tiles
    w = 1100
    lib.contrastive_loss(img[:w], txt[:w], scale, img_ids=ids[:w], txt_ids=ids[:w]).backward()
    lib.similarity_topk(img[:w].detach(), txt[:w].detach(), 16, ids[:w], ids[:w])
    def peak_kib():  # VmHWM: unlike ru_maxrss, not inherited from the pytest process across fork + exec
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    before = peak_kib()
    if sys.argv[4] == "loss":
        lib.contrastive_loss(img, txt, scale, img_ids=ids, txt_ids=ids).backward()
    else:
        lib.similarity_topk(img.detach(), txt.detach(), 16, ids, ids)
    after = peak_kib()
    print(json.dumps({"extra_kib": after - before}))
""")


def peak_extra_kib(which: str, n: int, d: int, op: str, env=None) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, which, str(n), str(d), op], check=True, capture_output=True,
                         text=True, timeout=600, env=None if env is None else {**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])["extra_kib"]


@pytest.mark.parametrize("op", ["loss", "topk"])
def test_fused_peak_memory_is_a_small_fraction_of_naive(op):
    n, d = 4096, 32
    naive = peak_extra_kib("naive", n, d, op)
    fused = peak_extra_kib("fused", n, d, op)
    matrix_kib = n * n * 4 // 1024
    assert naive >= matrix_kib, f"the naive way should hold at least one {n}x{n} matrix, saw {naive} KiB"
    assert fused < 0.05 * naive, f"fused {fused} KiB vs naive {naive} KiB"


@pytest.mark.parametrize("op", ["loss", "topk"])
def test_chunked_peak_memory_is_a_few_chunks(op):
    """The chunked implementation holds a few [N, chunk] buffers, a fraction of the one N x N matrix."""
    n, d, chunk = 8192, 32, 64
    chunked = peak_extra_kib("chunked", n, d, op, {"DCD_CPU_IMPL": "chunked", "DCD_CHUNK_COLS": str(chunk)})
    matrix_kib = n * n * 4 // 1024
    assert chunked < 0.25 * matrix_kib, f"chunked {chunked} KiB; one {n}x{n} float32 matrix is {matrix_kib} KiB"


STEP_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from dcd_ext.data import Batch
    from dcd_ext.losses import ContrastiveLoss, DCDLoss
    from dcd_ext.train.step import StepRunner
    torch.manual_seed(0)
    kind, n, accum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    f = 32

    class Linear(torch.nn.Module):  # a dual encoder over fixed features, so the loss dominates memory
        def __init__(self):
            super().__init__()
            self.wi, self.wt = torch.nn.Linear(f, f), torch.nn.Linear(f, f)
            self.log_scale = torch.nn.Parameter(torch.tensor(2.0))
        def forward(self, pixels, input_ids, mask):
            norm = torch.nn.functional.normalize
            return norm(self.wi(pixels), dim=1), norm(self.wt(input_ids), dim=1), self.log_scale.exp()

    def batch(rows):
        ids = torch.arange(rows) // 2
        return Batch(torch.randn(rows, f), torch.randn(rows, f), torch.ones(rows, 1), ids, torch.arange(rows),
                     ids.tolist(), list(range(rows)))

    class Teacher:  # scores batch rows directly, so only the library's own memory is measured
        def __init__(self):
            self.u, self.v = torch.randn(n, 8), torch.randn(n, 8)
        def score_pairs(self, images, texts, pairs):
            return (self.u[pairs[:, 0]] * self.v[pairs[:, 1]]).sum(1)

    model = Linear()
    teacher = Teacher()
    loss = ContrastiveLoss() if kind == "contrastive" else DCDLoss(teacher, k=7)
    runner = StepRunner(model, model, loss, torch.device("cpu"), accum_steps=accum)
    runner(batch(1200))  # warm-up: allocator, BLAS buffers, kernels
    big = batch(n)
    def peak_kib():
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    before = peak_kib()
    runner(big)
    print(json.dumps({"extra_kib": peak_kib() - before}))
""")


@pytest.mark.parametrize("kind", ["contrastive", "dcd"])
def test_accumulated_training_step_never_holds_a_batch_by_batch_matrix(kind):
    """The whole training step (accumulation, mining, teacher targets, fused loss) at B = 8192: its extra peak is
    O(B) buffers, a fraction of one B x B float32 matrix (the naive DCD step holds several)."""
    n = 8192
    out = subprocess.run([sys.executable, "-c", STEP_SCRIPT, kind, str(n), "4"], check=True, capture_output=True,
                         text=True, timeout=600)
    extra = json.loads(out.stdout.strip().splitlines()[-1])["extra_kib"]
    matrix_kib = n * n * 4 // 1024
    assert extra < 0.25 * matrix_kib, f"{kind} step: {extra} KiB extra peak; one {n}x{n} matrix is {matrix_kib} KiB"
