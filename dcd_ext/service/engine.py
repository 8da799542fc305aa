"""The one owner of the models: the student, the gallery index and the optional teacher, loaded once.

:meth:`SearchEngine.search_batch` answers many queries with one student forward pass, one
``ops.similarity_topk`` call and, for the queries that ask for re-ranking, shared teacher micro-batches
(the same steps as ``python -m dcd_ext.search``: :mod:`dcd_ext.serving.query`), and says how long each
stage took. It is called from one thread only (the service's model thread).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from PIL import Image

from .. import ops
from ..retrieval.embedding import embed_items
from ..retrieval.ranking import rerank
from ..serving.index_file import GalleryIndex
from ..serving.query import QUERY_FITS_INDEX, teacher_scores

INDEX_QUERIES = {gallery: query for query, gallery in QUERY_FITS_INDEX.items()}  # gallery -> query modality


@dataclass
class Query:
    """One request's query: a caption (searches an image index) or a decoded image (a text index), its k and
    re-rank depth (0: none)."""
    item: Union[str, Image.Image]
    k: int
    rerank: int = 0


@dataclass
class Answer:
    hits: list[dict]
    timings_ms: dict = field(default_factory=dict)
    batch_size: int = 1


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class SearchEngine:
    def __init__(self, index: GalleryIndex, student, teacher=None, device="cpu", index_name: str = "",
                 student_dir: str = "", teacher_name: Optional[str] = None, fingerprint: str = ""):
        self.index, self.student, self.teacher, self.device = index, student.eval(), teacher, torch.device(device)
        self.query_modality = INDEX_QUERIES[index.modality]
        self.index_name, self.student_dir, self.teacher_name = index_name, student_dir, teacher_name
        self.fingerprint = fingerprint or index.student_fingerprint
        self.gallery = index.embeddings.to(self.device)  # moved once, not per query
        self.positions = {int(i): p for p, i in enumerate(index.ids.tolist())}  # id -> row

    def __len__(self) -> int:
        return len(self.index)

    def health(self) -> dict:
        return {"status": "ok", "index": self.index_name, "index_size": len(self.index),
                "index_modality": self.index.modality, "query_modality": self.query_modality,
                "embed_dim": self.index.embed_dim, "student": self.student_dir,
                "student_fingerprint": self.fingerprint, "teacher": self.teacher_name, "device": str(self.device)}

    @torch.no_grad()
    def search_batch(self, queries: list[Query]) -> list[Answer]:
        """The answers to ``queries`` (in order); the stage times are those of the whole batch."""
        start = time.perf_counter()
        embeddings = embed_items(self.student, [q.item for q in queries], self.query_modality, device=self.device,
                                 source="query image", origins=[f"query {n + 1}" for n in range(len(queries))])
        embed_ms = elapsed_ms(start)
        start = time.perf_counter()
        width = max(max(q.k, q.rerank) for q in queries)
        student_score, positions = ops.similarity_topk(embeddings, self.gallery, width)
        student_score, positions = student_score.cpu(), positions.cpu()
        topk_ms = elapsed_ms(start)
        start = time.perf_counter()
        teacher_score = self._rerank(queries, positions, student_score)
        rerank_ms = elapsed_ms(start) if teacher_score else 0.0
        timings = {"embed": embed_ms, "topk": topk_ms, "rerank": rerank_ms}
        return [Answer(self._hits(q, positions[n], student_score[n], teacher_score.get(n)), dict(timings), len(queries))
                for n, q in enumerate(queries)]

    def _rerank(self, queries: list[Query], positions, student_score) -> dict:
        """Re-orders, in place, the heads of the rows whose query asks for it; returns row -> teacher scores.
        Queries of one depth are scored together, so they share the teacher's micro-batches."""
        out = {}
        for depth in sorted({q.rerank for q in queries if q.rerank > 0}):
            rows = [n for n, q in enumerate(queries) if q.rerank == depth]
            head = positions[rows, :depth]
            items = [queries[n].item for n in rows]
            scores = teacher_scores(self.teacher, self.index, items, self.query_modality, head)
            order = rerank(torch.arange(positions.shape[1]).expand(len(rows), -1), scores, depth)
            positions[rows] = positions[rows].gather(1, order)
            student_score[rows] = student_score[rows].gather(1, order)
            for r, n in enumerate(rows):
                out[n] = scores[r].gather(0, order[r, :depth])
        return out

    def _hits(self, query: Query, positions, student_score, teacher_score) -> list[dict]:
        hits = []
        for rank in range(query.k):
            pos = int(positions[rank])
            if pos < 0:
                break
            t = None if teacher_score is None or rank >= query.rerank else float(teacher_score[rank])
            s = float(student_score[rank])
            hits.append({"rank": rank + 1, "id": int(self.index.ids[pos]), "name": self.index.names[pos],
                         "score": t if t is not None else s, "student_score": s, "teacher_score": t})
        return hits

    def item(self, item_id: int) -> Optional[tuple[str, str]]:
        """(name, source) of the gallery item ``item_id``, or None when the index holds no such id."""
        pos = self.positions.get(item_id)
        return None if pos is None else (self.index.names[pos], self.index.sources[pos])
