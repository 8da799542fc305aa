"""One training step's problem, built the same way in a test and in each process of a torchrun world:
a tiny student, a fixed global batch of synthetic captions, a fake teacher; and the single-process
reference of that step's loss and gradients written with dcd_ext.reference's math."""

from __future__ import annotations

import torch

from dcd_ext import reference
from dcd_ext.data import BatchCollator, make_synthetic_split
from dcd_ext.data.loader import CaptionDataset
from dcd_ext.losses import ContrastiveLoss, DCDLoss
from dcd_ext.students import build_small_student
from dcd_ext.train.step import embed, split_batch
from train_fixtures import FakeTeacher

GLOBAL_BATCH = 16
K, ALPHA = 2, 0.3


def make_problem(seed: int = 0):
    """(student, global batch, teacher); identical in every process."""
    split = make_synthetic_split("step", 10, seed=seed, image_size=32)
    torch.manual_seed(seed)
    student = build_small_student(split.captions, width=16, embed_dim=8, image_channels=[4, 4, 4], text_layers=1)
    image_key = {id(im): i for i, im in enumerate(split.images)}
    text_key = {c: j for j, c in reversed(list(enumerate(split.captions)))}
    teacher = FakeTeacher(len(split.images), len(split.captions), seed=seed,
                          image_key=lambda im: image_key[id(im)], text_key=lambda t: text_key[t])
    order = torch.randperm(split.num_captions, generator=torch.Generator().manual_seed(seed))[:GLOBAL_BATCH]
    dataset = CaptionDataset(split)
    batch = BatchCollator(student.image_transform, student.tokenizer)([dataset[j] for j in order.tolist()])
    return student, batch, teacher


def make_loss(kind: str, teacher, queue_size: int = 0):
    if kind == "contrastive":
        return ContrastiveLoss(queue_size)
    return DCDLoss(teacher, k=K, alpha=ALPHA, queue_size=queue_size)


def teacher_logits(teacher, batch, rows, cand, image_anchor: bool):
    """Teacher logits [n, K+1] of anchor rows against candidate columns (within ``rows``)."""
    out = torch.zeros(cand.shape, dtype=torch.float32)
    for a in range(cand.shape[0]):
        for m in range(cand.shape[1]):
            c = int(cand[a, m])
            if c < 0:
                continue
            i, j = (rows[a], rows[c]) if image_anchor else (rows[c], rows[a])
            out[a, m] = teacher.score_pairs(batch.images, batch.texts, torch.tensor([[i, j]]))[0]
    return out


def candidates(anchor, pool, ids):
    _, idx = reference.similarity_topk(anchor, pool, K, ids, ids)
    return torch.cat([torch.arange(anchor.shape[0]).view(-1, 1), idx], dim=1)


def reference_step(student, batch, teacher, kind: str, processes: int, accum: int):
    """Loss and parameter gradients of one step over ``processes`` x ``accum`` chunks of the global batch:
    each chunk embedded on its own (batch norm per chunk), the contrastive term over the whole batch, the
    candidate terms mined and averaged per process share."""
    student.zero_grad(set_to_none=True)
    chunks = split_batch(batch, processes * accum)
    parts = [embed(student, c, torch.device("cpu"), "fp32") for c in chunks]
    img, txt, scale = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), parts[0][2]
    ids = batch.image_index
    loss = reference.contrastive_loss(img, txt, scale, img_ids=ids, txt_ids=ids)
    if kind == "dcd":
        share = img.shape[0] // processes
        extra = 0.0
        for r in range(processes):
            rows = list(range(r * share, (r + 1) * share))
            u, v, rid = img[rows], txt[rows], ids[rows]
            i2t, t2i = candidates(u.detach(), v.detach(), rid), candidates(v.detach(), u.detach(), rid)
            a2b = reference.distill_loss(u, v, i2t, teacher_logits(teacher, batch, rows, i2t, True), scale)
            b2a = reference.distill_loss(v, u, t2i, teacher_logits(teacher, batch, rows, t2i, False), scale)
            extra = extra + ALPHA * 0.5 * (a2b.dist + b2a.dist) + (1 - ALPHA) * 0.5 * (a2b.hard + b2a.hard)
        loss = loss + extra / processes
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in student.named_parameters()}
    student.zero_grad(set_to_none=True)
    return loss.detach(), grads
