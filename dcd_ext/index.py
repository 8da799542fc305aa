"""Embed a gallery (images or captions) with a trained student into one index file for ``python -m dcd_ext.search``.

    python -m dcd_ext.index --student runs/demo/student_dcd --images photos/ --out photos.index.safetensors
    python -m dcd_ext.index --student S --data captions.csv --modality text --out captions.index.safetensors

The file format is described in ``dcd_ext/serving_io.py`` and docs/serving.md.
"""

from __future__ import annotations

import argparse
import os
from typing import Optional, Sequence

import torch
from PIL import Image
from torch import Tensor

from .serving_io import GalleryIndex, export_faiss, save_index

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def images_in_folder(folder: str) -> tuple[list[str], list[str]]:
    """(names relative to ``folder``, absolute paths) of every image file below it, sorted by name."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"images: not a folder: {folder}")
    names = []
    for root, _, files in os.walk(folder):
        names += [os.path.relpath(os.path.join(root, f), folder) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise ValueError(f"images: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    names.sort()
    return names, [os.path.abspath(os.path.join(folder, n)) for n in names]


def captions_in_text_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data: caption file not found: {path}")
    with open(path, encoding="utf-8") as f:
        captions = [line.strip() for line in f if line.strip()]
    if not captions:
        raise ValueError(f"data: {path} holds no captions")
    return captions


def gallery_items(data: Optional[str], images: Optional[str], split: Optional[str],
                  modality: str) -> tuple[list[str], list[str]]:
    """(names, sources) of the gallery: image names and absolute paths, or captions (twice)."""
    if data is None:
        if images is None:
            raise ValueError("data: give --data (a pairs table, Karpathy JSON or, for text, a .txt file) or --images FOLDER")
        if modality != "image":
            raise ValueError("modality: a folder of images (--images without --data) can only make an image index")
        return images_in_folder(images)
    if data.lower().endswith(".txt"):
        if modality != "text":
            raise ValueError(f"modality: {data} is a caption list; index it with --modality text")
        captions = captions_in_text_file(data)
        return captions, captions
    from .data import check_image_files, load_karpathy, load_pairs_file

    if data.lower().endswith(".json"):
        if images is None or split is None:
            raise ValueError(f"data: a Karpathy split file ({data}) needs --images ROOT and --split")
        gallery = load_karpathy(data, images, split)
    else:
        gallery = load_pairs_file(data, images, split)
    if modality == "text":
        return list(gallery.captions), list(gallery.captions)
    check_image_files(gallery)
    return list(gallery.image_names), [os.path.abspath(p) for p in gallery.images]


def open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None


@torch.no_grad()
def embed_items(student, sources: Sequence[str], modality: str, batch_size: int = 64, device="cpu",
                progress: bool = True) -> Tensor:
    """L2-normalised student embeddings [G, D] (float32, CPU) of image paths or captions, in batches."""
    from tqdm.auto import tqdm

    from .retrieval import chunks

    out = []
    with tqdm(total=len(sources), unit=modality, desc=f"embedding {modality}s", disable=not progress) as bar:
        for part in chunks(len(sources), batch_size):
            batch = sources[part]
            if modality == "image":
                pixels = student.preprocess_images([open_image(p) for p in batch]).to(device)
                out.append(student.encode_image(pixels).cpu())
            else:
                ids, mask = student.tokenizer(list(batch))
                out.append(student.encode_text(ids.to(device), mask.to(device)).cpu())
            bar.update(len(batch))
    return torch.cat(out)


def build_index(student_dir: str, names: list[str], sources: list[str], modality: str, batch_size: int = 64,
                device="cpu", dtype: torch.dtype = torch.float32, id_offset: int = 0,
                progress: bool = True) -> GalleryIndex:
    from .students import load_student

    student = load_student(student_dir, device)
    embeddings = embed_items(student, sources, modality, batch_size, device, progress)
    ids = torch.arange(id_offset, id_offset + len(sources), dtype=torch.int64)
    return GalleryIndex(embeddings.to(dtype), ids, modality, os.path.abspath(student_dir), list(names),
                        list(sources))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dcd_ext.index", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--student", required=True, help="saved student folder (config.json + model.safetensors)")
    p.add_argument("--data", help="gallery source: a .csv/.tsv/.jsonl pairs table, a Karpathy .json, "
                                  "or (text only) a .txt file with one caption per line")
    p.add_argument("--images", help="a folder of images to index (without --data), or the image root of --data")
    p.add_argument("--split", help="rows of this split only (pairs tables: optional; Karpathy: required)")
    p.add_argument("--modality", choices=("image", "text"), default="image",
                   help="index the images or the captions of the source")
    p.add_argument("--out", required=True, help="index file to write (safetensors)")
    p.add_argument("--batch-size", type=int, default=64, help="items embedded per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored embedding type")
    p.add_argument("--id-offset", type=int, default=0,
                   help="first id: item n gets id OFFSET + n (keeps ids unique across shards of one gallery)")
    p.add_argument("--export-faiss", metavar="PATH",
                   help="also write a faiss IndexIDMap(IndexFlatIP) with the same embeddings and ids")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .train.components import resolve_device

    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1; got {args.batch_size}")
    names, sources = gallery_items(args.data, args.images, args.split, args.modality)
    index = build_index(args.student, names, sources, args.modality, args.batch_size, resolve_device(args.device),
                        getattr(torch, args.dtype), args.id_offset, not args.no_progress)
    save_index(index, args.out)
    print(f"wrote {args.out}: {len(index)} {args.modality} embeddings of width {index.embed_dim} "
          f"({args.dtype}), ids {int(index.ids[0])}..{int(index.ids[-1])}")
    if args.export_faiss and export_faiss(index, args.export_faiss):
        print(f"wrote {args.export_faiss}: faiss IndexIDMap(IndexFlatIP) with the same ids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
