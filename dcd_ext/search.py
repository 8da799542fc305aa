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

import json
import os
import sys
from typing import Optional, Sequence

from .cli import (add_device_argument, add_teacher_arguments, check_folder_exists, check_teacher_argument,
                  load_teacher_from_args, make_parser, resolve_device, run_command_line)
from .files import write_text_atomically
from .serving.index_file import load_index
from .serving.shards import merge_indexes
from .serving.query import (check_index_fits, check_queries, check_student_fits, format_results, read_query_file,
                            search_index)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def build_parser():
    p = make_parser("python -m dcd_ext.search", __doc__.split("\n\n")[0])
    p.add_argument("--index", required=True, action="append",
                   help="index file written by python -m dcd_ext.index; repeat it to search the shards of one "
                        "gallery (built with distinct --id-offset) together")
    p.add_argument("--student", help="student folder (default: the one recorded in the index)")
    p.add_argument("--allow-student-mismatch", action="store_true",
                   help="search even if the student is not the one that built the index (its fingerprint of "
                        "configuration and weights differs); refused otherwise, since the scores would be meaningless")
    p.add_argument("--text", action="append", default=[], help="a text query (repeatable); searches an image index")
    p.add_argument("--queries", help="a file of text queries, one per line (blank lines are skipped)")
    p.add_argument("--image", action="append", default=[], help="an image file as query (repeatable); "
                                                                 "searches a text index")
    p.add_argument("--k", type=int, default=10, help="results per query")
    add_teacher_arguments(p, purpose="cross-encoder teacher for re-ranking")
    p.add_argument("--rerank-depth", type=int, help="student candidates the teacher re-orders per query "
                                                     "(default: k when --teacher is given)")
    add_device_argument(p)
    p.add_argument("--json", nargs="?", const="-", metavar="OUT",
                   help="write the results as JSON to OUT (no value or '-': standard output, instead of the table)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .students import load_student
    from .text_coverage import coverage_warnings

    args = build_parser().parse_args(argv)
    for n, text in enumerate(args.text, 1):
        if not text.strip():
            raise ValueError(f"queries: --text number {n} is empty")
    texts = list(args.text) + (read_query_file(args.queries) if args.queries else [])
    if bool(texts) == bool(args.image):
        raise ValueError("queries: give text queries (--text / --queries) or image queries (--image), not both or neither")
    modality, queries = ("text", texts) if texts else ("image", list(args.image))
    check_queries(queries, modality)
    for path in queries if modality == "image" else ():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image: query image not found: {path}")
    if args.k < 1:
        raise ValueError(f"k: must be at least 1; got {args.k}")
    if args.rerank_depth is not None and not args.teacher:
        raise ValueError("rerank_depth: --rerank-depth needs --teacher")
    depth = args.k if args.rerank_depth is None else args.rerank_depth
    if args.teacher and depth < 1:
        raise ValueError(f"rerank_depth: must be at least 1; got {depth}")

    index_paths = args.index
    index = merge_indexes([load_index(path) for path in index_paths], index_paths)
    args.index = " + ".join(index_paths)  # how messages name the index
    check_index_fits(index, args.index, modality)
    student_dir = args.student or index.student
    if not student_dir:
        raise ValueError(f"student: the index {args.index} records no student; give --student")
    check_folder_exists(student_dir)
    check_teacher_argument(args)
    device = resolve_device(args.device)
    student = load_student(student_dir, device)
    note = check_student_fits(index, args.index, student, student_dir, args.allow_student_mismatch)
    if note:
        warn(note)
    if args.k > len(index):
        warn(f"--k {args.k} exceeds the {len(index)} items of the index {args.index}: each query gets at most "
             f"{len(index)} results")
    teacher = None
    if args.teacher:
        teacher = load_teacher_from_args(args, device)
        if depth > len(index):
            warn(f"--rerank-depth {depth} exceeds the {len(index)} items of the index: the teacher re-ranks "
                 f"at most {len(index)}")
    if modality == "text":
        for message in coverage_warnings(queries, student, teacher, what="queries"):
            warn(message)
    results = search_index(index, student, queries, modality, args.k, teacher, depth if teacher else 0, device)
    if args.json is None:
        print(format_results(queries, results))
        return 0
    paths = [os.path.abspath(p) for p in index_paths]
    doc = {"index": paths[0] if len(paths) == 1 else paths, "student": os.path.abspath(student_dir),
           "query_modality": modality,
           "k": args.k, "rerank_depth": depth if teacher else 0,
           "queries": [{"query": q, "results": r} for q, r in zip(queries, results)]}
    text = json.dumps(doc, indent=1)
    if args.json == "-":
        print(text)
    else:
        write_text_atomically(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main))
