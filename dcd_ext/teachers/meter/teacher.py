"""METER as a teacher: :class:`MeterForRetrieval` behind the common scoring API.

Per image (cached): CLIP resize + centre crop at the model's resolution, CLIP mean/std, then the
CLIP encoder, image transform and token-type embedding. Per text (cached): RoBERTa tokens padded /
truncated to ``max_text_len`` (40), the RoBERTa encoder, text transform and token-type embedding.
Per pair: only the co-attention layers, poolers and rank head. METER uses no randomness at
inference, so scores never touch the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ..base import CrossEncoderTeacher, Item
from ..checkpoint_io import CheckpointError
from ..tokenizer_files import load_roberta_tokenizer
from .checkpoint import load_meter_checkpoint, save_meter_checkpoint
from .model import MeterForRetrieval
from .preprocess import clip_preprocess

__all__ = ["MeterTeacher", "load_meter_teacher", "METER_CHECKPOINT_NAME"]

METER_CHECKPOINT_NAME = "meter.ckpt"


class MeterTeacher(CrossEncoderTeacher):
    """METER retrieval teacher. Use :func:`load_meter_teacher` (or ``load_teacher("meter", ...)``)."""

    kind = "meter"

    def __init__(self, model: MeterForRetrieval, tokenizer, *, max_text_len: int | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.tokenizer = tokenizer
        self.max_text_len = int(max_text_len or model.config.max_text_len)
        self.image_size = model.config.image_size

    def preprocess_images(self, images: Sequence[Image.Image]) -> Tensor:
        return torch.stack([clip_preprocess(image, self.image_size) for image in images]).to(self.device)

    def _encode_images(self, images: Sequence[Image.Image]) -> list[Item]:
        features = self.model.encode_image(self.preprocess_images(images))
        mask = torch.ones(features.shape[1], dtype=torch.long, device=features.device)
        return [(feat, mask) for feat in features]

    def _encode_texts(self, texts: Sequence[str]) -> list[Item]:
        encoded = self.tokenize(texts)
        features = self.model.encode_text(encoded["input_ids"], encoded["attention_mask"])
        return list(zip(features, encoded["attention_mask"]))

    def _joint_logits(self, image_feats, image_mask, text_feats, text_mask) -> Tensor:
        return self.model.joint(text_feats, text_mask, image_feats, image_mask)

    def save(self, out_dir) -> Path:
        """Write ``out_dir/meter.ckpt`` (official layout) and the tokenizer files into ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_meter_checkpoint(self.model, out_dir / METER_CHECKPOINT_NAME)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir


def _resolve_checkpoint(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"METER checkpoint not found: {path}")
    if path.is_file():
        return path
    candidates = sorted(path.glob("*.ckpt"))
    if (path / METER_CHECKPOINT_NAME).is_file():
        return path / METER_CHECKPOINT_NAME
    if len(candidates) == 1:
        return candidates[0]
    raise FileNotFoundError(
        f"expected one *.ckpt file in METER directory {path}, found {[c.name for c in candidates]}"
    )


def load_meter_teacher(path, *, tokenizer=None, device=None, micro_batch_size: int = 32, bf16: bool = False,
                       image_size: int | None = None, max_text_len: int | None = None,
                       allow_pickle: bool = False, attn_implementation: str = "sdpa",
                       dropout: float = 0.1) -> MeterTeacher:
    """Load a METER teacher from an official fine-tuned checkpoint file (or a directory written by
    :meth:`MeterTeacher.save`) plus a local RoBERTa tokenizer directory.

    ``tokenizer`` defaults to the checkpoint's directory when that holds tokenizer files. When it also
    holds a ``config.json`` (a RoBERTa folder such as roberta-base), the text encoder's architecture
    comes from it, as in the official builder (see :func:`load_meter_checkpoint`).
    ``image_size`` resizes the positional embedding (and the preprocessing) to a new resolution;
    ``dropout`` applies in training mode only (fine-tuning; METER's default is 0.1)."""
    path = Path(path)
    checkpoint = _resolve_checkpoint(path)
    if tokenizer is None:
        tokenizer = checkpoint.parent
        if not any((tokenizer / name).is_file() for name in ("tokenizer.json", "vocab.json")):
            raise ValueError(
                f"load_teacher('meter', ...) needs tokenizer=<RoBERTa tokenizer directory>: none given "
                f"and no tokenizer files next to {checkpoint}"
            )
    text_tokenizer = load_roberta_tokenizer(tokenizer)
    model = load_meter_checkpoint(checkpoint, roberta_dir=tokenizer, image_size=image_size,
                                  allow_pickle=allow_pickle, attn_implementation=attn_implementation, dropout=dropout)
    if len(text_tokenizer) > model.config.vocab_size:
        raise CheckpointError(
            f"tokenizer {tokenizer} has {len(text_tokenizer)} tokens but the checkpoint's RoBERTa "
            f"embeddings have {model.config.vocab_size}: wrong tokenizer for {checkpoint}"
        )
    return MeterTeacher(model, text_tokenizer, max_text_len=max_text_len, device=device,
                        micro_batch_size=micro_batch_size, bf16=bf16)
