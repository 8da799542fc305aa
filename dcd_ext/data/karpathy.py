"""Karpathy split JSON of COCO and Flickr30K (``dataset_coco.json``, ``dataset_flickr30k.json``).

Layout: ``{"images": [{"filename", "filepath" (COCO only), "split", "imgid", "sentences": [{"raw",
"imgid", "sentid"}, ...]}, ...]}``. Training uses ``train`` plus ``restval``; the test split is COCO's
5K and Flickr30K's 1K images, evaluated with the first five captions of each image.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from .retrieval_set import EmptySplitError, RetrievalSet

SPLITS = {"train": ("train", "restval"), "train-only": ("train",), "restval": ("restval",),
          "val": ("val",), "test": ("test",)}


def read_json(path: str, what: str) -> object:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None


def load_karpathy(path: str, image_root: str, split: str = "train",
                  max_captions_per_image: Optional[int] = None) -> RetrievalSet:
    """Read one split of a Karpathy JSON file; image paths are ``image_root/filepath/filename``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}; got {split!r}")
    doc = read_json(path, "Karpathy split")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ValueError(f"{path}: expected an object with an 'images' list (Karpathy split format)")
    wanted = SPLITS[split]
    images, names, captions, caption_image, origins = [], [], [], [], []
    for n, entry in enumerate(doc["images"]):
        for key in ("filename", "split", "sentences"):
            if not isinstance(entry, dict) or key not in entry:
                raise ValueError(f"{path}: images[{n}] has no {key!r}")
        if entry["split"] not in wanted:
            continue
        sentences = entry["sentences"]
        if max_captions_per_image is not None:
            sentences = sentences[:max_captions_per_image]
        raws = []
        for s, sent in enumerate(sentences):
            if not isinstance(sent, dict) or not isinstance(sent.get("raw"), str):
                raise ValueError(f"{path}: images[{n}].sentences[{s}] has no 'raw' string")
            raws.append(sent["raw"].strip())
        if not raws:
            raise ValueError(f"{path}: images[{n}] ({entry['filename']}) has no sentences")
        index = len(images)
        images.append(os.path.join(image_root, entry.get("filepath", ""), entry["filename"]))
        names.append(entry["filename"])
        origins.append(f"{os.path.basename(path)} images[{n}]")
        captions.extend(raws)
        caption_image.extend([index] * len(raws))
    if not images:
        found = sorted({e.get("split") for e in doc["images"] if isinstance(e, dict)})
        raise EmptySplitError(f"{path}: split {split!r} (Karpathy splits {list(wanted)}) is empty; "
                         f"the file holds splits {found}")
    stem = os.path.splitext(os.path.basename(path))[0]
    return RetrievalSet(f"{stem}:{split}", images, captions, caption_image, names, origins)
