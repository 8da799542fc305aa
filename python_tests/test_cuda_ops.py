"""CUDA kernels against the CPU kernels and the reference, and run-to-run reproducibility.

Skipped where there is no GPU or the CUDA kernels were not built. The device-parametrised tests of the
other files also run every reference comparison on CUDA.
"""

import pytest
import torch

from chunked_cases import (CONTRASTIVE_CASES, DISTILL_SHAPES, TOPK_CASES, check_contrastive, check_distill,
                           check_distill_ignores_absent_teacher_values, check_dynamic, check_topk, close,
                           contrastive_case, contrastive_run, distill_case, distill_run, fused_kernels,
                           scale_dtype)
from dcd_ext import ops, reference
from op_helpers import assert_close, cuda_ready, leaf, unit_rows

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not cuda_ready(), reason="needs a CUDA device and CUDA kernels")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def both(x):
    return x, x.cuda()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m,d,k", [(1, 1, 1, 1), (33, 65, 17, 5), (100, 1000, 130, 64), (513, 777, 256, 16)])
def test_similarity_topk_cuda_equals_cpu(n, m, d, k, dtype, gen):
    q, qc = both(unit_rows(n, d, gen, dtype=dtype))
    keys, kc = both(unit_rows(m, d, gen, dtype=dtype))
    ids_q, ids_qc = both(torch.randint(0, 7, (n,), generator=gen))
    ids_k, ids_kc = both(torch.randint(0, 7, (m,), generator=gen))
    v, i = ops.similarity_topk(q, keys, k, ids_q, ids_k)
    vc, ic = ops.similarity_topk(qc, kc, k, ids_qc, ids_kc)
    torch.testing.assert_close(vc.cpu(), v, rtol=1e-4, atol=1e-4)
    # indices may differ only where scores tie within rounding
    full = q.double() @ keys.double().T
    got = ic.cpu()
    present = got >= 0
    assert torch.equal(present, i >= 0)
    torch.testing.assert_close(torch.gather(full, 1, got.clamp_min(0))[present], v.double()[present], rtol=1e-3,
                               atol=1e-3)


# ------------------------------------------------- the fused top-k kernel's paths, decided exactly
# Integer-valued inputs make every product and sum exact in float32 in any order, so the tensor-core and
# SIMT paths, the CPU kernel and the float64 reference must agree bitwise, ties included (the smaller key
# index first), which checks the candidate buffers, the merges, the key splits and the padding exactly.


def exact_topk(q, keys, k, qid=None, kid=None, device="cpu"):
    """The float64 reference (on CPU, returned there): descending, ties to the smaller index, masked keys and
    short rows padded."""
    scores = q.double().to(device) @ keys.double().to(device).T
    if qid is not None:
        scores = scores.masked_fill(qid.to(device).view(-1, 1) == kid.to(device).view(1, -1), float("-inf"))
    n, m = scores.shape
    values = torch.full((n, k), float("-inf"), dtype=torch.float64, device=device)
    indices = torch.full((n, k), -1, dtype=torch.int64, device=device)
    kk = min(k, m)
    sv, si = torch.sort(scores, dim=1, descending=True, stable=True)
    sv, si = sv[:, :kk], si[:, :kk]
    allowed = sv != float("-inf")
    values[:, :kk] = torch.where(allowed, sv, values[:, :kk])
    indices[:, :kk] = torch.where(allowed, si, indices[:, :kk])
    return values.float().cpu(), indices.cpu()


def int_rows(n, d, gen, dtype, lo=-3, hi=4):
    return torch.randint(lo, hi, (n, d), generator=gen).to(dtype)


def topk_ids(n, m, gen, mode):
    if mode == "none":
        return None, None
    if mode == "rows":  # every key has id 0: even query rows (id 0) are masked whole, odd rows (id 1) not at all
        return torch.arange(n) % 2, torch.zeros(m, dtype=torch.int64)
    return torch.randint(0, 3, (n,), generator=gen), torch.randint(0, 3, (m,), generator=gen)


