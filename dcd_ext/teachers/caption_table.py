"""Read an (image path, caption) table from CSV or JSONL for teacher fine-tuning.

CSV files need a header; JSONL files hold one object per line. The image column may be called
``image``, ``image_path``, ``filepath``, ``file_name``, ``filename`` or ``path``; the caption column
``caption``, ``text`` or ``sentence``. Relative image paths are resolved against ``image_root``
(default: the table's directory). Rows sharing an image path share one image.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

__all__ = ["CaptionTable", "read_caption_table"]

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_name", "filename", "path")
CAPTION_COLUMNS = ("caption", "text", "sentence")


@dataclass
class CaptionTable:
    image_paths: list[Path]   # distinct images, in order of first appearance
    captions: list[str]
    image_index: list[int]    # caption -> position in image_paths

    def load_images(self) -> list[Image.Image]:
        images = []
        for path in self.image_paths:
            if not path.is_file():
                raise FileNotFoundError(f"image listed in the caption table not found: {path}")
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        return images


def _pick(columns, candidates, what: str, source: Path) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"{source}: no {what} column; expected one of {list(candidates)}, found {sorted(columns)}")


def _rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: invalid JSON ({exc})") from exc
                if not isinstance(row, dict):
                    raise ValueError(f"{path}:{number}: expected a JSON object")
                rows.append(row)
        return rows
    raise ValueError(f"{path}: unsupported table format {suffix!r}; use .csv or .jsonl")


def read_caption_table(path, image_root=None) -> CaptionTable:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption table not found: {path}")
    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    columns = set().union(*(row.keys() for row in rows))
    image_col = _pick(columns, IMAGE_COLUMNS, "image", path)
    caption_col = _pick(columns, CAPTION_COLUMNS, "caption", path)
    root = Path(image_root) if image_root is not None else path.parent
    slots: dict[Path, int] = {}
    captions, image_index = [], []
    for number, row in enumerate(rows, start=1):
        image, caption = row.get(image_col), row.get(caption_col)
        if not image or not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"{path}: row {number} lacks an image path or a caption")
        image_path = Path(image)
        image_path = image_path if image_path.is_absolute() else root / image_path
        image_index.append(slots.setdefault(image_path, len(slots)))
        captions.append(caption.strip())
    return CaptionTable(list(slots), captions, image_index)
