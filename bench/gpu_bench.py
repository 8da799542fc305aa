"""GPU benchmark of the fused kernels beside the chunked ATen implementation, the naive PyTorch way, the bare
GEMM floor and Inf-CL (when installed), at the shapes of docs/design.md section 6.

python bench/gpu_bench.py [--out DIR] [--quick]
Each row is the median of a few CUDA-event-timed runs after a warm-up, with the peak extra memory of one
run. Writes gpu_bench.json and gpu_bench.md to --out and prints the table. It also cross-checks the results
(fused against chunked, and against the naive way where that fits): exit status 1 when any disagrees.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from capabilities import missing
from dcd_ext import ops, reference


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def peak_mib(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def unit_rows(n: int, d: int, seed: int, dtype=torch.bfloat16) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1).to(dtype)


@contextmanager
def implementation(name: str):
    """DCD_CUDA_IMPL for the calls inside (the extension reads it at every call)."""
    old = os.environ.get("DCD_CUDA_IMPL")
    os.environ["DCD_CUDA_IMPL"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DCD_CUDA_IMPL", None)
        else:
            os.environ["DCD_CUDA_IMPL"] = old


class Table:
    def __init__(self, repeats: int):
        self.rows: list[dict] = []
        self.failures: list[str] = []
        self.repeats = repeats

    def record(self, group: str, case: str, fn, floor=None, impl: str | None = None):
        """Times fn (under DCD_CUDA_IMPL=impl when given); returns its ms, or None when it ran out of memory."""
        row = dict(group=group, case=case, ms=None, peak_mib=None, vs_floor=None)
        try:
            with implementation(impl or "fused"):
                row["ms"] = timed(fn, self.repeats)
                row["peak_mib"] = peak_mib(fn)
            row["vs_floor"] = row["ms"] / floor if floor else None
        except torch.cuda.OutOfMemoryError:
            row["note"] = "out of memory"
        torch.cuda.empty_cache()
        self.rows.append(row)
        print(row, flush=True)
        return row["ms"]

    def note(self, group: str, case: str, text: str):
        self.rows.append(dict(group=group, case=case, ms=None, peak_mib=None, vs_floor=None, note=text))
        print(self.rows[-1], flush=True)

    def check(self, what: str, ok: bool, detail: str = ""):
        print(f"check {what}: {'ok' if ok else 'WRONG'} {detail}", flush=True)
        if not ok:
            self.failures.append(f"{what} {detail}")

    def markdown(self) -> str:
        out = ["| group | case | ms | peak extra MiB | x floor |", "| --- | --- | ---: | ---: | ---: |"]
        for r in self.rows:
            ms = f"{r['ms']:.2f}" if r["ms"] is not None else r.get("note", "-")
            mem = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
            vs = f"{r['vs_floor']:.2f}" if r["vs_floor"] is not None else ""
            out.append(f"| {r['group']} | {r['case']} | {ms} | {mem} | {vs} |")
        return "\n".join(out)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def topk_group(t: Table, n: int, m: int, d: int, k: int, search: bool):
    group = f"similarity_topk {n}x{m} D={d} k={k} bf16"
    q, keys = unit_rows(n, d, 0), unit_rows(m, d, 1)
    floor = t.record(group, "bf16 GEMM q @ keys.T (floor)", lambda: q @ keys.T)
    if search:  # reading every key once from HBM is the floor of a search shape
        floor = t.record(group, "read the keys once (keys.amax)", lambda: keys.amax())
    t.record(group, "dcd_ext fused", lambda: ops.similarity_topk(q, keys, k), floor, "fused")
    t.record(group, "dcd_ext chunked (cuBLAS + ATen top-k)", lambda: ops.similarity_topk(q, keys, k), floor, "chunked")
    t.record(group, "naive matmul + torch.topk", lambda: torch.topk(q @ keys.T, k, dim=1), floor)

    with implementation("fused"):
        fused = ops.similarity_topk(q, keys, k)[0]
    with implementation("chunked"):
        chunked = ops.similarity_topk(q, keys, k)[0]
    t.check(f"{group}: chunked values == fused values", torch.allclose(chunked, fused, rtol=1e-4, atol=1e-4),
            f"max diff {float((chunked - fused).abs().max()):.2e}")
    rows = slice(0, min(n, 1024))  # the naive check on a slice of the queries keeps its matrix small
    naive = torch.topk(q[rows].float() @ keys.float().T, k, dim=1).values
    t.check(f"{group}: fused values == naive (first {rows.stop} rows)",
            torch.allclose(fused[rows], naive, rtol=1e-4, atol=1e-4),
            f"max diff {float((fused[rows] - naive).abs().max()):.2e}")


def inf_cl_loss():
    """Inf-CL's loss in the form of the others (both directions, a learnt scale), or None if not installed."""
    try:
        from inf_cl import cal_inf_loss
    except ImportError:
        return None

    def loss(img, txt, scale):
        # scale multiplies the inputs here: cal_inf_loss(scale=...) all-reduces the scale's gradient, which
        # needs a process group
        labels = torch.arange(img.shape[0], device=img.device)
        return 0.5 * (cal_inf_loss(scale * img, txt, labels=labels) + cal_inf_loss(scale * txt, img, labels=labels))

    return loss


