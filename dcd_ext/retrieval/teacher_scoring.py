"""The teacher's side of retrieval: scoring (image, caption) pairs of a split, re-ranking a student's top
candidates, and all-pairs scoring."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from ..data.retrieval_set import RetrievalSet
from .embedding import chunks
from .ranking import rerank


def group_pairs_by_image(pairs: Tensor, images_per_chunk: int) -> Iterator[Tensor]:
    """Split (image, text) pairs into chunks that touch at most ``images_per_chunk`` distinct images."""
    order = torch.argsort(pairs[:, 0], stable=True)
    pairs = pairs[order]
    _, counts = torch.unique_consecutive(pairs[:, 0], return_counts=True)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    for part in chunks(counts.numel(), images_per_chunk):
        yield order[int(starts[part.start]):int(ends[part.stop - 1])]


@torch.no_grad()
def score_split_pairs(teacher, split: RetrievalSet, pairs: Tensor, images_per_chunk: int = 64) -> Tensor:
    """Teacher scores [P] of (image index, caption index) pairs of a split, loading each image once."""
    pairs = pairs.to(torch.int64).cpu()
    scores = torch.empty(pairs.shape[0], dtype=torch.float32)
    if pairs.numel() == 0:
        return scores
    for rows in group_pairs_by_image(pairs, images_per_chunk):
        chunk = pairs[rows]
        img_ids, img_local = torch.unique(chunk[:, 0], return_inverse=True)
        txt_ids, txt_local = torch.unique(chunk[:, 1], return_inverse=True)
        images = split.load_images(img_ids.tolist())
        texts = [split.captions[j] for j in txt_ids.tolist()]
        local = torch.stack([img_local, txt_local], dim=1)
        scores[rows] = teacher.score_pairs(images, texts, local).float().cpu()
    return scores


def both_way_pairs(i2t: Tensor, t2i: Tensor) -> Tensor:
    """(image, text) pairs of image-anchored rows ``i2t`` [N, K] (text indices) followed by those of
    text-anchored rows ``t2i`` [M, K'] (image indices), row-major: [N*K + M*K', 2]."""
    img_rows = torch.arange(i2t.shape[0], device=i2t.device).view(-1, 1).expand_as(i2t)
    txt_rows = torch.arange(t2i.shape[0], device=t2i.device).view(-1, 1).expand_as(t2i)
    return torch.cat([torch.stack([img_rows, i2t], dim=2).reshape(-1, 2),
                      torch.stack([t2i, txt_rows], dim=2).reshape(-1, 2)])


def score_unique_pairs(score_fn, pairs: Tensor) -> Tensor:
    """Scores [P] of (image, text) index pairs, each distinct pair scored once; pairs holding -1 get -inf."""
    valid = (pairs >= 0).all(dim=1)
    scores = torch.full((pairs.shape[0],), float("-inf"), dtype=torch.float32, device=pairs.device)
    if bool(valid.any()):
        unique, inverse = torch.unique(pairs[valid], dim=0, return_inverse=True)
        scores[valid] = score_fn(unique).float().to(pairs.device)[inverse]
    return scores


def teacher_rerank(teacher, split: RetrievalSet, i2t: Tensor, t2i: Tensor, depth: int,
                   images_per_chunk: int = 64) -> tuple[Tensor, Tensor]:
    """The student's rankings with their top ``depth`` re-ordered by the teacher's scores."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1; got {depth}")
    i2t, t2i = i2t.cpu(), t2i.cpu()
    d1, d2 = min(depth, i2t.shape[1]), min(depth, t2i.shape[1])
    pairs = both_way_pairs(i2t[:, :d1], t2i[:, :d2])
    scores = score_unique_pairs(lambda p: score_split_pairs(teacher, split, p, images_per_chunk), pairs)
    n1 = i2t.shape[0] * d1
    return (rerank(i2t, scores[:n1].view(-1, d1), d1), rerank(t2i, scores[n1:].view(-1, d2), d2))


@torch.no_grad()
def teacher_score_matrix(teacher, split: RetrievalSet, pairs_per_call: int = 65536, progress: bool = False) -> Tensor:
    """The teacher's scores of every (image, caption) pair, [N, M] (one cross-encoder pass per pair).

    Each call scores a block of whole rows, so the teacher's per-caption work is repeated once per block."""
    from tqdm.auto import tqdm

    n, m = split.num_images, split.num_captions
    out = torch.empty(n, m, dtype=torch.float32)
    texts = list(split.captions)
    with tqdm(total=n * m, unit="pair", unit_scale=True, desc="teacher scoring all pairs", disable=not progress) as bar:
        for part in chunks(n, max(1, pairs_per_call // m)):
            images = split.load_images(range(part.start, part.stop))
            rows = torch.arange(part.stop - part.start).view(-1, 1).expand(-1, m)
            cols = torch.arange(m).view(1, -1).expand(rows.shape[0], -1)
            pairs = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)
            out[part] = teacher.score_pairs(images, texts, pairs).float().cpu().view(-1, m)
            bar.update(pairs.shape[0])
    return out
