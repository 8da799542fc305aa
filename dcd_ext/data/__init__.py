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

__all__ = ["Batch", "BatchCollator", "EmptySplitError", "RetrievalSet", "check_image_files", "describe_bad_images",
           "find_unreadable_images", "load_karpathy", "load_pairs_file", "load_split", "make_synthetic_split",
           "make_train_loader", "steps_per_epoch", "vocabulary", "without_images"]


def load_split(data: str, images: Optional[str], split: str, max_captions_per_image: Optional[int] = None,
               image_key: Optional[str] = None, caption_key: Optional[str] = None,
               check_files: bool = True, all_rows_without_split_column: bool = False) -> RetrievalSet:
    """Open one split of a data file, chosen by extension: ``.json`` is a Karpathy split file (``images`` is
    then required), ``.csv``/``.tsv``/``.jsonl`` a pair table whose ``split`` column selects rows (see
    :func:`load_pairs_file` for tables without one).
    """
    ext = os.path.splitext(data)[1].lower()
    if ext == ".json":
        if images is None:
            raise ValueError(f"images: a Karpathy split file ({data}) needs the image root folder")
        out = load_karpathy(data, images, split, max_captions_per_image)
    elif ext in (".csv", ".tsv", ".jsonl", ".ndjson"):
        out = load_pairs_file(data, images, split, image_key, caption_key, all_rows_without_split_column)
    else:
        raise ValueError(f"data: expected a Karpathy .json or a .csv/.tsv/.jsonl pair table; got {data}")
    if check_files:
        check_image_files(out)
    return out