TOPK_EXACT_CASES = [  # n, m, d, k, ids
    (1, 1, 1, 1, "none"),
    (5, 37, 7, 3, "some"),  # D = 7: the scalar load path; M below one key tile
    (70, 300, 129, 16, "some"),  # tails in N (64 + 6), M (2 * 128 + 44) and D (4 * 32 + 1)
    (64, 256, 32, 1, "none"),  # whole tiles, one stage, k = 1
    (130, 1000, 256, 1000, "some"),  # k = M: deep lists, many buffer flushes
    (33, 200, 64, 300, "rows"),  # k > M, whole rows masked
    (3, 200_000, 64, 16, "some"),  # few queries, many keys: many key splits and their merge
    (3, 200_000, 64, 1000, "rows"),  # key splits with deep lists
    (200, 5000, 16, 1, "some"),  # D = 16: half a stage for 16-bit inputs
    (4, 300, 0, 5, "some"),  # D = 0: every score 0, ties all the way
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m,d,k,ids", TOPK_EXACT_CASES)
def test_similarity_topk_cuda_exact(n, m, d, k, ids, dtype, gen):
    q, keys = int_rows(n, d, gen, dtype), int_rows(m, d, gen, dtype)
    qid, kid = topk_ids(n, m, gen, ids)
    ref_v, ref_i = exact_topk(q, keys, k, qid, kid)
    cuda_ids = () if qid is None else (qid.cuda(), kid.cuda())
    v, i = ops.similarity_topk(q.cuda(), keys.cuda(), k, *cuda_ids)
    assert torch.equal(v.cpu(), ref_v) and torch.equal(i.cpu(), ref_i)
    cpu_v, cpu_i = ops.similarity_topk(q, keys, k, *(() if qid is None else (qid, kid)))
    assert torch.equal(v.cpu(), cpu_v) and torch.equal(i.cpu(), cpu_i)
    if ids == "rows":
        assert (i.cpu()[0::2] == -1).all() and torch.isneginf(v.cpu()[0::2]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tail,m,d,k,ids", [(70, 300, 129, 16, "some"), (1, 1000, 64, 300, "rows"),
                                            (0, 1000, 256, 1, "none")])
def test_similarity_topk_cuda_exact_many_queries(tail, m, d, k, ids, dtype, gen):
    """Enough queries for a 128-row CTA on every SM: the large CTA shape (512 threads, one split)."""
    n = 128 * torch.cuda.get_device_properties(0).multi_processor_count + tail
    q, keys = int_rows(n, d, gen, dtype), int_rows(m, d, gen, dtype)
    qid, kid = topk_ids(n, m, gen, ids)
    ref_v, ref_i = exact_topk(q, keys, k, qid, kid, device="cuda")
    v, i = ops.similarity_topk(q.cuda(), keys.cuda(), k, *(() if qid is None else (qid.cuda(), kid.cuda())))
    assert torch.equal(v.cpu(), ref_v) and torch.equal(i.cpu(), ref_i)


@pytest.mark.parametrize("dtype", DTYPES)
def test_similarity_topk_cuda_unaligned_rows_use_the_scalar_loads(dtype, gen):
    """Keys that start one element past a 16-byte boundary (D a multiple of 16 bytes) take the scalar load
    path: same results, bitwise, as the aligned copy (the 16-byte cp.async path)."""
    n, m, d, k = 50, 3000, 64, 24
    q, keys = int_rows(n, d, gen, dtype).cuda(), int_rows(m, d, gen, dtype).cuda()
    flat = torch.empty(m * d + 1, dtype=dtype, device="cuda")
    shifted = flat[1:].view(m, d)
    shifted.copy_(keys)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    v, i = ops.similarity_topk(q, keys, k)
    v2, i2 = ops.similarity_topk(q, shifted, k)
    assert torch.equal(v, v2) and torch.equal(i, i2)
    ref_v, ref_i = exact_topk(q, keys, k)
    assert torch.equal(v.cpu(), ref_v) and torch.equal(i.cpu(), ref_i)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("k", [16, 1000])
