"""Building, saving and loading students.

A saved student is a folder: ``config.json`` (a :class:`StudentConfig`), ``model.safetensors`` and, for
towers taken from a teacher, that teacher's tokenizer files.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import torch
from safetensors.torch import load_model, save_model

from ..files import write_atomically, write_text_atomically
from .dual_encoder import DualEncoder, StudentConfig
from .small_towers import SmallTowers
from .tokenizer import WordTokenizer, build_vocab
from .transforms import ImageTransform

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
TEXT_MAX_LENGTH = 40  # the teachers' text length (docs/design.md section 5.1)


class HFTokenizer:
    """A Hugging Face tokenizer called the way the students call theirs: texts in, (ids, mask) out."""

    def __init__(self, tokenizer, max_length: int = TEXT_MAX_LENGTH):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]):
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]

    def save(self, out_dir: str) -> None:
        self.tokenizer.save_pretrained(out_dir)


def build_small_student(captions: Optional[Sequence[str]] = None, vocab: Optional[list[str]] = None,
                        **overrides) -> DualEncoder:
    """A student with small towers; its word vocabulary comes from ``vocab`` or the training ``captions``."""
    if vocab is None:
        if not captions:
            raise ValueError("captions: a small student needs its training captions (or a vocab) for the vocabulary")
        vocab = build_vocab(captions)
    config = StudentConfig(kind="small", vocab=list(vocab), **overrides)
    return small_from_config(config)


def small_from_config(config: StudentConfig) -> DualEncoder:
    towers = SmallTowers(len(config.vocab), config.image_size, tuple(config.image_channels), config.width,
                         config.text_layers, config.heads, config.max_length)
    return DualEncoder(config, towers, WordTokenizer(config.vocab, config.max_length),
                       ImageTransform(config.image_size))


def hf_tokenizer(path: str, max_length: int = TEXT_MAX_LENGTH) -> HFTokenizer:
    from transformers import AutoTokenizer
    return HFTokenizer(AutoTokenizer.from_pretrained(path), max_length)


def vilt_preprocess_size(teacher_dir: str, default: int) -> int:
    """The shorter side the teacher's preprocessor resizes to (384 for the released ViLT checkpoints)."""
    path = os.path.join(teacher_dir, "preprocessor_config.json")
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        size = json.load(f).get("size", default)
    return int(size.get("shortest_edge", default)) if isinstance(size, dict) else int(size)


