"""Command-line flags of ``python -m dcd_ext.train``.

Flags whose default is None get a value that depends on the mode: the built-in demo has its own preset
per ``--demo-size``; a run on your own data uses :data:`RUN_DEFAULTS`.

``--resume RUN`` takes every setting from the run folder's config.json: flags given with it may change only
:data:`RESUMABLE` settings (where and how fast the run goes, how often it saves and logs, how long it
trains); any other flag must repeat the saved value or the resume is refused before anything is written.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, Optional, Sequence

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
                    "a synthetic scene set, the small ViLT teacher shipped with the package, a DCD "
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
    data.add_argument("--skip-bad-images", action="store_true",
                      help="images that cannot be read (checked before training) are left out with their captions and "
                           "listed in RUN/skipped_images.txt; without this flag they stop the run before it starts")

    model = p.add_argument_group("models")
    add_teacher_arguments(model)
    model.add_argument("--student", default=None,
                       help="student: 'small' (configurable towers), 'teacher' (towers initialised from the "
                            "teacher's weights), 'fusion' (a shallow cross-encoder: a subset of the teacher's "
                            "joint layers on its frozen encoders, see --fusion-layers), a saved student folder, a "
                            "transformers CLIP or SigLIP folder, or open_clip:ARCH with --student-weights "
                            "(default: small; docs/own_models.md)")
    model.add_argument("--student-weights", metavar="FILE",
                       help="--student open_clip:ARCH: the model's local checkpoint file")
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
    out.add_argument("--out", help="run folder (default: runs/<date>-<time>-<mode>); a folder that already holds a run "
                                   "is refused (continue it with --resume, or replace it with --overwrite)")
    out.add_argument("--overwrite", action="store_true",
                     help="--out holds an earlier run: delete it when this run starts (not with --resume)")
    out.add_argument("--resume", help="continue a run folder (its latest checkpoint) or one of its checkpoint files, "
                                      "with the settings saved in its config.json; only --device, --threads, "
                                      "--workers, --epochs, --save-every, --keep-checkpoints, --log-every, "
                                      "--early-stop, --eval-batch-size, --teacher-batch-size, "
                                      "--teacher-eval-max-pairs, --images, --cache-dir and --no-progress may change")
    out.add_argument("--save-every", type=non_negative_int, default=0,
                     help="steps between mid-epoch checkpoints, for exact resume after a crash (0: epoch ends only)")
    out.add_argument("--keep-checkpoints", type=non_negative_int, default=3,
                     help="epoch checkpoints kept per student (0: all)")
    out.add_argument("--log-every", type=positive_int, default=10,
                     help="steps between metrics.jsonl rows; each row holds the means over those steps")
    out.add_argument("--early-stop", type=non_negative_int, default=0,
                     help="stop once the validation RSUM has not improved for this many epochs (0: never); the "
                          "best student is kept in RUN/student_<loss>_best either way")
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
    demo.add_argument("--cache-dir", help="where the demo keeps a teacher it trains (--retrain-teacher, the tiny preset) "
                      "(default: $DCD_CACHE or ~/.cache/dcd_ext)")
    demo.add_argument("--retrain-teacher", action="store_true", help="demo: train the teacher (into --cache-dir) instead of using the shipped or cached one")
    add_fusion_arguments(p)
    return p


# settings a resumed run may change: where and how fast it runs, how often it saves and logs, how long it trains
RESUMABLE = ("device", "threads", "workers", "epochs", "save_every", "keep_checkpoints", "log_every", "early_stop",
             "eval_batch_size", "teacher_batch_size", "teacher_eval_max_pairs", "images", "cache_dir", "no_progress")
# flags naming files: compared and restored as absolute paths (relative ones against the run's working folder)
PATH_SETTINGS = ("data", "images", "eval_data", "teacher", "teacher_tokenizer", "cache_dir", "student")
NOT_RESTORED = ("resume", "resume_checkpoint", "demo", "out", "overwrite", "resumed_overrides")


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def explicit_flags(argv: Optional[Sequence[str]]) -> dict[str, Any]:
    """The settings given on the command line (whatever their value), as parsed values by destination."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


