"""The serving shape: a few queries against a large gallery. similarity_topk beside the bare product through
torch's oneDNN (the floor: the gallery is read once), faiss' exact inner-product search and the naive
torch.topk(q @ G.T)."""

from __future__ import annotations

import pytest
import torch

from bench_utils import onednn_product, peak_extra_mib, run, unit_rows
from capabilities import require
from dcd_ext import ops

# (queries, gallery, dim, k, dtype): a bfloat16 gallery is half the bytes (faiss has no bfloat16 flat index)
FULL = [(16, 1_000_000, 256, 16, "float32"), (1, 1_000_000, 64, 16, "float32"), (16, 1_000_000, 256, 1000, "float32"),
        (16, 1_000_000, 256, 16, "bfloat16"), (1, 1_000_000, 64, 16, "bfloat16")]
SMOKE = [(16, 20_000, 256, 16, "float32"), (1, 20_000, 64, 16, "float32"), (16, 20_000, 256, 16, "bfloat16")]
IMPLS = ["dcd_ext", "onednn_gemm", "faiss", "matmul_topk"]


def setup_call(impl: str, n: int, m: int, d: int, k: int, dtype: str = "float32"):
    q = unit_rows(n, d, 0, getattr(torch, dtype))
    gallery = unit_rows(m, d, 1, getattr(torch, dtype))
    if impl == "dcd_ext":
        return lambda: ops.similarity_topk(q, gallery, k)
    if impl == "onednn_gemm":
        return lambda: onednn_product(q, gallery)
    if impl == "matmul_topk":  # float32 scores, as dcd_ext returns, whatever the inputs' dtype
        return lambda: torch.topk(q.float() @ gallery.float().T, k, dim=1)
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatIP(d)
    index.add(gallery.float().numpy())
    del gallery
    qn = q.float().numpy()
    return lambda: index.search(qn, k)


def require_impl(impl: str, dtype: str) -> None:
    """Skips (with the reason) a peer this machine or dtype cannot run."""
    if impl == "onednn_gemm":
        require(f"onednn_{dtype}")
    if impl == "faiss":
        if dtype != "float32":
            pytest.skip("faiss' IndexFlatIP holds float32 vectors only")
        require("faiss")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(FULL)))
def test_search(benchmark, full_sizes, impl, case):
    sizes = FULL if full_sizes else SMOKE
    if case >= len(sizes):
        pytest.skip("smoke run uses fewer sizes")
    n, m, d, k, dtype = sizes[case]
    require_impl(impl, dtype)
    benchmark.group = f"search {n} x {m} D={d} k={k} {dtype}"
    result = run(benchmark, setup_call(impl, n, m, d, k, dtype))
    if impl == "dcd_ext":
        dt = getattr(torch, dtype)
        expected = torch.topk(unit_rows(n, d, 0, dt).float() @ unit_rows(m, d, 1, dt).float().T, k, dim=1).values
        torch.testing.assert_close(result[0], expected, rtol=1e-5, atol=1e-5)
    if full_sizes:
        benchmark.extra_info["peak_extra_mib"] = peak_extra_mib(
            "test_bench_search", "setup_call", [impl, n, m, d, k, dtype], [impl, n, 4096, d, min(k, 4096), dtype])
