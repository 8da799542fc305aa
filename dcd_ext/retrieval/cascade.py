"""Retrieval with a cross-encoder student (a fusion student, ``dcd_ext.students.build_fusion_student``):
alone, scoring every pair, and as the re-ranker of a dual-encoder student's top k (the cascade).

- **fusion, all pairs**: the shallow cross-encoder scores every (image, caption) pair of the split, as the
  teacher does (:func:`evaluate_cross_encoder`; beyond ``max_pairs`` only its time per query is estimated);
- **cascade**: the dual-encoder student embeds the split and ranks it with ``similarity_topk``, then the
  fusion student re-orders each query's top ``k`` (the rest keep the dual encoder's order): no teacher at
  query time (:func:`evaluate_cascade`).

Times are those of :mod:`dcd_ext.retrieval.evaluation`: every image and every caption is one query, and
``ms_per_query`` is the wall time of all the work divided by images + captions.
"""

from __future__ import annotations

import time
from typing import Sequence

from ..data.retrieval_set import RetrievalSet
from .evaluation import DEPTH, evaluate_cross_encoder_subset, evaluate_teacher, student_rankings, with_time
from .metrics import recall_at_k
from .teacher_scoring import teacher_rerank

__all__ = ["evaluate_cascade", "evaluate_cross_encoder", "evaluate_cross_encoder_subset",
           "is_cross_encoder", "parse_depths"]


def is_cross_encoder(model) -> bool:
    """True for models that rank by scoring pairs (fusion students), not by embeddings."""
    return bool(getattr(model, "is_cross_encoder", False))


def parse_depths(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"10,50"`` -> (10, 50): re-ranking depths of the cascade."""
    values = [int(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    if not values or min(values) < 1:
        raise ValueError(f"cascade depths must be positive integers such as 10,50; got {text!r}")
    return tuple(values)


def evaluate_cross_encoder(model, split: RetrievalSet, max_pairs: int = 300_000, seed: int = 0) -> tuple[dict, bool]:
    """(metrics, estimated) of a cross-encoder (a teacher or a fusion student) scoring every pair of the
    split; beyond ``max_pairs`` its recalls are None and its time per query is extrapolated from a sample."""
    return evaluate_teacher(model, split, max_pairs, seed=seed)


def evaluate_cascade(student, cross_encoder, split: RetrievalSet, depths: Sequence[int] = (10, 50),
                     batch_size: int = 256, device="cpu") -> dict[str, dict]:
    """``{"cascade_top{k}": metrics}``: the dual-encoder ``student`` ranks every query, then
    ``cross_encoder`` (a fusion student, or any teacher) re-orders each query's top k, for every k of
    ``depths``. The time of each is the student's retrieval plus that re-ranking."""
    depths = parse_depths(depths)
    i2t, t2i, seconds = student_rankings(student, split, max(DEPTH, max(depths)), batch_size, device)
    results = {}
    for k in depths:
        start = time.perf_counter()
        i2t_r, t2i_r = teacher_rerank(cross_encoder, split, i2t, t2i, k)
        results[f"cascade_top{k}"] = with_time(recall_at_k(i2t_r, t2i_r, split.caption_image),
                                               seconds + time.perf_counter() - start, split)
    return results
