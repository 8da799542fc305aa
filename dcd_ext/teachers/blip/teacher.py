"""BLIP as a teacher: the image-text matching (ITM) head of transformers' ``BlipForImageTextRetrieval``.

The score of a pair is the ITM head's match-minus-no-match logit, ``itm[:, 1] - itm[:, 0]``: a proper
logit (``sigmoid`` of it is BLIP's match probability ``softmax(itm)[:, 1]``), so it ranks pairs exactly
as that probability does and, like the other teachers' rank logits, is unbounded and centred near 0.

Per image (cached): the folder's own image processor (e.g. resize to 384 x 384, bicubic, CLIP mean/std)
and BLIP's vision transformer; its last hidden states are what the text encoder cross-attends to. Per
text: the folder's BERT tokenizer (no truncation below ``max_text_len``, default the model's
``max_position_embeddings``, so that texts are encoded as BLIP's processor encodes them). Per pair: the
text encoder with cross-attention to the image states, then the ITM head on its first token — the same
code as transformers' ``forward(use_itm_head=True)``. BLIP uses no randomness at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ..base import CrossEncoderTeacher, Item
from ..checkpoint_io import CheckpointError
from ...hf_folders import save_processor_files
from ..hf_quiet import hf_progress_bars_off
from ...files import follow_umask

__all__ = ["BlipTeacher", "load_blip_teacher"]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class BlipTeacher(CrossEncoderTeacher):
    """BLIP ITM teacher. Use :func:`load_blip_teacher` (or ``load_teacher("blip", dir)``)."""

    kind = "blip"

    def __init__(self, model, processor, *, max_text_len: int | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        positions = model.config.text_config.max_position_embeddings
        self.max_text_len = int(max_text_len or positions)
        if self.max_text_len > positions:
            raise ValueError(f"max_text_len={self.max_text_len} exceeds the model's max_position_embeddings={positions}")

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """BLIP's tokenizer as its processor calls it (no token type ids), padded to the longest text."""
        encoded = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_text_len,
                                 return_token_type_ids=False, return_tensors="pt")
        return {"input_ids": encoded["input_ids"].to(self.device),
                "attention_mask": encoded["attention_mask"].to(self.device)}

    def preprocess_images(self, images: Sequence[Image.Image]) -> Tensor:
        """Pixel values [n, 3, S, S] from the folder's image processor, on the teacher's device."""
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)

    def _encode_images(self, images: Sequence[Image.Image]) -> list[Item]:
        states = self.model.vision_model(pixel_values=self.preprocess_images(images)).last_hidden_state
        mask = torch.ones(states.shape[1], dtype=torch.long, device=states.device)
        return [(state, mask) for state in states]

    def _encode_texts(self, texts: Sequence[str]) -> list[Item]:
        encoded = self.tokenize(texts)
        return list(zip(encoded["input_ids"], encoded["attention_mask"]))

    def _joint_logits(self, image_feats, image_mask, text_feats, text_mask) -> Tensor:
        states = self.model.text_encoder(input_ids=text_feats, attention_mask=text_mask,
                                         encoder_hidden_states=image_feats,
                                         encoder_attention_mask=image_mask).last_hidden_state
        itm = self.model.itm_head(states[:, 0, :])
        return itm[:, 1] - itm[:, 0]

    def save(self, out_dir) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with hf_progress_bars_off():
            self.model.save_pretrained(out_dir)
        save_processor_files(self.processor, out_dir)
        follow_umask(out_dir)
        return out_dir


def load_blip_teacher(path, *, device=None, micro_batch_size: int = 32, bf16: bool = False, tokenizer=None,
                      max_text_len: int | None = None) -> BlipTeacher:
    """Load a BLIP ITM teacher from a local Hugging Face directory (config.json with model_type ``blip``,
    weights, ``preprocessor_config.json`` and tokenizer files), e.g. a copy of Salesforce/blip-itm-base-coco.

    ``tokenizer``: another tokenizer directory (default: the teacher's)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"BLIP teacher directory not found: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"a BLIP teacher is a Hugging Face directory, got a file: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in BLIP teacher directory {path}")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(f"no model weights in {path}: expected one of {list(_WEIGHT_FILES)}")

    from transformers import AutoTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipProcessor

    try:
        config = BlipConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read {path / 'config.json'}: {exc}") from exc
    if config.model_type != "blip":
        raise ValueError(f"{path} holds a {config.model_type!r} model, not BLIP")
    try:
        processor = BlipProcessor.from_pretrained(str(path), local_files_only=True)
        if tokenizer is not None:
            processor = BlipProcessor(processor.image_processor,
                                      AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True))
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot load the BLIP processor of {path} (preprocessor_config.json and the "
                                f"tokenizer files): {exc}") from exc
    try:
        with hf_progress_bars_off():
            model, info = BlipForImageTextRetrieval.from_pretrained(
                str(path), local_files_only=True, dtype=torch.float32, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt weight files surface as many types
        raise CheckpointError(f"cannot load BLIP weights from {path}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", []) if k.startswith(("itm_head", "text_encoder", "vision_model"))]
    if missing:
        raise CheckpointError(f"{path} lacks BLIP ITM weights ({', '.join(sorted(missing)[:4])}, ...): "
                              "not a BlipForImageTextRetrieval checkpoint")
    return BlipTeacher(model, processor, max_text_len=max_text_len, device=device,
                       micro_batch_size=micro_batch_size, bf16=bf16)
