"""Turning parsed flags into the pieces of a run: data splits, student, loss, settings (the device and the
teacher come from :mod:`dcd_ext.cli`, shared with the other commands)."""

from __future__ import annotations

import argparse
import os
from typing import Optional

import torch

from ..cli import teacher_kind
from ..data import EmptySplitError, RetrievalSet, load_split
from ..losses import ContrastiveLoss, DCDLoss
from ..students import (DualEncoder, build_meter_student, build_small_student, build_vilt_student,
                        is_student_folder, load_student)
from ..students.small_towers import default_channels
from .fusion import build_fusion_from_args, is_fusion_run, make_fusion_loss
from .loop import TrainSettings
from .run_dir import get_logger


def optional_split(data: str, images: Optional[str], split: str, max_captions: int) -> Optional[RetrievalSet]:
    """A validation split if the data has one; None (logged) if not."""
    if split == "none":
        return None
    try:
        return load_split(data, images, split, max_captions)
    except EmptySplitError as e:
        get_logger().info(f"no per-epoch validation: {e}")
        return None


def load_data_from_args(args: argparse.Namespace) -> tuple[RetrievalSet, Optional[RetrievalSet], RetrievalSet]:
    """(train, val or None, eval) splits as the flags describe."""
    keys = {"image_key": args.image_key, "caption_key": args.caption_key}
    train = load_split(args.data, args.images, args.train_split, all_rows_without_split_column=True, **keys)
    eval_data = args.eval_data or args.data
    try:
        test = load_split(eval_data, args.images, args.eval_split, args.max_eval_captions,
                          all_rows_without_split_column=args.eval_data is not None, **keys)
    except EmptySplitError as e:
        raise ValueError(f"eval_split: {e}; pass --eval-data with a separate evaluation file") from None
    val = optional_split(args.data, args.images, args.val_split, args.max_eval_captions)
    return train, val, test


def build_student_from_args(args: argparse.Namespace, train: RetrievalSet, teacher=None) -> DualEncoder:
    """``teacher``: the loaded teacher (a fusion student shares its frozen encoders)."""
    spec = args.student
    if is_fusion_run(args):
        return build_fusion_from_args(args, teacher)
    if spec == "small":
        return build_small_student(train.captions, embed_dim=args.embed_dim, image_size=args.image_size,
                                   image_channels=default_channels(args.image_size), width=args.student_width,
                                   text_layers=args.student_layers)
    if spec == "teacher":
        kind = teacher_kind(args.teacher, args.teacher_kind)
        if kind == "vilt":
            return build_vilt_student(args.teacher, embed_dim=args.embed_dim)
        if os.path.isdir(args.teacher):
            raise ValueError("student: --student teacher needs the METER checkpoint file as --teacher")
        tokenizer = args.teacher_tokenizer or os.path.dirname(os.path.abspath(args.teacher))
        return build_meter_student(args.teacher, tokenizer, embed_dim=args.embed_dim)
    if os.path.isdir(spec) and is_student_folder(spec):
        return load_student(spec).train()
    raise ValueError(f"student: expected 'small', 'teacher' or a saved student folder; got {spec!r}")


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
                         eval_batch_size=args.eval_batch_size)