def test_similarity_topk_cuda_splits_are_deterministic(k, dtype, gen):
    """Few queries (many key splits, 64-row CTAs) and the same queries among enough rows to fill the GPU
    (one split, 128-row CTAs) give bitwise the same rows, and reruns are bitwise identical."""
    m, d = 200_000, 64
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    big = 64 * 2 * sms  # row blocks >= 2 per SM: one split
    keys = unit_rows(m, d, gen, dtype=dtype).cuda()
    q_big = unit_rows(big, d, gen, dtype=dtype).cuda()
    q = q_big[:3].contiguous()
    ids_q, ids_k = torch.randint(0, 50, (big,), generator=gen).cuda(), torch.randint(0, 50, (m,), generator=gen).cuda()
    v, i = ops.similarity_topk(q, keys, k, ids_q[:3].contiguous(), ids_k)
    for _ in range(2):
        v2, i2 = ops.similarity_topk(q, keys, k, ids_q[:3].contiguous(), ids_k)
        assert torch.equal(v, v2) and torch.equal(i, i2)
    vb, ib = ops.similarity_topk(q_big, keys, k, ids_q, ids_k)
    assert torch.equal(vb[:3], v) and torch.equal(ib[:3], i)
    # and the values are right: the float64 scores of the returned keys, within rounding of the product
    ref = q.double() @ keys.double().T
    ref = ref.masked_fill(ids_q[:3].view(-1, 1) == ids_k.view(1, -1), float("-inf"))
    ref_v = torch.topk(ref, k, dim=1).values
    torch.testing.assert_close(v.double(), ref_v, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.gather(ref, 1, i), v.double(), rtol=0, atol=1e-4)


def test_similarity_topk_cuda_search_shape_bf16(gen):
    """The search shape at D = 256 (16 queries, many keys, key splits) against the float64 scores."""
    n, m, d, k = 16, 250_000, 256, 16
    q, keys = unit_rows(n, d, gen, dtype=torch.bfloat16).cuda(), unit_rows(m, d, gen, dtype=torch.bfloat16).cuda()
    v, i = ops.similarity_topk(q, keys, k)
    ref = q.double() @ keys.double().T
    torch.testing.assert_close(v.double(), torch.topk(ref, k, dim=1).values, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.gather(ref, 1, i), v.double(), rtol=0, atol=1e-5)
    assert (i >= 0).all() and all(row.unique().numel() == k for row in i)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (31, 31, 9), (257, 257, 100), (300, 129, 64)])
