"""Fine-tuning a cross-encoder teacher with the listwise retrieval objective of ViLT/METER
(``compute_irtr``): each caption is a positive for its image and is joined by ``n_negatives``
captions sampled at random; the rank logits of the n+1 (image, caption) pairs go through a
cross-entropy whose target is the positive. Unlike the official samplers, a negative is never a
caption of the same image.

Random negatives rarely include the captions that differ from the positive in one detail (a swapped
colour or relation), so a teacher trained on them alone never learns to bind attributes. Optionally
some negatives per anchor come from a list of hard candidates, as ALBEF and BLIP mine the negatives of
their matching heads with a dual encoder's similarities (``mine_hard_captions``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .base import CrossEncoderTeacher

__all__ = ["finetune_teacher", "mine_hard_captions", "sample_negatives"]


def sample_negatives(image_index: torch.Tensor, anchors: torch.Tensor, n: int,
                     generator: torch.Generator) -> torch.Tensor:
    """For each anchor caption, ``n`` caption indices whose image differs from the anchor's.
    Sampling is without replacement when enough such captions exist, else with replacement."""
    out = torch.empty(len(anchors), n, dtype=torch.long)
    for row, anchor in enumerate(anchors.tolist()):
        pool = (image_index != image_index[anchor]).nonzero().flatten()
        if len(pool) == 0:
            raise ValueError("every caption belongs to the same image: no negatives to sample")
        if len(pool) >= n:
            pick = torch.randperm(len(pool), generator=generator)[:n]
        else:
            pick = torch.randint(len(pool), (n,), generator=generator)
        out[row] = pool[pick]
    return out


def sample_hard_negatives(hard: torch.Tensor, anchors: torch.Tensor, n: int,
                          generator: torch.Generator) -> torch.Tensor:
    """For each anchor caption, ``n`` distinct entries of its row of ``hard`` ([C, H], H >= n), at random."""
    rows = hard[anchors]
    pick = torch.rand(rows.shape, generator=generator).argsort(dim=1)[:, :n]
    return rows.gather(1, pick)


@torch.no_grad()
def mine_hard_captions(image_embeddings: torch.Tensor, caption_embeddings: torch.Tensor,
                       image_index: torch.Tensor, depth: int, captions: Sequence[str] | None = None) -> torch.Tensor:
    """[C, depth]: for caption c of image i, the ``depth`` captions of other images most similar to image i
    by a dual encoder's embeddings (one ``similarity_topk`` with the image's own captions masked out).

    With ``captions`` (the texts), a caption whose text equals one of image i's own captions is not taken:
    it describes image i as well (a false negative). Rows with fewer than ``depth`` candidates left repeat
    their last one."""
    from .. import ops

    index = torch.as_tensor(image_index, dtype=torch.long)
    others = int((index != index[0]).sum()) if len(index) else 0
    depth = min(depth, others)
    if depth < 1:
        raise ValueError("every caption belongs to the same image: no hard negatives to mine")
    num_images = image_embeddings.shape[0]
    search = depth if captions is None else min(others, 4 * depth)
    _, top = ops.similarity_topk(image_embeddings.float(), caption_embeddings.float(), search,
                                 query_ids=torch.arange(num_images), key_ids=index)
    top = top.cpu()
    if captions is not None:
        own: list[set] = [set() for _ in range(num_images)]
        for c, i in enumerate(index.tolist()):
            own[i].add(captions[c])
        rows = []
        for i in range(num_images):
            kept = [j for j in top[i].tolist() if j >= 0 and captions[j] not in own[i]][:depth] or [int(top[i, 0])]
            rows.append(kept + kept[-1:] * (depth - len(kept)))
        top = torch.tensor(rows, dtype=torch.long)
    return top[:, :depth][index]


def _lr_lambda(total_steps: int, warmup_steps: int):
    def scale(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        remaining = max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - (step - warmup_steps) / remaining)

    return scale


def finetune_teacher(teacher: CrossEncoderTeacher, images: Sequence[Image.Image], captions: Sequence[str],
                     image_index: Sequence[int], *, epochs: int = 1, batch_size: int = 8, n_negatives: int = 15,
                     lr: float = 1e-4, weight_decay: float = 0.01, warmup: float = 0.1,
                     max_grad_norm: float | None = 1.0, seed: int = 0, progress: bool = True,
                     hard_negatives: torch.Tensor | None = None, n_hard: int = 0) -> list[float]:
    """Fine-tune ``teacher`` in place; returns the loss of every optimisation step.

    Args:
        images: the distinct images; ``image_index[c]`` is the image of caption ``c``.
        epochs, batch_size: passes over the captions, and anchor captions per step (each step
            scores batch_size * (n_negatives + 1) pairs).
        lr, weight_decay, warmup: AdamW with linear warm-up over the first ``warmup`` fraction of
            steps and linear decay to zero (the authors' schedule).
        seed: seeds the shuffling and the negative sampling (a private generator; the global RNG
            only matters for dropout).
        hard_negatives, n_hard: optional [C, H] caption indices per caption (``mine_hard_captions``);
            ``n_hard`` of each anchor's ``n_negatives`` are drawn from its row, the rest at random.
    """
    if len(captions) != len(image_index):
        raise ValueError(f"captions and image_index differ in length: {len(captions)} vs {len(image_index)}")
    if not captions:
        raise ValueError("no captions to train on")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("n_negatives", n_negatives)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not isinstance(n_hard, int) or not 0 <= n_hard <= n_negatives:
        raise ValueError(f"n_hard must be an int in [0, n_negatives={n_negatives}], got {n_hard!r}")
    if n_hard and hard_negatives is None:
        raise ValueError("n_hard > 0 needs hard_negatives")
    if hard_negatives is not None:
        hard_negatives = torch.as_tensor(hard_negatives, dtype=torch.long)
        if hard_negatives.dim() != 2 or hard_negatives.shape[0] != len(captions) or hard_negatives.shape[1] < n_hard:
            raise ValueError(f"hard_negatives must have shape [{len(captions)}, >= n_hard={n_hard}], "
                             f"got {list(hard_negatives.shape)}")
    index = torch.as_tensor(list(image_index), dtype=torch.long)
    if index.min() < 0 or index.max() >= len(images):
        raise IndexError(f"image_index values must lie in [0, {len(images)}), got [{int(index.min())}, {int(index.max())}]")

    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(captions) / batch_size)
    total_steps = epochs * steps_per_epoch
    decay, no_decay = [], []
    for name, param in teacher.model.named_parameters():
        if param.requires_grad:
            (no_decay if param.dim() < 2 or "LayerNorm" in name or "norm" in name else decay).append(param)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, max(1, int(warmup * total_steps))))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc="teacher fine-tuning", unit="step")
    losses: list[float] = []
    teacher.model.train()
    try:
        for _ in range(epochs):
            order = torch.randperm(len(captions), generator=generator)
            for start in range(0, len(order), batch_size):
                anchors = order[start : start + batch_size]
                negatives = sample_negatives(index, anchors, n_negatives - n_hard, generator)
                if n_hard:
                    negatives = torch.cat([sample_hard_negatives(hard_negatives, anchors, n_hard, generator),
                                           negatives], dim=1)
                caption_ids = torch.cat([anchors[:, None], negatives], dim=1)  # [B, n+1], column 0 positive
                pairs = torch.stack([index[anchors][:, None].expand_as(caption_ids), caption_ids], dim=-1).reshape(-1, 2)
                logits = teacher.pair_logits(images, captions, pairs).view(len(anchors), n_negatives + 1)
                loss = F.cross_entropy(logits, torch.zeros(len(anchors), dtype=torch.long, device=logits.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(teacher.model.parameters(), max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        teacher.model.eval()
        if bar is not None:
            bar.close()
    return losses
