"""Retrieval quality: Recall@K both ways and RSUM, and the results table every command prints.

Rankings are int64 tensors [Q, K] of gallery indices, best first, padded with -1. Image-to-text rankings
index captions, text-to-image rankings index images; ``caption_image[j]`` is the image caption j describes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

RECALL_KS = (1, 5, 10)
METRIC_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


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


def empty_metrics() -> dict[str, Optional[float]]:
    return {key: None for key in METRIC_KEYS}


def format_table(results: dict[str, dict]) -> str:
    """A fixed-width table of results entries (recalls in percent)."""
    width = max([22] + [len(name) + 1 for name in results])
    head = f"{'model':<{width}}{'i2t R@1':>8}{'R@5':>7}{'R@10':>7}{'t2i R@1':>9}{'R@5':>7}{'R@10':>7}{'RSUM':>8}" \
           f"{'ms/query':>11}"
    lines = [head, "-" * len(head)]

    def cell(value, width, digits=1):
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    for name, r in results.items():
        lines.append(f"{name:<{width}}{cell(r['i2t_r1'], 8)}{cell(r['i2t_r5'], 7)}{cell(r['i2t_r10'], 7)}"
                     f"{cell(r['t2i_r1'], 9)}{cell(r['t2i_r5'], 7)}{cell(r['t2i_r10'], 7)}{cell(r['rsum'], 8)}"
                     f"{cell(r['ms_per_query'], 11, 3)}")
    return "\n".join(lines)
