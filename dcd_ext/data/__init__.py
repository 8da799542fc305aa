"""Retrieval data: Karpathy split JSON (COCO, Flickr30K), CSV/TSV/JSONL pair tables and the synthetic demo set."""

from __future__ import annotations

import os
from typing import Optional

from .karpathy import load_karpathy
from .loader import Batch, BatchCollator, make_train_loader, steps_per_epoch
from .pairs_file import load_pairs_file
from .retrieval_set import (EmptySplitError, RetrievalSet, check_image_files, describe_bad_images,
                            find_unreadable_images, without_images)
from .synthetic import make_synthetic_split, vocabulary

__all__ = ["Batch", "BatchCollator", "EmptySplitError", "RetrievalSet", "check_data_file", "check_image_files",
           "describe_bad_images", "find_unreadable_images", "load_karpathy", "load_pairs_file", "load_split",
           "make_synthetic_split", "make_train_loader", "steps_per_epoch", "vocabulary", "without_images"]


def check_data_file(data: str, images: Optional[str]) -> str:
    """What :func:`load_split` checks before reading ``data``: a Karpathy split file (``"karpathy"``, with
    ``images``) or a pair table (``"pairs"``) that exists. Commands call it before they resolve the device."""
    ext = os.path.splitext(data)[1].lower()
    if ext == ".json":
        if images is None:
            raise ValueError(f"images: a Karpathy split file ({data}) needs the image root folder")
        if not os.path.isfile(data):
            raise FileNotFoundError(f"Karpathy split file not found: {data}")
        return "karpathy"
    if ext in (".csv", ".tsv", ".jsonl", ".ndjson"):
        if not os.path.isfile(data):
            raise FileNotFoundError(f"pairs file not found: {data}")
        return "pairs"
    raise ValueError(f"data: expected a Karpathy .json or a .csv/.tsv/.jsonl pair table; got {data}")


def load_split(data: str, images: Optional[str], split: str, max_captions_per_image: Optional[int] = None,
               image_key: Optional[str] = None, caption_key: Optional[str] = None,
               check_files: bool = True, all_rows_without_split_column: bool = False) -> RetrievalSet:
    """Open one split of a data file, chosen by extension: ``.json`` is a Karpathy split file (``images`` is
    then required), ``.csv``/``.tsv``/``.jsonl`` a pair table whose ``split`` column selects rows (see
    :func:`load_pairs_file` for tables without one).
    """
    if check_data_file(data, images) == "karpathy":
        out = load_karpathy(data, images, split, max_captions_per_image)
    else:
        out = load_pairs_file(data, images, split, image_key, caption_key, all_rows_without_split_column)
    if check_files:
        check_image_files(out)
    return out
