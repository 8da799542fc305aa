"""What this machine can run, probed once per session: a benchmark row whose implementation cannot run here
(oneDNN float16 on a CPU without AVX512-FP16 such as AMD Zen 4, oneDNN bfloat16 on an AVX2-only CPU, a peer
library that is not installed, no usable GPU) is skipped with the reason instead of failing.

DCD_BENCH_ASSUME_MISSING=onednn_float16,faiss (any of the names below, comma-separated) makes those probes
report missing, to see the skips on a machine that has everything. ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 makes
oneDNN itself behave as on Zen 4.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Optional

import torch

from bench_utils import onednn_product

ASSUME_MISSING = "DCD_BENCH_ASSUME_MISSING"
ONEDNN_DTYPES = ("float32", "bfloat16", "float16")
PEER_MODULES = ("faiss", "open_clip")
NAMES = tuple(f"onednn_{d}" for d in ONEDNN_DTYPES) + PEER_MODULES + ("gpu",)


def cpu_name() -> str:
    from dcd_ext.info import cpu_model

    return cpu_model()


def onednn_missing(dtype: str) -> Optional[str]:
    if not torch.backends.mkldnn.is_available():
        return "torch has no oneDNN"
    a = torch.ones(8, 32, dtype=getattr(torch, dtype))
    try:
        onednn_product(a, a)
    except RuntimeError as e:
        cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
        cpu = cpu_name() + (f", ONEDNN_MAX_CPU_ISA={cap}" if cap else "")
        return f"oneDNN has no {dtype} inner product on this CPU ({cpu}): {str(e).splitlines()[0].split('. ')[0]}"
    return None


def module_missing(name: str) -> Optional[str]:
    try:
        importlib.import_module(name)
    except Exception as e:  # a broken install (a missing shared library, an ABI mismatch) counts as missing
        return f"{name} cannot be imported ({type(e).__name__}: {e}); pip install \".[bench]\""
    return None


def gpu_missing() -> Optional[str]:
    from dcd_ext.cuda_status import cuda_status

    status = cuda_status()
    return None if status.available else f"needs a GPU: CUDA {status.summary}"


@functools.lru_cache(maxsize=None)
def probe(name: str) -> Optional[str]:
    if name.startswith("onednn_"):
        return onednn_missing(name.removeprefix("onednn_"))
    if name == "gpu":
        return gpu_missing()
    return module_missing(name)


def missing(name: str) -> Optional[str]:
    """Why ``name`` (one of :data:`NAMES`) cannot run here, or None when it can."""
    if name not in NAMES:
        raise ValueError(f"unknown capability {name!r}; expected one of {NAMES}")
    forced = {n.strip() for n in os.environ.get(ASSUME_MISSING, "").split(",")}
    if name in forced:
        return f"{name} assumed missing ({ASSUME_MISSING})"
    return probe(name)


def require(name: str) -> None:
    """Skips the calling benchmark row when ``name`` cannot run here."""
    import pytest  # only here: gpu_bench.py uses missing() where pytest may not be installed

    reason = missing(name)
    if reason:
        pytest.skip(reason)
