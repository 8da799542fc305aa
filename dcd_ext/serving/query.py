"""Answering queries from a gallery index: the student's top k, optionally re-ordered by a teacher."""

from __future__ import annotations

from typing import Optional

import torch
from PIL import Image
from torch import Tensor

from ..data.images import open_image
from ..retrieval.embedding import embed_items
from ..retrieval.ranking import rerank
from ..retrieval.teacher_scoring import score_unique_pairs
from .gallery import nonblank_lines
from .index_file import GalleryIndex

QUERY_FITS_INDEX = {"text": "image", "image": "text"}  # query modality -> the gallery it searches


def read_query_file(path: str) -> list[str]:
    """The non-blank lines of a queries file (blank lines separate nothing and are skipped)."""
    return nonblank_lines(path, "queries", "query", "queries")


def check_queries(queries: list[str], modality: str) -> None:
    """Refuse an empty (or blank) text query: its embedding is the student's answer to nothing."""
    for n, q in enumerate(queries, 1):
        if not isinstance(q, str):
            raise TypeError(f"queries: query {n} must be a str; got {type(q).__name__}")
        if modality == "text" and not q.strip():
            raise ValueError(f"queries: text query {n} is empty")


def check_index_fits(index: GalleryIndex, index_path: str, query_modality: str) -> None:
    wanted = QUERY_FITS_INDEX[query_modality]
    if index.modality != wanted:
        flag = "--text/--queries" if query_modality == "text" else "--image"
        raise ValueError(f"index: {index_path} holds {index.modality} embeddings, but {query_modality} queries "
                         f"({flag}) search a {wanted} index")


def check_student_fits(index: GalleryIndex, index_path: str, student, student_dir: str,
                       allow_mismatch: bool = False) -> Optional[str]:
    """Refuse a student whose embeddings cannot be compared with the index's: another width always; another
    fingerprint (configuration or weights) unless ``allow_mismatch``. Returns a warning to show, or None."""
    from ..students import student_fingerprint

    width = student.config.embed_dim
    if width != index.embed_dim:
        raise ValueError(f"student: {student_dir} embeds to width {width}, but the index {index_path} holds "
                         f"embeddings of width {index.embed_dim} (built by {index.student or 'an unknown student'})")
    if not index.student_fingerprint:
        return (f"the index {index_path} records no student fingerprint (an index of format 1): cannot check "
                f"that {student_dir} is the student that built it; rebuild the index to record one")
    fingerprint = student_fingerprint(student)
    if fingerprint == index.student_fingerprint:
        return None
    what = (f"student: {student_dir} is not the student that built the index {index_path} (built by "
            f"{index.student or 'an unknown student'}; fingerprints {fingerprint[:12]} vs "
            f"{index.student_fingerprint[:12]}: other weights or configuration)")
    if not allow_mismatch:
        raise ValueError(f"{what}; its query embeddings are not comparable with the index's, so scores would be "
                         "meaningless. Search with the index's student, rebuild the index with this one, or pass "
                         "--allow-student-mismatch if you know they embed alike")
    return what + "; searching anyway (--allow-student-mismatch)"


def student_candidates(index: GalleryIndex, query_embeddings: Tensor, depth: int) -> tuple[Tensor, Tensor]:
    """(scores [Q, depth], gallery positions [Q, depth]) best first; positions -1 past the gallery."""
    from .. import ops

    gallery = index.embeddings.to(query_embeddings.device)
    return ops.similarity_topk(query_embeddings, gallery, depth)


def teacher_scores(teacher, index: GalleryIndex, queries: list[str], query_modality: str, positions: Tensor) -> Tensor:
    """The teacher's score [Q, depth] of each query with each candidate (-inf where the position is -1).
    Image queries are file paths or decoded images."""
    q = torch.arange(positions.shape[0]).view(-1, 1).expand_as(positions)
    valid = positions >= 0
    # pairs are (image index, text index) into the image and text lists handed to score_pairs
    used = torch.unique(positions[valid])
    local = torch.full((len(index),), -1, dtype=torch.int64)
    local[used] = torch.arange(used.numel())
    cand = torch.where(valid, local[positions.clamp_min(0)], positions)
    items = [index.sources[int(p)] for p in used]
    if query_modality == "text":
        images = [open_image(path, f"gallery item id {int(index.ids[int(p)])} ({index.names[int(p)]})")
                  for p, path in zip(used, items)]
        texts = queries
        pairs = torch.stack([cand, torch.where(valid, q, -1)], dim=2)
    else:
        images = [p if isinstance(p, Image.Image) else open_image(p, f"query image {n + 1}")
                  for n, p in enumerate(queries)]
        texts = items
        pairs = torch.stack([torch.where(valid, q, -1), cand], dim=2)
    scores = score_unique_pairs(lambda p: teacher.score_pairs(images, texts, p), pairs.reshape(-1, 2))
    return scores.cpu().view(positions.shape)


def search_index(index: GalleryIndex, student, queries: list[str], query_modality: str, k: int = 10,
                 teacher=None, rerank_depth: int = 0, device="cpu") -> list[list[dict]]:
    """For each query, its top ``k`` gallery items as dicts (rank, id, name, score, student_score, teacher_score).

    ``score`` is the teacher's score for the re-ranked head and the student's otherwise.
    """
    if k < 1:
        raise ValueError(f"k: must be at least 1; got {k}")
    if not queries:
        raise ValueError("queries: no queries given")
    check_queries(queries, query_modality)
    depth = rerank_depth if teacher is not None else 0
    query_embeddings = embed_items(student, queries, query_modality, device=device, source="query image",
                                   origins=[f"query {n + 1}" for n in range(len(queries))])
    student_score, positions = student_candidates(index, query_embeddings.to(device), max(k, depth))
    student_score, positions = student_score.cpu(), positions.cpu()
    teacher_score = None
    if depth > 0:
        head = teacher_scores(teacher, index, queries, query_modality, positions[:, :depth])
        # re-order column numbers so positions, student scores and teacher scores move together
        order = rerank(torch.arange(positions.shape[1]).expand_as(positions), head, depth)
        positions, student_score = positions.gather(1, order), student_score.gather(1, order)
        teacher_score = head.gather(1, order[:, :depth])
    results = []
    for qi in range(len(queries)):
        hits = []
        for rank in range(k):
            pos = int(positions[qi, rank])
            if pos < 0:
                break
            t = None if teacher_score is None or rank >= depth else float(teacher_score[qi, rank])
            s = float(student_score[qi, rank])
            hits.append({"rank": rank + 1, "id": int(index.ids[pos]), "name": index.names[pos],
                         "score": t if t is not None else s, "student_score": s, "teacher_score": t})
        results.append(hits)
    return results


def format_results(queries: list[str], results: list[list[dict]]) -> str:
    lines = []
    for query, hits in zip(queries, results):
        lines.append(f"query: {query}")
        reranked = any(h["teacher_score"] is not None for h in hits)
        lines.append("  rank        id    student" + ("    teacher" if reranked else "") + "  name")
        for h in hits:
            teacher = "" if not reranked else (f" {h['teacher_score']:10.4f}" if h["teacher_score"] is not None
                                               else " " * 11)
            lines.append(f"  {h['rank']:4d} {h['id']:9d} {h['student_score']:10.4f}{teacher}  {h['name']}")
    return "\n".join(lines)
