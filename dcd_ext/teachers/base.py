"""The scoring API shared by all cross-encoder teachers.

A teacher splits its network into per-item work (an image's patch embeddings or unimodal features,
a text's tokens or unimodal features) and the joint layers that need both. ``score_pairs`` runs the
per-item work once for every image and text that some pair uses, then runs only the joint layers per
pair, in micro-batches, without gradients, on the teacher's device.

Per-item results are stored unpadded ([L, ...] features with an [L] 0/1 mask) and padded per
micro-batch; trailing positions that are masked in every row of a micro-batch are dropped, which
is exact because masked keys receive zero attention weight and only the first token is pooled.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

__all__ = ["CrossEncoderTeacher", "Item"]

Item = tuple[Tensor, Tensor]  # (features [L, ...], mask [L]) for one image or one text


def _check_images(images: Sequence) -> None:
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"images[{i}] must be a PIL.Image.Image, got {type(image).__name__}")


def _check_texts(texts: Sequence) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")


def _check_pairs(pairs, num_images: int, num_texts: int) -> Tensor:
    pairs = torch.as_tensor(pairs)
    if pairs.numel() == 0:
        return pairs.reshape(0, 2).long().cpu()
    if pairs.dim() != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape [P, 2], got {tuple(pairs.shape)}")
    if pairs.dtype.is_floating_point or pairs.dtype == torch.bool or pairs.is_complex():
        raise TypeError(f"pairs must hold integer indices, got dtype {pairs.dtype}")
    pairs = pairs.long().cpu()
    for column, name, size in ((0, "image", num_images), (1, "text", num_texts)):
        values = pairs[:, column]
        if values.min() < 0 or values.max() >= size:
            raise IndexError(
                f"pairs[:, {column}] ({name} indices) must lie in [0, {size}), "
                f"got values in [{int(values.min())}, {int(values.max())}]"
            )
    return pairs


def _pad(items: list[Item]) -> Item:
    """Stack items into [B, L, ...] features and a [B, L] mask, padding with zeros, then drop the
    trailing positions that no row uses."""
    lengths = {feat.shape[0] for feat, _ in items}
    if len(lengths) == 1:
        feats = torch.stack([feat for feat, _ in items])
        mask = torch.stack([m for _, m in items])
    else:
        length = max(lengths)
        first_feat, first_mask = items[0]
        feats = first_feat.new_zeros((len(items), length, *first_feat.shape[1:]))
        mask = first_mask.new_zeros((len(items), length))
        for row, (feat, m) in enumerate(items):
            feats[row, : feat.shape[0]] = feat
            mask[row, : m.shape[0]] = m
    used = mask.ne(0).any(dim=0).nonzero()
    keep = int(used.max()) + 1 if used.numel() else mask.shape[1]
    if keep < mask.shape[1]:
        feats, mask = feats[:, :keep], mask[:, :keep]
    return feats, mask


class CrossEncoderTeacher(abc.ABC):
    """Base class of the ViLT and METER teachers.

    Args:
        model: the network (an ``nn.Module``); it is moved to ``device`` and put in eval mode.
        device: where scoring runs (default: where the model's parameters are).
        micro_batch_size: pairs per joint forward, and items per unimodal forward.
        bf16: run the forward passes under bfloat16 autocast (scores are returned as float32).
    """

    kind: str = ""

    def __init__(self, model: nn.Module, *, device=None, micro_batch_size: int = 32, bf16: bool = False):
        if not isinstance(micro_batch_size, int) or micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be a positive int, got {micro_batch_size!r}")
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.micro_batch_size = micro_batch_size
        self.bf16 = bool(bf16)

    # ---- hooks implemented by each teacher -------------------------------------------------
    @abc.abstractmethod
    def _encode_images(self, images: Sequence[Image.Image]) -> list[Item]:
        """Per-image work, returning one unpadded item per image (on the teacher's device)."""

    @abc.abstractmethod
    def _encode_texts(self, texts: Sequence[str]) -> list[Item]:
        """Per-text work, returning one unpadded item per text (on the teacher's device)."""

    @abc.abstractmethod
    def _joint_logits(self, image_feats: Tensor, image_mask: Tensor, text_feats: Tensor, text_mask: Tensor) -> Tensor:
        """Joint layers and rank head for a micro-batch of padded pairs: one logit per row, [B]."""

    @abc.abstractmethod
    def save(self, out_dir: str | Path) -> Path:
        """Write the teacher to ``out_dir`` so that ``load_teacher(kind, ...)`` reloads it."""

    # ---- public API ------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """The teacher's tokenizer (``self.tokenizer``), padded and truncated to ``self.max_text_len``."""
        encoded = self.tokenizer(list(texts), padding="max_length", truncation=True,
                                 max_length=self.max_text_len, return_tensors="pt")
        return {"input_ids": encoded["input_ids"].to(self.device),
                "attention_mask": encoded["attention_mask"].to(self.device)}

    def to(self, device) -> "CrossEncoderTeacher":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def parameters(self):
        return self.model.parameters()

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> Tensor:
        """Score pair i = (images[i], texts[i]); returns float32 [n] on the teacher's device.

        Repeated image objects and repeated strings are encoded once."""
        if len(images) != len(texts):
            raise ValueError(f"images and texts must have the same length, got {len(images)} and {len(texts)}")
        _check_images(images)
        _check_texts(texts)
        unique_images = list({id(image): image for image in images}.values())
        image_slot = {id(image): slot for slot, image in enumerate(unique_images)}
        text_slot = {text: slot for slot, text in enumerate(dict.fromkeys(texts))}
        pairs = torch.tensor([(image_slot[id(image)], text_slot[text]) for image, text in zip(images, texts)],
                             dtype=torch.long).reshape(-1, 2)
        return self.score_pairs(unique_images, list(text_slot), pairs)

    def score_pairs(self, images: Sequence[Image.Image], texts: Sequence[str], pairs) -> Tensor:
        """Score (images[p, 0], texts[p, 1]) for every row p of ``pairs`` [P, 2]; float32 [P] on the
        teacher's device. No gradients; eval mode for the duration of the call; the global RNG is
        neither used nor advanced."""
        _check_images(images)
        _check_texts(texts)
        pairs = _check_pairs(pairs, len(images), len(texts))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                return self._pair_logits(images, texts, pairs, self.micro_batch_size).float()
        finally:
            self.model.train(was_training)

    def pair_logits(self, images: Sequence[Image.Image], texts: Sequence[str], pairs) -> Tensor:
        """Differentiable version of :meth:`score_pairs` for fine-tuning: one pass, current
        train/eval mode, gradients kept. Returns [P] logits on the teacher's device."""
        _check_images(images)
        _check_texts(texts)
        pairs = _check_pairs(pairs, len(images), len(texts))
        with self._autocast():
            return self._pair_logits(images, texts, pairs, None).float()

    # ---- machinery ------------------------------------------------------------------------
    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @staticmethod
    def _encode_chunked(encode: Callable[[list], list[Item]], values: list, chunk: int | None) -> list[Item]:
        step = chunk or max(1, len(values))
        items: list[Item] = []
        for start in range(0, len(values), step):
            items.extend(encode(values[start : start + step]))
        return items

    def _pair_logits(self, images, texts, pairs: Tensor, chunk: int | None) -> Tensor:
        if pairs.shape[0] == 0:
            return torch.zeros(0, device=self.device)
        used_images = torch.unique(pairs[:, 0])
        used_texts = torch.unique(pairs[:, 1])
        image_items = self._encode_chunked(self._encode_images, [images[i] for i in used_images.tolist()], chunk)
        text_items = self._encode_chunked(self._encode_texts, [texts[i] for i in used_texts.tolist()], chunk)
        image_pos = torch.searchsorted(used_images, pairs[:, 0].contiguous()).tolist()
        text_pos = torch.searchsorted(used_texts, pairs[:, 1].contiguous()).tolist()

        step = chunk or pairs.shape[0]
        logits = []
        for start in range(0, pairs.shape[0], step):
            rows = range(start, min(start + step, pairs.shape[0]))
            image_feats, image_mask = _pad([image_items[image_pos[r]] for r in rows])
            text_feats, text_mask = _pad([text_items[text_pos[r]] for r in rows])
            logits.append(self._joint_logits(image_feats, image_mask, text_feats, text_mask))
        return torch.cat(logits)
