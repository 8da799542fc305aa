"""DCDLoss and the contrastive baseline (compiled ops) against the plain-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcd_ext import reference
from dcd_ext.losses import ContrastiveLoss, DCDLoss, EmbeddingQueue
from train_fixtures import FakeTeacher

IDS = torch.tensor([0, 1, 2, 2, 3, 4, 5, 5, 6, 7])  # rows 2/3 and 6/7 show the same image


def batch(seed: int = 0, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    per_image = F.normalize(torch.randn(int(IDS.max()) + 1, dim, generator=g), dim=1)
    img = per_image[IDS].clone().requires_grad_(True)  # one image, one embedding
    txt = F.normalize(torch.randn(len(IDS), dim, generator=g), dim=1).requires_grad_(True)
    scale = torch.tensor(7.5, requires_grad=True)
    return img, txt, scale


def teacher_for_rows(seed: int = 0) -> FakeTeacher:
    """Images are given as their image ids, texts as their row numbers."""
    return FakeTeacher(int(IDS.max()) + 1, len(IDS), seed=seed)


def teacher_table(teacher: FakeTeacher, cand: torch.Tensor, i2t: bool) -> torch.Tensor:
    out = torch.zeros(cand.shape, dtype=torch.float32)
    for r in range(cand.shape[0]):
        for m in range(cand.shape[1]):
            c = int(cand[r, m])
            if c >= 0:
                out[r, m] = teacher.true_score(int(IDS[r]), c) if i2t else teacher.true_score(int(IDS[c]), r)
    return out


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("kind,weighting,alpha,k", [("kl", "dcd", 0.2, 3), ("mse", "entropy", 0.5, 4),
                                                    ("kl", "wsl", 1.0, 9), ("kl", "none", 0.0, 2)])
def test_dcd_loss_mined_by_the_student_matches_the_reference(kind, weighting, alpha, k):
    img, txt, scale = batch()
    teacher = teacher_for_rows()
    loss_fn = DCDLoss(teacher, k=k, alpha=alpha, temperature=2.0, kind=kind, weighting=weighting, con_weight=0.7)
    out = loss_fn(img, txt, scale, IDS, IDS.tolist(), list(range(len(IDS))))

    rows = torch.arange(len(IDS)).view(-1, 1)
    i2t = torch.cat([rows, reference.similarity_topk(img.detach(), txt.detach(), k, IDS, IDS)[1]], dim=1)
    t2i = torch.cat([rows, reference.similarity_topk(txt.detach(), img.detach(), k, IDS, IDS)[1]], dim=1)
    for r in range(len(IDS)):  # never a caption or image of the row's own image
        assert all(int(IDS[r]) != int(IDS[c]) for c in i2t[r, 1:] if c >= 0)
        assert all(int(IDS[r]) != int(IDS[c]) for c in t2i[r, 1:] if c >= 0)
    expected = reference.dynamic_contrastive_loss(
        img, txt, scale, i2t, teacher_table(teacher, i2t, True), t2i, teacher_table(teacher, t2i, False),
        IDS, IDS, alpha=alpha, temperature=2.0, kind=kind, weighting=weighting, con_weight=0.7)
    for name in ("loss", "con", "dist", "hard", "i2t_dist_weight", "t2i_hard_weight"):
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=1e-4, atol=1e-5, msg=name)
    for got, ref in zip(grads(out.loss, img, txt, scale), grads(expected.loss, img, txt, scale)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)

    # each distinct (image, caption) pair is scored once, whichever rows and directions share it
    distinct = {(int(IDS[r]), int(c)) for r in range(len(IDS)) for c in i2t[r] if c >= 0}
    distinct |= {(int(IDS[c]), r) for r in range(len(IDS)) for c in t2i[r] if c >= 0}
    assert out.teacher_pairs == len(distinct) == sum(teacher.calls)


def test_teacher_mining_keeps_the_teacher_top_k_of_each_pool():
    img, txt, scale = batch(1)
    teacher = teacher_for_rows(2)
    loss_fn = DCDLoss(teacher, k=2, mine_by="teacher", teacher_pool=4)
    pools = iter([torch.tensor([[1, 4, 5, -1]] * 5 + [[0, 1, 2, 3]] * 5),     # image anchors' caption pools
                  torch.tensor([[8, 9, 0, 1]] * 5 + [[0, 1, 2, 3]] * 5)])     # caption anchors' image pools
    loss_fn.random_pool = lambda ids: next(pools)
    out = loss_fn(img, txt, scale, IDS, IDS.tolist(), list(range(len(IDS))))

    def top_of(pool_rows, i2t):
        cand = []
        for r, pool in enumerate(pool_rows.tolist()):
            scored = [(teacher.true_score(int(IDS[r]), c) if i2t else teacher.true_score(int(IDS[c]), r), c)
                      for c in pool if c >= 0]
            best = [c for _, c in sorted(scored, key=lambda sc: -sc[0])[:2]]
            cand.append([r] + best + [-1] * (2 - len(best)))
        return torch.tensor(cand)

    i2t = top_of(torch.tensor([[1, 4, 5, -1]] * 5 + [[0, 1, 2, 3]] * 5), True)
    t2i = top_of(torch.tensor([[8, 9, 0, 1]] * 5 + [[0, 1, 2, 3]] * 5), False)
    expected = reference.dynamic_contrastive_loss(img, txt, scale, i2t, teacher_table(teacher, i2t, True),
                                                  t2i, teacher_table(teacher, t2i, False), IDS, IDS)
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.dist, expected.dist, rtol=1e-4, atol=1e-5)


def test_random_pools_never_hold_the_anchor_image():
    loss_fn = DCDLoss(teacher_for_rows(), k=2, mine_by="teacher", teacher_pool=8, seed=3)
    pool = loss_fn.random_pool(IDS)
    assert pool.shape == (10, 8)
    for r in range(10):
        members = [int(c) for c in pool[r] if c >= 0]
        allowed = sum(int(IDS[c] != IDS[r]) for c in range(10))
        assert len(members) == len(set(members)) == min(8, allowed)
        assert all(IDS[c] != IDS[r] for c in members)


def test_queue_extends_only_the_contrastive_negatives():
    teacher = teacher_for_rows()
    loss_fn = DCDLoss(teacher, k=3, queue_size=6)
    first_img, first_txt, scale = batch(0)
    loss_fn(first_img, first_txt, scale, IDS, IDS.tolist(), list(range(10)))
    assert len(loss_fn.queue) == 6
    img, txt, _ = batch(5)
    out = loss_fn(img, txt, scale, IDS, IDS.tolist(), list(range(10)))

    q_img, q_txt, q_ids = first_img.detach()[:6], first_txt.detach()[:6], IDS[:6]
    pos = torch.cat([torch.arange(10), torch.full((6,), -1)])
    con = reference.contrastive_loss(torch.cat([img, q_img]), torch.cat([txt, q_txt]), scale, pos_row=pos,
                                     pos_col=pos, img_ids=torch.cat([IDS, q_ids]), txt_ids=torch.cat([IDS, q_ids]))
    rows = torch.arange(10).view(-1, 1)
    i2t = torch.cat([rows, reference.similarity_topk(img.detach(), txt.detach(), 3, IDS, IDS)[1]], dim=1)
    t2i = torch.cat([rows, reference.similarity_topk(txt.detach(), img.detach(), 3, IDS, IDS)[1]], dim=1)
    a = reference.distill_loss(img, txt, i2t, teacher_table(teacher, i2t, True), scale)
    b = reference.distill_loss(txt, img, t2i, teacher_table(teacher, t2i, False), scale)
    expected = con + 0.2 * 0.5 * (a.dist + b.dist) + 0.8 * 0.5 * (a.hard + b.hard)
    torch.testing.assert_close(out.con, con, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss, expected, rtol=1e-4, atol=1e-5)
    for got, ref in zip(grads(out.loss, img, txt, scale), grads(expected, img, txt, scale)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # newest first, oldest dropped
    torch.testing.assert_close(loss_fn.queue.img, img.detach()[:6])


def test_contrastive_baseline_matches_the_reference():
    img, txt, scale = batch(4)
    out = ContrastiveLoss()(img, txt, scale, IDS)
    expected = reference.contrastive_loss(img, txt, scale, img_ids=IDS, txt_ids=IDS)
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert out.dist is None and out.teacher_pairs == 0
    for got, ref in zip(grads(out.loss, img, txt, scale), grads(expected, img, txt, scale)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


def test_queue_keeps_the_most_recent_rows():
    queue = EmbeddingQueue(5)
    for step in range(3):
        queue.push(torch.full((2, 1), float(step)), torch.full((2, 1), float(step)), torch.tensor([step, step]))
    assert queue.img.view(-1).tolist() == [2, 2, 1, 1, 0] and queue.ids.tolist() == [2, 2, 1, 1, 0]
    empty = EmbeddingQueue(0)
    empty.push(torch.ones(2, 1), torch.ones(2, 1), torch.tensor([0, 1]))
    assert len(empty) == 0
    with pytest.raises(ValueError, match="queue_size"):
        EmbeddingQueue(-1)


def test_dcd_loss_rejects_bad_options():
    teacher = teacher_for_rows()
    with pytest.raises(ValueError, match="teacher"):
        DCDLoss(None)
    with pytest.raises(ValueError, match="k must be"):
        DCDLoss(teacher, k=0)
    with pytest.raises(ValueError, match="alpha"):
        DCDLoss(teacher, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DCDLoss(teacher, temperature=0.0)
    with pytest.raises(ValueError, match="kind must be one of kl, mse"):
        DCDLoss(teacher, kind="l1")
    with pytest.raises(ValueError, match="weighting"):
        DCDLoss(teacher, weighting="focal")
    with pytest.raises(ValueError, match="mine_by"):
        DCDLoss(teacher, mine_by="random")
    with pytest.raises(ValueError, match="teacher_pool"):
        DCDLoss(teacher, k=8, mine_by="teacher", teacher_pool=4)
    img, txt, scale = batch()
    with pytest.raises(ValueError, match="at least 2"):
        DCDLoss(teacher)(img[:1], txt[:1], scale, IDS[:1], [0], [0])


def test_dcd_loss_contract_required_arguments_and_errors_naming_the_callers_argument():
    """Issue "nothing silent", item 12: images and texts are required, and mistakes name the argument the caller
    passed (not an internal one such as a kernel's ``query`` or the teacher's ``pairs``)."""
    import inspect
    teacher = teacher_for_rows()
    loss_fn = DCDLoss(teacher, k=2)
    params = inspect.signature(loss_fn.forward).parameters
    assert all(params[name].default is inspect.Parameter.empty
               for name in ("img", "txt", "logit_scale", "image_ids", "images", "texts"))
    img, txt, scale = batch()
    rows = IDS.tolist()
    texts = list(range(len(IDS)))
    with pytest.raises(TypeError, match="missing 2 required positional arguments: 'images' and 'texts'"):
        loss_fn(img, txt, scale, IDS)
    with pytest.raises(ValueError, match=r"images: expected 10 images \(one per row of img/txt\); got 9"):
        loss_fn(img, txt, scale, IDS, rows[:9], texts)
    with pytest.raises(ValueError, match=r"texts: expected 10 texts .*got 3"):
        loss_fn(img, txt, scale, IDS, rows, texts[:3])
    with pytest.raises(TypeError, match="texts: expected a list of the batch's 10 raw texts"):
        loss_fn(img, txt, scale, IDS, rows, "a caption")
    with pytest.raises(ValueError, match=r"image_ids: expected an int64 tensor \[10\]"):
        loss_fn(img, txt, scale, IDS.float(), rows, texts)
    with pytest.raises(ValueError, match=r"image_ids: expected an int64 tensor \[10\] .*shape \(9,\)"):
        loss_fn(img, txt, scale, IDS[:9], rows, texts)
    with pytest.raises(ValueError, match=r"img and txt: .*\(10, 8\) and \(9, 8\)"):
        loss_fn(img, txt[:9], scale, IDS, rows, texts)
    with pytest.raises(TypeError, match="img: expected a floating"):
        loss_fn(img.long(), txt, scale, IDS, rows, texts)
    with pytest.raises(TypeError, match="teacher: expected a CrossEncoderTeacher or a callable .*got object"):
        DCDLoss(object())

    class WrongShape(FakeTeacher):
        def score_pairs(self, images, texts, pairs):
            return super().score_pairs(images, texts, pairs)[:1]

    with pytest.raises(ValueError, match=r"teacher: returned scores of shape \(1,\) for \d+ pairs"):
        DCDLoss(WrongShape(8, 10), k=2)(img, txt, scale, IDS, rows, texts)
    out = loss_fn(img, txt, scale, IDS, rows, texts)
    assert torch.isfinite(out.loss) and out.teacher_pairs > 0


def test_dcd_weights_are_constants_for_the_gradient(monkeypatch):
    """The wsl/dcd weights depend on the student's logits but are stop-gradient (documented): the returned
    weights carry no graph, and the gradient is the reference's with detached weights, not the one a
    differentiable weight would give."""
    teacher = teacher_for_rows()
    img, txt, scale = batch()
    loss_fn = DCDLoss(teacher, k=3, weighting="wsl")
    targets = loss_fn.prepare(img.detach(), txt.detach(), IDS, IDS.tolist(), list(range(len(IDS))))
    out = loss_fn.compute(img, txt, scale, IDS, targets)
    for w in (out.i2t_dist_weight, out.i2t_hard_weight, out.t2i_dist_weight, out.t2i_hard_weight):
        assert not w.requires_grad
    got = grads(out.loss, img, txt)

    def ref_grads():
        ref = reference.dynamic_contrastive_loss(img, txt, scale, targets.i2t, targets.i2t_teacher, targets.t2i,
                                                 targets.t2i_teacher, IDS, IDS, weighting="wsl")
        return grads(ref.loss, img, txt)

    torch.testing.assert_close(got, ref_grads(), rtol=1e-4, atol=1e-5)
    import dcd_ext.losses.candidates as candidates  # the weights the reference's candidate terms use

    monkeypatch.setattr(candidates, "dynamic_weights", lambda t, z, valid, weighting: differentiable_weights(t, z, valid))
    differs = ref_grads()  # the check above can tell the two apart
    assert max((a - b).abs().max().item() for a, b in zip(got, differs)) > 1e-4


def differentiable_weights(t, z, valid):
    """The wsl weights with the gradient through the student's logits kept (what DCD does not do)."""
    neg = torch.finfo(z.dtype).min
    ce_s = torch.logsumexp(z.masked_fill(~valid, neg), dim=1) - z[:, 0]
    ce_t = torch.logsumexp(t.detach().masked_fill(~valid, neg), dim=1) - t.detach()[:, 0]
    omega = 1 - torch.exp(-torch.clamp(ce_s / (ce_t + 1e-7), min=0))
    return omega, torch.ones_like(omega)


