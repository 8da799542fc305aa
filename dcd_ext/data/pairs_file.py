"""(image path, caption) tables: CSV, TSV or JSON Lines, one pair per row.

Rows naming the same image file become one image with several captions: paths are compared once resolved
(``photos/x.jpg``, ``./photos/x.jpg`` and ``/data/photos/x.jpg`` are one image, not each other's negatives). A
row repeating an earlier (image, caption) row is left out, with one warning that counts them. An optional
``split`` column selects rows (``split=None`` keeps every row); relative image paths resolve against
``image_root`` (default: the table's folder).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from typing import Optional

from .retrieval_set import EmptySplitError, RetrievalSet

IMAGE_KEYS = ("image", "filepath", "image_path", "file_name", "filename", "path")
CAPTION_KEYS = ("caption", "text", "title", "sentence", "raw")


def read_text(path: str) -> str:
    """The file as UTF-8 text (a byte-order mark is dropped); a decoding error names the line."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the table as UTF-8") \
            from None


def read_rows(path: str) -> list[tuple[int, dict]]:
    """(line number, row) of every row of a .csv/.tsv/.jsonl table; errors name the file and the line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pairs file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".ndjson", ".csv", ".tsv"):
        raise ValueError(f"pairs file must end in .csv, .tsv or .jsonl; got {path}")
    text = read_text(path)
    rows = []
    if ext in (".jsonl", ".ndjson"):
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
            rows.append((lineno, row))
        return rows
    delimiter = "\t" if ext == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            return []
        header = [h.strip() for h in header]
        start = reader.line_num + 1
        for fields in reader:
            lineno, start = start, reader.line_num + 1  # a quoted field may span lines: report the first
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                hint = (" (quote fields that contain the delimiter, e.g. \"a man, a dog\")"
                        if len(fields) > len(header) else "")
                raise ValueError(f"{path}:{lineno}: {len(fields)} fields but the header has {len(header)} "
                                 f"({', '.join(header)}){hint}")
            rows.append((lineno, dict(zip(header, fields))))
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: not a valid {ext[1:].upper()} row: {e}") from None
    return rows


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
    numbered = read_rows(path)
    if not numbered:
        raise ValueError(f"{path}: the file holds no rows")
    rows = [row for _, row in numbered]
    img_key = pick_key(rows, image_key, IMAGE_KEYS, "image", path)
    cap_key = pick_key(rows, caption_key, CAPTION_KEYS, "caption", path)
    if split is not None and "split" not in rows[0] and all_rows_without_split_column:
        split = None
    if split is not None:
        if "split" not in rows[0]:
            raise EmptySplitError(f"{path}: split {split!r} was asked for but the file has no 'split' column")
        found = sorted({str(r.get("split")) for r in rows})
        numbered = [(n, r) for n, r in numbered if r.get("split") == split]
        if not numbered:
            raise EmptySplitError(f"{path}: split {split!r} is empty; the file holds splits {found}")
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(path))
    index: dict[str, int] = {}
    images, names, captions, caption_image, origins = [], [], [], [], []
    seen: dict[tuple[int, str], int] = {}  # (image, caption) -> the line that first holds it
    repeated: list[tuple[int, int]] = []  # (line, the earlier line it repeats)
    base = os.path.basename(path)
    for lineno, row in numbered:
        name, caption = row.get(img_key), row.get(cap_key)
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{path}:{lineno}: empty {img_key!r}")
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{path}:{lineno}: empty {cap_key!r}")
        name, caption = name.strip(), caption.strip()
        file = os.path.normpath(name if os.path.isabs(name) else os.path.join(root, name))
        if file not in index:
            index[file] = len(images)
            images.append(file)
            names.append(name)
            origins.append(f"{base} line {lineno}")
        pair = (index[file], caption)
        if pair in seen:
            repeated.append((lineno, seen[pair]))
            continue
        seen[pair] = lineno
        captions.append(caption)
        caption_image.append(index[file])
    if repeated:
        line, first = repeated[0]
        rows = f"{len(repeated)} rows repeat" if len(repeated) > 1 else "1 row repeats"
        print(f"warning: {path}: {rows} an earlier (image, caption) row and {'are' if len(repeated) > 1 else 'is'} "
              f"left out (e.g. line {line} repeats line {first})", file=sys.stderr)
    stem = os.path.splitext(base)[0]
    return RetrievalSet(f"{stem}:{split}" if split else stem, images, captions, caption_image, names, origins)
