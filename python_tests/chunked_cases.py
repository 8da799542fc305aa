"""Cases of the chunked-implementation tests, shared by test_chunked_impl.py (CPU) and test_cuda_ops.py (CUDA).

Each check runs an operator (outputs and gradients) on a device with the chunked implementation selected
(DCD_CPU_IMPL / DCD_CUDA_IMPL=chunked, DCD_CHUNK_COLS small so that the cases cross chunk boundaries and
end in partial chunks), then compares it with the fused CPU kernels and the float64 reference.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from dcd_ext import ops, reference
from op_helpers import TOLERANCES, leaf, unit_rows

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
CHUNKS = [1, 7, 16, 4096]  # one column at a time, partial last chunks, everything in one chunk


def impl_variable(device: str) -> str:
    return "DCD_CUDA_IMPL" if torch.device(device).type == "cuda" else "DCD_CPU_IMPL"


@contextmanager
def chunked(monkeypatch, device: str, chunk: int):
    with monkeypatch.context() as m:
        m.setenv(impl_variable(device), "chunked")
        m.setenv("DCD_CHUNK_COLS", str(chunk))
        yield


@contextmanager
def fused_kernels(monkeypatch, device: str):
    """The device's own (fused) kernels: no implementation override."""
    with monkeypatch.context() as m:
        m.delenv(impl_variable(device), raising=False)
        m.delenv("DCD_CHUNK_COLS", raising=False)
        yield


