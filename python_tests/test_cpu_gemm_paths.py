"""The CPU kernels' tile GEMM paths: native bf16 products (AMX, or dcd_ext's AVX512_BF16 score kernel: the
default on CPUs with AVX512_BF16 but no AMX other than Intel's), float32 through torch's GEMM (MKL) or oneDNN's
matmul (the default off Intel). Every path this machine can take runs
here, whatever its vendor (DCD_CPU_GEMM and DCD_CPU_F32_GEMM force them), and must give the float32 kernel's
results on the bf16-rounded inputs, up to accumulation-order rounding."""

from __future__ import annotations

import pytest
import torch

from dcd_ext import ops, reference
from dcd_ext.info import cpuinfo_field
from op_helpers import unit_rows

# (DCD_CPU_GEMM, DCD_CPU_F32_GEMM)
PATHS = [("auto", "auto"), ("float32", "blas"), ("float32", "onednn"), ("native-bf16", "auto"), ("bf16-dot", "auto"),
         ("bf16-dot", "onednn")]


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return unit_rows(n, d, torch.Generator().manual_seed(seed))


def cpu_flags() -> set[str]:
    return set(cpuinfo_field("flags").split())


def cpu_vendor() -> str:
    return cpuinfo_field("vendor_id")


def report(monkeypatch, gemm: str = "", f32: str = "") -> str:
    for name, value in (("DCD_CPU_GEMM", gemm), ("DCD_CPU_F32_GEMM", f32)):
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    return torch.ops.dcd_ext.cpu_gemm_report()


ONEDNN_F32 = {"avx512bw", "avx512vl", "avx512dq"} <= cpu_flags() and torch.backends.mkldnn.is_available()


@pytest.fixture(params=PATHS, ids=["-".join(p) for p in PATHS])
def gemm_path(request, monkeypatch):
    gemm, f32 = request.param
    if f32 == "onednn" and not ONEDNN_F32:
        pytest.skip("no oneDNN float32 matmul on this CPU (it needs AVX-512 BW/VL/DQ)")
    if gemm == "native-bf16" and not {"avx512_bf16", "amx_bf16"} & cpu_flags():
        pytest.skip("this CPU has no native bfloat16 products (AVX512_BF16 or AMX)")
    if gemm == "bf16-dot" and "avx512_bf16" not in cpu_flags():
        pytest.skip("this CPU has no AVX512_BF16")
    report(monkeypatch, gemm, f32)
    return request.param


def test_report_names_the_path_the_cpu_features_allow(monkeypatch):
    text = report(monkeypatch)
    flags = cpu_flags()
    assert f"avx512_bf16={int('avx512_bf16' in flags)}" in text
    assert f"amx_bf16={int('amx_bf16' in flags)}" in text
    vendor = cpu_vendor()
    amx = "amx_bf16" in flags and "mkl bf16 gemm: yes" in text
    dot_kernel = "avx512_bf16" in flags and vendor != "GenuineIntel" and not amx
    assert ("bfloat16: native bf16 x bf16 -> f32 (scores: oneDNN brgemm" in text
            or "bfloat16: native bf16 x bf16 -> f32 (MKL)" in text) == amx
    assert ("bfloat16: native bf16 x bf16 -> f32 (scores: dcd_ext AVX512_BF16 kernel" in text) == dot_kernel
    assert ("bfloat16: widened to float32" in text) == (not amx and not dot_kernel)
    assert f"avx512_bf16 kernel: {'yes' if 'avx512_bf16' in flags else 'no'}" in text
    intel_few_rows = "avx512_bf16" in flags and vendor == "GenuineIntel" and not amx
    assert ("similarity_topk with at most 256 query rows: dcd_ext AVX512_BF16 kernel" in text) == intel_few_rows
    f32_onednn = "float32: oneDNN matmul" in text
    if vendor == "GenuineIntel":
        assert not f32_onednn and "cpu: Intel" in text
    elif vendor == "AuthenticAMD":
        assert "cpu: AMD" in text and f32_onednn == ONEDNN_F32
    assert "bfloat16: widened to float32" in report(monkeypatch, "float32")
    if "avx512_bf16" in flags or amx:
        assert "bfloat16: native bf16 x bf16 -> f32" in report(monkeypatch, "native-bf16")
    if "avx512_bf16" in flags:
        assert "scores: dcd_ext AVX512_BF16 kernel" in report(monkeypatch, "bf16-dot")
    assert "float32: torch GEMM" in report(monkeypatch, f32="blas")
    if ONEDNN_F32:
        assert "float32: oneDNN matmul" in report(monkeypatch, f32="onednn")


