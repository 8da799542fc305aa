"""Students that start as an open_clip model (an optional extra: ``pip install "dcd_ext[open_clip]"``).

``build_open_clip_student(arch, weights)`` builds ``open_clip.create_model_and_transforms(arch,
pretrained=weights)`` and wraps it in a :class:`~dcd_ext.students.dual_encoder.DualEncoder` with

- the model's own ``encode_image`` / ``encode_text`` (its own projections; no new layer);
- the model's own logit scale as the student's learnable scale (the model's ``logit_scale``, and a
  SigLIP model's ``logit_bias``, are frozen; the scale is written back on save; the bias is unused by the
  softmax terms of DCD, see :mod:`.hf_dual`);
- open_clip's evaluation transform for images (resize + centre crop + normalisation of the model's
  ``preprocess_cfg``) and its tokenizer (token ids padded to the context length; open_clip's text tower
  takes no attention mask, so the student's mask is informative only: 1 where the id is not 0).

``arch`` is an open_clip model name (``ViT-B-32``), a model configuration file (``*.json`` in open_clip's
``model_configs`` format, registered under its file stem), or ``local-dir:FOLDER`` (open_clip's own
format: ``open_clip_config.json`` + weights; ``weights`` is then not needed). The hub (``hf-hub:``) is
not used: everything is local.

Before any training ``encode_image(preprocess_images(images))`` and ``encode_text(*tokenizer(texts))``
equal ``F.normalize(model.encode_image(preprocess(image)))`` / ``F.normalize(model.encode_text(tokenizer(
texts)))``. A trained student is saved as an open_clip ``local-dir`` folder, which
``open_clip.create_model_and_transforms("local-dir:FOLDER")`` and :func:`load_student` both load.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from ..missing_package import MissingPackageError
from .dual_encoder import MAX_LOGIT_SCALE, DualEncoder, StudentConfig

OPEN_CLIP_EXTRA = 'pip install "dcd_ext[open_clip]" (open-clip-torch==3.3.0)'
OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"
LOCAL_DIR = "local-dir:"


def import_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise MissingPackageError(f"open_clip students need the optional open_clip package, which is not "
                                  f"installed: {OPEN_CLIP_EXTRA}") from exc
    return open_clip


def is_open_clip_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / OPEN_CLIP_CONFIG).is_file()


class OpenClipTokenizer:
    """open_clip's tokenizer called the way students call theirs: texts in, (ids, mask) out."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.max_length = tokenizer.context_length

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        ids = self.tokenizer(list(texts))
        return ids, ids.ne(0).long()


class OpenClipTowers(nn.Module):
    def __init__(self, model: nn.Module, model_cfg: dict, preprocess_cfg: dict):
        super().__init__()
        self.model = model
        self.model_cfg, self.preprocess_cfg = model_cfg, preprocess_cfg
        self.image_dim = self.text_dim = int(model_cfg["embed_dim"])
        for name in ("logit_scale", "logit_bias"):
            param = getattr(model, name, None)
            if isinstance(param, nn.Parameter):
                param.requires_grad_(False)

    def image_features(self, pixels: Tensor) -> Tensor:
        return self.model.encode_image(pixels)

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model.encode_text(input_ids)


def resolve_arch(arch: str) -> str:
    """open_clip's name for ``arch``: a built-in name, ``local-dir:FOLDER``, or a configuration file's stem
    (the file is registered with ``open_clip.add_model_config``)."""
    open_clip = import_open_clip()
    if arch.startswith("hf-hub:"):
        raise ValueError(f"student: {arch!r}: the hub is not used; download the model and pass its local "
                         "checkpoint (--student-weights) or a local-dir: folder")
    if arch.startswith(LOCAL_DIR):
        folder = arch[len(LOCAL_DIR):]
        if not is_open_clip_folder(folder):
            raise FileNotFoundError(f"student: {folder} is not an open_clip folder (no {OPEN_CLIP_CONFIG})")
        return arch
    if arch.endswith(".json"):
        if not os.path.isfile(arch):
            raise FileNotFoundError(f"student: open_clip model configuration not found: {arch}")
        open_clip.add_model_config(arch)
        return Path(arch).stem
    if open_clip.get_model_config(arch) is None:
        raise ValueError(f"student: unknown open_clip architecture {arch!r} (see open_clip.list_models(), or pass "
                         "a model configuration .json file or local-dir:FOLDER)")
    return arch


