"""Shallow cross-encoder ("fusion") students: the student form of the DCD authors' released code.

A fusion student is the teacher with fewer joint layers. It keeps the teacher's frozen per-item work and
copies a subset of the teacher's joint layers, which it trains:

- METER: frozen CLIP and RoBERTa encoders, the two cross-modal transforms and the token-type embeddings
  (all of ``MeterForRetrieval.encode_image`` / ``encode_text``); trained: deep copies of the text-stream
  and image-stream co-attention layers at the chosen indices (the authors keep 0, 3, 5 of 6), copies of
  the two poolers and of the rank head. The rank head starts as the teacher's ``rank_output``
  (``head_init="rank"``), or, as in the authors' code, from the ITM head's "match" row of the checkpoint
  (``head_init="itm"``: METER's own initialisation of ``rank_output``).
- ViLT (one single-stream transformer): frozen embeddings (word, position and token-type embeddings,
  patch embeddings and their position embeddings); trained: copies of the chosen transformer layers,
  the final layer norm, the pooler and the rank head.

The frozen parts are the teacher's own modules, shared, not copied: they are not registered in the
student (``student.parameters()`` and ``state_dict()`` hold only the trained parts) and run under
``torch.no_grad()``, so they never receive a gradient. A student built with every teacher layer kept
scores exactly as the teacher.

A fusion student has the teachers' scoring API (it is a :class:`~dcd_ext.teachers.CrossEncoderTeacher`):
``score``, ``score_pairs`` (each image and text encoded once, only the student's joint layers per pair)
and the differentiable ``pair_logits`` used in training. It can therefore stand wherever a teacher does,
e.g. re-ranking a dual encoder's top k (the cascade, :mod:`dcd_ext.retrieval.cascade`).

Saved (``save_student`` / ``FusionStudent.save``) as a folder: ``config.json`` (kind ``fusion``, the
teacher kind, the kept layer indices) and ``cross_encoder/``, the student written in its teacher's own
format (a METER checkpoint with fewer co-attention layers, or a ViLT folder with fewer layers), which
``load_teacher(kind, folder/cross_encoder)`` also reads. ``load_student`` reloads it without the teacher.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from ..files import write_text_atomically
from ..teachers.base import CrossEncoderTeacher, Item

__all__ = ["FUSION_KIND", "FusionStudent", "MeterFusionStudent", "ViltFusionStudent", "build_fusion_student",
           "default_fusion_layers", "is_fusion_folder", "load_fusion_student", "parse_layers", "save_fusion_student"]

FUSION_KIND = "fusion"
CONFIG_FILE = "config.json"
CROSS_ENCODER_DIR = "cross_encoder"
HEAD_INITS = ("rank", "itm")


def default_fusion_layers(num_layers: int) -> tuple[int, ...]:
    """Half of the teacher's joint layers (rounded up), spread evenly from the first to the last:
    6 -> (0, 3, 5) (the authors' choice for METER), 12 -> (0, 2, 4, 7, 9, 11), 2 -> (0,), 1 -> (0,)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be at least 1; got {num_layers}")
    kept = (num_layers + 1) // 2
    if kept == 1:
        return (0,)
    return tuple(int(math.floor(i * (num_layers - 1) / (kept - 1) + 0.5)) for i in range(kept))


def parse_layers(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"0,3,5"`` (or a sequence of ints) -> (0, 3, 5)."""
    if isinstance(text, str):
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"layers: expected comma-separated layer indices such as 0,3,5; got {text!r}") from None
    else:
        values = [int(v) for v in text]
    if not values:
        raise ValueError("layers: at least one layer index is needed")
    return tuple(values)


def _check_layers(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    layers = parse_layers(layers)
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers: indices {bad} outside the teacher's {num_layers} joint layers [0, {num_layers})")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers: each teacher layer may be kept once; got {list(layers)}")
    return layers


class FusionStudent(nn.Module, CrossEncoderTeacher):
    """Base of the METER and ViLT fusion students (build one with :func:`build_fusion_student`).

    ``teacher`` is the cross-encoder whose frozen per-item work the student runs (the teacher it was
    distilled from, or, for a reloaded student, its own saved cross-encoder). ``layers`` are the teacher
    layer indices the student's joint layers were copied from, ``teacher_layers`` how many the teacher has.
    """

    kind = FUSION_KIND
    is_cross_encoder = True  # ranks by scoring pairs (evaluation code checks this), not by embeddings

    def __init__(self, teacher: CrossEncoderTeacher, layers: Sequence[int], teacher_layers: int,
                 head_init: str = "rank"):
        nn.Module.__init__(self)
        self.base = teacher  # not an nn.Module: a plain attribute, so its weights are not the student's
        self.layers_kept = tuple(int(i) for i in layers)
        self.teacher_layers = int(teacher_layers)
        self.head_init = head_init
        self.micro_batch_size = teacher.micro_batch_size
        self.bf16 = teacher.bf16

    # ---- the teacher API on top of nn.Module -----------------------------------------------------
    @property
    def model(self) -> "FusionStudent":
        """What the scoring machinery puts in eval mode and back: the student's own (trained) modules."""
        return self

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def teacher_kind(self) -> str:
        return self.base.kind

    @property
    def max_text_len(self) -> int:
        return self.base.max_text_len

    def _apply(self, fn, recurse=True):
        # .to(device) moves the frozen parts too (they are the teacher's: the whole teacher moves with them)
        out = super()._apply(fn, recurse)
        param = next(self.parameters(), None)
        if param is not None and param.device != self.base.device:
            self.base.to(param.device)
        return out

    def clamp_logit_scale(self) -> None:
        """The training loop's hook after every update; a cross-encoder has no logit scale to clamp."""

    def extra_repr(self) -> str:
        return (f"teacher={self.base.kind}, layers={list(self.layers_kept)} of {self.teacher_layers}, "
                f"head_init={self.head_init}")

    def forward(self, images, texts, pairs) -> Tensor:
        """Differentiable scores [P] of (images[p, 0], texts[p, 1]): :meth:`pair_logits`."""
        return self.pair_logits(images, texts, pairs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def save(self, out_dir) -> Path:
        return save_fusion_student(self, out_dir)

    def _frozen_items(self, encode, values) -> list[Item]:
        with torch.no_grad():
            return encode(values)

    def _encode_images(self, images) -> list[Item]:
        return self._frozen_items(self.base._encode_images, images)

    def _encode_texts(self, texts) -> list[Item]:
        return self._frozen_items(self.base._encode_texts, texts)

    def _save_cross_encoder(self, out_dir: Path) -> None:
        raise NotImplementedError


def _take(module: nn.Module, copy_weights: bool) -> nn.Module:
    module = copy.deepcopy(module) if copy_weights else module
    for param in module.parameters():
        param.requires_grad_(True)
    return module


class MeterFusionStudent(FusionStudent):
    """METER with the co-attention layers ``layers`` (copied), its poolers and a rank head."""

    def __init__(self, teacher, layers: Sequence[int], *, head_init: str = "rank", copy_weights: bool = True,
                 teacher_layers: int | None = None):
        model = teacher.model
        num = model.config.cross_layers
        layers = _check_layers(layers, num)
        super().__init__(teacher, layers, teacher_layers or num, head_init)
        self.cross_modal_text_layers = nn.ModuleList(_take(model.cross_modal_text_layers[i], copy_weights)
                                                     for i in layers)
        self.cross_modal_image_layers = nn.ModuleList(_take(model.cross_modal_image_layers[i], copy_weights)
                                                      for i in layers)
        self.cross_modal_text_pooler = _take(model.cross_modal_text_pooler, copy_weights)
        self.cross_modal_image_pooler = _take(model.cross_modal_image_pooler, copy_weights)
        self.rank_output = _take(model.rank_output, copy_weights)
        if head_init == "itm":
            weight, bias = itm_match_row(teacher)
            with torch.no_grad():
                self.rank_output.weight.copy_(weight)
                self.rank_output.bias.copy_(bias)
        self.train(model.training)

    def _joint_logits(self, image_feats, image_mask, text_feats, text_mask) -> Tensor:
        from ..teachers.meter.model import MeterForRetrieval

        # the teacher's own joint code, run on the student's layers, poolers and head (same attribute names)
        return MeterForRetrieval.joint(self, text_feats, text_mask, image_feats, image_mask)

    def _save_cross_encoder(self, out_dir: Path) -> None:
        from ..teachers.meter import MeterForRetrieval, save_meter_checkpoint
        from ..teachers.meter.teacher import METER_CHECKPOINT_NAME

        model = self.base.model
        config = dataclasses.replace(model.config, cross_layers=len(self.cross_modal_text_layers))
        with torch.device("meta"):
            reduced = MeterForRetrieval(config, initialize=False)
        for name in ("visual", "text_transformer", "cross_modal_text_transform", "cross_modal_image_transform",
                     "token_type_embeddings"):
            setattr(reduced, name, getattr(model, name))
        for name in ("cross_modal_text_layers", "cross_modal_image_layers", "cross_modal_text_pooler",
                     "cross_modal_image_pooler", "rank_output"):
            setattr(reduced, name, getattr(self, name))
        save_meter_checkpoint(reduced, out_dir / METER_CHECKPOINT_NAME)
        self.base.tokenizer.save_pretrained(out_dir)


def itm_match_row(teacher) -> tuple[Tensor, Tensor]:
    """The ITM head's "match" row (``itm_score.fc`` row 1) of the METER checkpoint the teacher was loaded
    from: METER's (and the DCD authors') initialisation of a retrieval head."""
    from ..teachers.checkpoint_io import load_checkpoint_file

    report = getattr(teacher.model, "load_report", None)
    path = getattr(report, "path", "")
    if not path or not os.path.isfile(path):
        raise ValueError("head_init='itm' needs a METER teacher loaded from a checkpoint file (its itm_score head)")
    obj = load_checkpoint_file(Path(path))
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else {}
    if "itm_score.fc.weight" not in state:
        raise ValueError(f"head_init='itm': {path} has no itm_score head; use head_init='rank'")
    device = teacher.model.rank_output.weight.device
    return state["itm_score.fc.weight"][1:].to(device), state["itm_score.fc.bias"][1:].to(device)


class ViltFusionStudent(FusionStudent):
    """ViLT with the transformer layers ``layers`` (copied), the final layer norm, the pooler and the rank head.

    Per text (frozen, cached): the word, position and token-type embeddings plus the text modality
    embedding; per image (frozen, cached): the teacher's own patch embedding (``visual_embed``, seeded
    patch sampling) plus the image modality embedding; per pair: the student's layers on the concatenation,
    as transformers' ``ViltModel`` runs its encoder."""

    def __init__(self, teacher, layers: Sequence[int], *, head_init: str = "rank", copy_weights: bool = True,
                 teacher_layers: int | None = None):
        if head_init != "rank":
            raise ValueError(f"head_init={head_init!r}: a ViLT retrieval model has no ITM head; use 'rank'")
        model = teacher.model
        num = model.config.num_hidden_layers
        layers = _check_layers(layers, num)
        super().__init__(teacher, layers, teacher_layers or num, head_init)
        vilt = model.vilt
        self.layers = nn.ModuleList(_take(vilt.encoder.layer[i], copy_weights) for i in layers)
        self.layernorm = _take(vilt.layernorm, copy_weights)
        self.pooler = _take(vilt.pooler, copy_weights)
        self.rank_output = _take(model.rank_output, copy_weights)
        self.train(model.training)

    def _encode_texts(self, texts) -> list[Item]:
        items = self._frozen_items(self.base._encode_texts, texts)
        if not items:
            return items
        emb = self.base.model.vilt.embeddings
        with torch.no_grad():
            ids = torch.stack([ids for ids, _ in items])
            x = emb.text_embeddings(input_ids=ids) + emb.token_type_embeddings(torch.zeros_like(ids))
        return [(feat, mask) for feat, (_, mask) in zip(x, items)]

    def _encode_images(self, images) -> list[Item]:
        items = self._frozen_items(self.base._encode_images, images)
        emb = self.base.model.vilt.embeddings
        with torch.no_grad():
            return [(feat + emb.token_type_embeddings(torch.ones(feat.shape[:1], dtype=torch.long,
                                                                 device=feat.device)), mask)
                    for feat, mask in items]

    def _joint_logits(self, image_feats, image_mask, text_feats, text_mask) -> Tensor:
        x = torch.cat([text_feats, image_feats], dim=1)
        keep = torch.cat([text_mask, image_mask], dim=1)
        additive = (1.0 - keep[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, additive)[0]
        return self.rank_output(self.pooler(self.layernorm(x)))[:, 0]

    def _save_cross_encoder(self, out_dir: Path) -> None:
        from transformers import ViltForImageAndTextRetrieval

        from ..teachers.hf_quiet import hf_progress_bars_off

        model = self.base.model
        config = copy.deepcopy(model.config)
        config.num_hidden_layers = len(self.layers)
        with torch.device("meta"):
            reduced = ViltForImageAndTextRetrieval(config)
        reduced.vilt.embeddings = model.vilt.embeddings
        reduced.vilt.encoder.layer = self.layers
        reduced.vilt.layernorm, reduced.vilt.pooler, reduced.rank_output = self.layernorm, self.pooler, self.rank_output
        with hf_progress_bars_off():
            reduced.save_pretrained(out_dir)
        self.base.tokenizer.save_pretrained(out_dir)
        self.base.image_processor.save_pretrained(out_dir)


def build_fusion_student(teacher: CrossEncoderTeacher, layers: Sequence[int] | str | None = None, *,
                         head_init: str = "rank") -> FusionStudent:
    """A shallow cross-encoder student of a loaded METER or ViLT teacher (``load_teacher``).

    ``layers``: the teacher's joint layer indices to copy (default :func:`default_fusion_layers`: 0, 3, 5
    of METER's 6 co-attention layers, as the authors). ``head_init``: ``"rank"`` (a copy of the teacher's
    rank head) or ``"itm"`` (METER only: the checkpoint's ITM "match" row, as the authors). The student
    shares the teacher's frozen encoders and lives on the teacher's device; its parameters are only the
    copied layers, poolers and head."""
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init must be one of {', '.join(HEAD_INITS)}; got {head_init!r}")
    kind = getattr(teacher, "kind", None)
    if kind == "meter":
        num = teacher.model.config.cross_layers
        return MeterFusionStudent(teacher, default_fusion_layers(num) if layers is None else layers,
                                  head_init=head_init)
    if kind == "vilt":
        num = teacher.model.config.num_hidden_layers
        return ViltFusionStudent(teacher, default_fusion_layers(num) if layers is None else layers,
                                 head_init=head_init)
    raise ValueError(f"teacher: a fusion student needs a loaded METER or ViLT teacher; got {type(teacher).__name__}")


def save_fusion_student(student: FusionStudent, out_dir) -> Path:
    """Write ``out_dir/config.json`` and ``out_dir/cross_encoder/`` (the student in its teacher's format)."""
    out_dir = Path(out_dir)
    target = out_dir / CROSS_ENCODER_DIR
    target.mkdir(parents=True, exist_ok=True)
    student._save_cross_encoder(target)
    config = {"kind": FUSION_KIND, "teacher_kind": student.base.kind, "layers": list(student.layers_kept),
              "teacher_layers": student.teacher_layers, "head_init": student.head_init,
              "max_text_len": student.base.max_text_len, "cross_encoder": CROSS_ENCODER_DIR}
    if student.base.kind == "vilt":
        config["patch_seed"] = student.base.patch_seed
    write_text_atomically(str(out_dir / CONFIG_FILE), json.dumps(config, indent=1))
    return out_dir


def read_fusion_config(folder) -> dict | None:
    """The folder's config.json if it describes a fusion student, else None."""
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        config = json.load(f)
    return config if isinstance(config, dict) and config.get("kind") == FUSION_KIND else None


def is_fusion_folder(path) -> bool:
    return path is not None and os.path.isdir(path) and read_fusion_config(path) is not None


def load_fusion_student(folder, device: str | torch.device = "cpu", micro_batch_size: int = 32) -> FusionStudent:
    """A saved fusion student, with its frozen encoders, in eval mode on ``device`` (no teacher needed)."""
    from ..teachers import load_teacher

    config = read_fusion_config(folder)
    if config is None:
        raise FileNotFoundError(f"student: {folder} holds no fusion student (no config.json of kind 'fusion')")
    options = {"max_text_len": config.get("max_text_len")}
    if config["teacher_kind"] == "vilt":
        options["patch_seed"] = config.get("patch_seed", 0)
    cross_encoder = load_teacher(config["teacher_kind"], os.path.join(folder, config.get("cross_encoder", CROSS_ENCODER_DIR)),
                                 device=device, micro_batch_size=micro_batch_size, **options)
    cls = MeterFusionStudent if config["teacher_kind"] == "meter" else ViltFusionStudent
    num = (cross_encoder.model.config.cross_layers if config["teacher_kind"] == "meter"
           else cross_encoder.model.config.num_hidden_layers)
    # the saved cross-encoder's joint layers are the student's: share them instead of copying
    student = cls(cross_encoder, range(num), copy_weights=False, teacher_layers=config.get("teacher_layers"))
    student.layers_kept = tuple(config.get("layers", range(num)))
    student.head_init = config.get("head_init", "rank")
    return student.eval()
