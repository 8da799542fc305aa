"""Helpers of the operator tests: devices, tolerances and input builders."""

from __future__ import annotations

import pytest
import torch


def cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    from dcd_ext._loader import build_info

    return bool(build_info().WITH_CUDA)


requires_cuda = pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA device and dcd_ext built with CUDA kernels")

DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]

# (rtol, atol) of fused-vs-reference comparisons per input dtype: both sides compute in float32 (float64
# for float64 inputs) from the same rounded inputs, so only summation order differs.
TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-3, 2e-3),
}


def unit_rows(n: int, d: int, gen: torch.Generator, dtype=torch.float32, device="cpu") -> torch.Tensor:
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    return x.to(dtype=dtype, device=device)


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def assert_close(actual, expected, dtype, scale: float = 1.0):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol, atol=atol * scale)
