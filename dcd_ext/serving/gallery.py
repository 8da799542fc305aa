"""A gallery to index: the images of a folder or a table, or captions, and their student embeddings."""

from __future__ import annotations

import os
from typing import Optional

import torch

from ..retrieval.embedding import embed_items
from .index_file import GalleryIndex

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


def nonblank_lines(path: str, flag: str, noun: str, plural: str) -> list[str]:
    """The stripped non-blank lines of a text file (one caption or query each); errors name ``flag``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: {noun} file not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{flag}: {path} holds no {plural} (only blank lines)")
    return lines


def captions_in_text_file(path: str) -> list[str]:
    return nonblank_lines(path, "data", "caption", "captions")


def gallery_items(data: Optional[str], images: Optional[str], split: Optional[str],
                  modality: str) -> tuple[list[str], list[str], list[str]]:
    """(names, sources, origins) of the gallery: image names and absolute paths, or captions (twice); origins
    say where a data file names each image (its table line or Karpathy entry; empty otherwise), for errors."""
    if data is None:
        if images is None:
            raise ValueError("data: give --data (a pairs table, Karpathy JSON or, for text, a .txt file) or --images FOLDER")
        if modality != "image":
            raise ValueError("modality: a folder of images (--images without --data) can only make an image index")
        names, paths = images_in_folder(images)
        return names, paths, []  # the path says it all
    if data.lower().endswith(".txt"):
        if modality != "text":
            raise ValueError(f"modality: {data} is a caption list; index it with --modality text")
        captions = captions_in_text_file(data)
        return captions, captions, []
    from ..data import check_image_files, load_karpathy, load_pairs_file

    if data.lower().endswith(".json"):
        if images is None or split is None:
            raise ValueError(f"data: a Karpathy split file ({data}) needs --images ROOT and --split")
        gallery = load_karpathy(data, images, split)
    else:
        gallery = load_pairs_file(data, images, split)
    if modality == "text":
        return list(gallery.captions), list(gallery.captions), []
    check_image_files(gallery)
    return (list(gallery.image_names), [os.path.abspath(p) for p in gallery.images],
            list(gallery.image_origins))


def build_index(student_dir: str, names: list[str], sources: list[str], modality: str, batch_size: int = 64,
                device="cpu", dtype: torch.dtype = torch.float32, id_offset: int = 0,
                progress: bool = True, origins: Optional[list[str]] = None) -> GalleryIndex:
    """Embed the gallery with the student in ``student_dir``; the index records that folder and the
    student's fingerprint. ``origins`` (one per item) name where an unreadable image comes from."""
    from ..students import load_student, student_fingerprint

    student = load_student(student_dir, device)
    embeddings = embed_items(student, sources, modality, batch_size, device, progress, source="gallery",
                             origins=origins or None).cpu()
    ids = torch.arange(id_offset, id_offset + len(sources), dtype=torch.int64)
    return GalleryIndex(embeddings.to(dtype), ids, modality, os.path.abspath(student_dir), list(names),
                        list(sources), student_fingerprint(student))
