"""similarity_topk against torch.matmul + torch.topk and faiss' exact inner-product search, beside the bare
product alone through torch's bundled oneDNN (the ceiling a fused GEMM + top-k can approach)."""

from __future__ import annotations

import pytest
import torch

from bench_utils import peak_extra_mib, run, unit_rows
from test_bench_search import require_impl, setup_call as search_call

FULL = [(4096, 16, "float32"), (4096, 128, "float32"), (8192, 16, "float32"), (16384, 16, "float32"),
        (16384, 128, "float32"),
        (4096, 16, "bfloat16"), (16384, 16, "bfloat16"), (16384, 16, "float16")]
SMOKE = [(512, 16, "float32"), (512, 16, "bfloat16"), (512, 16, "float16")]
DIM = 256
IMPLS = ["dcd_ext", "onednn_gemm", "matmul_topk", "faiss"]


def setup_call(impl: str, n: int, d: int, k: int, dtype: str):
    """N queries against N keys: the search benchmark's calls at the square shape."""
    return search_call(impl, n, n, d, k, dtype)


def cases(full: bool):
    return FULL if full else SMOKE


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", range(len(FULL)))
def test_similarity_topk(benchmark, full_sizes, impl, case):
    sizes = cases(full_sizes)
    if case >= len(sizes):
        pytest.skip("smoke run uses fewer sizes")
    n, k, dtype = sizes[case]
    require_impl(impl, dtype)
    benchmark.group = f"similarity_topk N=M={n} D={DIM} k={k} {dtype}"
    fn = setup_call(impl, n, DIM, k, dtype)
    result = run(benchmark, fn)
    if impl == "dcd_ext":  # float32 scores of the (rounded) inputs, whatever their dtype
        ref_values = torch.topk(unit_rows(n, DIM, 0, getattr(torch, dtype)).float()
                                @ unit_rows(n, DIM, 1, getattr(torch, dtype)).float().T, k, dim=1).values
        torch.testing.assert_close(result[0], ref_values, rtol=1e-5, atol=1e-5)
    if full_sizes:
        benchmark.extra_info["peak_extra_mib"] = peak_extra_mib(
            "test_bench_similarity_topk", "setup_call", [impl, n, DIM, k, dtype], [impl, 256, DIM, k, dtype])