def test_contrastive_loss_cuda_equals_cpu_and_reference(n, m, d, dtype, gen):
    img, txt = unit_rows(n, d, gen, dtype=dtype), unit_rows(m, d, gen, dtype=dtype)
    kw = {}
    if n != m:
        pos_row = torch.randint(0, m, (n,), generator=gen)
        pos_col = torch.full((m,), -1, dtype=torch.int64)
        kw = dict(pos_row=pos_row, pos_col=pos_col)
    ids_i, ids_t = torch.arange(n) // 3, torch.arange(m) // 3
    kw.update(img_ids=ids_i, txt_ids=ids_t)
    scale = torch.tensor(30.0)

    def run(fn, device):
        a, b, s = leaf(img.to(device)), leaf(txt.to(device)), leaf(scale.to(device))
        loss = fn(a, b, s, **{key: v.to(device) for key, v in kw.items()})
        return (loss, *torch.autograd.grad(loss, (a, b, s)))

    cuda, cpu, ref = run(ops.contrastive_loss, "cuda"), run(ops.contrastive_loss, "cpu"), run(
        reference.contrastive_loss, "cpu")
    for x, y, r in zip(cuda, cpu, ref):
        assert_close(x, y, dtype, scale=10.0)
        assert_close(x, r, dtype, scale=10.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", [(3, 200), (130, 70)])
def test_contrastive_loss_cuda_with_zero_width_embeddings(n, m, dtype):
    """D = 0: every score is 0, so the loss is log(M) + log(N) over 2 and the gradients of img and txt are
    empty; several column tiles per CTA (M > 64) exercise the barriers that order shared memory when no
    product runs."""
    img, txt = torch.zeros(n, 0, dtype=dtype), torch.zeros(m, 0, dtype=dtype)
    pos_row = torch.arange(n) % m
    pos_col = torch.where(torch.arange(m) < n, torch.arange(m), torch.full((m,), -1))
    scale = torch.tensor(10.0)
    results = []
    for device in ("cpu", "cuda"):
        a, b, s = leaf(img.to(device)), leaf(txt.to(device)), leaf(scale.to(device))
        loss = ops.contrastive_loss(a, b, s, pos_row.to(device), pos_col.to(device))
        results.append((loss, *torch.autograd.grad(loss, (a, b, s))))
    ref = reference.contrastive_loss(img.double(), txt.double(), scale.double(), pos_row, pos_col)
    for x, y in zip(*results):
        assert_close(x, y, dtype)
    assert_close(results[1][0], ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,m", [(256, 65536), (16, 20000), (5000, 40), (33, 300)])
def test_contrastive_loss_cuda_skinny_shapes(n, m, dtype, gen):
    """Few rows against many columns (one data-parallel rank's rows against the gathered batch: the
    forward runs transposed, the row gradient in column splits), the transpose (the column gradient in
    splits) and a shape too small to split, against the CPU kernel and the float64 reference; reruns are
    bitwise identical."""
    d = 64
    img, txt = unit_rows(n, d, gen, dtype=dtype), unit_rows(m, d, gen, dtype=dtype)
    pos_row = torch.arange(n) % m
    pos_col = torch.where(torch.arange(m) < n, torch.arange(m), torch.full((m,), -1))
    scale = torch.tensor(20.0)

    def run(fn, device, cast=None):
        a = leaf(img.to(device) if cast is None else img.to(cast))
        b = leaf(txt.to(device) if cast is None else txt.to(cast))
        s = leaf(scale.to(device) if cast is None else scale.to(cast))
        loss = fn(a, b, s, pos_row.to(a.device), pos_col.to(a.device))
        return (loss, *torch.autograd.grad(loss, (a, b, s)))

    cuda, cpu = run(ops.contrastive_loss, "cuda"), run(ops.contrastive_loss, "cpu")
    ref = run(reference.contrastive_loss, "cpu", torch.float64)
    for x, y, r in zip(cuda, cpu, ref):
        assert_close(x, y, dtype, scale=10.0)
        assert_close(x, r, dtype, scale=10.0)
    for x, y in zip(cuda, run(ops.contrastive_loss, "cuda")):
        assert torch.equal(x, y)


BAD_PLACES = {"first": (0, 0), "last": (-1, -1), "inner": (1, 3)}


@pytest.mark.parametrize("which", ["query", "keys"])
@pytest.mark.parametrize("place", list(BAD_PLACES))
@pytest.mark.parametrize("n,m", [(2, 50_000), (600, 300)])
def test_similarity_topk_cuda_refuses_a_non_finite_value_anywhere(which, place, n, m, gen):
    """The kernel's finite check (on the scores it computes anyway) fails the next synchronising call with
    a device-side assertion; in a subprocess because that leaves the CUDA context unusable. Finite inputs
    pass in the same subprocess setup (the check is no false alarm)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import torch
        from dcd_ext import ops
        q, keys = torch.randn({n}, 8, device="cuda"), torch.randn({m}, 8, device="cuda")
        {which}[{BAD_PLACES[place]}] = float("nan")
        values, _ = ops.similarity_topk(q, keys, 3)
        torch.cuda.synchronize()
        print("no error")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "no error" not in done.stdout
    clean = subprocess.run([sys.executable, "-c", script.replace('float("nan")', "1.0")], capture_output=True,
                           text=True, timeout=300)
    assert clean.returncode == 0 and "no error" in clean.stdout, clean.stderr
    # the kernel flags the non-finite score; the message names both inputs (a score cannot tell which)
    assert "device-side assert" in done.stderr or "hold NaN or infinite values" in done.stderr


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["kl", "mse"])
@pytest.mark.parametrize("weighting", ["none", "dcd"])
def test_distill_and_dynamic_loss_cuda_equals_cpu(kind, weighting, dtype, gen):
    b, k1, d = 70, 9, 48
    img, txt = unit_rows(b, d, gen, dtype=dtype), unit_rows(b, d, gen, dtype=dtype)
    cand = torch.randint(0, b, (b, k1), generator=gen)
    cand[:, 0] = torch.arange(b)
    cand[::4, -1] = -1
    teacher = torch.randn(b, k1, generator=gen)
    ids = torch.arange(b) // 5

    def run(device):
        a, t, s = leaf(img.to(device)), leaf(txt.to(device)), leaf(torch.tensor(15.0, device=device))
        c, te, i = cand.to(device), teacher.to(device), ids.to(device)
        out = ops.dynamic_contrastive_loss(a, t, s, c, te, c, te, i, i, kind=kind, weighting=weighting)
        return (*out, *torch.autograd.grad(out.loss, (a, t, s)))

    for x, y in zip(run("cuda"), run("cpu")):
        assert_close(x, y, dtype, scale=10.0)


def test_repeated_runs_are_bitwise_identical(gen):
    img = unit_rows(1000, 128, gen, dtype=torch.bfloat16).cuda()
    txt = unit_rows(1000, 128, gen, dtype=torch.bfloat16).cuda()
    ids = (torch.arange(1000) // 5).cuda()
    cand = torch.randint(0, 1000, (1000, 8), generator=gen).cuda()
    cand[:, 0] = torch.arange(1000).cuda()
    teacher = torch.randn(1000, 8, generator=gen).cuda()

    def once():
        a, t, s = leaf(img), leaf(txt), leaf(torch.tensor(20.0, device="cuda"))
        out = ops.dynamic_contrastive_loss(a, t, s, cand, teacher, cand, teacher, ids, ids)
        grads = torch.autograd.grad(out.loss, (a, t, s))
        values, indices = ops.similarity_topk(img, txt, 32, ids, ids)
        return (out.loss, *grads, values, indices)

    first = once()
    for _ in range(4):
        for x, y in zip(first, once()):
            assert torch.equal(x, y)


def test_kernels_follow_the_current_device_and_stream(gen):
    img, txt = unit_rows(64, 32, gen).cuda(), unit_rows(64, 32, gen).cuda()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        loss = ops.contrastive_loss(img, txt, 10.0)
        values, _ = ops.similarity_topk(img, txt, 3)
    stream.synchronize()
    torch.testing.assert_close(loss.cpu(), reference.contrastive_loss(img.cpu(), txt.cpu(), torch.tensor(10.0)),
                               rtol=1e-4, atol=1e-5)


ENTRIES = [pytest.param(ops, id="wrapper"), pytest.param(torch.ops.dcd_ext, id="torch.ops")]


@pytest.mark.parametrize("entry", ENTRIES)
def test_too_many_candidates_is_a_clear_error(entry, gen):
    img = unit_rows(4, 8, gen).cuda()
    cand = torch.zeros(4, 300, dtype=torch.int64, device="cuda")
    with pytest.raises(ValueError, match="at most 256 candidates"):
        entry.distill_loss(img, img, cand, torch.zeros(4, 300, device="cuda"), torch.tensor(1.0, device="cuda"))


@pytest.mark.parametrize("entry", ENTRIES)
def test_mixed_devices_are_a_clear_error(entry, gen, monkeypatch):
    img = unit_rows(4, 8, gen)
    with pytest.raises(ValueError, match="keys is on cuda:0 but query is on cpu"):
        entry.similarity_topk(img, img.cuda(), 2)
    with pytest.raises(ValueError, match="logit_scale is on cpu but img is on cuda:0"):
        entry.contrastive_loss(img.cuda(), img.cuda(), torch.tensor(1.0))
    monkeypatch.setenv("DCD_CHECK_INDICES", "1")  # the exact host check (CUDA checks on the device by default)
    with pytest.raises(IndexError, match=r"pos_row values must lie in \[-1, 4\), got \[0, 9\]"):
        entry.contrastive_loss(img.cuda(), img.cuda(), torch.tensor(1.0, device="cuda"),
                               torch.tensor([0, 9, 1, 2], device="cuda"), torch.arange(4, device="cuda"))
    cand = torch.zeros(4, 3, dtype=torch.int64, device="cuda")
    cand[2, 1] = 4
    with pytest.raises(IndexError, match=r"cand values must lie in \[-1, 4\), got \[0, 4\]"):
        entry.distill_loss(img.cuda(), img.cuda(), cand, torch.zeros(4, 3, device="cuda"),
                           torch.tensor(1.0, device="cuda"))


# ------------------------------------------------------------- the fused loss kernels, path by path
# contrastive_loss.cu: one-pass forward (row LSE in the CTA, column (max, sum) slots merged in slot
# order; CTAs walk several 32-row blocks once there are more than 512), backward with the shared-memory
# d_a accumulator (tensor cores for 16-bit inputs, dS rounded after a power-of-two pre-scale; D split
# into chunks beyond the accumulator), both directions. distill_loss.cu: the two-stage pool gradient.

def _rect(n, m, d, gen, dtype, scale=12.0, **extra):
    img, txt = unit_rows(n, d, gen, dtype=dtype), unit_rows(m, d, gen, dtype=dtype)
    pos_row = torch.randint(0, m, (n,), generator=gen)
    pos_row[::7] = -1
    pos_col = torch.randint(0, n, (m,), generator=gen)
    pos_col[1::5] = -1
    kw = dict(pos_row=pos_row, pos_col=pos_col, img_ids=torch.arange(n) % 11,
              txt_ids=torch.randint(0, 11, (m,), generator=gen), **extra)
    return img, txt, torch.tensor(scale), kw


def fused_contrastive_case(name, gen, dtype):
    if name in CONTRASTIVE_CASES:
        return contrastive_case(name, gen, dtype)
    if name.startswith("d_tail_"):  # D = 1, 7, 129: partial K steps of the producer and partial 64-wide strips
        d = int(name.rsplit("_", 1)[1])
        ids = torch.arange(70) // 3
        return (unit_rows(70, d, gen, dtype=dtype), unit_rows(70, d, gen, dtype=dtype), torch.tensor(20.0),
                dict(img_ids=ids, txt_ids=ids))
    if name == "d_chunks":  # D beyond the shared accumulator (112 KiB): the backward splits D over blockIdx.y
        return _rect(40, 45, 1000, gen, dtype)
    if name == "row_blocks_over_512":  # 532 row blocks > 512 slots: CTAs walk two row blocks; 17000-row columns
        return _rect(17000, 37, 7, gen, dtype)
    if name == "cols_over_512_blocks":  # the same in the other direction (the column backward has 532 blocks)
        return _rect(37, 17000, 7, gen, dtype)
    if name == "tiles_and_tails":  # several row blocks and column tiles, tails in both, scale 100
        return _rect(300, 129, 100, gen, dtype, scale=100.0)
    if name == "zero_weights":  # zero row weights here and there, every column weight 0 (g_col = 0, lse = inf)
        n, m = 90, 70
        row_w = torch.rand(n, generator=gen) + 0.5
        row_w[::3] = 0
        return _rect(n, m, 33, gen, dtype, row_weight=row_w, col_weight=torch.zeros(m))
    if name == "all_weights_zero":  # g_bound = 0: the pre-scale must stay 1 and every gradient be 0
        n, m = 40, 50
        return _rect(n, m, 16, gen, dtype, row_weight=torch.zeros(n), col_weight=torch.zeros(m))
    raise ValueError(name)


FUSED_CONTRASTIVE_CASES = CONTRASTIVE_CASES + ["d_tail_1", "d_tail_7", "d_tail_129", "d_chunks",
                                               "row_blocks_over_512", "cols_over_512_blocks", "tiles_and_tails",
                                               "zero_weights", "all_weights_zero"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FUSED_CONTRASTIVE_CASES)
def test_fused_contrastive_loss_paths(name, dtype, monkeypatch, gen):
    img, txt, scale, kw = fused_contrastive_case(name, gen, dtype)
    scale = scale.to(scale_dtype(dtype))
    with fused_kernels(monkeypatch, "cpu"):
        cpu = contrastive_run(ops.contrastive_loss, img, txt, scale, kw, "cpu")
    with fused_kernels(monkeypatch, "cuda"):
        got = contrastive_run(ops.contrastive_loss, img, txt, scale, kw, "cuda")
        again = contrastive_run(ops.contrastive_loss, img, txt, scale, kw, "cuda")
    kw64 = {key: (v.double() if v.is_floating_point() else v) for key, v in kw.items()}
    ref = contrastive_run(reference.contrastive_loss, img.double(), txt.double(), scale.double(), kw64, "cpu")
    assert [g.dtype for g in got[1:]] == [dtype, dtype, scale.dtype]
    sigma_factor = max(1.0, float(scale) / 10) if dtype == torch.float32 else 1.0
    for i, (x, y, c, r) in enumerate(zip(got, again, cpu, ref)):
        assert torch.equal(x, y), f"output {i} differs between two runs"
        assert torch.isfinite(x).all()
        atol_scale = (1.0 if i == 0 else 10.0) * sigma_factor
        close(x, c, dtype, atol_scale)
        close(x, r, dtype, atol_scale)
    if name == "all_weights_zero":
        assert all(torch.count_nonzero(g) == 0 for g in got[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_contrastive_gradient_relative_error(dtype, monkeypatch, gen):
    """The gradient at a size where it is not tiny: relative to its own norm, against float64 (the 16-bit
    products round dS to the input type; the bound is the input rounding's order)."""
    n, d = 600, 64
    img, txt = unit_rows(n, d, gen, dtype=dtype), unit_rows(n, d, gen, dtype=dtype)
    scale = torch.tensor(50.0)
    with fused_kernels(monkeypatch, "cuda"):
        got = contrastive_run(ops.contrastive_loss, img, txt, scale, {}, "cuda")
    ref = contrastive_run(reference.contrastive_loss, img.double(), txt.double(), scale.double(), {}, "cpu")
    bound = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-4}[dtype]
    for x, r in zip(got[1:3], ref[1:3]):
        err = (x.double().cpu() - r).norm() / r.norm()
        assert err < bound, f"relative gradient error {float(err):.2e} over {bound}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_contrastive_tiny_upstream_gradient_stays_finite(dtype, monkeypatch, gen):
    """An upstream gradient of 1e-36 puts g_bound below 2^-114, where an uncapped pre-scale 2^(14 - e) of dS
    is inf (NaN gradients). bfloat16 has float's exponent range, so its gradient is the scaled one."""
    n, d = 70, 33
    img, txt = unit_rows(n, d, gen, dtype=dtype), unit_rows(n, d, gen, dtype=dtype)
    scale, tiny = torch.tensor(20.0), 1e-36
    with fused_kernels(monkeypatch, "cuda"):
        a, b, s = leaf(img.cuda()), leaf(txt.cuda()), leaf(scale.cuda())
        loss = ops.contrastive_loss(a, b, s)
        got = torch.autograd.grad(loss, (a, b, s), grad_outputs=torch.tensor(tiny, device="cuda"))
    ref = contrastive_run(reference.contrastive_loss, img.double(), txt.double(), scale.double(), {}, "cpu")
    for x in got:
        assert torch.isfinite(x).all()
    if dtype == torch.bfloat16:
        for x, r in zip(got[:2], ref[1:3]):
            err = (x.double().cpu() - tiny * r).norm() / (tiny * r).norm()
            assert err < 3e-2, f"relative gradient error {float(err):.2e}"


def _shared_candidate_case(kind, gen, dtype):
    if kind == "one_for_all":  # candidate 0 in every anchor's slot 1: one segment of 3000 over ~24 chunks
        n, p, k1, d = 3000, 50, 5, 40
        anchors, pool = unit_rows(n, d, gen, dtype=dtype), unit_rows(p, d, gen, dtype=dtype)
        cand = torch.randint(0, p, (n, k1), generator=gen)
        cand[:, 0] = torch.arange(n) % p
        cand[:, 1] = 0
        cand[cand[:, 0] == 0, 1] = 1  # no anchor names its positive twice
        cand[::4, 2] = -1
    elif kind == "chunk_aligned":  # every value exactly one chunk of 128 sorted entries (kPoolChunk)
        n, p, k1, d = 256, 4, 2, 19
        anchors, pool = unit_rows(n, d, gen, dtype=dtype), unit_rows(p, d, gen, dtype=dtype)
        cand = torch.stack([torch.arange(n) // 128 * 2, torch.arange(n) // 128 * 2 + 1], dim=1)
    elif kind == "absent_runs":  # 800 absent slots first in sorted order (over several chunks), short segments
        n, p, k1, d = 500, 300, 3, 33
        anchors, pool = unit_rows(n, d, gen, dtype=dtype), unit_rows(p, d, gen, dtype=dtype)
        cand = torch.randint(0, p, (n, k1), generator=gen)
        cand[:, 0] = torch.arange(n) % p
        cand[:400, 1:] = -1
    else:
        raise ValueError(kind)
    teacher = torch.randn(cand.shape, generator=gen) * 2
    return anchors, pool, cand, teacher, torch.tensor(10.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["one_for_all", "chunk_aligned", "absent_runs"])
def test_fused_distill_pool_gradient_segments(kind, dtype, monkeypatch, gen):
    anchors, pool, cand, teacher, scale = _shared_candidate_case(kind, gen, dtype)
    scale = scale.to(scale_dtype(dtype))
    with fused_kernels(monkeypatch, "cpu"):
        cpu = distill_run(ops.distill_loss, anchors, pool, cand, teacher, scale, "cpu")
    with fused_kernels(monkeypatch, "cuda"):
        got = distill_run(ops.distill_loss, anchors, pool, cand, teacher, scale, "cuda")
        again = distill_run(ops.distill_loss, anchors, pool, cand, teacher, scale, "cuda")
    ref = distill_run(reference.distill_loss, anchors.double(), pool.double(), cand, teacher.double(),
                      scale.double(), "cpu")
    for i, (x, y, c, r) in enumerate(zip(got, again, cpu, ref)):
        assert torch.equal(x, y), f"output {i} differs between two runs"
        atol_scale = 1.0 if i < 4 else 10.0
        close(x, c, dtype, atol_scale)
        close(x, r, dtype, atol_scale)
    d_pool = got[5].cpu()
    named = torch.zeros(pool.shape[0], dtype=torch.bool)
    named[cand[cand >= 0]] = True
    assert (d_pool[~named] == 0).all()  # rows no candidate names stay exactly zero


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DISTILL_SHAPES)
def test_fused_distill_loss_shapes(shape, dtype, monkeypatch, gen):
    anchors, pool, cand, teacher, scale = distill_case(shape, gen, dtype)
    scale = scale.to(scale_dtype(dtype))
    with fused_kernels(monkeypatch, "cpu"):
        cpu = distill_run(ops.distill_loss, anchors, pool, cand, teacher, scale, "cpu", kind="kl", weighting="dcd")
    with fused_kernels(monkeypatch, "cuda"):
        got = distill_run(ops.distill_loss, anchors, pool, cand, teacher, scale, "cuda", kind="kl", weighting="dcd")
    for i, (x, c) in enumerate(zip(got, cpu)):
        close(x, c, dtype, 1.0 if i < 4 else 10.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fused_contrastive_bitwise_reruns_large(dtype, monkeypatch, gen):
    """Many CTAs, column slots, D chunks of one: five runs give identical bits (no atomics anywhere)."""
    img, txt, scale, kw = _rect(20000, 3000, 64, gen, dtype, scale=30.0)
    img, txt = img.cuda(), txt.cuda()
    kw = {key: v.cuda() for key, v in kw.items()}
    with fused_kernels(monkeypatch, "cuda"):
        first = contrastive_run(ops.contrastive_loss, img, txt, scale, kw, "cuda")
        for _ in range(4):
            for x, y in zip(first, contrastive_run(ops.contrastive_loss, img, txt, scale, kw, "cuda")):
                assert torch.equal(x, y)


# ------------------------------------------------------- the chunked implementation (DCD_CUDA_IMPL=chunked)
# the cases of test_chunked_impl.py, run on CUDA against the CPU kernels and the float64 reference

CUDA_CHUNKS = [7, 4096]


@pytest.mark.parametrize("chunk", CUDA_CHUNKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", TOPK_CASES)
def test_chunked_similarity_topk(name, dtype, chunk, monkeypatch, gen):
    check_topk(monkeypatch, "cuda", chunk, name, dtype, gen)


@pytest.mark.parametrize("chunk", CUDA_CHUNKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CONTRASTIVE_CASES)
def test_chunked_contrastive_loss(name, dtype, chunk, monkeypatch, gen):
    check_contrastive(monkeypatch, "cuda", chunk, name, dtype, gen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,weighting", [("kl", "dcd"), ("mse", "entropy")])
@pytest.mark.parametrize("shape", DISTILL_SHAPES)
def test_chunked_distill_loss(shape, kind, weighting, dtype, monkeypatch, gen):
    check_distill(monkeypatch, "cuda", 16, shape, kind, weighting, dtype, gen)


def test_chunked_distill_loss_ignores_absent_teacher_values(monkeypatch, gen):
    check_distill_ignores_absent_teacher_values(monkeypatch, "cuda", gen)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_dynamic_contrastive_loss(dtype, monkeypatch, gen):
    check_dynamic(monkeypatch, "cuda", 5, dtype, gen)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunked_equals_fused_at_a_default_chunk(dtype, monkeypatch, gen):
    """Default chunk width (no DCD_CHUNK_COLS), a width that is not a multiple of anything, cuBLAS products."""
    monkeypatch.delenv("DCD_CHUNK_COLS", raising=False)
    b, d = 3000, 200
    img, txt = unit_rows(b, d, gen, dtype=dtype).cuda(), unit_rows(b, d, gen, dtype=dtype).cuda()
    ids = (torch.arange(b) // 5).cuda()

    def run(impl):
        monkeypatch.setenv("DCD_CUDA_IMPL", impl)
        a, t, s = leaf(img), leaf(txt), leaf(torch.tensor(30.0, device="cuda"))
        loss = ops.contrastive_loss(a, t, s, img_ids=ids, txt_ids=ids)
        values, _ = ops.similarity_topk(img, txt, 16, ids, ids)
        return (loss, *torch.autograd.grad(loss, (a, t, s)), values)

    for x, y in zip(run("chunked"), run("fused")):
        assert_close(x, y, dtype, scale=10.0)
