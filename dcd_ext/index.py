"""Embed a gallery (images or captions) with a trained student into one index file for ``python -m dcd_ext.search``.

    python -m dcd_ext.index --student runs/demo/student_dcd --images photos/ --out photos.index.safetensors
    python -m dcd_ext.index --student S --data captions.csv --modality text --out captions.index.safetensors

The file format is described in ``dcd_ext/serving/index_file.py`` and docs/serving.md.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch

from .cli import (add_device_argument, check_folder_exists, make_parser, non_negative_int, positive_int, resolve_device,
                  run_command_line)
from .existing_output import add_overwrite_argument, check_new_file
from .files import check_writable
from .serving.gallery import build_index, gallery_items
from .serving.index_file import export_faiss, faiss_installed, save_index


def build_parser():
    p = make_parser("python -m dcd_ext.index", __doc__.split("\n\n")[0])
    p.add_argument("--student", required=True, help="saved student folder (config.json + model.safetensors)")
    p.add_argument("--data", help="gallery source: a .csv/.tsv/.jsonl pairs table, a Karpathy .json, "
                                  "or (text only) a .txt file with one caption per line")
    p.add_argument("--images", help="a folder of images to index (without --data), or the image root of --data")
    p.add_argument("--split", help="rows of this split only (pairs tables: optional; Karpathy: required)")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="index the images or the captions of the source")
    p.add_argument("--out", required=True, help="index file to write (safetensors); an existing file is refused "
                                                "unless --overwrite")
    add_overwrite_argument(p, "replace an existing --out (and --export-faiss) file")
    p.add_argument("--batch-size", type=positive_int, default=64, help="items embedded per forward pass")
    add_device_argument(p)
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored embedding type")
    p.add_argument("--id-offset", type=non_negative_int, default=0,
                   help="first id: item n gets id OFFSET + n (keeps ids unique across shards of one gallery)")
    p.add_argument("--export-faiss", metavar="PATH",
                   help="also write a faiss IndexIDMap(IndexFlatIP) with the same embeddings and ids")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_new_file(args.out, args.overwrite)  # before the gallery is embedded, not after
    check_new_file(args.export_faiss, args.overwrite, "export_faiss")
    for path, flag in ((args.out, "out"), (args.export_faiss, "export_faiss")):
        if path:
            check_writable(path, flag)  # before the embedding pass, like everything below that can be checked
    if args.export_faiss and not faiss_installed(args.export_faiss):
        args.export_faiss = None
    names, sources, origins = gallery_items(args.data, args.images, args.split, args.modality)
    check_folder_exists(args.student)
    if args.modality == "text":
        from .students import load_student
        from .text_coverage import coverage_warnings

        for message in coverage_warnings(sources, load_student(args.student)):
            print(f"warning: {message}", file=sys.stderr)
    device = resolve_device(args.device)
    index = build_index(args.student, names, sources, args.modality, args.batch_size, device,
                        getattr(torch, args.dtype), args.id_offset, not args.no_progress, origins)
    save_index(index, args.out)
    print(f"wrote {args.out}: {len(index)} {args.modality} embeddings of width {index.embed_dim} "
          f"({args.dtype}), ids {int(index.ids[0])}..{int(index.ids[-1])}, student {index.student} "
          f"(fingerprint {index.student_fingerprint[:12]})")
    if args.export_faiss and export_faiss(index, args.export_faiss):
        print(f"wrote {args.export_faiss}: faiss IndexIDMap(IndexFlatIP) with the same ids")
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main))
