"""similarity_topk against the plain-PyTorch reference."""

import pytest
import torch

from dcd_ext import ops, reference
from op_helpers import DEVICES, unit_rows

SIZES = [(1, 1, 1, 1), (7, 13, 5, 3), (37, 101, 17, 10), (300, 1031, 33, 16), (257, 1500, 64, 128)]


def check_against_reference(q, keys, k, values, indices, qid=None, kid=None, atol=1e-5):
    """Values match the reference; each returned index really scores its value and is allowed."""
    ref_v, ref_i = reference.similarity_topk(q, keys, k, qid, kid)
    torch.testing.assert_close(values.cpu(), ref_v, rtol=1e-5, atol=atol)
    assert torch.equal(indices.cpu() < 0, ref_i < 0)
    full = q.double().cpu() @ keys.double().cpu().T
    got = indices.cpu()
    present = got >= 0
    rescored = torch.gather(full, 1, got.clamp_min(0))[present]
    torch.testing.assert_close(rescored, values.cpu().double()[present], rtol=1e-5, atol=atol)
    for row in got:
        real = row[row >= 0]
        assert real.unique().numel() == real.numel()
    if qid is not None:
        assert not ((kid.cpu()[got.clamp_min(0)] == qid.cpu().view(-1, 1)) & present).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,m,d,k", SIZES)
def test_float32_matches_reference(n, m, d, k, device, gen):
    q, keys = unit_rows(n, d, gen, device=device), unit_rows(m, d, gen, device=device)
    values, indices = ops.similarity_topk(q, keys, k)
    assert values.shape == (n, k) and indices.shape == (n, k)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    check_against_reference(q, keys, k, values, indices)
    assert (values[:, :-1] >= values[:, 1:]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype, device, gen):
    q = unit_rows(61, 40, gen, dtype=dtype, device=device)
    keys = unit_rows(333, 40, gen, dtype=dtype, device=device)
    values, indices = ops.similarity_topk(q, keys, 9)
    check_against_reference(q, keys, 9, values, indices, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_the_smaller_index(device):
    # small integers give exact dot products and many ties
    g = torch.Generator().manual_seed(7)
    q = torch.randint(-2, 3, (23, 6), generator=g).float().to(device)
    keys = torch.randint(-2, 3, (517, 6), generator=g).float().to(device)
    values, indices = ops.similarity_topk(q, keys, 20)
    ref_v, ref_i = reference.similarity_topk(q.cpu(), keys.cpu(), 20)
    assert torch.equal(values.cpu(), ref_v)
    assert torch.equal(indices.cpu(), ref_i)


@pytest.mark.parametrize("device", DEVICES)
def test_ids_mask_keys_and_short_rows_are_padded(device, gen):
    n, m = 40, 70
    q, keys = unit_rows(n, 12, gen, device=device), unit_rows(m, 12, gen, device=device)
    qid = torch.randint(0, 3, (n,), generator=gen).to(device)
    kid = torch.randint(0, 3, (m,), generator=gen).to(device)
    k = 60  # most rows have fewer allowed keys than k
    values, indices = ops.similarity_topk(q, keys, k, qid, kid)
    check_against_reference(q, keys, k, values, indices, qid, kid)
    allowed = (qid.view(-1, 1) != kid.view(1, -1)).sum(1).cpu()
    for row in range(n):
        a = int(allowed[row])
        assert (indices[row, :a] >= 0).all() and (indices[row, a:] == -1).all()
        assert torch.isneginf(values[row, a:]).all()


@pytest.mark.parametrize("device", DEVICES)
def test_k_larger_than_keys_and_k_zero(device, gen):
    q, keys = unit_rows(5, 4, gen, device=device), unit_rows(3, 4, gen, device=device)
    values, indices = ops.similarity_topk(q, keys, 8)
    check_against_reference(q, keys, 8, values, indices)
    assert (indices[:, 3:] == -1).all() and torch.isneginf(values[:, 3:]).all()
    v0, i0 = ops.similarity_topk(q, keys, 0)
    assert v0.shape == (5, 0) and i0.shape == (5, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device, gen):
    base_q = unit_rows(64, 30, gen, device=device)
    base_k = unit_rows(90, 60, gen, device=device)
    q = base_q[::2]               # strided rows
    keys = base_k[:, ::2]         # strided columns
    keys_t = keys.t().contiguous().t()  # column-major
    for kk in (keys, keys_t):
        values, indices = ops.similarity_topk(q, kk, 7)
        check_against_reference(q, kk, 7, values, indices)


@pytest.mark.parametrize("device", DEVICES)
def test_many_keys_with_a_large_gap(device, gen):
    # the planted best key must win against thousands of others across column tiles
    q = unit_rows(16, 32, gen, device=device)
    keys = unit_rows(5000, 32, gen, device=device) * 0.1
    planted = torch.arange(16) * 300 + 17
    keys[planted.to(device)] = q
    values, indices = ops.similarity_topk(q, keys, 4)
    assert torch.equal(indices[:, 0].cpu(), planted)
    check_against_reference(q, keys, 4, values, indices)
