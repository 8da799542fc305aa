"""contrastive_loss (forward and backward) against the plain-PyTorch reference."""

import pytest
import torch

from dcd_ext import ops, reference
from op_helpers import DEVICES, assert_close, leaf, unit_rows

SIZES = [(1, 1, 1), (2, 2, 3), (13, 13, 7), (97, 97, 31), (300, 300, 65), (600, 600, 16)]


def loss_and_grads(fn, img, txt, scale, **kw):
    img, txt, scale = leaf(img), leaf(txt), leaf(scale)
    loss = fn(img, txt, scale, **kw)
    grads = torch.autograd.grad(loss, (img, txt, scale))
    return loss, grads


def compare(img, txt, scale, dtype, **kw):
    loss, grads = loss_and_grads(ops.contrastive_loss, img, txt, scale, **kw)
    ref_loss, ref_grads = loss_and_grads(reference.contrastive_loss, img, txt, scale, **kw)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(loss, ref_loss, dtype)
    for g, r, x in zip(grads, ref_grads, (img, txt, scale)):
        assert g.dtype == x.dtype and g.shape == x.shape
        assert_close(g, r, dtype, scale=10.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,m,d", SIZES)
def test_matches_reference(n, m, d, device, gen):
    img, txt = unit_rows(n, d, gen, device=device), unit_rows(m, d, gen, device=device)
    compare(img, txt, torch.tensor(14.3, device=device), torch.float32)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype, device, gen):
    img = unit_rows(77, 24, gen, dtype=dtype, device=device)
    txt = unit_rows(77, 24, gen, dtype=dtype, device=device)
    compare(img, txt, torch.tensor(10.0, device=device), dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_id_masking(device, gen):
    n = 90
    img, txt = unit_rows(n, 20, gen, device=device), unit_rows(n, 20, gen, device=device)
    ids = torch.randint(0, 18, (n,), generator=gen).to(device)  # ~5 captions per image, as in COCO
    compare(img, txt, torch.tensor(20.0, device=device), torch.float32, img_ids=ids, txt_ids=ids)
    plain = ops.contrastive_loss(img, txt, 20.0)
    masked = ops.contrastive_loss(img, txt, 20.0, img_ids=ids, txt_ids=ids)
    assert masked < plain  # fewer negatives in every denominator


# e.g. a batch of images against captions plus a queue, the transpose, and one data-parallel rank's rows
# against a gathered batch (more texts than 2^22 / D: the positive dot products are taken in chunks)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,m,d", [(41, 127, 18), (127, 41, 18), (8, 20000, 256)])
def test_rectangular_with_positions_weights_and_missing_terms(device, n, m, d, gen):
    img, txt = unit_rows(n, d, gen, device=device), unit_rows(m, d, gen, device=device)
    pos_row = torch.randint(0, m, (n,), generator=gen)
    pos_row[::7] = -1
    pos_col = torch.full((m,), -1, dtype=torch.int64)
    pos_col[pos_row[pos_row >= 0]] = torch.arange(n)[pos_row >= 0]
    row_w = torch.rand(n, generator=gen) + 0.5
    col_w = torch.rand(m, generator=gen)
    img_ids = torch.arange(n) % 13
    txt_ids = torch.randint(0, 13, (m,), generator=gen)
    kw = dict(pos_row=pos_row, pos_col=pos_col, img_ids=img_ids, txt_ids=txt_ids, row_weight=row_w,
              col_weight=col_w)
    kw = {k: v.to(device) for k, v in kw.items()}
    compare(img, txt, torch.tensor(7.0, device=device), torch.float32, **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_large_logit_scale_with_low_similarities_stays_finite(device, gen):
    # best cosine per row far below 1: a fixed maximum of sigma would underflow every exp
    n, d = 200, 64
    img = unit_rows(n, d, gen, dtype=torch.float64)
    txt = unit_rows(n, d, gen, dtype=torch.float64)
    txt = (txt - 0.9 * img)  # make the positives strongly negative
    txt = txt / txt.norm(dim=1, keepdim=True)
    img, txt = img.float().to(device), txt.float().to(device)
    scale = torch.tensor(100.0, device=device)
    loss, grads = loss_and_grads(ops.contrastive_loss, img, txt, scale)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    ref_loss, ref_grads = loss_and_grads(reference.contrastive_loss, img.double(), txt.double(),
                                         scale.double())
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=1e-3)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device, gen):
    base = unit_rows(120, 40, gen, device=device)
    img = base[::2, :20]
    txt = base[1::2, 20:].t().contiguous().t()
    compare(img, txt, torch.tensor(5.0, device=device), torch.float32)


def test_gradcheck_float64(gen):
    img = unit_rows(9, 5, gen, dtype=torch.float64).requires_grad_()
    txt = unit_rows(11, 5, gen, dtype=torch.float64).requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    pos_row = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, -1])
    pos_col = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, -1, -1, 8])
    ids_i = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 6])
    ids_t = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5, 7, 0, 6])
    w = torch.rand(9, dtype=torch.float64, generator=gen) + 0.1

    def fn(a, b, s):
        return ops.contrastive_loss(a, b, s, pos_row, pos_col, ids_i, ids_t, row_weight=w)

    assert torch.autograd.gradcheck(fn, (img, txt, scale))


def test_rows_without_any_term_give_zero(gen):
    img, txt = unit_rows(4, 3, gen), unit_rows(4, 3, gen)
    none = torch.full((4,), -1, dtype=torch.int64)
    loss = ops.contrastive_loss(leaf(img), txt, 2.0, pos_row=none, pos_col=none)
    assert loss.item() == 0.0
