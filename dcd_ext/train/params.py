"""Command-line flags of ``python -m dcd_ext.train``.

Flags whose default is None get a value that depends on the mode: the built-in demo has its own preset
per ``--demo-size``; a run on your own data uses :data:`RUN_DEFAULTS`.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..cli import (add_device_argument, add_precision_argument, add_teacher_arguments, make_parser,
                   non_negative_int, positive_float, positive_int, unit_float)
from ..loss_options import KINDS, WEIGHTINGS
from .fusion import add_fusion_arguments, check_fusion_args

RUN_DEFAULTS = {"epochs": 10, "batch_size": 128, "lr": 1e-4, "k": 7, "alpha": 0.2, "image_size": 224,
                "embed_dim": 256, "student_width": 256, "student_layers": 4, "teacher_pool": 32,
                "rerank_k": 16}

DEMO_SIZES = ("tiny", "default")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(
        "python -m dcd_ext.train",
        "Train a dual-encoder student with dynamic contrastive distillation (DCD) from a "
                    "cross-encoder teacher. With no --data, --teacher or --student it runs the built-in demo: "
                    "a synthetic scene set, a small ViLT teacher trained (or reused from --cache-dir), a DCD "
                    "student and a contrastive-only baseline, evaluated side by side.")

    data = p.add_argument_group("data")
    data.add_argument("--data", help="training data: a Karpathy split JSON (dataset_coco.json, "
                      "dataset_flickr30k.json) or a .csv/.tsv/.jsonl table of (image path, caption) rows")
    data.add_argument("--images", help="image root folder (Karpathy: the folder holding filepath/filename; "
                      "tables: resolves relative paths, default the table's folder)")
    data.add_argument("--train-split", default="train",
                      help="Karpathy split(s) to train on: train (= train + restval), train-only, val, test")
    data.add_argument("--eval-data", help="separate evaluation file (default: the --eval-split of --data)")
    data.add_argument("--eval-split", default="test", help="split evaluated at the end (COCO 5K / Flickr30K 1K test)")
    data.add_argument("--val-split", default="val",
                      help="split evaluated after every epoch for the recall curve ('none' to skip)")
    data.add_argument("--max-eval-captions", type=positive_int, default=5,
                      help="Karpathy files: captions kept per image in evaluation splits (the standard protocol uses 5)")
    data.add_argument("--image-key", help="image column of a table (default: first of image, filepath, ...)")
    data.add_argument("--caption-key", help="caption column of a table (default: first of caption, text, ...)")
    data.add_argument("--workers", type=non_negative_int, default=0, help="data loader worker processes")

    model = p.add_argument_group("models")
    add_teacher_arguments(model)
    model.add_argument("--student", default=None,
                       help="student: 'small' (configurable towers), 'teacher' (towers initialised from the "
                            "teacher's weights), 'fusion' (a shallow cross-encoder: a subset of the teacher's "
                            "joint layers on its frozen encoders, see --fusion-layers), or a saved student folder "
                            "(default: small)")
    model.add_argument("--embed-dim", type=positive_int, help="joint embedding size D "
                       f"(default {RUN_DEFAULTS['embed_dim']})")
    model.add_argument("--image-size", type=positive_int,
                       help=f"small student: input image side (default {RUN_DEFAULTS['image_size']})")
    model.add_argument("--student-width", type=positive_int,
                       help=f"small student: tower width (default {RUN_DEFAULTS['student_width']})")
    model.add_argument("--student-layers", type=positive_int,
                       help=f"small student: text transformer layers (default {RUN_DEFAULTS['student_layers']})")

    loss = p.add_argument_group("loss")
    loss.add_argument("--loss", choices=("dcd", "contrastive"), default="dcd",
                      help="dcd (needs --teacher) or the contrastive-only baseline")
    loss.add_argument("--k", type=positive_int, help=f"hard negatives per anchor (default {RUN_DEFAULTS['k']})")
    loss.add_argument("--alpha", type=unit_float,
                      help=f"weight of distillation vs the hard term (default {RUN_DEFAULTS['alpha']})")
    loss.add_argument("--temperature", type=positive_float, default=1.0, help="distillation temperature T")
    loss.add_argument("--distill-kind", choices=KINDS, default="kl",
                      help="distillation term: KL of softmaxes, or MSE of logits (the authors' code)")
    loss.add_argument("--weighting", choices=WEIGHTINGS, default="dcd",
                      help="per-sample dynamic weights (docs/design.md section 3.3)")
    loss.add_argument("--con-weight", type=float, default=1.0, help="weight lambda of the contrastive term")
    loss.add_argument("--mine-by", choices=("student", "teacher"), default="student",
                      help="student: top-k of the student's similarities; teacher: the teacher ranks a random "
                           "pool per anchor and keeps its top k")
    loss.add_argument("--teacher-pool", type=positive_int,
                      help=f"--mine-by teacher: random pool size per anchor (default {RUN_DEFAULTS['teacher_pool']})")
    loss.add_argument("--queue-size", type=non_negative_int, default=0,
                      help="recent embeddings kept as extra contrastive negatives (0: none)")

    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=positive_int, help=f"epochs (default {RUN_DEFAULTS['epochs']})")
    opt.add_argument("--batch-size", type=positive_int,
                     help="captions per optimiser step, over all processes and micro-batches: each of N torchrun "
                          "processes loads batch-size / N of them and the contrastive term ranks every one against "
                          f"all (default {RUN_DEFAULTS['batch_size']})")
    opt.add_argument("--accum-steps", type=positive_int, default=1,
                     help="micro-batches per step and process: exact gradient accumulation (the loss still spans "
                          "the whole batch; activation memory of one micro-batch)")
    opt.add_argument("--lr", type=positive_float, help=f"peak learning rate of AdamW (default {RUN_DEFAULTS['lr']})")
    opt.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    opt.add_argument("--warmup", type=non_negative_int, help="linear warm-up steps before the cosine decay "
                     "(default: 5%% of all steps)")
    opt.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    add_precision_argument(opt)
    add_device_argument(opt)
    opt.add_argument("--threads", type=non_negative_int, default=0,
                     help="CPU threads for torch (0: torch's default, one per core); 1 is faster on a busy machine")
    opt.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and demo data")

    out = p.add_argument_group("run folder and evaluation")
    out.add_argument("--out", help="run folder (default: runs/<date>-<time>-<mode>)")
    out.add_argument("--resume", help="continue from a checkpoint file or a run folder (its latest checkpoint)")
    out.add_argument("--save-every", type=non_negative_int, default=0,
                     help="steps between mid-epoch checkpoints, for exact resume after a crash (0: epoch ends only)")
    out.add_argument("--keep-checkpoints", type=non_negative_int, default=3,
                     help="epoch checkpoints kept per student (0: all)")
    out.add_argument("--log-every", type=positive_int, default=10, help="steps between metrics.jsonl rows")
    out.add_argument("--rerank-k", type=positive_int,
                     help=f"student candidates the teacher re-ranks per query (default {RUN_DEFAULTS['rerank_k']})")
    out.add_argument("--teacher-eval-max-pairs", type=non_negative_int, default=300_000,
                     help="score all pairs with the teacher only up to this many; beyond it only its time "
                          "per query is estimated from a sample")
    out.add_argument("--eval-batch-size", type=positive_int, default=256, help="batch size of evaluation embedding")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")

    demo = p.add_argument_group("built-in demo")
    demo.add_argument("--demo-size", choices=DEMO_SIZES, default="default",
                      help="demo preset: tiny (seconds, a smoke test; its numbers mean nothing) or default (the full demo)")
    demo.add_argument("--cache-dir", help="where the demo keeps its trained teacher "
                      "(default: $DCD_CACHE or ~/.cache/dcd_ext)")
    demo.add_argument("--retrain-teacher", action="store_true", help="demo: train the teacher even if cached")
    add_fusion_arguments(p)
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.demo = args.data is None and args.teacher is None and args.student is None
    if not args.demo:
        if args.data is None:
            parser.error("--data is required unless running the built-in demo (no --data, --teacher, --student)")
        if args.loss == "dcd" and args.teacher is None:
            parser.error("--loss dcd needs --teacher (or pass --loss contrastive)")
        if args.student == "teacher" and args.teacher is None:
            parser.error("--student teacher needs --teacher")
        for key, value in RUN_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        if args.student is None:
            args.student = "small"
    if args.k is not None and args.teacher_pool is not None and args.mine_by == "teacher" \
            and args.teacher_pool < args.k:
        parser.error(f"--teacher-pool ({args.teacher_pool}) must be at least --k ({args.k})")
    check_fusion_args(parser, args)
    return args
