"""Retrieval helpers: index a split's embeddings, search with ``similarity_topk``, Recall@K, teacher re-ranking.

Rankings are int64 tensors [Q, K] of gallery indices, best first, padded with -1. Image-to-text rankings
index captions, text-to-image rankings index images; ``caption_image[j]`` is the image caption j describes.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from .data.retrieval_set import RetrievalSet

RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def chunks(n: int, size: int) -> Iterator[slice]:
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


@torch.no_grad()
def embed_images(student, split: RetrievalSet, batch_size: int = 256, device="cpu") -> Tensor:
    """L2-normalised image embeddings [N, D], float32, on ``device``."""
    out = []
    for part in chunks(split.num_images, batch_size):
        images = split.load_images(range(part.start, part.stop))
        out.append(student.encode_image(student.preprocess_images(images).to(device)))
    return torch.cat(out)


@torch.no_grad()
def embed_texts(student, split: RetrievalSet, batch_size: int = 256, device="cpu") -> Tensor:
    """L2-normalised caption embeddings [M, D], float32, on ``device``."""
    out = []
    for part in chunks(split.num_captions, batch_size):
        ids, mask = student.tokenizer(split.captions[part])
        out.append(student.encode_text(ids.to(device), mask.to(device)))
    return torch.cat(out)


def search(queries: Tensor, gallery: Tensor, k: int) -> Tensor:
    """Indices [Q, k] of the k gallery rows with the largest inner product, best first (-1 past the gallery)."""
    from . import ops
    return ops.similarity_topk(queries, gallery, k)[1]


def recall_at_k(i2t: Tensor, t2i: Tensor, caption_image: Sequence[int] | Tensor,
                ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Recall@K in percent both ways, and RSUM (their sum).

    Image i is a hit at K when any of its captions is among its top K texts; caption j is a hit when its
    image is among its top K images.
    """
    owner = torch.as_tensor(caption_image, dtype=torch.int64).cpu()
    i2t, t2i = i2t.cpu(), t2i.cpu()
    n_img, n_txt = i2t.shape[0], t2i.shape[0]
    if owner.numel() != n_txt:
        raise ValueError(f"caption_image has {owner.numel()} entries but t2i ranks {n_txt} captions")
    if max(ks) > min(i2t.shape[1], t2i.shape[1]):
        raise ValueError(f"rankings hold {i2t.shape[1]} (i2t) and {t2i.shape[1]} (t2i) entries; "
                         f"Recall@{max(ks)} needs at least that many")
    i2t_owner = torch.where(i2t >= 0, owner[i2t.clamp_min(0)], torch.full_like(i2t, -1))
    i2t_hits = i2t_owner == torch.arange(n_img).view(-1, 1)
    t2i_hits = t2i == owner.view(-1, 1)
    out = {}
    for name, hits in (("i2t", i2t_hits), ("t2i", t2i_hits)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * hits[:, :k].any(dim=1).float().mean().item()
    out["rsum"] = sum(out.values())
    return out


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


def rerank(ranking: Tensor, scores: Tensor, depth: int) -> Tensor:
    """Re-sort the first ``depth`` entries of each row by ``scores`` [Q, depth] (ties keep the old order)."""
    head = ranking[:, :depth]
    scores = scores.masked_fill(head < 0, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return torch.cat([torch.gather(head, 1, order), ranking[:, depth:]], dim=1)


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
def teacher_score_matrix(teacher, split: RetrievalSet, pairs_per_call: int = 65536) -> Tensor:
    """The teacher's scores of every (image, caption) pair, [N, M] (one cross-encoder pass per pair).

    Each call scores a block of whole rows, so the teacher's per-caption work is repeated once per block."""
    n, m = split.num_images, split.num_captions
    out = torch.empty(n, m, dtype=torch.float32)
    texts = list(split.captions)
    for part in chunks(n, max(1, pairs_per_call // m)):
        images = split.load_images(range(part.start, part.stop))
        rows = torch.arange(part.stop - part.start).view(-1, 1).expand(-1, m)
        cols = torch.arange(m).view(1, -1).expand(rows.shape[0], -1)
        pairs = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)
        out[part] = teacher.score_pairs(images, texts, pairs).float().cpu().view(-1, m)
    return out


def rankings_from_scores(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k rankings both ways from a full [N, M] score matrix (ties to the smaller index)."""
    def top(s: Tensor) -> Tensor:
        kk = min(k, s.shape[1])
        idx = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :kk]
        return torch.cat([idx, torch.full((s.shape[0], k - kk), -1, dtype=torch.int64)], dim=1)
    return top(scores), top(scores.T)


def empty_metrics() -> dict[str, Optional[float]]:
    return {key: None for key in METRIC_KEYS}
