"""``python -m dcd_ext.evaluate``: Recall@1/5/10, RSUM and ms per query of a trained student (alone and with
the teacher re-ranking its top candidates), of a fusion student (alone and re-ranking the student's top k:
the cascade) and of the teacher, on one split.

    python -m dcd_ext.evaluate --student RUN/student_dcd --data dataset_coco.json --images ROOT
    python -m dcd_ext.evaluate --student RUN --data dataset_coco.json --images ROOT   # the run's best student

The measurements themselves live in :mod:`dcd_ext.retrieval.evaluation`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Optional, Sequence

from .cli import (add_device_argument, add_teacher_arguments, check_folder_exists, check_teacher_argument,
                  load_teacher_from_args, make_parser, non_negative_int, positive_int, resolve_device,
                  run_command_line)
from .retrieval.evaluation import evaluate_student, evaluate_student_and_rerank, evaluate_teacher
from .retrieval.metrics import format_table

__all__ = ["evaluate_student", "evaluate_student_and_rerank", "evaluate_teacher", "format_table", "main"]


def build_parser():
    p = make_parser("python -m dcd_ext.evaluate", __doc__.split("\n\n")[0])
    p.add_argument("--student", help="a saved student folder (a run's student_* folder), or a run folder: its "
                                     "validation-best student if it kept one, else its final student (see --pick)")
    p.add_argument("--pick", choices=("best", "last"),
                   help="which student of a run: best (RUN/student_<loss>_best, the best validation RSUM) or last "
                        "(the final one); default: best when the run kept one. With a student folder, best takes "
                        "its <folder>_best sibling")
    p.add_argument("--fusion", help="saved fusion student folder (a shallow cross-encoder, --student fusion): it "
                   "scores every pair, and re-ranks the --student's top k (the cascade)")
    p.add_argument("--cascade-k", default="10,50",
                   help="depths at which the --fusion student re-ranks the --student's top k (comma-separated)")
    add_teacher_arguments(p)
    p.add_argument("--data", required=True, help="Karpathy split JSON or .csv/.tsv/.jsonl pair table")
    p.add_argument("--images", help="image root folder")
    p.add_argument("--split", default="test", help="split to evaluate (a table without a split column: all rows)")
    p.add_argument("--max-captions", type=positive_int, default=5, help="captions kept per image (Karpathy files)")
    p.add_argument("--rerank-k", type=positive_int, default=16, help="student candidates the teacher re-ranks per query")
    p.add_argument("--teacher-eval-max-pairs", type=non_negative_int, default=300_000,
                   help="all-pairs teacher scoring up to this many pairs; beyond, its time is estimated")
    p.add_argument("--batch-size", type=positive_int, default=256, help="embedding batch size")
    add_device_argument(p)
    p.add_argument("--out", help="write the results JSON here")
    return p


def best_note(folder: str) -> str:
    path = os.path.join(folder, "validation.json")
    if not os.path.isfile(path):
        return "validation-best"
    with open(path) as f:
        info = json.load(f)
    return f"validation-best: epoch {info['epoch']}, RSUM {info['rsum']:.1f}"


def pick_student(path: str, pick: Optional[str]) -> tuple[str, str]:
    """(student folder, what it is) for --student PATH [--pick best|last]: a student folder, or a run folder's
    validation-best (``student_<loss>_best``) or final student."""
    from .students import is_student_folder

    path = os.path.normpath(path)
    if is_student_folder(path):
        if pick != "best":
            return path, "the given folder"
        best = path + "_best"
        if not is_student_folder(best):
            raise FileNotFoundError(f"student: --pick best: no validation-best student {best} next to {path} "
                                    "(the run had no validation split)")
        return best, best_note(best)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"student: no such student or run folder: {path}")
    finals = sorted(n for n in os.listdir(path) if n.startswith("student_") and not n.endswith("_best")
                    and is_student_folder(os.path.join(path, n)))
    if not finals:
        raise FileNotFoundError(f"student: {path} is neither a student folder (config.json + model.safetensors) nor "
                                "a run folder holding a finished student_* folder")
    if len(finals) > 1:
        raise ValueError(f"student: the run {path} holds {len(finals)} students ({', '.join(finals)}); pass one of "
                         "them (with --pick best for its validation-best)")
    final = os.path.join(path, finals[0])
    best = final + "_best"
    if pick == "last" or (pick is None and not is_student_folder(best)):
        return final, "the final one"
    if not is_student_folder(best):
        raise FileNotFoundError(f"student: --pick best: the run {path} kept no validation-best student "
                                "(it had no validation split)")
    return best, best_note(best)


def evaluate_fusion_and_cascade(args, split, student, device) -> dict:
    """``fusion``: the fusion student scoring every pair; ``cascade_top{k}``: the dual-encoder --student
    retrieving and the fusion student re-ranking its top k (dcd_ext.retrieval.cascade)."""
    from .retrieval.cascade import evaluate_cascade, evaluate_cross_encoder, is_cross_encoder, parse_depths
    from .students import load_student

    fusion = load_student(args.fusion, device)
    if not is_cross_encoder(fusion):
        build_parser().error(f"--fusion {args.fusion} is not a fusion student folder (train one with --student fusion)")
    results = {}
    results["fusion"], estimated = evaluate_cross_encoder(fusion, split, args.teacher_eval_max_pairs)
    if estimated:
        print(f"fusion: {split.num_images} x {split.num_captions} pairs exceed --teacher-eval-max-pairs; its "
              "ms/query is estimated from a sample and its recalls are not computed", file=sys.stderr)
    if student is not None:
        results.update(evaluate_cascade(student, fusion, split, parse_depths(args.cascade_k), args.batch_size, device))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .data import load_split
    from .files import write_text_atomically
    from .students import load_student
    from .text_coverage import coverage_warnings

    args = build_parser().parse_args(argv)
    if args.student is None and args.teacher is None and args.fusion is None:
        build_parser().error("give --student, --teacher, --fusion or several")
    if args.pick and not args.student:
        build_parser().error("--pick needs --student")
    student_dir = None
    if args.student:
        student_dir, what = pick_student(args.student, args.pick)
        print(f"student: {student_dir} ({what})")
    split = load_split(args.data, args.images, args.split, args.max_captions, all_rows_without_split_column=True)
    check_teacher_argument(args)
    if args.fusion:
        check_folder_exists(args.fusion, "fusion")
    device = resolve_device(args.device)
    teacher = load_teacher_from_args(args, device) if args.teacher else None
    results: dict[str, dict] = {}
    student = None
    if student_dir:
        student = load_student(student_dir, device)
        if getattr(student, "is_cross_encoder", False):
            build_parser().error(f"--student {args.student} is a fusion student: pass it as --fusion")
        for message in coverage_warnings(split.captions, student, teacher):
            print(f"warning: {message}", file=sys.stderr)
        if teacher is None:
            results["student"] = evaluate_student(student, split, args.batch_size, device)
        else:
            results["student"], results["student_rerank"] = evaluate_student_and_rerank(
                student, teacher, split, args.rerank_k, args.batch_size, device)
    if args.fusion:
        results.update(evaluate_fusion_and_cascade(args, split, student, device))
    if teacher is not None:
        if not student_dir:
            for message in coverage_warnings(split.captions, None, teacher):
                print(f"warning: {message}", file=sys.stderr)
        results["teacher"], estimated = evaluate_teacher(teacher, split, args.teacher_eval_max_pairs)
        if estimated:
            print(f"teacher: {split.num_images} x {split.num_captions} pairs exceed --teacher-eval-max-pairs; "
                  "its ms/query is estimated from a sample and its recalls are not computed", file=sys.stderr)
    print(f"{split.name}: {split.num_images} images, {split.num_captions} captions, device {device}")
    print(format_table(results))
    if args.out:
        write_text_atomically(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main))
