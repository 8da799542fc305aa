"""Search a gallery index with text or image queries; optionally let a cross-encoder teacher re-rank the top.

    python -m dcd_ext.search --index photos.index.safetensors --text "a red square left of a blue circle" --k 5
    python -m dcd_ext.search --index captions.index.safetensors --image query.jpg --json -
    python -m dcd_ext.search --index photos.index.safetensors --queries queries.txt \
        --teacher-kind vilt --teacher ./vilt --rerank-depth 16

Text queries search an image index and image queries a text index. The student (default: the one that
built the index) embeds the queries and ``ops.similarity_topk`` finds the top k; with ``--teacher`` the
teacher scores each query against the student's top ``--rerank-depth`` candidates and re-orders them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import torch
from torch import Tensor

from .index import embed_items, open_image
from .serving_io import GalleryIndex, load_index

QUERY_FITS_INDEX = {"text": "image", "image": "text"}  # query modality -> the gallery it searches


def read_query_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"queries: query file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def check_index_fits(index: GalleryIndex, index_path: str, query_modality: str) -> None:
    wanted = QUERY_FITS_INDEX[query_modality]
    if index.modality != wanted:
        flag = "--text/--queries" if query_modality == "text" else "--image"
        raise ValueError(f"index: {index_path} holds {index.modality} embeddings, but {query_modality} queries "
                         f"({flag}) search a {wanted} index")


def check_student_fits(index: GalleryIndex, index_path: str, student, student_dir: str) -> None:
    width = student.config.embed_dim
    if width != index.embed_dim:
        raise ValueError(f"student: {student_dir} embeds to width {width}, but the index {index_path} holds "
                         f"embeddings of width {index.embed_dim} (built by {index.student or 'an unknown student'})")


def student_candidates(index: GalleryIndex, query_embeddings: Tensor, depth: int) -> tuple[Tensor, Tensor]:
    """(scores [Q, depth], gallery positions [Q, depth]) best first; positions -1 past the gallery."""
    from . import ops

    gallery = index.embeddings.to(query_embeddings.device)
    return ops.similarity_topk(query_embeddings, gallery, depth)


def teacher_scores(teacher, index: GalleryIndex, queries: list[str], query_modality: str, positions: Tensor) -> Tensor:
    """The teacher's score [Q, depth] of each query with each candidate (-inf where the position is -1)."""
    from .retrieval import score_unique_pairs

    q = torch.arange(positions.shape[0]).view(-1, 1).expand_as(positions)
    valid = positions >= 0
    # pairs are (image index, text index) into the image and text lists handed to score_pairs
    used = torch.unique(positions[valid])
    local = torch.full((len(index),), -1, dtype=torch.int64)
    local[used] = torch.arange(used.numel())
    cand = torch.where(valid, local[positions.clamp_min(0)], positions)
    items = [index.sources[int(p)] for p in used]
    if query_modality == "text":
        images, texts = [open_image(p) for p in items], queries
        pairs = torch.stack([cand, torch.where(valid, q, -1)], dim=2)
    else:
        images, texts = [open_image(p) for p in queries], items
        pairs = torch.stack([torch.where(valid, q, -1), cand], dim=2)
    scores = score_unique_pairs(lambda p: teacher.score_pairs(images, texts, p), pairs.reshape(-1, 2))
    return scores.cpu().view(positions.shape)


def search_index(index: GalleryIndex, student, queries: list[str], query_modality: str, k: int = 10,
                 teacher=None, rerank_depth: int = 0, device="cpu") -> list[list[dict]]:
    """For each query, its top ``k`` gallery items as dicts (rank, id, name, score, student_score, teacher_score).

    ``score`` is the teacher's score for the re-ranked head and the student's otherwise.
    """
    from .retrieval import rerank

    if k < 1:
        raise ValueError(f"k: must be at least 1; got {k}")
    depth = rerank_depth if teacher is not None else 0
    query_embeddings = embed_items(student, queries, query_modality, device=device, progress=False)
    student_score, positions = student_candidates(index, query_embeddings.to(device), max(k, depth))
    student_score, positions = student_score.cpu(), positions.cpu()
    teacher_score = None
    if depth > 0:
        head = teacher_scores(teacher, index, queries, query_modality, positions[:, :depth])
        # re-order column numbers so positions, student scores and teacher scores move together
        order = rerank(torch.arange(positions.shape[1]).expand_as(positions), head, depth)
        positions, student_score = positions.gather(1, order), student_score.gather(1, order)
        teacher_score = head.gather(1, order[:, :depth])
    results = []
    for qi in range(len(queries)):
        hits = []
        for rank in range(k):
            pos = int(positions[qi, rank])
            if pos < 0:
                break
            t = None if teacher_score is None or rank >= depth else float(teacher_score[qi, rank])
            s = float(student_score[qi, rank])
            hits.append({"rank": rank + 1, "id": int(index.ids[pos]), "name": index.names[pos],
                         "score": t if t is not None else s, "student_score": s, "teacher_score": t})
        results.append(hits)
    return results


