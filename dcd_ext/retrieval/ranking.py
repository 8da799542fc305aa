"""Top-k rankings: from embeddings with ``similarity_topk``, from a full score matrix, and re-ordering a
ranking's head by other scores."""

from __future__ import annotations

import torch
from torch import Tensor


def search(queries: Tensor, gallery: Tensor, k: int) -> Tensor:
    """Indices [Q, k] of the k gallery rows with the largest inner product, best first (-1 past the gallery)."""
    from .. import ops
    return ops.similarity_topk(queries, gallery, k)[1]


def rankings_from_scores(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k rankings both ways from a full [N, M] score matrix (ties to the smaller index)."""
    def top(s: Tensor) -> Tensor:
        kk = min(k, s.shape[1])
        idx = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :kk]
        return torch.cat([idx, torch.full((s.shape[0], k - kk), -1, dtype=torch.int64)], dim=1)
    return top(scores), top(scores.T)


def rerank(ranking: Tensor, scores: Tensor, depth: int) -> Tensor:
    """Re-sort the first ``depth`` entries of each row by ``scores`` [Q, depth] (ties keep the old order)."""
    head = ranking[:, :depth]
    scores = scores.masked_fill(head < 0, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return torch.cat([torch.gather(head, 1, order), ranking[:, depth:]], dim=1)
