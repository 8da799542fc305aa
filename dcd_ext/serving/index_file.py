"""The gallery index file written by ``python -m dcd_ext.index`` and read by ``python -m dcd_ext.search``.

One safetensors file: tensors ``embeddings`` [G, D] (float32 or float16, L2-normalised rows) and ``ids``
[G] int64; the item names and sources (image: the display name and the absolute file path the teacher
re-ranker reopens; text: the caption twice) as UTF-8 blobs ``names_utf8`` / ``sources_utf8`` (uint8) with
``names_ends`` / ``sources_ends`` ([G] int64, where each string ends in its blob); string metadata
``format``, ``modality`` (``image`` or ``text``: what the rows embed), ``student`` (the student folder that
embedded them), ``student_fingerprint`` (a SHA-256 of that student's configuration and weights,
:func:`dcd_ext.students.student_fingerprint`), ``embed_dim`` and ``count``. Files are written to a temporary
name in the same folder and renamed, so a reader never sees half a file.

Formats 1 and 2 kept the items as JSON in the safetensors header, which safetensors caps at 100 MB (about
a million ordinary paths); they are still read. Format 1 also had no student fingerprint.
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

INDEX_FORMAT = "dcd_ext.gallery/3"
# formats 1 and 2 held the items as JSON in the header (format 1 without a student fingerprint: search then
# cannot check the student); both are still read
HEADER_ITEM_FORMATS = ("dcd_ext.gallery/1", "dcd_ext.gallery/2")
READABLE_FORMATS = HEADER_ITEM_FORMATS + (INDEX_FORMAT,)
STRING_TENSORS = ("names_utf8", "names_ends", "sources_utf8", "sources_ends")
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


def strings_to_tensors(strings: list[str]) -> tuple[Tensor, Tensor]:
    """(UTF-8 blob [bytes] uint8, end offsets [len(strings)] int64) of a list of strings."""
    encoded = [s.encode("utf-8") for s in strings]
    ends = torch.tensor([len(b) for b in encoded], dtype=torch.int64).cumsum(0)
    blob = b"".join(encoded)
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
    return data, ends


def tensors_to_strings(data: Tensor, ends: Tensor, what: str) -> list[str]:
    """The strings :func:`strings_to_tensors` stored; ValueError naming ``what`` when the offsets do not fit."""
    blob = data.numpy().tobytes()
    stops = ends.tolist()
    if any(b < a for a, b in zip([0] + stops, stops)) or (stops and stops[-1] != len(blob)):
        raise ValueError(f"{what}: the string offsets do not fit the {len(blob)}-byte blob")
    starts = [0] + stops[:-1]
    return [blob[a:b].decode("utf-8") for a, b in zip(starts, stops)]


def save_index(index: GalleryIndex, path: str) -> None:
    tensors = {"embeddings": index.embeddings.detach().cpu().contiguous(),
               "ids": index.ids.to(torch.int64).cpu().contiguous()}
    tensors["names_utf8"], tensors["names_ends"] = strings_to_tensors(index.names)
    tensors["sources_utf8"], tensors["sources_ends"] = strings_to_tensors(index.sources)
    metadata = {"format": INDEX_FORMAT, "modality": index.modality, "student": index.student,
                "student_fingerprint": index.student_fingerprint, "embed_dim": str(index.embed_dim),
                "count": str(len(index))}
    write_atomically(path, lambda temp: save_file(tensors, temp, metadata=metadata))


def load_index(path: str) -> GalleryIndex:
    """Read an index file; FileNotFoundError / ValueError name ``path`` when it is missing or not an index."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"index: no index file at {path}")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            keys = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys & {"embeddings", "ids", *STRING_TENSORS}}
    except Exception as e:  # safetensors raises its own error types for a file that is not safetensors
        raise ValueError(f"index: {path} is not a safetensors file ({e})") from None
    fmt = metadata.get("format")
    expected = {"embeddings", "ids"} | (set() if fmt in HEADER_ITEM_FORMATS else set(STRING_TENSORS))
    if fmt not in READABLE_FORMATS or set(tensors) != expected or (fmt in HEADER_ITEM_FORMATS and "items" not in metadata):
        raise ValueError(f"index: {path} is not a dcd_ext gallery index (format {fmt!r}, tensors {sorted(keys)})")
    if fmt in HEADER_ITEM_FORMATS:
        items = json.loads(metadata["items"])
        names, sources = [it["name"] for it in items], [it["source"] for it in items]
    else:
        names = tensors_to_strings(tensors["names_utf8"], tensors["names_ends"], f"index: {path}")
        sources = tensors_to_strings(tensors["sources_utf8"], tensors["sources_ends"], f"index: {path}")
    return GalleryIndex(tensors["embeddings"], tensors["ids"], metadata["modality"], metadata.get("student", ""),
                        names, sources, metadata.get("student_fingerprint", ""))


def faiss_installed(path: str) -> bool:
    """Whether faiss can be imported; if not, says that writing ``path`` is skipped."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        print(f"export-faiss: faiss is not installed (pip install faiss-cpu); skipped writing {path}")
        return False
    return True


def export_faiss(index: GalleryIndex, path: str) -> bool:
    """Write a faiss ``IndexIDMap(IndexFlatIP)`` holding the same embeddings and ids; False if faiss is missing."""
    if not faiss_installed(path):
        return False
    import faiss
    flat = faiss.IndexIDMap(faiss.IndexFlatIP(index.embed_dim))
    flat.add_with_ids(index.embeddings.float().cpu().numpy(), index.ids.cpu().numpy())
    write_atomically(path, lambda temp: faiss.write_index(flat, temp))
    return True
