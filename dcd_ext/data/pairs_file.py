"""(image path, caption) tables: CSV, TSV or JSON Lines, one pair per row.

Rows naming the same image path become one image with several captions. An optional ``split`` column
selects rows (``split=None`` keeps every row); relative image paths resolve against ``image_root`` (default: the table's folder).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Optional

from .retrieval_set import EmptySplitError, RetrievalSet

IMAGE_KEYS = ("image", "filepath", "image_path", "file_name", "filename", "path")
CAPTION_KEYS = ("caption", "text", "title", "sentence", "raw")


def read_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pairs file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    with open(path, encoding="utf-8", newline="") as f:
        if ext in (".jsonl", ".ndjson"):
            rows = []
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
                rows.append(row)
            return rows
        if ext in (".csv", ".tsv"):
            return list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
    raise ValueError(f"pairs file must end in .csv, .tsv or .jsonl; got {path}")


def pick_key(rows: list[dict], given: Optional[str], candidates: tuple[str, ...], what: str, path: str) -> str:
    columns = list(rows[0].keys())
    if given is not None:
        if given not in columns:
            raise ValueError(f"{path}: no {what} column {given!r}; columns are {columns}")
        return given
    for key in candidates:
        if key in columns:
            return key
    raise ValueError(f"{path}: found no {what} column (tried {list(candidates)}); columns are {columns}")


def load_pairs_file(path: str, image_root: Optional[str] = None, split: Optional[str] = None,
                    image_key: Optional[str] = None, caption_key: Optional[str] = None,
                    all_rows_without_split_column: bool = False) -> RetrievalSet:
    """Read a table of (image path, caption) rows, keeping only rows whose ``split`` matches when one is given.

    A table without a ``split`` column cannot serve a named split: that is an error, unless
    ``all_rows_without_split_column`` (used for training tables) says to take every row.
    """
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path}: the file holds no rows")
    img_key = pick_key(rows, image_key, IMAGE_KEYS, "image", path)
    cap_key = pick_key(rows, caption_key, CAPTION_KEYS, "caption", path)
    if split is not None and "split" not in rows[0] and all_rows_without_split_column:
        split = None
    if split is not None:
        if "split" not in rows[0]:
            raise EmptySplitError(f"{path}: split {split!r} was asked for but the file has no 'split' column")
        rows = [r for r in rows if r.get("split") == split]
        if not rows:
            raise EmptySplitError(f"{path}: split {split!r} is empty")
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    index: dict[str, int] = {}
    images, names, captions, caption_image = [], [], [], []
    for n, row in enumerate(rows):
        name, caption = row.get(img_key), row.get(cap_key)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}: row {n + 1} has an empty {img_key!r}")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{path}: row {n + 1} has an empty {cap_key!r}")
        name = name.strip()
        if name not in index:
            index[name] = len(images)
            images.append(name if os.path.isabs(name) else os.path.join(root, name))
            names.append(name)
        captions.append(caption.strip())
        caption_image.append(index[name])
    stem = os.path.splitext(os.path.basename(path))[0]
    return RetrievalSet(f"{stem}:{split}" if split else stem, images, captions, caption_image, names)