def format_results(queries: list[str], results: list[list[dict]]) -> str:
    lines = []
    for query, hits in zip(queries, results):
        lines.append(f"query: {query}")
        reranked = any(h["teacher_score"] is not None for h in hits)
        lines.append("  rank        id    student" + ("    teacher" if reranked else "") + "  name")
        for h in hits:
            teacher = "" if not reranked else (f" {h['teacher_score']:10.4f}" if h["teacher_score"] is not None
                                               else " " * 11)
            lines.append(f"  {h['rank']:4d} {h['id']:9d} {h['student_score']:10.4f}{teacher}  {h['name']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dcd_ext.search", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--index", required=True, help="index file written by python -m dcd_ext.index")
    p.add_argument("--student", help="student folder (default: the one recorded in the index)")
    p.add_argument("--text", action="append", default=[], help="a text query (repeatable); searches an image index")
    p.add_argument("--queries", help="a file of text queries, one per line")
    p.add_argument("--image", action="append", default=[], help="an image file as query (repeatable); "
                                                                 "searches a text index")
    p.add_argument("--k", type=int, default=10, help="results per query")
    p.add_argument("--teacher", help="cross-encoder teacher for re-ranking: a ViLT folder or a METER checkpoint")
    p.add_argument("--teacher-kind", choices=("auto", "vilt", "meter"), default="auto",
                   help="teacher type (auto: a folder is ViLT, a file METER)")
    p.add_argument("--tokenizer", help="METER only: local RoBERTa folder (tokenizer files; its config.json, "
                                        "if any, sets the text encoder's heads etc.)")
    p.add_argument("--rerank-depth", type=int, help="student candidates the teacher re-orders per query "
                                                     "(default: k when --teacher is given)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--json", nargs="?", const="-", metavar="OUT",
                   help="write the results as JSON to OUT (no value or '-': standard output, instead of the table)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .students import load_student
    from .train.components import resolve_device, teacher_kind

    args = build_parser().parse_args(argv)
    texts = list(args.text) + (read_query_file(args.queries) if args.queries else [])
    if bool(texts) == bool(args.image):
        raise ValueError("queries: give text queries (--text / --queries) or image queries (--image), not both or neither")
    modality, queries = ("text", texts) if texts else ("image", list(args.image))
    for path in queries if modality == "image" else ():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image: query image not found: {path}")
    if args.rerank_depth is not None and not args.teacher:
        raise ValueError("rerank_depth: --rerank-depth needs --teacher")
    depth = args.k if args.rerank_depth is None else args.rerank_depth
    if args.teacher and depth < 1:
        raise ValueError(f"rerank_depth: must be at least 1; got {depth}")

    index = load_index(args.index)
    check_index_fits(index, args.index, modality)
    student_dir = args.student or index.student
    if not student_dir:
        raise ValueError(f"student: the index {args.index} records no student; give --student")
    device = resolve_device(args.device)
    student = load_student(student_dir, device)
    check_student_fits(index, args.index, student, student_dir)
    teacher = None
    if args.teacher:
        from .teachers import load_teacher
        teacher = load_teacher(teacher_kind(args.teacher, args.teacher_kind), args.teacher,
                               tokenizer=args.tokenizer, device=device)
    results = search_index(index, student, queries, modality, args.k, teacher, depth if teacher else 0, device)
    if args.json is None:
        print(format_results(queries, results))
        return 0
    doc = {"index": os.path.abspath(args.index), "student": os.path.abspath(student_dir), "query_modality": modality,
           "k": args.k, "rerank_depth": depth if teacher else 0,
           "queries": [{"query": q, "results": r} for q, r in zip(queries, results)]}
    text = json.dumps(doc, indent=1)
    if args.json == "-":
        print(text)
    else:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
