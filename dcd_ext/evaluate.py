"""Retrieval evaluation: Recall@1/5/10 both ways, RSUM and milliseconds per query.

Three ways to retrieve are measured on the same split and machine:
- ``student``: embed every image and caption once, then one ``similarity_topk`` each way;
- ``student + teacher re-ranking``: the same, then the teacher re-orders each query's top ``rerank_k``;
- ``teacher``: the cross-encoder scores every (image, caption) pair (skipped beyond ``max_pairs``, where
  only its time per query is estimated from a sample of pairs).

Every image and every caption is a query once (images query captions, captions query images), so
``ms_per_query`` is the wall time of all the work (embedding included) divided by images + captions.

Command line: ``python -m dcd_ext.evaluate --student RUN/student_dcd --data dataset_coco.json --images ROOT``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

import torch

from .data.retrieval_set import RetrievalSet
from .retrieval import (RECALL_KS, embed_images, embed_texts, empty_metrics, rankings_from_scores, recall_at_k,
                        score_split_pairs, search, teacher_rerank, teacher_score_matrix)

DEPTH = max(RECALL_KS)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def student_rankings(student, split: RetrievalSet, depth: int = DEPTH, batch_size: int = 256,
                     device="cpu") -> tuple[torch.Tensor, torch.Tensor, float]:
    """(i2t, t2i, seconds): top-``depth`` rankings of a student and the wall time to produce them."""
    was_training = student.training
    student.eval()
    # one untimed pass first, so one-off start-up costs (kernel selection, allocator growth) are not timed
    student.encode_image(student.preprocess_images(split.load_images([0])).to(device))
    student.encode_text(*(t.to(device) for t in student.tokenizer(split.captions[:1])))
    synchronize(device)
    start = time.perf_counter()
    img = embed_images(student, split, batch_size, device)
    txt = embed_texts(student, split, batch_size, device)
    i2t, t2i = search(img, txt, depth), search(txt, img, depth)
    synchronize(device)
    seconds = time.perf_counter() - start
    student.train(was_training)
    return i2t.cpu(), t2i.cpu(), seconds


def with_time(metrics: dict, seconds: float, split: RetrievalSet) -> dict:
    return {**metrics, "ms_per_query": 1000.0 * seconds / (split.num_images + split.num_captions)}


def evaluate_student(student, split: RetrievalSet, batch_size: int = 256, device="cpu") -> dict:
    i2t, t2i, seconds = student_rankings(student, split, DEPTH, batch_size, device)
    return with_time(recall_at_k(i2t, t2i, split.caption_image), seconds, split)


def evaluate_student_and_rerank(student, teacher, split: RetrievalSet, rerank_k: int = 16, batch_size: int = 256,
                                device="cpu") -> tuple[dict, dict]:
    """Metrics of the student alone and with the teacher re-ranking its top ``rerank_k`` per query."""
    depth = max(DEPTH, rerank_k)
    i2t, t2i, seconds = student_rankings(student, split, depth, batch_size, device)
    alone = with_time(recall_at_k(i2t, t2i, split.caption_image), seconds, split)
    start = time.perf_counter()
    i2t_r, t2i_r = teacher_rerank(teacher, split, i2t, t2i, rerank_k)
    rerank_seconds = time.perf_counter() - start
    reranked = with_time(recall_at_k(i2t_r, t2i_r, split.caption_image), seconds + rerank_seconds, split)
    return alone, reranked


def evaluate_teacher(teacher, split: RetrievalSet, max_pairs: int = 300_000, sample_pairs: int = 2048,
                     seed: int = 0) -> tuple[dict, bool]:
    """(metrics, estimated): all-pairs teacher retrieval, or beyond ``max_pairs`` recalls of None and the time
    per query extrapolated from ``sample_pairs`` random pairs."""
    n, m = split.num_images, split.num_captions
    if n * m <= max_pairs:
        start = time.perf_counter()
        scores = teacher_score_matrix(teacher, split)
        i2t, t2i = rankings_from_scores(scores, DEPTH)
        seconds = time.perf_counter() - start
        return with_time(recall_at_k(i2t, t2i, split.caption_image), seconds, split), False
    g = torch.Generator().manual_seed(seed)
    count = min(sample_pairs, n * m)
    pairs = torch.stack([torch.randint(n, (count,), generator=g), torch.randint(m, (count,), generator=g)], dim=1)
    start = time.perf_counter()
    score_split_pairs(teacher, split, pairs)
    per_pair = (time.perf_counter() - start) / count
    return with_time(empty_metrics(), per_pair * n * m, split), True


def format_table(results: dict[str, dict]) -> str:
    """A fixed-width table of results entries (recalls in percent)."""
    head = f"{'model':<22}{'i2t R@1':>8}{'R@5':>7}{'R@10':>7}{'t2i R@1':>9}{'R@5':>7}{'R@10':>7}{'RSUM':>8}" \
           f"{'ms/query':>11}"
    lines = [head, "-" * len(head)]

    def cell(value, width, digits=1):
        return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.{digits}f}"

    for name, r in results.items():
        lines.append(f"{name:<22}{cell(r['i2t_r1'], 8)}{cell(r['i2t_r5'], 7)}{cell(r['i2t_r10'], 7)}"
                     f"{cell(r['t2i_r1'], 9)}{cell(r['t2i_r5'], 7)}{cell(r['t2i_r10'], 7)}{cell(r['rsum'], 8)}"
                     f"{cell(r['ms_per_query'], 11, 3)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from .train.params import HelpFormatter

    p = argparse.ArgumentParser(prog="python -m dcd_ext.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--student", help="saved student folder (a run's student_* folder)")
    p.add_argument("--teacher", help="teacher: a local ViLT folder or a METER checkpoint file")
    p.add_argument("--teacher-kind", choices=("auto", "vilt", "meter"), default="auto", help="teacher type")
    p.add_argument("--teacher-tokenizer",
                   help="tokenizer folder (METER: RoBERTa; its config.json, if any, sets the text encoder's "
                        "heads etc.; default: next to the teacher)")
    p.add_argument("--teacher-batch-size", type=int, default=256, help="pairs per teacher forward pass")
    p.add_argument("--data", required=True, help="Karpathy split JSON or .csv/.tsv/.jsonl pair table")
    p.add_argument("--images", help="image root folder")
    p.add_argument("--split", default="test", help="split to evaluate (a table without a split column: all rows)")
    p.add_argument("--max-captions", type=int, default=5, help="captions kept per image (Karpathy files)")
    p.add_argument("--rerank-k", type=int, default=16, help="student candidates the teacher re-ranks per query")
    p.add_argument("--teacher-eval-max-pairs", type=int, default=300_000,
                   help="all-pairs teacher scoring up to this many pairs; beyond, its time is estimated")
    p.add_argument("--batch-size", type=int, default=256, help="embedding batch size")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out", help="write the results JSON here")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .data import load_split
    from .students import load_student
    from .train.components import load_teacher_from_args, resolve_device

    args = build_parser().parse_args(argv)
    if args.student is None and args.teacher is None:
        build_parser().error("give --student, --teacher or both")
    device = resolve_device(args.device)
    split = load_split(args.data, args.images, args.split, args.max_captions, all_rows_without_split_column=True)
    teacher = load_teacher_from_args(args, device) if args.teacher else None
    results: dict[str, dict] = {}
    if args.student:
        student = load_student(args.student, device)
        if teacher is None:
            results["student"] = evaluate_student(student, split, args.batch_size, device)
        else:
            results["student"], results["student_rerank"] = evaluate_student_and_rerank(
                student, teacher, split, args.rerank_k, args.batch_size, device)
    if teacher is not None:
        results["teacher"], estimated = evaluate_teacher(teacher, split, args.teacher_eval_max_pairs)
        if estimated:
            print(f"teacher: {split.num_images} x {split.num_captions} pairs exceed --teacher-eval-max-pairs; "
                  "its ms/query is estimated from a sample and its recalls are not computed", file=sys.stderr)
    print(f"{split.name}: {split.num_images} images, {split.num_captions} captions, device {device}")
    print(format_table(results))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
