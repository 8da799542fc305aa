"""Building, saving and loading students.

A saved student is a folder: ``config.json`` (a :class:`StudentConfig`), ``model.safetensors`` and, for
towers taken from a teacher, that teacher's tokenizer files. Students that started as a pretrained dual
encoder are saved in that model's own format, so its library loads them too: a transformers CLIP or
SigLIP folder (``config.json`` with ``model_type`` clip / siglip, see :mod:`.hf_dual`), or an open_clip
``local-dir`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``, see
:mod:`.open_clip_student`). :func:`load_student` accepts all of them.
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
from .tokenizer import HFTokenizer, TEXT_MAX_LENGTH, WordTokenizer, build_vocab
from .transforms import ImageTransform

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


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
                            init_logit_scale: float = 1 / 0.07, max_length: int = TEXT_MAX_LENGTH,
                            pooling: str = "cls") -> DualEncoder:
    """A student around a live ``transformers.ViltModel`` (its weights are shared, not copied); ``pooling``
    as in :class:`ViltTowers` (``mean`` for a random-init model)."""
    from .vilt_towers import ViltTowers

    patch = vilt_model.config.patch_size
    size = max(patch, image_size // patch * patch)
    max_length = min(max_length, vilt_model.config.max_position_embeddings)
    config = StudentConfig(kind="vilt", embed_dim=embed_dim, image_size=size, init_logit_scale=init_logit_scale,
                           max_length=max_length, backbone=vilt_model.config.to_dict(), pooling=pooling)
    return DualEncoder(config, ViltTowers(vilt_model, pooling), HFTokenizer(tokenizer, max_length),
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
    return DualEncoder(config, ViltTowers(backbone, config.pooling), hf_tokenizer(folder, config.max_length),
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
    if model.config.kind in ("clip", "siglip"):
        from .hf_dual import save_hf_student
        return save_hf_student(model, out_dir)
    if model.config.kind == "open_clip":
        from .open_clip_student import save_open_clip_student
        return save_open_clip_student(model, out_dir)
    os.makedirs(out_dir, exist_ok=True)
    write_text_atomically(os.path.join(out_dir, CONFIG_FILE), json.dumps(model.config.to_dict(), indent=1))
    write_atomically(os.path.join(out_dir, WEIGHTS_FILE), lambda temp: save_model(model, temp))
    if isinstance(model.tokenizer, HFTokenizer):
        model.tokenizer.save(out_dir)


def student_folder_kind(path: str) -> Optional[str]:
    """What kind of student folder ``path`` is: ``"saved"`` (config.json of a :class:`StudentConfig` and
    model.safetensors), ``"clip"`` / ``"siglip"`` (a transformers folder of that ``model_type``),
    ``"open_clip"`` (an open_clip local-dir folder), ``"fusion"`` (a saved fusion student), or None."""
    from ..hf_folders import folder_model_type
    from .fusion import is_fusion_folder
    from .hf_dual import HF_KINDS
    from .open_clip_student import is_open_clip_folder

    if not os.path.isdir(path):
        return None
    if is_fusion_folder(path):
        return "fusion"
    model_type = folder_model_type(path)
    if model_type in HF_KINDS:
        return model_type
    if is_open_clip_folder(path):
        return "open_clip"
    if model_type is None and os.path.isfile(os.path.join(path, CONFIG_FILE)) \
            and os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        return "saved"
    return None


def load_student(folder: str, device: str | torch.device = "cpu") -> DualEncoder:
    """A saved student folder, or a pretrained dual encoder to start from: a transformers CLIP / SigLIP
    folder or an open_clip local-dir folder (see :func:`student_folder_kind`)."""
    kind = student_folder_kind(folder)
    if kind in ("clip", "siglip"):
        from .hf_dual import load_hf_student
        return load_hf_student(folder, device)
    if kind == "open_clip":
        from .open_clip_student import load_open_clip_folder
        return load_open_clip_folder(folder, device)
    if os.path.isdir(folder) and kind is None:
        from ..hf_folders import folder_model_type
        model_type = folder_model_type(folder)
        if model_type is not None:
            raise ValueError(f"student: {folder} holds a transformers {model_type!r} model; a student folder is "
                             "a saved student, a CLIP or SigLIP folder, or an open_clip local-dir folder")
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


def student_fingerprint(model: DualEncoder) -> str:
    """A SHA-256 of what decides a student's embeddings: its configuration, every weight and buffer, and
    (for Hugging Face tokenizers) the vocabulary. Two students with the same fingerprint embed alike; an
    index records the fingerprint of the student that built it, so a search can refuse another one."""
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(model.tokenizer, HFTokenizer):
        vocab = model.tokenizer.tokenizer.get_vocab()
        h.update(json.dumps(sorted(vocab.items())).encode())
    return h.hexdigest()


def is_student_folder(path: str) -> bool:
    """A folder :func:`load_student` reads: a saved student (a dual encoder or a fusion student) or a
    pretrained CLIP / SigLIP / open_clip folder."""
    return student_folder_kind(path) is not None