def build_open_clip_student(arch: str, weights: Optional[str] = None, device: str | torch.device = "cpu") -> DualEncoder:
    """A student that starts as exactly the open_clip model ``arch`` with the local checkpoint ``weights``."""
    open_clip = import_open_clip()
    name = resolve_arch(arch)
    if name.startswith(LOCAL_DIR):
        if weights:
            raise ValueError("student: a local-dir: open_clip folder holds its own weights; drop --student-weights")
    elif not weights:
        raise ValueError(f"student: open_clip:{arch} needs its checkpoint file (--student-weights FILE); "
                         "a randomly initialised model is not a pretrained student")
    elif not os.path.isfile(weights):
        raise FileNotFoundError(f"student: open_clip checkpoint not found: {weights}")
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None if name.startswith(LOCAL_DIR)
                                                                 else weights)
    model_cfg = open_clip.get_model_config(name)
    tokenizer = open_clip.get_tokenizer(name)
    return student_from_open_clip(model, preprocess, tokenizer, model_cfg).to(device).eval()


def student_from_open_clip(model: nn.Module, preprocess, tokenizer, model_cfg: dict) -> DualEncoder:
    """A student around a live open_clip model, its evaluation transform and tokenizer (shared, not copied)."""
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    towers = OpenClipTowers(model, model_cfg, preprocess_cfg)
    scale = float(model.logit_scale.detach().reshape(()).exp())
    image_size = model_cfg["vision_cfg"].get("image_size", 224)
    config = StudentConfig(kind="open_clip", embed_dim=towers.image_dim,
                           image_size=image_size if isinstance(image_size, int) else int(image_size[0]),
                           init_logit_scale=scale, max_length=int(tokenizer.context_length))
    student = DualEncoder(config, towers, OpenClipTokenizer(tokenizer), preprocess, project=False,
                          max_logit_scale=max(MAX_LOGIT_SCALE, math.ceil(scale)))
    with torch.no_grad():
        student.log_logit_scale.copy_(model.logit_scale.detach().reshape(()).float())
    return student


def load_open_clip_folder(folder: str | os.PathLike, device: str | torch.device = "cpu") -> DualEncoder:
    """An open_clip ``local-dir`` folder (``open_clip_config.json`` + weights), e.g. a saved student."""
    return build_open_clip_student(LOCAL_DIR + str(folder), None, device)


def save_open_clip_student(student: DualEncoder, out_dir: str | os.PathLike) -> None:
    """An open_clip ``local-dir`` folder: ``open_clip_config.json`` ({model_cfg, preprocess_cfg}) and the
    model's state dict (its logit scale set to the student's) in ``open_clip_model.safetensors``."""
    from safetensors.torch import save_model

    from ..files import write_atomically, write_text_atomically

    towers: OpenClipTowers = student.towers
    model = towers.model
    with torch.no_grad():
        model.logit_scale.copy_(student.log_logit_scale.detach().reshape(model.logit_scale.shape))
    os.makedirs(out_dir, exist_ok=True)
    doc = {"model_cfg": towers.model_cfg, "preprocess_cfg": towers.preprocess_cfg}
    write_text_atomically(os.path.join(out_dir, OPEN_CLIP_CONFIG), json.dumps(doc, indent=1))
    write_atomically(os.path.join(out_dir, OPEN_CLIP_WEIGHTS), lambda temp: save_model(model, temp))