def vilt_student_from_model(vilt_model, tokenizer, image_size: int, embed_dim: int = 256,
                            init_logit_scale: float = 1 / 0.07, max_length: int = TEXT_MAX_LENGTH) -> DualEncoder:
    """A student around a live ``transformers.ViltModel`` (its weights are shared, not copied)."""
    from .vilt_towers import ViltTowers

    patch = vilt_model.config.patch_size
    size = max(patch, image_size // patch * patch)
    max_length = min(max_length, vilt_model.config.max_position_embeddings)
    config = StudentConfig(kind="vilt", embed_dim=embed_dim, image_size=size, init_logit_scale=init_logit_scale,
                           max_length=max_length, backbone=vilt_model.config.to_dict())
    return DualEncoder(config, ViltTowers(vilt_model), HFTokenizer(tokenizer, max_length),
                       ImageTransform(size))


def build_vilt_student(teacher_dir: str, embed_dim: int = 256, image_size: Optional[int] = None,
                       init_logit_scale: float = 1 / 0.07) -> DualEncoder:
    """A student whose two towers are the ViLT teacher's transformer (weights copied from ``teacher_dir``)."""
    from transformers import ViltForImageAndTextRetrieval
    from ..teachers.tokenizer_files import load_bert_tokenizer

    if not os.path.isdir(teacher_dir):
        raise FileNotFoundError(f"teacher: ViLT directory not found: {teacher_dir}")
    backbone = ViltForImageAndTextRetrieval.from_pretrained(teacher_dir).vilt
    size = image_size or vilt_preprocess_size(teacher_dir, backbone.config.image_size)
    return vilt_student_from_model(backbone, load_bert_tokenizer(teacher_dir), size, embed_dim,
                                   init_logit_scale)


def vilt_from_config(config: StudentConfig, folder: str) -> DualEncoder:
    from transformers import ViltConfig, ViltModel
    from .vilt_towers import ViltTowers

    backbone = ViltModel(ViltConfig.from_dict(config.backbone))
    return DualEncoder(config, ViltTowers(backbone), hf_tokenizer(folder, config.max_length),
                       ImageTransform(config.image_size))


class MeterImageTransform:
    """METER's CLIP evaluation transform at a fixed size (picklable for loader workers)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image):
        from ..teachers.meter import clip_preprocess
        return clip_preprocess(image, self.size)


def build_meter_student(checkpoint: str, tokenizer_dir: str, embed_dim: int = 256,
                        init_logit_scale: float = 1 / 0.07) -> DualEncoder:
    """A student whose towers are a METER teacher's CLIP image encoder and RoBERTa text encoder."""
    from ..teachers.meter import load_meter_checkpoint
    from ..teachers.tokenizer_files import load_roberta_tokenizer
    from .meter_towers import MeterTowers

    meter = load_meter_checkpoint(checkpoint, roberta_dir=tokenizer_dir)  # its config.json sets RoBERTa's heads
    towers = MeterTowers.from_meter(meter)
    max_length = min(TEXT_MAX_LENGTH, meter.config.max_text_len)
    config = StudentConfig(kind="meter", embed_dim=embed_dim, image_size=towers.image_size,
                           init_logit_scale=init_logit_scale, max_length=max_length,
                           backbone=meter.config.to_dict())
    return DualEncoder(config, towers, HFTokenizer(load_roberta_tokenizer(tokenizer_dir), max_length),
                       MeterImageTransform(towers.image_size))


def meter_from_config(config: StudentConfig, folder: str) -> DualEncoder:
    from .meter_towers import MeterTowers

    return DualEncoder(config, MeterTowers.from_config(config.backbone), hf_tokenizer(folder, config.max_length),
                       MeterImageTransform(config.image_size))


BUILDERS = {"small": lambda cfg, folder: small_from_config(cfg), "vilt": vilt_from_config,
            "meter": meter_from_config}


def save_student(model: DualEncoder, out_dir: str) -> None:
    if getattr(model, "is_cross_encoder", False):  # a fusion student (students/fusion.py)
        model.save(out_dir)
        return
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomically(os.path.join(out_dir, CONFIG_FILE), json.dumps(model.config.to_dict(), indent=1))
    write_atomically(os.path.join(out_dir, WEIGHTS_FILE), lambda temp: save_model(model, temp))
    if isinstance(model.tokenizer, HFTokenizer):
        model.tokenizer.save(out_dir)


def load_student(folder: str, device: str | torch.device = "cpu") -> DualEncoder:
    config_path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"student: no {CONFIG_FILE} in {folder} (not a saved student folder)")
    with open(config_path) as f:
        raw = json.load(f)
    if isinstance(raw, dict) and raw.get("kind") == "fusion":  # a shallow cross-encoder (students/fusion.py)
        from .fusion import load_fusion_student
        return load_fusion_student(folder, device)
    config = StudentConfig.from_dict(raw)
    if config.kind not in BUILDERS:
        raise ValueError(f"student: unknown kind {config.kind!r} in {config_path}")
    model = BUILDERS[config.kind](config, folder)
    load_model(model, os.path.join(folder, WEIGHTS_FILE), device=str(device))
    return model.to(device).eval()


def is_student_folder(path: str) -> bool:
    from .fusion import is_fusion_folder
    return (os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(os.path.join(path, WEIGHTS_FILE))) \
        or is_fusion_folder(path)
