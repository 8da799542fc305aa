"""The serving shape: a few queries against a large gallery. similarity_topk beside the bare product through
torch's oneDNN (the floor: the gallery is read once), faiss' exact inner-product search and the naive
torch.topk(q @ G.T)."""

from __future__ import annotations

import pytest
import torch

from bench_utils import onednn_product, peak_extra_mib, run, unit_rows
from capabilities import require
from dcd_ext import ops

# (queries, gallery, dim, k)
FULL = [(16, 1_000_000, 256, 16), (1, 1_000_000, 64, 16), (16, 1_000_000, 256, 1000)]
SMOKE = [(16, 20_000, 256, 16), (1, 20_000, 64, 16)]
IMPLS = ["dcd_ext", "onednn_gemm", "faiss", "matmul_topk"]


def setup_call(impl: str, n: int, m: int, d: int, k: int):
    q = unit_rows(n, d, 0)
    gallery = unit_rows(m, d, 1)
    if impl == "dcd_ext":
        return lambda: ops.similarity_topk(q, gallery, k)
    if impl == "onednn_gemm":
        return lambda: onednn_product(q, gallery)
    if impl == "matmul_topk":
        return lambda: torch.topk(q @ gallery.T, k, dim=1)
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexFlatIP(d)
    index.add(gallery.numpy())
    del gallery
    qn = q.numpy()
    return lambda: index.search(qn, k)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(FULL)))
def test_search(benchmark, full_sizes, impl, case):
    sizes = FULL if full_sizes else SMOKE
    if case >= len(sizes):
        pytest.skip("smoke run uses fewer sizes")
    n, m, d, k = sizes[case]
    if impl == "onednn_gemm":
        require("onednn_float32")
    if impl == "faiss":
        require("faiss")
    benchmark.group = f"search {n} x {m} D={d} k={k} float32"
    result = run(benchmark, setup_call(impl, n, m, d, k))
    if impl == "dcd_ext":
        expected = torch.topk(unit_rows(n, d, 0) @ unit_rows(m, d, 1).T, k, dim=1).values
        torch.testing.assert_close(result[0], expected, rtol=1e-5, atol=1e-5)
    if full_sizes:
        benchmark.extra_info["peak_extra_mib"] = peak_extra_mib(
            "test_bench_search", "setup_call", [impl, n, m, d, k], [impl, n, 4096, d, min(k, 4096)])
