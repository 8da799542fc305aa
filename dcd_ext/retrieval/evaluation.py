"""Retrieval evaluation: Recall@1/5/10 both ways, RSUM and milliseconds per query.

Three ways to retrieve are measured on the same split and machine:
- ``student``: embed every image and caption once, then one ``similarity_topk`` each way;
- ``student + teacher re-ranking``: the same, then the teacher re-orders each query's top ``rerank_k``;
- ``teacher``: the cross-encoder scores every (image, caption) pair (skipped beyond ``max_pairs``, where
  only its time per query is estimated from a sample of pairs).

Every image and every caption is a query once (images query captions, captions query images), so
``ms_per_query`` is the wall time of all the work (embedding included) divided by images + captions.
"""

from __future__ import annotations

import time
import warnings

import torch

from ..data.retrieval_set import RetrievalSet
from .embedding import embed_images, embed_texts
from .metrics import RECALL_KS, empty_metrics, recall_at_k
from .ranking import rankings_from_scores, search
from .teacher_scoring import score_split_pairs, teacher_rerank, teacher_score_matrix

DEPTH = max(RECALL_KS)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def student_rankings(student, split: RetrievalSet, depth: int = DEPTH, batch_size: int = 256,
                     device="cpu") -> tuple[torch.Tensor, torch.Tensor, float]:
    """(i2t, t2i, seconds): top-``depth`` rankings of a student and the wall time to produce them."""
    was_training = student.training
    student.eval()
    # one untimed pass first, so one-off start-up costs (kernel selection, allocator growth) are not timed
    student.encode_image(student.preprocess_images(split.load_images([0])).to(device))
    student.encode_text(*(t.to(device) for t in student.tokenizer(split.captions[:1])))
    synchronize(device)
    start = time.perf_counter()
    img = embed_images(student, split, batch_size, device)
    txt = embed_texts(student, split, batch_size, device)
    i2t, t2i = search(img, txt, depth), search(txt, img, depth)
    synchronize(device)
    seconds = time.perf_counter() - start
    student.train(was_training)
    return i2t.cpu(), t2i.cpu(), seconds


def with_time(metrics: dict, seconds: float, split: RetrievalSet) -> dict:
    return {**metrics, "ms_per_query": 1000.0 * seconds / (split.num_images + split.num_captions)}


def evaluate_student(student, split: RetrievalSet, batch_size: int = 256, device="cpu") -> dict:
    if getattr(student, "is_cross_encoder", False):  # a fusion student ranks by scoring pairs
        return evaluate_cross_encoder_subset(student, split)
    i2t, t2i, seconds = student_rankings(student, split, DEPTH, batch_size, device)
    return with_time(recall_at_k(i2t, t2i, split.caption_image), seconds, split)


def evaluate_student_and_rerank(student, teacher, split: RetrievalSet, rerank_k: int = 16, batch_size: int = 256,
                                device="cpu") -> tuple[dict, dict]:
    """Metrics of the student alone and with the teacher re-ranking its top ``rerank_k`` per query."""
    depth = max(DEPTH, rerank_k)
    i2t, t2i, seconds = student_rankings(student, split, depth, batch_size, device)
    alone = with_time(recall_at_k(i2t, t2i, split.caption_image), seconds, split)
    start = time.perf_counter()
    i2t_r, t2i_r = teacher_rerank(teacher, split, i2t, t2i, rerank_k)
    rerank_seconds = time.perf_counter() - start
    reranked = with_time(recall_at_k(i2t_r, t2i_r, split.caption_image), seconds + rerank_seconds, split)
    return alone, reranked


def evaluate_teacher(teacher, split: RetrievalSet, max_pairs: int = 300_000, sample_pairs: int = 2048,
                     seed: int = 0, progress: bool = False) -> tuple[dict, bool]:
    """(metrics, estimated): all-pairs teacher retrieval, or beyond ``max_pairs`` recalls of None and the time
    per query extrapolated from ``sample_pairs`` random pairs."""
    n, m = split.num_images, split.num_captions
    if n * m <= max_pairs:
        start = time.perf_counter()
        scores = teacher_score_matrix(teacher, split, progress=progress)
        i2t, t2i = rankings_from_scores(scores, DEPTH)
        seconds = time.perf_counter() - start
        return with_time(recall_at_k(i2t, t2i, split.caption_image), seconds, split), False
    g = torch.Generator().manual_seed(seed)
    count = min(sample_pairs, n * m)
    pairs = torch.stack([torch.randint(n, (count,), generator=g), torch.randint(m, (count,), generator=g)], dim=1)
    start = time.perf_counter()
    score_split_pairs(teacher, split, pairs)
    per_pair = (time.perf_counter() - start) / count
    return with_time(empty_metrics(), per_pair * n * m, split), True


def evaluate_cross_encoder_subset(model, split: RetrievalSet, max_pairs: int = 300_000) -> dict:
    """All-pairs metrics of a cross-encoder on the split, or, when it has more than ``max_pairs`` pairs, on
    its first images (with all their captions) that stay within ``max_pairs`` (a warning says so). This is
    what ``evaluate_student`` does with a fusion student (per-epoch validation)."""
    n = split.num_images
    owners = split.caption_image
    if n * split.num_captions > max_pairs:
        keep, captions = 0, 0
        counts = [0] * n
        for i in owners:
            counts[i] += 1
        while keep < n and (keep + 1) * (captions + counts[keep]) <= max_pairs:
            captions += counts[keep]
            keep += 1
        keep = max(keep, 2)
        warnings.warn(f"{split.name}: {n} x {split.num_captions} pairs exceed {max_pairs}; the cross-encoder is "
                      f"evaluated on its first {keep} images and their captions", stacklevel=2)
        split = split.subset(range(keep), f"{split.name}[:{keep}]")
    metrics, _ = evaluate_teacher(model, split, max_pairs=split.num_images * split.num_captions)
    return metrics