@pytest.mark.parametrize("name,value", [("DCD_CPU_GEMM", "bf17"), ("DCD_CPU_F32_GEMM", "mkl")])
def test_unknown_gemm_choices_are_refused_by_name(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be"):
        ops.similarity_topk(unit(3, 8, 0).bfloat16(), unit(5, 8, 1).bfloat16(), 2)


@pytest.mark.parametrize("n,m,d", [(64, 2000, 32), (700, 300, 16), (130, 70, 0)])
def test_float32_results_agree_across_gemm_libraries(monkeypatch, n, m, d):
    if not ONEDNN_F32:
        pytest.skip("no oneDNN float32 matmul on this CPU (it needs AVX-512 BW/VL/DQ)")
    q, keys = unit(n, d, 4), unit(m, d, 5)
    img, txt = q.clone().requires_grad_(), keys.clone().requires_grad_()
    out = {}
    for lib in ("blas", "onednn"):
        monkeypatch.setenv("DCD_CPU_F32_GEMM", lib)
        img.grad = txt.grad = None
        pos_col = torch.where(torch.arange(m) < n, torch.arange(m), torch.full((m,), -1))
        loss = ops.contrastive_loss(img, txt, 10.0, torch.arange(n) % m, pos_col)
        loss.backward()
        out[lib] = (ops.similarity_topk(q, keys, 7)[0], loss.detach(), img.grad.clone(), txt.grad.clone())
    for got, want in zip(out["onednn"], out["blas"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(out["onednn"][1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,m,d,k", [(300, 1500, 64, 10), (7, 2100, 40, 3), (257, 1025, 33, 1030)])
def test_similarity_topk_low_precision_equals_float32_on_rounded_inputs(gemm_path, dtype, n, m, d, k):
    q, keys = unit(n, d, 0).to(dtype), unit(m, d, 1).to(dtype)
    values, indices = ops.similarity_topk(q, keys, k)
    want_values, want_indices = ops.similarity_topk(q.float(), keys.float(), k)
    ref_values, _ = reference.similarity_topk(q.double(), keys.double(), k)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, want_values, rtol=0, atol=2e-6)
    torch.testing.assert_close(values.double(), ref_values.double(), rtol=0, atol=2e-6, equal_nan=True)
    # indices agree wherever the scores are not a near-tie
    gap = (want_values[:, 1:] - want_values[:, :-1]).abs()
    clear = torch.ones_like(indices, dtype=torch.bool)
    clear[:, 1:] &= gap > 1e-5
    clear[:, :-1] &= gap > 1e-5
    assert torch.equal(indices[clear], want_indices[clear])
    if k > m:
        assert (indices[:, m:] == -1).all() and torch.isinf(values[:, m:]).all()


def test_similarity_topk_mixed_dtypes_and_ids(gemm_path):
    q, keys = unit(50, 32, 0).bfloat16(), unit(400, 32, 1)
    ids_q, ids_k = torch.arange(50) % 7, torch.arange(400) % 7
    values, indices = ops.similarity_topk(q, keys, 5, ids_q, ids_k)
    want_values, want_indices = reference.similarity_topk(q.double(), keys.double(), 5, ids_q, ids_k)
    torch.testing.assert_close(values.double(), want_values.double(), rtol=0, atol=2e-6)
    assert (ids_k[indices] != ids_q.view(-1, 1)).all()


@pytest.mark.parametrize("n,m,d", [(600, 600, 48), (130, 1030, 20)])
def test_contrastive_loss_bf16_matches_the_float64_reference_on_rounded_inputs(gemm_path, n, m, d):
    img = unit(n, d, 2).bfloat16().requires_grad_()
    txt = unit(m, d, 3).bfloat16().requires_grad_()
    scale = torch.tensor(20.0, requires_grad=True)
    pos_row = torch.arange(n) % m
    pos_col = torch.where(torch.arange(m) < n, torch.arange(m), torch.full((m,), -1))
    loss = ops.contrastive_loss(img, txt, scale, pos_row, pos_col)
    loss.backward()
    img64 = img.detach().double().requires_grad_()
    txt64 = txt.detach().double().requires_grad_()
    scale64 = scale.detach().double().requires_grad_()
    ref = reference.contrastive_loss(img64, txt64, scale64, pos_row, pos_col)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scale.grad.double(), scale64.grad, rtol=1e-3, atol=1e-4)
    # gradients come back in bfloat16: compare at bf16 resolution relative to their size
    for got, want in ((img.grad, img64.grad), (txt.grad, txt64.grad)):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


# shapes that reach every branch of the AVX512_BF16 score kernel: one row (unpacked), row counts that leave
# 1-7 rows in the last micro-tile, key counts that leave a short block of 48, k odd, under 32 and not a
# multiple of 32, k = 0; in float32 the one-row shapes take the AVX-512 row kernel
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n,m,d", [(1, 3001, 100), (1, 20, 0), (1, 7, 17), (2, 50, 1), (9, 47, 33), (23, 97, 64),
                                   (17, 49, 0), (3, 5, 31)])
def test_similarity_topk_kernel_shapes_match_float64(gemm_path, dtype, n, m, d):
    q, keys = unit(n, d, 6).to(dtype), unit(m, d, 7).to(dtype)
    k = min(5, m)
    values, _ = ops.similarity_topk(q, keys, k)
    want, _ = reference.similarity_topk(q.double(), keys.double(), k)
    torch.testing.assert_close(values.double(), want.double(), rtol=0, atol=2e-6)
    scores = ops.similarity_topk(q, keys, m)[0]  # every score, sorted
    full = torch.sort(q.double() @ keys.double().T, dim=1, descending=True).values
    torch.testing.assert_close(scores.double(), full, rtol=0, atol=2e-6)


@pytest.mark.parametrize("which,row,col", [("query", 0, 0), ("query", -1, -1), ("keys", 0, 0), ("keys", -1, -1),
                                           ("keys", 1234, 17)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_non_finite_input_is_caught_wherever_it_sits(gemm_path, dtype, which, row, col):
    q, keys = unit(19, 33, 8).to(dtype), unit(3000, 33, 9).to(dtype)
    (q if which == "query" else keys)[row, col] = float("nan")
    with pytest.raises(ValueError, match=f"{which} holds 1 NaN or infinite values"):
        ops.similarity_topk(q, keys, 4)
    with pytest.raises(ValueError, match=f"{which} holds 1 NaN or infinite values"):
        ops.similarity_topk(q[:1] if which == "keys" else q[row:][:1], keys, 4)  # the one-row kernels


def test_intel_without_amx_scores_few_query_rows_with_the_bf16_kernel(monkeypatch):
    """The choice by shape on Intel without AMX, seen in the results' rounding: up to 256 query rows auto sums
    like the bf16 kernel (bitwise), above like the widened float32 products."""
    if "avx512_bf16" not in cpu_flags() or "amx_bf16" in cpu_flags() or cpu_vendor() != "GenuineIntel":
        pytest.skip("the choice by query rows is made on Intel CPUs with AVX512_BF16 and no AMX")
    keys = unit(4000, 256, 11).bfloat16()
    for n, want in ((256, "bf16-dot"), (257, "float32")):
        q = unit(n, 256, 12).bfloat16()
        got = {}
        for gemm in ("auto", "bf16-dot", "float32"):
            report(monkeypatch, gemm)
            got[gemm] = ops.similarity_topk(q, keys, 4000)[0]
        other = "float32" if want == "bf16-dot" else "bf16-dot"
        assert torch.equal(got["auto"], got[want])
        assert not torch.equal(got["auto"], got[other])  # the two paths round differently
