"""Batches for training: one item per caption, with the raw image and text kept for the teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .retrieval_set import RetrievalSet


@dataclass
class Batch:
    pixels: Tensor  # [B, C, H, W], the student's preprocessing
    input_ids: Tensor  # [B, L]
    attention_mask: Tensor  # [B, L]
    image_index: Tensor  # [B] int64, index into the split's images; doubles as the image id
    caption_index: Tensor  # [B] int64
    images: list[Image.Image]  # raw row images, for the teacher
    texts: list[str]


class CaptionDataset(Dataset):
    def __init__(self, split: RetrievalSet):
        self.split = split

    def __len__(self) -> int:
        return self.split.num_captions

    def __getitem__(self, j: int):
        i = self.split.caption_image[j]
        return self.split.load_image(i), self.split.captions[j], i, j


class BatchCollator:
    """Applies the student's image transform and tokenizer; picklable for loader workers."""

    def __init__(self, image_transform: Callable[[Image.Image], Tensor],
                 tokenize: Callable[[list[str]], tuple[Tensor, Tensor]]):
        self.image_transform = image_transform
        self.tokenize = tokenize

    def __call__(self, items) -> Batch:
        images, texts, image_index, caption_index = zip(*items)
        ids, mask = self.tokenize(list(texts))
        return Batch(torch.stack([self.image_transform(im) for im in images]), ids, mask,
                     torch.tensor(image_index, dtype=torch.int64), torch.tensor(caption_index, dtype=torch.int64),
                     list(images), list(texts))


class EpochSampler(Sampler[int]):
    """Caption order for one process: a permutation fixed by (seed, epoch), cut into global batches of
    ``batch_size``; process ``rank`` of ``world_size`` yields its contiguous share of each batch. A resumed run
    replays the same order and skips the batches already done; the incomplete last batch is dropped."""

    def __init__(self, n: int, seed: int, batch_size: int = 1, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the {world_size} processes")
        self.n, self.seed, self.batch_size, self.rank, self.world_size = n, seed, batch_size, rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """``skip``: global batches already done this epoch."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[: self.n // self.batch_size * self.batch_size]
        share = self.batch_size // self.world_size
        mine = order.view(-1, self.world_size, share)[self.skip:, self.rank]
        return iter(mine.reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.n // self.batch_size - self.skip) * (self.batch_size // self.world_size)


def make_train_loader(split: RetrievalSet, collate: BatchCollator, batch_size: int, seed: int,
                      workers: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Shuffled caption batches of ``batch_size`` (global: each of ``world_size`` processes loads its share);
    the last incomplete batch is dropped (a step needs a full batch)."""
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2; got {batch_size}")
    if split.num_captions < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {split.num_captions} captions of {split.name}")
    sampler = EpochSampler(split.num_captions, seed, batch_size, rank, world_size)
    # its own generator: creating an iterator must not draw from the global RNG, or resuming mid-epoch
    # (a new iterator) would shift every later random draw
    return DataLoader(CaptionDataset(split), batch_size=batch_size // world_size, sampler=sampler, drop_last=True,
                      collate_fn=collate, num_workers=workers, persistent_workers=False,
                      generator=torch.Generator().manual_seed(seed))


def steps_per_epoch(split: RetrievalSet, batch_size: int) -> int:
    return split.num_captions // batch_size
