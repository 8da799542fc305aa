"""Helpers of the benchmark suite: inputs, pedantic timing and peak memory in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch


def unit_rows(n: int, d: int, seed: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return torch.nn.functional.normalize(x, dim=1).to(dtype=dtype, device=device)


def onednn_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T through torch's oneDNN linear (the fastest GEMM torch ships for these CPUs), in a's dtype."""
    return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")


def run(benchmark, fn, rounds: int = 3):
    """Times fn with a warm-up call; few rounds because the large cases take seconds each."""
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)


def status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmHWM: peak resident set; VmRSS: current). Unlike ru_maxrss
    VmHWM is not inherited from the parent of a fork + exec, so a subprocess started by a large pytest
    process measures only itself."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_rss_kib() -> int:
    return status_kib("VmHWM")


def reset_peak_rss_kib() -> int:
    """Resets the peak resident set to the current one (Linux: writing 5 to /proc/self/clear_refs), so
    that a transient peak of building the inputs (a 1 GB gallery's temporaries) cannot hide what a call
    allocates below it; returns the baseline to measure from (the old peak where the reset is refused)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return status_kib("VmRSS")
    except OSError:
        return peak_rss_kib()


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {bench_dir!r})
    import {module} as m
    from bench_utils import peak_rss_kib, reset_peak_rss_kib
    setup = getattr(m, {setup!r})
    args = json.loads(sys.argv[1])
    setup(*json.loads(sys.argv[2]))()  # warm-up at a small size: allocator, BLAS buffers, lazy imports
    fn = setup(*args)
    before = reset_peak_rss_kib()
    fn()
    after = peak_rss_kib()
    print(json.dumps({{"peak_extra_mib": (after - before) / 1024}}))
""")


def peak_extra_mib(module: str, setup: str, args: list, small_args: list) -> float:
    """Peak resident memory one call adds beyond its inputs, measured in a fresh process.

    setup(*args) builds the inputs and returns the call; a call at small_args first warms up lazy
    state so that only the call's own temporaries count.
    """
    import os

    script = PEAK_SCRIPT.format(bench_dir=os.path.dirname(os.path.abspath(__file__)), module=module, setup=setup)
    out = subprocess.run([sys.executable, "-c", script, json.dumps(args), json.dumps(small_args)], check=True,
                         capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mib"]