STUDENT_WORDS = ("small", "teacher", "fusion")  # --student values that are not paths (nor open_clip:ARCH)


def absolute(dest: str, value: Any, base: str) -> Any:
    if dest not in PATH_SETTINGS or not isinstance(value, str):
        return value
    if dest == "student" and (value in STUDENT_WORDS or value.startswith("open_clip:")):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def resume_target(resume: str) -> tuple[str, Optional[str]]:
    """(run folder, checkpoint file or None) for --resume given a run folder or a checkpoint file."""
    if os.path.isdir(resume):
        folder, checkpoint = resume, None
    elif os.path.isfile(resume):
        # RUN/checkpoints/<name>/<file>.safetensors
        folder, checkpoint = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(resume)))), resume
    else:
        raise FileNotFoundError(f"resume: no such run folder or checkpoint file: {resume}")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"resume: {folder} is not a run folder (no config.json)"
                                + (f"; {resume} is not in RUN/checkpoints/<student>/" if checkpoint else ""))
    return folder, checkpoint


def saved_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"resume: {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(config, dict) or config.get("mode") not in ("train", "demo") \
            or not isinstance(config.get("args"), dict):
        raise ValueError(f"resume: {path} is not the configuration of a python -m dcd_ext.train run")
    return config


def as_saved(value):
    """A value as config.json stores it (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


def resumed_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], resume: str) -> argparse.Namespace:
    """The saved settings of the run being resumed, with the allowed explicit flags applied; a flag that would
    change any other setting is refused (nothing is written before this check)."""
    folder, checkpoint = resume_target(resume)
    config = saved_config(folder)
    base = config.get("cwd") or os.getcwd()
    if config["mode"] == "demo" and checkpoint:
        raise ValueError("resume: the demo resumes from its run folder, not from one checkpoint file")
    args = parser.parse_args([])
    for dest, value in config["args"].items():
        if dest in vars(args) and dest not in NOT_RESTORED:
            setattr(args, dest, absolute(dest, value, base))
    given = {k: v for k, v in explicit_flags(argv).items() if k != "resume"}
    refused, overrides = [], {}
    for dest, value in given.items():
        if dest == "out":
            if os.path.realpath(value) != os.path.realpath(folder):
                refused.append(f"--out {value} (a resumed run continues in its own folder {folder})")
            continue
        saved = getattr(args, dest)
        if as_saved(absolute(dest, value, os.getcwd())) == as_saved(saved):  # config.json holds lists, not tuples
            continue
        if dest in RESUMABLE:
            overrides[dest] = value
        else:
            refused.append(f"{flag_name(dest)} {value} (the run used {saved})")
    if refused:
        raise ValueError(f"resume: {folder} is resumed with the settings in its config.json; these flags would change "
                         f"them: {'; '.join(refused)}. A resume may change only "
                         + ", ".join(flag_name(d) for d in RESUMABLE) + "; start a new run (--out) to change others")
    for dest, value in overrides.items():
        setattr(args, dest, value)
    args.resume, args.resume_checkpoint, args.out = resume, checkpoint, folder
    args.demo = config["mode"] == "demo"
    args.resumed_overrides = overrides
    return args


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--overwrite starts a new run over an old one; --resume continues a run: pass one of them")
    if args.resume:
        args = resumed_args(parser, argv, args.resume)
    else:
        args.resume_checkpoint, args.resumed_overrides = None, {}
        args.demo = args.data is None and args.teacher is None and args.student is None
    if not args.demo and not args.resume:
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
    if args.early_stop and args.val_split == "none":
        parser.error("--early-stop needs a validation split (--val-split)")
    check_fusion_args(parser, args)
    return args
