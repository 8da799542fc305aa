"""Retrieval: embedding a split, top-k search, Recall@K, teacher re-ranking and the evaluation of students
and teachers.

Rankings are int64 tensors [Q, K] of gallery indices, best first, padded with -1. Image-to-text rankings
index captions, text-to-image rankings index images; ``caption_image[j]`` is the image caption j describes.
"""

from .embedding import chunks, embed_images, embed_items, embed_texts
from .evaluation import evaluate_student, evaluate_student_and_rerank, evaluate_teacher, student_rankings
from .metrics import METRIC_KEYS, RECALL_KS, empty_metrics, format_table, recall_at_k
from .ranking import rankings_from_scores, rerank, search
from .teacher_scoring import (both_way_pairs, group_pairs_by_image, score_split_pairs, score_unique_pairs,
                              teacher_rerank, teacher_score_matrix)

__all__ = ["METRIC_KEYS", "RECALL_KS", "both_way_pairs", "chunks", "embed_images", "embed_items", "embed_texts",
           "empty_metrics", "evaluate_student", "evaluate_student_and_rerank", "evaluate_teacher", "format_table", "group_pairs_by_image", "rankings_from_scores", "recall_at_k", "rerank",
           "score_split_pairs", "score_unique_pairs", "search", "student_rankings", "teacher_rerank", "teacher_score_matrix"]
