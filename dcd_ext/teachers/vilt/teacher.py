"""ViLT as a teacher: transformers' ``ViltForImageAndTextRetrieval`` behind the common scoring API.

Per image (cached): ViLT's own preprocessing (``ViltImageProcessorPil``: shorter side 384, longer
side at most 1333/800 of it, both multiples of the size divisor 32, mean = std = 0.5) and the model's
own ``visual_embed`` (patch projection, interpolated position embeddings, [CLS] token). Per text:
BERT uncased tokens, padded/truncated to 40 (the model's ``max_position_embeddings``). Per pair:
transformers' forward with ``image_embeds=`` (token-type embeddings, the 12 joint layers, final
layer norm, pooler, rank head) — the same code as the single-pair forward.

Determinism: ``visual_embed`` draws from the *global* RNG (``torch.multinomial``): a random
permutation of the patches, and a random subset of them when ``config.max_image_length`` > 0 and an
image has more patches. Here each image is embedded alone inside ``torch.random.fork_rng`` seeded
with ``patch_seed``, so an image always gets the same patches whatever the batch, call order or
global RNG state, and the caller's RNG is left untouched. This equals transformers' own forward on
that single pair run right after ``torch.manual_seed(patch_seed)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ..base import CrossEncoderTeacher, Item
from ..checkpoint_io import CheckpointError
from ..hf_quiet import hf_progress_bars_off
from ..tokenizer_files import load_bert_tokenizer
from ...files import follow_umask

__all__ = ["ViltTeacher", "load_vilt_teacher", "vilt_image_processor"]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def vilt_image_processor(shorter_side: int = 384, size_divisor: int = 32):
    """ViLT's image processor (PIL backend, no torchvision needed) with configurable sizes."""
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    return ViltImageProcessorPil(size={"shortest_edge": int(shorter_side)}, size_divisor=int(size_divisor))


class ViltTeacher(CrossEncoderTeacher):
    """ViLT retrieval teacher. Use :func:`load_vilt_teacher` (or ``load_teacher("vilt", dir)``)."""

    kind = "vilt"

    def __init__(self, model, tokenizer, image_processor, *, max_text_len: int | None = None,
                 patch_seed: int = 0, **kwargs):
        super().__init__(model, **kwargs)
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_text_len = int(max_text_len or model.config.max_position_embeddings)
        if self.max_text_len > model.config.max_position_embeddings:
            raise ValueError(
                f"max_text_len={self.max_text_len} exceeds the model's max_position_embeddings="
                f"{model.config.max_position_embeddings}"
            )
        self.patch_seed = int(patch_seed)

    def preprocess_image(self, image: Image.Image) -> tuple[Tensor, Tensor]:
        """ViLT pixel values [1, 3, H, W] and pixel mask [1, H, W] for one image (on the device)."""
        encoded = self.image_processor(image.convert("RGB"), return_tensors="pt")
        return encoded["pixel_values"].to(self.device), encoded["pixel_mask"].to(self.device)

    def _encode_images(self, images: Sequence[Image.Image]) -> list[Item]:
        embeddings = self.model.vilt.embeddings
        items = []
        for image in images:
            pixel_values, pixel_mask = self.preprocess_image(image)
            # visual_embed samples on the CPU generator; seed only that one (torch.manual_seed
            # would also reseed every CUDA generator, which fork_rng(devices=[]) does not restore)
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(self.patch_seed)
                tokens, mask, _ = embeddings.visual_embed(
                    pixel_values, pixel_mask, max_image_length=self.model.config.max_image_length
                )
            items.append((tokens[0], mask[0]))
        return items

    def _encode_texts(self, texts: Sequence[str]) -> list[Item]:
        encoded = self.tokenize(texts)
        return list(zip(encoded["input_ids"], encoded["attention_mask"]))

    def _joint_logits(self, image_feats, image_mask, text_feats, text_mask) -> Tensor:
        out = self.model(input_ids=text_feats, attention_mask=text_mask,
                         image_embeds=image_feats, pixel_mask=image_mask)
        return out.logits[:, 0]

    def save(self, out_dir) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with hf_progress_bars_off():
            self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        self.image_processor.save_pretrained(out_dir)
        follow_umask(out_dir)
        return out_dir


def load_vilt_teacher(path, *, device=None, micro_batch_size: int = 32, bf16: bool = False,
                      tokenizer=None, image_size: int | None = None, size_divisor: int | None = None,
                      max_text_len: int | None = None, patch_seed: int = 0) -> ViltTeacher:
    """Load a ViLT retrieval teacher from a local Hugging Face directory (config.json, weights,
    tokenizer files, preprocessor_config.json), e.g. a copy of dandelin/vilt-b32-finetuned-coco.

    ``tokenizer`` overrides the tokenizer directory; ``image_size`` / ``size_divisor`` override the
    saved preprocessing sizes (shorter side and divisor)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ViLT teacher directory not found: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"a ViLT teacher is a Hugging Face directory, got a file: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in ViLT teacher directory {path}")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise FileNotFoundError(f"no model weights in {path}: expected one of {list(_WEIGHT_FILES)}")

    from transformers import ViltConfig, ViltForImageAndTextRetrieval
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    try:
        config = ViltConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read {path / 'config.json'}: {exc}") from exc
    if config.model_type != "vilt":
        raise ValueError(f"{path} holds a {config.model_type!r} model, not ViLT")
    text_tokenizer = load_bert_tokenizer(tokenizer if tokenizer is not None else path)
    try:
        with hf_progress_bars_off():
            model, info = ViltForImageAndTextRetrieval.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True
            )
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt weight files surface as many types
        raise CheckpointError(f"cannot load ViLT weights from {path}: {exc}") from exc
    if any(key.startswith("rank_output") for key in info.get("missing_keys", [])):
        warnings.warn(f"{path} has no rank_output weights: the rank head is randomly initialised "
                      "(fine before fine-tuning, meaningless for scoring)", stacklevel=2)

    if (path / "preprocessor_config.json").is_file():
        processor = ViltImageProcessorPil.from_pretrained(str(path), local_files_only=True)
    else:
        warnings.warn(f"no preprocessor_config.json in {path}: using ViLT's defaults (384, divisor 32)",
                      stacklevel=2)
        processor = vilt_image_processor()
    if image_size is not None or size_divisor is not None:
        processor = vilt_image_processor(
            image_size if image_size is not None else processor.size["shortest_edge"],
            size_divisor if size_divisor is not None else processor.size_divisor,
        )
    return ViltTeacher(model, text_tokenizer, processor, max_text_len=max_text_len, patch_seed=patch_seed,
                       device=device, micro_batch_size=micro_batch_size, bf16=bf16)
