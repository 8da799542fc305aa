"""Students that start as a pretrained transformers dual encoder: a CLIP or SigLIP folder.

``load_student(folder)`` reads ``config.json``'s ``model_type``; for ``clip`` and ``siglip`` the student is
a :class:`~dcd_ext.students.dual_encoder.DualEncoder` around transformers' own ``CLIPModel`` /
``SiglipModel`` with

- the model's own projections (``get_image_features`` / ``get_text_features``; no new layer);
- the model's own logit scale as the student's learnable scale (the model's ``logit_scale`` parameter is
  frozen and written back on save). SigLIP's ``logit_bias`` is kept as loaded and not trained: the
  InfoNCE and candidate softmax terms of DCD are unchanged when every logit of a row moves by one constant,
  so the bias has no gradient there, and it never changes a ranking. It is saved back unchanged;
- the folder's own processor: its image processor for pixels, its tokenizer for text (CLIP: padded to the
  batch's longest text, at most the model's 77 positions; SigLIP: padded to the model's
  ``max_position_embeddings``, as SigLIP was trained and as its pooling of the last position needs).

Before any training ``encode_image(preprocess_images(images))`` and ``encode_text(*tokenizer(texts))``
equal the model's normalised ``image_embeds`` / ``text_embeds`` from its own forward on its processor's
output. A trained student is saved as the same kind of folder (``save_pretrained`` of the model and the
processor), so transformers loads it as well.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..hf_folders import folder_model_type, save_processor_files
from ..missing_package import MissingPackageError, first_line
from .dual_encoder import MAX_LOGIT_SCALE, DualEncoder, StudentConfig
from .tokenizer import HFTokenizer

HF_KINDS = ("clip", "siglip")


class HFImageTransform:
    """The folder's image processor on one PIL image: pixel values [3, H, W] (picklable for loader workers)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image) -> Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


class HFDualTowers(nn.Module):
    """A CLIP/SigLIP model's two towers with their own projections: ``image_features`` / ``text_features``
    are the un-normalised ``image_embeds`` / ``text_embeds`` of the model's forward."""

    def __init__(self, model: nn.Module, processor, use_attention_mask: bool = True):
        super().__init__()
        self.model = model
        self.processor = processor  # saved with the model; not a module
        self.use_attention_mask = use_attention_mask
        self.image_dim, self.text_dim = embed_dims(model)
        # the student's log_logit_scale is the one trained; the model's own scale (and SigLIP's bias) stay fixed
        for name in ("logit_scale", "logit_bias"):
            param = getattr(model, name, None)
            if isinstance(param, nn.Parameter):
                param.requires_grad_(False)

    def image_features(self, pixels: Tensor) -> Tensor:
        return self.model.get_image_features(pixel_values=pixels).pooler_output

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask if self.use_attention_mask else None
        return self.model.get_text_features(input_ids=input_ids, attention_mask=mask).pooler_output


def embed_dims(model: nn.Module) -> tuple[int, int]:
    config = model.config
    if config.model_type == "clip":
        return config.projection_dim, config.projection_dim
    text = config.text_config
    return config.vision_config.hidden_size, getattr(text, "projection_size", None) or text.hidden_size


def text_settings(model: nn.Module, tokenizer) -> tuple[int, str]:
    """(max_length, padding) of the student's tokenizer for this model."""
    positions = model.config.text_config.max_position_embeddings
    if model.config.model_type == "siglip":
        return positions, "max_length"
    limit = getattr(tokenizer, "model_max_length", positions) or positions
    return min(positions, int(limit)), "longest"


def _load_processor(folder: Path, kind: str):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except ImportError as exc:
        if "sentencepiece" in str(exc).lower():
            raise MissingPackageError(
                f"student: the tokenizer of {folder} is a sentencepiece model (spiece.model), and the sentencepiece "
                "package is not installed: pip install sentencepiece (SigLIP 2 folders ship a tokenizer.json and "
                "need no extra package)") from exc
        raise MissingPackageError(f"student: cannot load the tokenizer of {folder}: {first_line(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"student: cannot load the processor of {folder} (a {kind} folder needs "
                                f"preprocessor_config.json and its tokenizer files): {exc}") from exc
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise FileNotFoundError(f"student: {folder} has no complete processor (got {type(processor).__name__}); "
                                f"a {kind} folder needs preprocessor_config.json and its tokenizer files")
    return processor


def student_from_hf_model(model: nn.Module, processor) -> DualEncoder:
    """A student around a live ``CLIPModel`` / ``SiglipModel`` and its processor (shared, not copied)."""

    kind = model.config.model_type
    if kind not in HF_KINDS:
        raise ValueError(f"student: a {kind!r} model is not a supported dual encoder ({', '.join(HF_KINDS)})")
    tokenizer = processor.tokenizer
    towers = HFDualTowers(model, processor, "attention_mask" in getattr(tokenizer, "model_input_names", ()))
    max_length, padding = text_settings(model, tokenizer)
    scale = float(model.logit_scale.detach().reshape(()).exp())
    config = StudentConfig(kind=kind, embed_dim=towers.image_dim, image_size=model.config.vision_config.image_size,
                           init_logit_scale=scale, max_length=max_length)
    student = DualEncoder(config, towers, HFTokenizer(tokenizer, max_length, padding),
                          HFImageTransform(processor.image_processor), project=False,
                          max_logit_scale=max(MAX_LOGIT_SCALE, math.ceil(scale)))
    with torch.no_grad():
        student.log_logit_scale.copy_(model.logit_scale.detach().reshape(()).float())
    return student


def load_hf_student(folder: str | os.PathLike, device: str | torch.device = "cpu") -> DualEncoder:
    """A student that starts as exactly the CLIP or SigLIP model in ``folder`` (float32, eval mode)."""
    folder = Path(folder)
    kind = folder_model_type(folder)
    if kind not in HF_KINDS:
        raise ValueError(f"student: {folder / 'config.json'} has model_type {kind!r}; expected one of {list(HF_KINDS)}")
    from transformers import CLIPModel, SiglipModel

    from ..teachers.hf_quiet import hf_progress_bars_off

    processor = _load_processor(folder, kind)
    model_class = {"clip": CLIPModel, "siglip": SiglipModel}[kind]
    try:
        with hf_progress_bars_off():
            model = model_class.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"student: cannot load the {kind} weights in {folder}: {exc}") from exc
    return student_from_hf_model(model, processor).to(device).eval()


def save_hf_student(student: DualEncoder, out_dir: str | os.PathLike) -> None:
    """The model (its logit scale set to the student's) and its processor, as a hub folder."""
    from ..teachers.hf_quiet import hf_progress_bars_off

    towers: HFDualTowers = student.towers
    model = towers.model
    with torch.no_grad():
        model.logit_scale.copy_(student.log_logit_scale.detach().reshape(model.logit_scale.shape))
    os.makedirs(out_dir, exist_ok=True)
    with hf_progress_bars_off():
        model.save_pretrained(out_dir)
    save_processor_files(towers.processor, out_dir)

