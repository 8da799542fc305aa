"""The gallery index file written by ``python -m dcd_ext.index`` and read by ``python -m dcd_ext.search``.

One safetensors file: tensors ``embeddings`` [G, D] (float32 or float16, L2-normalised rows) and ``ids``
[G] int64; string metadata ``format``, ``modality`` (``image`` or ``text``: what the rows embed),
``student`` (the student folder that embedded them), ``student_fingerprint`` (a SHA-256 of that student's
configuration and weights, :func:`dcd_ext.students.student_fingerprint`; format 2 on), ``embed_dim``,
``count`` and ``items``: a JSON list
of G objects ``{"name": ..., "source": ...}`` (image: the display name and the absolute file path the
teacher re-ranker reopens; text: the caption twice). Files are written to a temporary name in the same
folder and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..files import write_atomically

INDEX_FORMAT = "dcd_ext.gallery/2"
# format 1 had no student fingerprint; it is still read (search then cannot check the student)
READABLE_FORMATS = ("dcd_ext.gallery/1", INDEX_FORMAT)
MODALITIES = ("image", "text")


@dataclass
class GalleryIndex:
    embeddings: Tensor  # [G, D]
    ids: Tensor  # [G] int64
    modality: str
    student: str
    names: list[str]
    sources: list[str]
    student_fingerprint: str = ""  # empty: unknown (a format-1 index)

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}; got {self.modality!r}")
        g = self.embeddings.shape[0]
        if self.embeddings.dim() != 2 or self.ids.shape != (g,) or len(self.names) != g or len(self.sources) != g:
            raise ValueError(f"index parts disagree: embeddings {tuple(self.embeddings.shape)}, ids "
                             f"{tuple(self.ids.shape)}, {len(self.names)} names, {len(self.sources)} sources")
        if self.ids.unique().numel() != g:
            raise ValueError("ids must be unique")

    @property
    def embed_dim(self) -> int:
        return self.embeddings.shape[1]

    def __len__(self) -> int:
        return self.embeddings.shape[0]


def save_index(index: GalleryIndex, path: str) -> None:
    tensors = {"embeddings": index.embeddings.detach().cpu().contiguous(),
               "ids": index.ids.to(torch.int64).cpu().contiguous()}
    items = [{"name": n, "source": s} for n, s in zip(index.names, index.sources)]
    metadata = {"format": INDEX_FORMAT, "modality": index.modality, "student": index.student,
                "student_fingerprint": index.student_fingerprint, "embed_dim": str(index.embed_dim), "count": str(len(index)), "items": json.dumps(items)}
    write_atomically(path, lambda temp: save_file(tensors, temp, metadata=metadata))


def load_index(path: str) -> GalleryIndex:
    """Read an index file; FileNotFoundError / ValueError name ``path`` when it is missing or not an index."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"index: no index file at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            keys = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys & {"embeddings", "ids"}}
    except Exception as e:  # safetensors raises its own error types for a file that is not safetensors
        raise ValueError(f"index: {path} is not a safetensors file ({e})") from None
    if metadata.get("format") not in READABLE_FORMATS or set(tensors) != {"embeddings", "ids"}:
        raise ValueError(f"index: {path} is not a dcd_ext gallery index (format {metadata.get('format')!r}, "
                         f"tensors {sorted(keys)})")
    items = json.loads(metadata["items"])
    return GalleryIndex(tensors["embeddings"], tensors["ids"], metadata["modality"], metadata.get("student", ""),
                        [it["name"] for it in items], [it["source"] for it in items],
                        metadata.get("student_fingerprint", ""))


def export_faiss(index: GalleryIndex, path: str) -> bool:
    """Write a faiss ``IndexIDMap(IndexFlatIP)`` holding the same embeddings and ids; False if faiss is missing."""
    try:
        import faiss
    except ImportError:
        print(f"export-faiss: faiss is not installed (pip install faiss-cpu); skipped writing {path}")
        return False
    flat = faiss.IndexIDMap(faiss.IndexFlatIP(index.embed_dim))
    flat.add_with_ids(index.embeddings.float().cpu().numpy(), index.ids.cpu().numpy())
    write_atomically(path, lambda temp: faiss.write_index(flat, temp))
    return True
