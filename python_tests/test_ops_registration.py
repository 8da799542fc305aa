"""torch.library registration: opcheck (schema, fake kernels, autograd) and torch.compile tracing."""

import pytest
import torch

from dcd_ext import ops, reference
from op_helpers import unit_rows


def sample_inputs(gen, requires_grad=True, dtype=torch.float32):
    b, d, k1 = 12, 8, 4
    img = unit_rows(b, d, gen, dtype=dtype).requires_grad_(requires_grad)
    txt = unit_rows(b, d, gen, dtype=dtype).requires_grad_(requires_grad)
    scale = torch.tensor(6.0, dtype=dtype, requires_grad=requires_grad)
    ids = torch.arange(b) // 2
    cand = torch.randint(0, b, (b, k1), generator=gen)
    cand[:, 0] = torch.arange(b)
    teacher = torch.randn(b, k1, generator=gen, dtype=dtype)
    return img, txt, scale, ids, cand, teacher


def test_opcheck_similarity_topk(gen):
    img, txt, _, ids, _, _ = sample_inputs(gen, requires_grad=False)
    torch.library.opcheck(torch.ops.dcd_ext.similarity_topk.default, (img, txt, 5, ids, ids))
    torch.library.opcheck(torch.ops.dcd_ext.similarity_topk.default, (img, txt, 20))


def test_opcheck_contrastive_loss(gen):
    img, txt, scale, ids, _, _ = sample_inputs(gen)
    torch.library.opcheck(torch.ops.dcd_ext.contrastive_loss.default,
                          (img, txt, scale, None, None, ids, ids, None, None))


@pytest.mark.parametrize("weighting", ["none", "dcd"])
def test_opcheck_distill_loss(weighting, gen):
    img, txt, scale, _, cand, teacher = sample_inputs(gen)
    torch.library.opcheck(torch.ops.dcd_ext.distill_loss.default,
                          (img, txt, cand, teacher, scale, 1.0, "kl", weighting))


def test_opcheck_dynamic_contrastive_loss(gen):
    img, txt, scale, ids, cand, teacher = sample_inputs(gen)
    torch.library.opcheck(torch.ops.dcd_ext.dynamic_contrastive_loss.default,
                          (img, txt, scale, cand, teacher, cand, teacher, ids, ids, 0.2, 1.0, "kl", "dcd", 1.0),
                          test_utils=("test_schema", "test_faketensor"))


def test_backward_ops_have_fake_kernels(gen):
    img, txt, scale, ids, cand, teacher = sample_inputs(gen, requires_grad=False, dtype=torch.float64)
    _, row_lse, col_lse = torch.ops.dcd_ext.contrastive_loss(img, txt, scale, None, None, ids, ids, None, None)
    torch.library.opcheck(torch.ops.dcd_ext.contrastive_loss_backward.default,
                          (torch.tensor(1.0, dtype=torch.float64), img, txt, scale, None, None, ids, ids, None, None,
                           row_lse, col_lse), test_utils=("test_schema", "test_faketensor"))
    out = ops.distill_loss(img, txt, cand, teacher, scale)
    torch.library.opcheck(torch.ops.dcd_ext.distill_loss_backward.default,
                          (torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64), img, txt,
                           cand, teacher, scale, 1.0, "kl", out.dist_weight, out.hard_weight),
                          test_utils=("test_schema", "test_faketensor"))


def dcd_step(img, txt, scale, ids, i2t, t_i2t, t2i, t_t2i):
    values, indices = ops.similarity_topk(img.detach(), txt.detach(), 3, ids, ids)
    out = ops.dynamic_contrastive_loss(img, txt, scale, i2t, t_i2t, t2i, t_t2i, ids, ids)
    con = ops.contrastive_loss(img, txt, scale, img_ids=ids, txt_ids=ids)
    return out.loss + con, values, indices


def test_torch_compile_fullgraph_forward_and_backward(gen):
    torch._dynamo.reset()
    img, txt, scale, ids, cand, teacher = sample_inputs(gen)
    compiled = torch.compile(dcd_step, fullgraph=True, backend="aot_eager")
    loss, values, indices = compiled(img, txt, scale, ids, cand, teacher, cand, teacher)
    grads = torch.autograd.grad(loss, (img, txt, scale))
    eager_loss, eager_v, eager_i = dcd_step(img, txt, scale, ids, cand, teacher, cand, teacher)
    eager_grads = torch.autograd.grad(eager_loss, (img, txt, scale))
    torch.testing.assert_close(loss, eager_loss)
    assert torch.equal(indices, eager_i)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)
    ref = reference.dynamic_contrastive_loss(img, txt, scale, cand, teacher, cand, teacher, ids, ids).loss
    ref = ref + reference.contrastive_loss(img, txt, scale, img_ids=ids, txt_ids=ids)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_fake_shapes_under_fake_tensor_mode(gen):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k = torch.empty(7, 5), torch.empty(11, 5, dtype=torch.bfloat16).float()
        v, i = torch.ops.dcd_ext.similarity_topk(q, k, 13)
        assert v.shape == (7, 13) and v.dtype == torch.float32 and i.dtype == torch.int64
        loss, rl, cl = torch.ops.dcd_ext.contrastive_loss(q, k, torch.empty(()), torch.empty(7, dtype=torch.int64),
                                                          torch.empty(11, dtype=torch.int64), None, None, None, None)
        assert loss.shape == () and rl.shape == (7,) and cl.shape == (11,)