def test_dcd_loss_refuses_embeddings_that_are_not_l2_normalised():
    """CLIP's get_image_features output (norms of 10 or more) gave losses of 56-222 instead of ~5, silently."""
    img, txt, scale = batch()
    teacher, images, rows = teacher_for_rows(), IDS.tolist(), list(range(len(IDS)))
    loss_fn = DCDLoss(teacher, k=2)
    with pytest.raises(ValueError, match=r"img: DCDLoss needs L2-normalised embedding rows \(docs/plugin\.md\); "
                                         r"row 0 has norm 12\.3 ?.*: pass torch\.nn\.functional\.normalize\(img"):
        loss_fn(img * torch.tensor([12.3] + [1.0] * (len(IDS) - 1)).view(-1, 1) / img.norm(dim=1, keepdim=True),
                txt, scale, IDS, images, rows)
    with pytest.raises(ValueError, match=r"txt: DCDLoss needs L2-normalised .* row 2 has norm 0"):
        loss_fn(img, txt.index_fill(0, torch.tensor([2]), 0.0), scale, IDS, images, rows)
    with pytest.raises(ValueError, match=r"img: .* has norm nan"):
        loss_fn(img.index_fill(0, torch.tensor([1]), float("nan")), txt, scale, IDS, images, rows)
    # normalised rows pass, in 16-bit types too
    assert torch.isfinite(loss_fn(img, txt, scale, IDS, images, rows).loss)
    assert torch.isfinite(loss_fn(img.bfloat16(), txt.bfloat16(), scale, IDS, images, rows).loss)
