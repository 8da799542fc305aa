"""The one embedding loop: a student's L2-normalised embeddings of images or captions, in batches."""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor

from ..data.images import open_image
from ..data.retrieval_set import RetrievalSet

MODALITIES = ("image", "text")


def chunks(n: int, size: int) -> Iterator[slice]:
    for lo in range(0, n, size):
        yield slice(lo, min(n, lo + size))


@torch.no_grad()
def embed_items(student, items: Sequence, modality: str, batch_size: int = 256, device="cpu",
                progress: bool = False, source: str = "image", origins: Optional[Sequence[str]] = None) -> Tensor:
    """Embeddings [G, D] (float32, on ``device``) of ``items``: images (PIL images or file paths, opened
    with ``source`` and the item's entry of ``origins``, if given, named in errors) or caption strings."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}; got {modality!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1; got {batch_size}")
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(items), unit=modality, desc=f"embedding {modality}s", disable=not progress) as bar:
        for part in chunks(len(items), batch_size):
            batch = list(items[part])
            if modality == "image":
                images = [x if isinstance(x, Image.Image) else
                          open_image(x, f"{source}, {origins[part.start + n]}" if origins else source)
                          for n, x in enumerate(batch)]
                out.append(student.encode_image(student.preprocess_images(images).to(device)))
            else:
                ids, mask = student.tokenizer(batch)
                out.append(student.encode_text(ids.to(device), mask.to(device)))
            bar.update(len(batch))
    if not out:
        raise ValueError(f"nothing to embed: no {modality}s given")
    return torch.cat(out)


def embed_images(student, split: RetrievalSet, batch_size: int = 256, device="cpu") -> Tensor:
    """Image embeddings [N, D] of a split, float32, on ``device``."""
    return embed_items(student, split.images, "image", batch_size, device, source=split.name,
                       origins=split.image_origins or None)


def embed_texts(student, split: RetrievalSet, batch_size: int = 256, device="cpu") -> Tensor:
    """Caption embeddings [M, D] of a split, float32, on ``device``."""
    return embed_items(student, split.captions, "text", batch_size, device)
