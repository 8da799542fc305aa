"""Turning parsed flags into the pieces of a run: data splits, student, loss, settings (the device and the
teacher come from :mod:`dcd_ext.cli`, shared with the other commands)."""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional

import torch

from ..cli import check_teacher_argument, teacher_kind
from ..data import EmptySplitError, RetrievalSet, check_data_file, load_split, without_images
from ..data.images import find_bad_images
from ..losses import ContrastiveLoss, DCDLoss
from ..students import (DualEncoder, build_meter_student, build_small_student, build_vilt_student,
                        is_student_folder, load_student)
from ..students.small_towers import default_channels
from .fusion import build_fusion_from_args, is_fusion_run, make_fusion_loss
from .loop import TrainSettings
from .run_dir import get_logger

OPEN_CLIP_PREFIX = "open_clip:"
STUDENT_NAMES = ("small", "teacher", "fusion")


def student_spec_error(spec: str) -> ValueError:
    return ValueError(f"student: expected 'small', 'teacher', 'fusion', a saved student folder, a CLIP or SigLIP "
                      f"folder or {OPEN_CLIP_PREFIX}ARCH; got {spec!r}")


def check_input_files(args: argparse.Namespace) -> None:
    """The files the flags name (data tables, the teacher, a student folder), checked without reading them,
    before the device is resolved: a mistake is reported before anything asks for CUDA."""
    if args.demo:
        return
    for data in (args.data, args.eval_data):
        if data:
            check_data_file(data, args.images)
    check_teacher_argument(args)
    spec = args.student
    if spec and spec not in STUDENT_NAMES and not spec.startswith(OPEN_CLIP_PREFIX) and not os.path.isdir(spec):
        raise student_spec_error(spec)


def optional_split(data: str, images: Optional[str], split: str, max_captions: int,
                   check_files: bool = True) -> Optional[RetrievalSet]:
    """A validation split if the data has one; None (logged) if not."""
    if split == "none":
        return None
    try:
        return load_split(data, images, split, max_captions, check_files=check_files)
    except EmptySplitError as e:
        get_logger().info(f"no per-epoch validation: {e}")
        return None


def load_data_from_args(args: argparse.Namespace) -> tuple[RetrievalSet, Optional[RetrievalSet], RetrievalSet]:
    """(train, val or None, eval) splits as the flags describe. With --skip-bad-images missing files are left
    to :func:`screen_images` (which drops them) instead of stopping the run here."""
    keys = {"image_key": args.image_key, "caption_key": args.caption_key}
    check = not getattr(args, "skip_bad_images", False)
    train = load_split(args.data, args.images, args.train_split, all_rows_without_split_column=True,
                       check_files=check, **keys)
    eval_data = args.eval_data or args.data
    try:
        test = load_split(eval_data, args.images, args.eval_split, args.max_eval_captions,
                          all_rows_without_split_column=args.eval_data is not None, check_files=check, **keys)
    except EmptySplitError as e:
        raise ValueError(f"eval_split: {e}; pass --eval-data with a separate evaluation file") from None
    val = optional_split(args.data, args.images, args.val_split, args.max_eval_captions, check)
    return train, val, test


def screen_images(splits: list[Optional[RetrievalSet]], skip: bool, progress: bool = True
                  ) -> tuple[list[Optional[RetrievalSet]], list[dict]]:
    """Check every image file the splits will read (a fast header check, a progress bar on large sets) before
    a run starts. Unreadable files stop the run with their paths and the lines naming them, or with ``skip``
    are left out with their captions: returns the splits and what was skipped (split, path, origin, reason)."""
    paths = sorted({p for s in splits if s is not None for p in s.images if isinstance(p, str)})
    if not paths:
        return splits, []
    log = get_logger()
    started = time.perf_counter()
    bad = {paths[i]: reason for i, reason in find_bad_images(paths, progress=progress and len(paths) >= 1000,
                                                             desc="checking image files").items()}
    log.info(f"checked {len(paths)} image files in {time.perf_counter() - started:.1f} s: "
             + (f"{len(bad)} cannot be read" if bad else "all readable"))
    if not bad:
        return splits, []
    skipped, out = [], []
    for split in splits:
        if split is None:
            out.append(None)
            continue
        drop = {i for i, p in enumerate(split.images) if isinstance(p, str) and p in bad}
        for i in sorted(drop):
            skipped.append({"split": split.name, "path": split.images[i],
                            "origin": split.image_origins[i] if split.image_origins else "", "reason": bad[split.images[i]]})
        out.append(without_images(split, drop) if drop and skip else split)
    if not skip:
        shown = "; ".join(f"{s['path']} ({s['origin'] or s['split']}): {s['reason']}" for s in skipped[:5])
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise OSError(f"data: {len(bad)} of {len(paths)} image files cannot be read: {shown}{more}. Fix or remove "
                      "them, or pass --skip-bad-images to leave them out (listed in RUN/skipped_images.txt)")
    captions = sum(a.num_captions - b.num_captions for a, b in zip(splits, out) if a is not None)
    log.warning(f"--skip-bad-images: left out {len(bad)} unreadable image files and their {captions} captions "
                "(listed in skipped_images.txt)")
    return out, skipped


