"""GPU benchmark of the fused ops against the naive PyTorch way and the bare bf16 GEMM floor.

python bench/gpu_bench.py [--n 65536] [--d 256] [--k 16] [--json FILE]
Prints one table; each row is the median of a few CUDA-event-timed runs after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from dcd_ext import ops, reference


def timed(fn, repeats: int = 5) -> float:
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


def rows(n: int, d: int, seed: int, dtype) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1).to(dtype)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    p.add_argument("--n", type=int, default=65536)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--loss-n", type=int, default=65536)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    results = []

    def record(name, fn, floor=None):
        try:
            ms = timed(fn)
            mem = peak_mib(fn)
            results.append(dict(case=name, ms=ms, peak_mib=mem, vs_floor=(ms / floor if floor else None)))
        except torch.cuda.OutOfMemoryError:
            results.append(dict(case=name, ms=None, peak_mib=None, vs_floor=None, note="out of memory"))
            torch.cuda.empty_cache()
        print(results[-1], flush=True)
        return results[-1]["ms"]

    n, d, k = args.n, args.d, args.k
    q, keys = rows(n, d, 0, torch.bfloat16), rows(n, d, 1, torch.bfloat16)
    floor = record(f"bf16 GEMM {n}x{n} D={d} (floor)", lambda: q @ keys.T)
    record(f"similarity_topk dcd_ext bf16 k={k}", lambda: ops.similarity_topk(q, keys, k), floor)
    record(f"similarity_topk matmul+topk bf16 k={k}", lambda: torch.topk(q @ keys.T, k, dim=1), floor)
    del q, keys

    b = args.loss_n
    img = rows(b, d, 2, torch.bfloat16).requires_grad_()
    txt = rows(b, d, 3, torch.bfloat16).requires_grad_()
    scale = torch.tensor(1 / 0.07, device="cuda", requires_grad=True)

    def step(fn):
        def run():
            img.grad = txt.grad = scale.grad = None
            fn(img, txt, scale).backward()
        return run

    record(f"contrastive fwd+bwd dcd_ext bf16 B={b}", step(ops.contrastive_loss))
    record(f"contrastive fwd+bwd naive bf16 B={b}", step(reference.contrastive_loss))
    try:
        from inf_cl import cal_inf_loss

        def inf_cl(a, t, s):
            labels = torch.arange(a.shape[0], device="cuda")
            return 0.5 * (cal_inf_loss(a, t, labels=labels, scale=s) + cal_inf_loss(t, a, labels=labels, scale=s)).mean()

        record(f"contrastive fwd+bwd inf_cl B={b}", step(inf_cl))
    except ImportError:
        results.append(dict(case="contrastive inf_cl", ms=None, peak_mib=None, vs_floor=None,
                            note="inf_cl not installed"))

    print("\n| case | ms | peak extra MiB | x floor |\n| --- | ---: | ---: | ---: |")
    for r in results:
        ms = f"{r['ms']:.2f}" if r["ms"] is not None else r.get("note", "-")
        mem = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        vs = f"{r['vs_floor']:.2f}" if r["vs_floor"] is not None else ""
        print(f"| {r['case']} | {ms} | {mem} | {vs} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, results=results), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