def scale_dtype(dtype):
    """The logit scale's dtype in a case: its gradient comes back in it, so float64 cases need a float64 one."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def close(actual, expected, dtype, atol_scale=1.0, rtol=None):
    r, a = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), rtol=rtol or r, atol=a * atol_scale,
                               equal_nan=False)


# ------------------------------------------------------------------------------------- similarity_topk

TOPK_CASES = ["plain", "ties", "k_over_m", "k_zero", "ids", "ids_whole_rows"]


def topk_case(name: str, gen, dtype):
    """(query, keys, k, query_ids, key_ids) on the CPU."""
    if name == "ties":  # small integers: exact dot products, many ties, across chunk boundaries
        q = torch.randint(-2, 3, (23, 6), generator=gen).to(dtype)
        keys = torch.randint(-2, 3, (517, 6), generator=gen).to(dtype)
        return q, keys, 20, None, None
    if name == "k_over_m":
        return unit_rows(7, 5, gen, dtype=dtype), unit_rows(11, 5, gen, dtype=dtype), 16, None, None
    if name == "k_zero":
        return unit_rows(5, 3, gen, dtype=dtype), unit_rows(9, 3, gen, dtype=dtype), 0, None, None
    n, m, d = 29, 83, 13
    q, keys = unit_rows(n, d, gen, dtype=dtype), unit_rows(m, d, gen, dtype=dtype)
    if name == "plain":
        return q, keys, 5, None, None
    if name == "ids":
        return q, keys, 12, torch.randint(0, 3, (n,), generator=gen), torch.randint(0, 3, (m,), generator=gen)
    if name == "ids_whole_rows":  # rows 0-4 share their id with every key: nothing but padding
        qid = torch.ones(n, dtype=torch.int64)
        qid[:5] = 0
        return q, keys, 9, qid, torch.zeros(m, dtype=torch.int64)
    raise ValueError(name)


def check_topk(monkeypatch, device, chunk, name, dtype, gen):
    q, keys, k, qid, kid = topk_case(name, gen, dtype)
    with fused_kernels(monkeypatch, "cpu"):
        cpu_v, cpu_i = ops.similarity_topk(q, keys, k, qid, kid)
    dev = [None if t is None else t.to(device) for t in (q, keys, qid, kid)]
    with chunked(monkeypatch, device, chunk):
        v, i = ops.similarity_topk(dev[0], dev[1], k, dev[2], dev[3])
    assert v.device == dev[0].device and v.dtype == torch.float32 and i.dtype == torch.int64
    assert v.shape == (q.shape[0], k) and i.shape == (q.shape[0], k)
    v, i = v.cpu(), i.cpu()
    if name == "ties":  # exact products: the lists equal the reference's and the CPU kernel's, ties included
        ref_v, ref_i = reference.similarity_topk(q.double(), keys.double(), k)
        assert torch.equal(v, ref_v) and torch.equal(i, ref_i)
        assert torch.equal(v, cpu_v) and torch.equal(i, cpu_i)
        return
    ref_v, ref_i = reference.similarity_topk(q.double(), keys.double(), k, qid, kid)
    atol = 1e-5 if dtype in (torch.float32, torch.float64) else 1e-4
    torch.testing.assert_close(v, ref_v, rtol=1e-5, atol=atol)
    torch.testing.assert_close(v, cpu_v, rtol=1e-5, atol=atol)
    assert torch.equal(i < 0, ref_i < 0) and torch.equal(i < 0, cpu_i < 0)
    assert torch.isneginf(v[i < 0]).all()
    # every returned index scores its value, is allowed, and appears once
    full = q.double() @ keys.double().T
    present = i >= 0
    torch.testing.assert_close(torch.gather(full, 1, i.clamp_min(0))[present], v.double()[present], rtol=1e-5,
                               atol=atol)
    for row in i:
        real = row[row >= 0]
        assert real.unique().numel() == real.numel()
    if qid is not None:
        assert not ((kid[i.clamp_min(0)] == qid.view(-1, 1)) & present).any()
    if name == "ids_whole_rows":
        assert (i[:5] == -1).all() and (i[5:] >= 0).all()


# ------------------------------------------------------------------------------------ contrastive_loss

CONTRASTIVE_CASES = ["square", "rect_positions_weights", "ids_whole_rows", "scale_100", "single"]


def contrastive_case(name: str, gen, dtype):
    """(img, txt, logit_scale, keyword arguments) on the CPU."""
    if name == "single":
        return unit_rows(1, 1, gen, dtype=dtype), unit_rows(1, 1, gen, dtype=dtype), torch.tensor(3.0), {}
    if name == "square":
        n, d = 37, 19
        ids = torch.arange(n) // 3
        return (unit_rows(n, d, gen, dtype=dtype), unit_rows(n, d, gen, dtype=dtype), torch.tensor(14.0),
                dict(img_ids=ids, txt_ids=ids))
    if name == "scale_100":  # positives far below the best cosine: a fixed maximum of sigma would underflow
        n, d = 45, 33
        img = unit_rows(n, d, gen, dtype=torch.float64)
        txt = unit_rows(n, d, gen, dtype=torch.float64) - 0.9 * img
        txt = txt / txt.norm(dim=1, keepdim=True)
        return img.to(dtype), txt.to(dtype), torch.tensor(100.0), {}
    n, m, d = 23, 61, 9
    img, txt = unit_rows(n, d, gen, dtype=dtype), unit_rows(m, d, gen, dtype=dtype)
    pos_row = torch.randint(0, m, (n,), generator=gen)
    pos_row[::5] = -1
    pos_col = torch.full((m,), -1, dtype=torch.int64)
    pos_col[::3] = torch.randint(0, n, (len(range(0, m, 3)),), generator=gen)
    if name == "rect_positions_weights":
        row_w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
        row_w[1::4] = 0  # zero-weight rows contribute exactly nothing
        col_w = torch.rand(m, generator=gen, dtype=torch.float64)
        col_w[2::5] = 0
        kw = dict(pos_row=pos_row, pos_col=pos_col, img_ids=torch.arange(n) % 7,
                  txt_ids=torch.randint(0, 7, (m,), generator=gen), row_weight=row_w.float(), col_weight=col_w.float())
        return img, txt, torch.tensor(7.0), kw
    if name == "ids_whole_rows":  # one id for everything: each row keeps only its positive, rows at -1 nothing
        ids_i, ids_t = torch.zeros(n, dtype=torch.int64), torch.zeros(m, dtype=torch.int64)
        return img, txt, torch.tensor(9.0), dict(pos_row=pos_row, pos_col=pos_col, img_ids=ids_i, txt_ids=ids_t)
    raise ValueError(name)


def contrastive_run(fn, img, txt, scale, kw, device):
    a, b, s = leaf(img.to(device)), leaf(txt.to(device)), leaf(scale.to(device))
    loss = fn(a, b, s, **{key: v.to(device) for key, v in kw.items()})
    return (loss, *torch.autograd.grad(loss, (a, b, s)))


def check_contrastive(monkeypatch, device, chunk, name, dtype, gen):
    img, txt, scale, kw = contrastive_case(name, gen, dtype)
    scale = scale.to(scale_dtype(dtype))
    with fused_kernels(monkeypatch, "cpu"):
        cpu = contrastive_run(ops.contrastive_loss, img, txt, scale, kw, "cpu")
    with chunked(monkeypatch, device, chunk):
        got = contrastive_run(ops.contrastive_loss, img, txt, scale, kw, device)
    kw64 = {key: (v.double() if v.is_floating_point() else v) for key, v in kw.items()}
    ref = contrastive_run(reference.contrastive_loss, img.double(), txt.double(), scale.double(), kw64, "cpu")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert got[0].dtype == acc and got[0].device.type == torch.device(device).type
    assert [g.dtype for g in got[1:]] == [dtype, dtype, scale.dtype]
    # float32 rounding of the scores grows with sigma; the other dtypes' tolerances cover it
    sigma_factor = max(1.0, float(scale) / 10) if dtype == torch.float32 else 1.0
    for i, (x, c, r) in enumerate(zip(got, cpu, ref)):
        atol_scale = (1.0 if i == 0 else 10.0) * sigma_factor
        close(x, c, dtype, atol_scale)
        close(x, r, dtype, atol_scale)
    assert torch.isfinite(got[0]) and all(torch.isfinite(g).all() for g in got[1:])


# --------------------------------------------------------------------------------------- distill_loss

DISTILL_SHAPES = [(53, 71, 8, 19), (1, 1, 1, 1), (40, 37, 17, 65), (9, 5, 2, 3)]


def distill_case(shape, gen, dtype):
    n, p, k1, d = shape
    anchors, pool = unit_rows(n, d, gen, dtype=dtype), unit_rows(p, d, gen, dtype=dtype)
    cand = torch.randint(0, p, (n, k1), generator=gen)
    cand[:, 0] = torch.arange(n) % p
    if k1 > 1:
        cand[::3, -1] = -1  # absent slots
        cand[1, 1:] = -1    # an anchor with its positive only
    teacher = torch.randn(n, k1, generator=gen) * 3
    return anchors, pool, cand, teacher, torch.tensor(12.0)


def distill_run(fn, anchors, pool, cand, teacher, scale, device, **kw):
    a, p, s = leaf(anchors.to(device)), leaf(pool.to(device)), leaf(scale.to(device))
    out = fn(a, p, cand.to(device), teacher.to(device), s, **kw)
    return (*out, *torch.autograd.grad(out.dist * 0.3 + out.hard * 1.7, (a, p, s)))


def check_distill(monkeypatch, device, chunk, shape, kind, weighting, dtype, gen):
    anchors, pool, cand, teacher, scale = distill_case(shape, gen, dtype)
    scale = scale.to(scale_dtype(dtype))
    kw = dict(temperature=2.0, kind=kind, weighting=weighting)
    with fused_kernels(monkeypatch, "cpu"):
        cpu = distill_run(ops.distill_loss, anchors, pool, cand, teacher, scale, "cpu", **kw)
    with chunked(monkeypatch, device, chunk):
        got = distill_run(ops.distill_loss, anchors, pool, cand, teacher, scale, device, **kw)
    ref = distill_run(reference.distill_loss, anchors.double(), pool.double(), cand, teacher.double(),
                      scale.double(), "cpu", **kw)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert [t.dtype for t in got[:4]] == [acc] * 4 and [g.dtype for g in got[4:]] == [dtype, dtype, scale.dtype]
    for i, (x, c, r) in enumerate(zip(got, cpu, ref)):
        atol_scale = 1.0 if i < 4 else 10.0
        close(x, c, dtype, atol_scale)
        close(x, r, dtype, atol_scale)


def check_distill_ignores_absent_teacher_values(monkeypatch, device, gen):
    """Absent slots may hold any teacher value, NaN and inf included (docs/design.md section 3.5)."""
    anchors, pool, cand, teacher, scale = distill_case((53, 71, 8, 19), gen, torch.float32)
    clean = teacher.clone()
    teacher[cand < 0] = float("nan")
    teacher[1, 2:] = float("inf")
    with fused_kernels(monkeypatch, "cpu"):
        cpu = distill_run(ops.distill_loss, anchors, pool, cand, clean, scale, "cpu")
    with chunked(monkeypatch, device, 16):
        got = distill_run(ops.distill_loss, anchors, pool, cand, teacher, scale, device)
    for x, c in zip(got, cpu):
        close(x, c, torch.float32, 10.0)


# --------------------------------------------------------------------------- dynamic_contrastive_loss

def check_dynamic(monkeypatch, device, chunk, dtype, gen):
    b, k1, d = 48, 8, 24
    img, txt = unit_rows(b, d, gen, dtype=dtype), unit_rows(b, d, gen, dtype=dtype)
    ids = torch.arange(b) // 3
    i2t, t2i = torch.randint(0, b, (b, k1), generator=gen), torch.randint(0, b, (b, k1), generator=gen)
    i2t[:, 0] = t2i[:, 0] = torch.arange(b)
    i2t[::4, -1] = -1
    ti2t, tt2i = torch.randn(b, k1, generator=gen), torch.randn(b, k1, generator=gen)
    kw = dict(alpha=0.3, temperature=1.5, kind="kl", weighting="dcd", con_weight=0.7)

    scale = torch.tensor(20.0, dtype=scale_dtype(dtype))

    def run(fn, device, cast):
        a, t, s = leaf(cast(img).to(device)), leaf(cast(txt).to(device)), leaf(cast(scale).to(device))
        c1, c2, i = i2t.to(device), t2i.to(device), ids.to(device)
        out = fn(a, t, s, c1, cast(ti2t).to(device), c2, cast(tt2i).to(device), i, i, **kw)
        return (*out, *torch.autograd.grad(out.loss, (a, t, s)))

    with fused_kernels(monkeypatch, "cpu"):
        cpu = run(ops.dynamic_contrastive_loss, "cpu", lambda x: x)
    with chunked(monkeypatch, device, chunk):
        got = run(ops.dynamic_contrastive_loss, device, lambda x: x)
    ref = run(reference.dynamic_contrastive_loss, "cpu", lambda x: x.double())
    for i, (x, c, r) in enumerate(zip(got, cpu, ref)):
        atol_scale = 2.0 if i < 8 else 20.0
        close(x, c, dtype, atol_scale)
        close(x, r, dtype, atol_scale)