def contrastive_group(t: Table, b: int, d: int, naive: bool, cols: Optional[int] = None):
    """B x B, or B rows against `cols` columns (one data-parallel rank's rows against the gathered batch:
    row i's positive is column i, the other columns have none)."""
    cols = cols or b
    shape = f"B={b}" if cols == b else f"{b} x {cols}"
    group = f"contrastive_loss fwd+bwd {shape} D={d} bf16"
    img = unit_rows(b, d, 2).requires_grad_()
    txt = unit_rows(cols, d, 3).requires_grad_()
    scale = torch.tensor(1 / 0.07, device="cuda", requires_grad=True)
    positions = {}
    if cols != b:
        col = torch.arange(cols, device="cuda")
        positions = dict(pos_row=torch.arange(b, device="cuda"),
                         pos_col=torch.where(col < b, col, torch.full_like(col, -1)))

    def step(fn):
        def run():
            img.grad = txt.grad = scale.grad = None
            fn(img, txt, scale, **positions).backward()
        return run

    def outputs(fn, impl="fused"):
        with implementation(impl):
            img.grad = txt.grad = scale.grad = None
            loss = fn(img, txt, scale, **positions)
            loss.backward()
            return [loss.detach(), img.grad.clone(), txt.grad.clone(), scale.grad.clone()]

    t.record(group, "bf16 GEMM img @ txt.T (one of the fused kernels' ~5 GEMM-equivalents)",
             lambda: img.detach() @ txt.detach().T)
    t.record(group, "dcd_ext fused", step(ops.contrastive_loss), impl="fused")
    t.record(group, "dcd_ext chunked (cuBLAS + ATen)", step(ops.contrastive_loss), impl="chunked")
    if naive:
        t.record(group, "naive autograd (reference.contrastive_loss)", step(reference.contrastive_loss))
    else:
        t.note(group, "naive autograd", "skipped: holds several B x B float32 matrices")
    peer = inf_cl_loss() if cols == b else None
    if cols != b:
        t.note(group, "Inf-CL (inf_cl.cal_inf_loss)", "skipped: square batches only")
    elif peer is None:
        t.note(group, "Inf-CL (inf_cl.cal_inf_loss)", "not installed (bench/wheels/README.md)")
    else:
        t.record(group, "Inf-CL (inf_cl.cal_inf_loss)", step(peer))

    fused = outputs(ops.contrastive_loss)
    chunked = outputs(ops.contrastive_loss, "chunked")
    for name, x, y in zip(("loss", "d_img", "d_txt", "d_scale"), chunked, fused):
        e = rel_err(x, y)
        t.check(f"{group}: chunked {name} == fused", e < 1e-2, f"relative error {e:.2e}")
    if naive:
        ref = outputs(reference.contrastive_loss)
        for name, x, y in zip(("loss", "d_img", "d_txt", "d_scale"), fused, ref):
            e = rel_err(x, y)
            t.check(f"{group}: fused {name} == naive", e < 1e-2, f"relative error {e:.2e}")
    if peer is not None:  # a peer's disagreement is reported, not failed: it may define the loss differently
        e = rel_err(outputs(peer)[0], fused[0])
        t.note(group, "Inf-CL loss vs fused", f"relative difference {e:.2e}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    p.add_argument("--out", default=".", help="folder for gpu_bench.json and gpu_bench.md")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run of this script)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    reason = missing("gpu")
    if reason:
        print(f"gpu_bench: {reason}", file=sys.stderr)
        return 2
    t = Table(args.repeats)
    d, k = 256, 16
    big, search_keys, losses = (4096, 100_000, [1024, 4096]) if args.quick else (65536, 1_000_000, [8192, 65536])
    topk_group(t, big, big, d, k, search=False)
    topk_group(t, 16, search_keys, d, k, search=True)
    topk_group(t, 16, search_keys, d, 1000, search=True)  # re-ranking depth: the warp-merged lists (P6)
    for b in losses:
        contrastive_group(t, b, d, naive=b <= 8192)
    for rows, cols in ([(64, 4096)] if args.quick else [(256, 65536), (512, 32768)]):  # few rows x many columns
        contrastive_group(t, rows, d, naive=True, cols=cols)

    table = t.markdown()
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda)
    (out / "gpu_bench.json").write_text(json.dumps(dict(**meta, rows=t.rows, failures=t.failures), indent=2))
    (out / "gpu_bench.md").write_text(f"{meta}\n\n{table}\n")
    if t.failures:
        print("WRONG RESULTS:\n  " + "\n  ".join(t.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
