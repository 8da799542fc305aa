"""Fine-tune a cross-encoder teacher (ViLT or METER) for retrieval.

    python -m dcd_ext.train_teacher --data captions.csv --teacher-kind vilt --teacher ./vilt-dir --out ./vilt-ft

The objective is the authors' listwise one: each caption with ``--negatives`` captions of other
images, cross-entropy over the n+1 rank logits. The result is saved to ``--out`` in the format
``load_teacher`` reads (ViLT: a Hugging Face directory; METER: ``meter.ckpt`` + tokenizer files).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .teachers import TEACHER_KINDS, finetune_teacher, load_teacher
from .data.pairs_file import load_pairs_file

DEFAULT_LR = {"vilt": 1e-4, "meter": 5e-6}  # the authors' fine-tuning learning rates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dcd_ext.train_teacher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="CSV or JSONL table of image path + caption")
    parser.add_argument("--image-root", default=None, help="directory relative image paths start from (default: the table's)")
    parser.add_argument("--teacher-kind", required=True, choices=TEACHER_KINDS)
    parser.add_argument("--teacher", required=True, help="ViLT Hugging Face directory or METER checkpoint")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory (METER: RoBERTa; its config.json, if any, sets the text "
                             "encoder's heads etc.; default: next to the checkpoint)")
    parser.add_argument("--out", required=True, help="directory to save the fine-tuned teacher to")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8, help="anchor captions per step")
    parser.add_argument("--negatives", type=int, default=15, help="sampled negative captions per anchor")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: ViLT 1e-4, METER 5e-6)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of steps with linear warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("epochs", "batch_size", "negatives"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)  # dropout

    table = load_pairs_file(args.data, args.image_root)
    images = table.load_images(range(table.num_images))
    teacher = load_teacher(args.teacher_kind, args.teacher, tokenizer=args.tokenizer, device=device, bf16=args.bf16)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.teacher_kind]
    losses = finetune_teacher(
        teacher, images, table.captions, table.caption_image, epochs=args.epochs, batch_size=args.batch_size,
        n_negatives=args.negatives, lr=lr, weight_decay=args.weight_decay, warmup=args.warmup,
        seed=args.seed, progress=not args.no_progress,
    )
    out = teacher.save(args.out)
    window = max(1, len(losses) // 10)
    summary = {
        "teacher_kind": args.teacher_kind, "out": str(out), "steps": len(losses),
        "images": len(images), "captions": len(table.captions),
        "first_loss": sum(losses[:window]) / window, "last_loss": sum(losses[-window:]) / window,
    }
    (out / "finetune_log.json").write_text(json.dumps({**summary, "losses": losses, "args": vars(args)}, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
