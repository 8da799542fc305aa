"""Shards of one gallery (indexes built with ``--id-offset``) as one index: searched together or merged."""

from __future__ import annotations

import torch

from .index_file import GalleryIndex


def merge_indexes(indexes: list[GalleryIndex], paths: list[str]) -> GalleryIndex:
    """One index holding the rows of ``indexes`` (in order). They must embed the same modality with the same
    student (same fingerprint; for fingerprint-less format-1 shards, the same recorded student folder) at the
    same width, and their ids must be distinct. Mixed float16 / float32 shards are merged as float32.
    ValueError names the shards (``paths``) that disagree."""
    if not indexes:
        raise ValueError("index: no index to merge")
    first, first_path = indexes[0], paths[0]
    seen: dict[int, str] = {}
    for index, path in zip(indexes, paths):
        for what, mine, theirs in (("modality", index.modality, first.modality),
                                   ("embedding width", index.embed_dim, first.embed_dim),
                                   ("student fingerprint", index.student_fingerprint, first.student_fingerprint)):
            if mine != theirs:
                raise ValueError(f"index: {path} and {first_path} are not shards of one gallery: {what} {mine!r} vs "
                                 f"{theirs!r}")
        if not index.student_fingerprint and index.student != first.student:
            raise ValueError(f"index: {path} and {first_path} record different students ({index.student} vs "
                             f"{first.student}) and no fingerprint to show they embed alike")
        for i in index.ids.tolist() if len(indexes) > 1 else ():
            if seen.setdefault(i, path) != path:
                raise ValueError(f"index: id {i} is in both {seen[i]} and {path}; build the shards with "
                                 "--id-offset so their ids do not overlap")
    if len(indexes) == 1:
        return first
    dtype = first.embeddings.dtype if all(ix.embeddings.dtype == first.embeddings.dtype for ix in indexes) \
        else torch.float32
    return GalleryIndex(torch.cat([ix.embeddings.to(dtype) for ix in indexes]), torch.cat([ix.ids for ix in indexes]),
                        first.modality, first.student, [n for ix in indexes for n in ix.names],
                        [s for ix in indexes for s in ix.sources], first.student_fingerprint)
