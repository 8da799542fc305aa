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


def with_threads(threads: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


# few rows against many keys: the CPU kernel splits the keys across threads (in whole tiles of up to
# 16384 keys for small row blocks) and merges the lists
SKINNY = [(1, 70000, 16, 16), (16, 50000, 32, 5), (40, 30000, 8, 3), (5, 3100, 16, 40), (300, 5000, 8, 1100)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n,m,d,k", SKINNY)
def test_key_splits_are_exact_and_independent_of_the_thread_count(n, m, d, k, dtype, gen):
    q = unit_rows(n, d, gen, dtype)
    keys = unit_rows(m, d, gen, dtype)
    keys[m // 3] = q[0]  # a key tied with others across split boundaries
    keys[m - 1] = q[0]
    results = [with_threads(t, lambda: ops.similarity_topk(q, keys, k)) for t in (1, 2, 3, 8)]
    for values, indices in results[1:]:
        assert torch.equal(values, results[0][0]) and torch.equal(indices, results[0][1])
    check_against_reference(q.float(), keys.float(), k, *results[0], atol=1e-5 if dtype == torch.float32 else 1e-4)
    assert set(results[0][1][0, :2].tolist()) == {m // 3, m - 1}  # the planted copies of q[0] lead row 0


def test_key_splits_with_ids():
    gen = torch.Generator().manual_seed(5)
    q, keys = unit_rows(3, 16, gen), unit_rows(7000, 16, gen)
    qid, kid = torch.tensor([0, 1, 2]), torch.arange(7000) % 3
    values, indices = with_threads(4, lambda: ops.similarity_topk(q, keys, 9, qid, kid))
    check_against_reference(q, keys, 9, values, indices, qid, kid)


# every place a bad value can sit: first element, the last column of the last tile, one element inside
BAD_PLACES = {"first": (0, 0), "last": (-1, -1), "inner": (1, 3)}


@pytest.mark.parametrize("which", ["query", "keys"])
@pytest.mark.parametrize("place", list(BAD_PLACES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("n,m", [(2, 5000), (300, 2100)])
def test_a_non_finite_value_anywhere_is_refused(which, place, bad, n, m):
    gen = torch.Generator().manual_seed(3)
    query, keys = unit_rows(n, 8, gen), unit_rows(m, 8, gen)
    (query if which == "query" else keys)[BAD_PLACES[place]] = bad
    for threads in (1, 2):
        with pytest.raises(ValueError, match=f"{which} holds 1 NaN or infinite values"):
            with_threads(threads, lambda: ops.similarity_topk(query, keys, 3))


def test_an_overflowing_product_of_finite_inputs_is_refused():
    query, keys = torch.full((2, 4), 1e20), torch.ones(3000, 4)
    keys[2999] = 1e20
    with pytest.raises(ValueError, match="overflows float32"):
        ops.similarity_topk(query, keys, 2)


def test_k_zero_still_refuses_non_finite_inputs():
    query, keys = torch.randn(2, 4), torch.randn(5, 4)
    keys[4, 3] = float("nan")
    with pytest.raises(ValueError, match="keys holds 1 NaN"):
        ops.similarity_topk(query, keys, 0)


@pytest.mark.parametrize("k", [5, 40, 1000])
@pytest.mark.parametrize("with_ids", [False, True])
def test_long_and_short_lists_break_ties_by_index_exactly(k, with_ids):
    """Small-integer inputs make every score exact and most of them tied: the lists (sorted insertion for
    short ones, collect-and-select for long ones, across key splits) equal a stable sort of the exact scores."""
    gen = torch.Generator().manual_seed(11)
    n, m = 6, 40000
    q = torch.randint(-2, 3, (n, 8), generator=gen).float()
    keys = torch.randint(-2, 3, (m, 8), generator=gen).float()
    qid = kid = None
    scores = q.double() @ keys.double().T
    if with_ids:
        qid, kid = torch.arange(n), torch.randint(0, n, (m,), generator=gen)
        scores = scores.masked_fill(qid.view(-1, 1) == kid.view(1, -1), float("-inf"))
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    want_v = torch.gather(scores, 1, order).float()
    for threads in (1, 2, 3):
        values, indices = with_threads(threads, lambda: ops.similarity_topk(q, keys, k, qid, kid))
        assert torch.equal(values, want_v)
        assert torch.equal(indices, order)
