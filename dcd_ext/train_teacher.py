"""Fine-tune a cross-encoder teacher (ViLT, METER or BLIP) for retrieval.

    python -m dcd_ext.train_teacher --data captions.csv --teacher ./vilt-dir --out ./vilt-ft

The objective is the authors' listwise one: each caption with ``--negatives`` captions of other
images, cross-entropy over the n+1 rank logits. The result is saved to ``--out`` in the format
``load_teacher`` reads (ViLT, BLIP: a Hugging Face directory; METER: ``meter.ckpt`` + tokenizer files).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from .cli import (add_device_argument, add_hidden_alias, add_precision_argument, add_teacher_arguments,
                  check_teacher_argument, load_teacher_from_args, make_parser, positive_int, resolve_device,
                  run_command_line, teacher_kind)
from .data import load_split
from .existing_output import add_overwrite_argument, check_new_folder, replace_folder
from .files import write_text_atomically
from .teachers import finetune_teacher

DEFAULT_LR = {"vilt": 1e-4, "meter": 5e-6, "blip": 1e-5}  # the authors' fine-tuning learning rates


def build_parser():
    parser = make_parser("python -m dcd_ext.train_teacher", __doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="CSV, TSV or JSONL table of image path + caption (rows of "
                        "--split when it has a split column, else every row), or a Karpathy split JSON (with --images)")
    parser.add_argument("--images", default=None,
                        help="folder relative image paths start from (default: the table's folder); Karpathy: the "
                             "image root")
    parser.add_argument("--split", default="train",
                        help="the split fine-tuned on: rows of a table's split column, or a Karpathy split (train = "
                             "train + restval); test rows are never trained on by default")
    add_hidden_alias(parser, "--image-root", "images")
    add_teacher_arguments(parser, required=True, purpose="teacher to fine-tune", batch_size=False)
    parser.add_argument("--out", required=True, help="directory to save the fine-tuned teacher to (one that already "
                                                     "holds a teacher is refused unless --overwrite)")
    add_overwrite_argument(parser, "replace the teacher an existing --out holds (once the new one is trained)")
    parser.add_argument("--epochs", type=positive_int, default=1)
    parser.add_argument("--batch-size", type=positive_int, default=8, help="anchor captions per step")
    parser.add_argument("--negatives", type=positive_int, default=15, help="sampled negative captions per anchor")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default: ViLT 1e-4, METER 5e-6, BLIP 1e-5)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of steps with linear warm-up")
    parser.add_argument("--seed", type=int, default=0)
    add_device_argument(parser)
    add_precision_argument(parser, choices=("fp32", "bf16"), what="teacher forward")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def is_teacher_output(path: str) -> bool:
    """A folder --overwrite may replace: a teacher (a fine-tuned one holds finetune_log.json)."""
    if os.path.isfile(os.path.join(path, "finetune_log.json")):
        return True
    try:
        teacher_kind(path)
    except ValueError:
        return False
    return True


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_teacher_argument(args)
    kind = teacher_kind(args.teacher, args.teacher_kind)
    replaces = check_new_folder(args.out, args.overwrite, "teacher folder", is_teacher_output)
    table = load_split(args.data, args.images, args.split, all_rows_without_split_column=True)
    images = table.load_images(range(table.num_images))
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)  # dropout
    teacher = load_teacher_from_args(args, device, bf16=args.precision == "bf16")
    lr = args.lr if args.lr is not None else DEFAULT_LR[kind]
    losses = finetune_teacher(
        teacher, images, table.captions, table.caption_image, epochs=args.epochs, batch_size=args.batch_size,
        n_negatives=args.negatives, lr=lr, weight_decay=args.weight_decay, warmup=args.warmup,
        seed=args.seed, progress=not args.no_progress,
    )
    if replaces:
        replace_folder(args.out, teacher.save)
    else:
        teacher.save(args.out)
    out = Path(args.out)
    window = max(1, len(losses) // 10)
    summary = {
        "teacher_kind": kind, "out": str(out), "data": table.name, "steps": len(losses),
        "images": len(images), "captions": len(table.captions),
        "first_loss": sum(losses[:window]) / window, "last_loss": sum(losses[-window:]) / window,
    }
    write_text_atomically(str(out / "finetune_log.json"),
                          json.dumps({**summary, "losses": losses, "args": vars(args)}, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main))