def skipped_images_text(skipped: list[dict]) -> str:
    lines = ["# images left out by --skip-bad-images: split<TAB>path<TAB>where the data file names it<TAB>reason"]
    lines += ["\t".join([s["split"], s["path"], s["origin"], s["reason"]]) for s in skipped]
    return "\n".join(lines) + "\n"


def build_student_from_args(args: argparse.Namespace, train: RetrievalSet, teacher=None) -> DualEncoder:
    """``teacher``: the loaded teacher (a fusion student shares its frozen encoders)."""
    spec = args.student
    if is_fusion_run(args):
        return build_fusion_from_args(args, teacher)
    weights = getattr(args, "student_weights", None)
    if spec.startswith(OPEN_CLIP_PREFIX):
        from ..students.open_clip_student import build_open_clip_student
        return build_open_clip_student(spec[len(OPEN_CLIP_PREFIX):], weights).train()
    if weights:
        raise ValueError(f"student: --student-weights goes with --student {OPEN_CLIP_PREFIX}ARCH; got --student {spec}")
    if spec == "small":
        return build_small_student(train.captions, embed_dim=args.embed_dim, image_size=args.image_size,
                                   image_channels=default_channels(args.image_size), width=args.student_width,
                                   text_layers=args.student_layers)
    if spec == "teacher":
        kind = teacher_kind(args.teacher, args.teacher_kind)
        if kind == "vilt":
            return build_vilt_student(args.teacher, embed_dim=args.embed_dim)
        if kind != "meter":
            raise ValueError(f"student: --student teacher takes towers from a ViLT or METER teacher, not {kind}; "
                             "start from a pretrained dual encoder instead (a CLIP or SigLIP folder, open_clip:ARCH)")
        if os.path.isdir(args.teacher):
            raise ValueError("student: --student teacher needs the METER checkpoint file as --teacher")
        tokenizer = args.teacher_tokenizer or os.path.dirname(os.path.abspath(args.teacher))
        return build_meter_student(args.teacher, tokenizer, embed_dim=args.embed_dim)
    if os.path.isdir(spec) and is_student_folder(spec):
        return load_student(spec).train()
    raise student_spec_error(spec)


def make_loss(args: argparse.Namespace, teacher, rank: int = 0) -> torch.nn.Module:
    """``rank``: each process of a multi-process run draws its own teacher pools."""
    if args.loss == "contrastive":
        return ContrastiveLoss(args.queue_size)
    if is_fusion_run(args):
        return make_fusion_loss(args, teacher, rank)
    return DCDLoss(teacher, k=args.k, alpha=args.alpha, temperature=args.temperature, kind=args.distill_kind,
                   weighting=args.weighting, con_weight=args.con_weight, mine_by=args.mine_by,
                   teacher_pool=args.teacher_pool, queue_size=args.queue_size, seed=args.seed + 1_000_003 * rank)


def settings_from_args(args: argparse.Namespace, device: torch.device) -> TrainSettings:
    return TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         warmup=args.warmup, grad_clip=args.grad_clip, precision=args.precision,
                         accum_steps=args.accum_steps, save_every=args.save_every, device=device,
                         seed=args.seed, log_every=args.log_every, workers=args.workers,
                         keep_checkpoints=args.keep_checkpoints, progress=not args.no_progress,
                         eval_batch_size=args.eval_batch_size, early_stop=args.early_stop)
