"""Training a shallow cross-encoder ("fusion") student: candidates, teacher logits, student logits, loss.

A fusion student (``dcd_ext.students.build_fusion_student``) has no embeddings, so there is no in-batch
contrastive term and no mining by similarity: each step, for every anchor of the batch (each image, with
its caption as the positive, and each caption, with its image as the positive)

1. candidates: a random pool of ``teacher_pool`` in-batch negatives (never a row of the same image) is
   ranked, and its top ``k`` kept: ranked by the teacher (``mine_by="teacher"``, the authors' way) or by
   the student itself (``mine_by="student"``, without gradient; the teacher then scores only the k kept);
2. the teacher scores [positive, k negatives] per anchor (each distinct pair once);
3. the student scores the same pairs with gradients (``pair_logits``: frozen per-item work once per
   image and caption, its own joint layers per pair): candidate logits [B, k+1] both ways;
4. the loss on the two [B, k+1] logit tables, averaged over the two directions:
   - ``recipe="dcd"``: DCD's candidate terms (``dcd_ext.losses.candidates.candidate_loss``: distillation
     ``kind``, hard term, dynamic ``weighting``), ``α·L_dist + (1 − α)·L_hard``;
   - ``recipe="authors"``: the DCD authors' loss (``authors_candidate_loss``: ``α·T²·MSE`` + ``(1 − α)·``
     entropy-weighted BCE against [1, 0, ..., 0]) on a teacher-ranked pool.

:class:`FusionStepRunner` is the training loop's step for such a loss (``train_student`` picks it through
``FusionLoss.step_runner``); :class:`RawCollator` batches raw images and captions only.
"""

from __future__ import annotations

import time
import torch
from torch import Tensor

from .candidates import authors_candidate_loss, candidate_loss
from ..data.loader import Batch
from ..distributed import SINGLE, World
from . import DCDLoss, LossOutput, first_row_of_id
from ..retrieval.teacher_scoring import both_way_pairs, score_unique_pairs

__all__ = ["FusionLoss", "FusionStepRunner", "RECIPES", "RawCollator"]

RECIPES = ("dcd", "authors")


class RawCollator:
    """Batches of raw images and captions (a fusion student reads those; no pixels or token ids)."""

    def __call__(self, items) -> Batch:
        images, texts, image_index, caption_index = zip(*items)
        empty = torch.zeros(len(items), 0, dtype=torch.int64)
        return Batch(torch.zeros(len(items), 0), empty, empty.clone(), torch.tensor(image_index, dtype=torch.int64),
                     torch.tensor(caption_index, dtype=torch.int64), list(images), list(texts))


class FusionStepRunner:
    """One optimisation step of a fusion student (same constructor as ``dcd_ext.train.step.StepRunner``).

    One process, no micro-batches: the loss scores candidate pairs with the student directly. ``bf16`` runs
    the student's scoring under bfloat16 autocast (its ``bf16`` switch); fp16 is not supported."""

    def __init__(self, model, student, loss: "FusionLoss", device: torch.device, precision: str = "fp32",
                 accum_steps: int = 1, world: World = SINGLE, scaler=None):
        if world.distributed:
            raise ValueError("a fusion (cross-encoder) student trains in one process; run without torchrun")
        if accum_steps != 1:
            raise ValueError(f"accum_steps: a fusion student takes no micro-batches; got {accum_steps}")
        if precision == "fp16":
            raise ValueError("precision: a fusion student trains in fp32 or bf16")
        self.student, self.loss, self.device = student, loss, device
        student.bf16 = precision == "bf16"

    def __call__(self, batch: Batch) -> LossOutput:
        out = self.loss(self.student, batch.images, batch.texts, batch.image_index.to(self.device))
        out.loss.backward()
        return out


class FusionLoss(DCDLoss):
    """DCD (or the authors' recipe) for a cross-encoder student on candidate logits it computes itself.

    ``loss(student, images, texts, image_ids)`` -> ``LossOutput`` with ``con`` None; ``images`` / ``texts``
    are the batch's raw rows (row i: image i and its caption i), ``image_ids`` [B] mark rows of one image."""

    step_runner = FusionStepRunner

    def __init__(self, teacher, recipe: str = "dcd", k: int = 7, alpha: float = 0.2, temperature: float = 1.0,
                 kind: str = "kl", weighting: str = "dcd", mine_by: str = "teacher", teacher_pool: int = 32,
                 seed: int = 0):
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}; got {recipe!r}")
        if recipe == "authors":
            mine_by = "teacher"
        if teacher_pool < k:
            raise ValueError(f"teacher_pool ({teacher_pool}) must be at least k ({k})")
        super().__init__(teacher, k=k, alpha=alpha, temperature=temperature, kind=kind, weighting=weighting,
                         con_weight=0.0, mine_by=mine_by, teacher_pool=teacher_pool, queue_size=0, seed=seed)
        self.recipe = recipe
        self.student_pairs = 0  # distinct pairs the student scored in the last step (mining included)

    def collator(self) -> RawCollator:
        return RawCollator()

    @staticmethod
    def row_scores(score_fn, pairs: Tensor, image_ids: Tensor) -> Tensor:
        """Scores of (batch row, batch column) pairs, rows of one image sharing their work; -inf where a
        pair holds -1. ``score_fn(unique_pairs)`` returns the scores of distinct pairs."""
        canonical = first_row_of_id(image_ids)
        pairs = torch.stack([torch.where(pairs[:, 0] >= 0, canonical[pairs[:, 0].clamp_min(0)], pairs[:, 0]),
                             pairs[:, 1]], dim=1)
        return score_unique_pairs(score_fn, pairs)

    def student_scores(self, student, pairs: Tensor, image_ids: Tensor, images, texts, grad: bool) -> Tensor:
        def score(unique: Tensor) -> Tensor:
            self.student_pairs += unique.shape[0]
            fn = student.pair_logits if grad else student.score_pairs
            return fn(images, texts, unique.cpu())

        return self.row_scores(score, pairs, image_ids)

    def keep_top(self, pool: Tensor, scores: Tensor) -> Tensor:
        """The positive and the ``k`` negatives of ``pool`` [B, 1+P] with the highest ``scores``; -1 padded."""
        k = min(self.k, pool.shape[1] - 1)
        top_s, top_i = scores[:, 1:].topk(k, dim=1)  # absent slots score -inf and sort last
        cand = torch.gather(pool[:, 1:], 1, top_i).masked_fill(top_s == float("-inf"), -1)
        return torch.cat([pool[:, :1], cand], dim=1)

    def candidates(self, student, image_ids: Tensor, images, texts) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(i2t, i2t teacher logits, t2i, t2i teacher logits), [B, k+1] each, slot 0 the positive."""
        b = image_ids.numel()
        if self.mine_by == "teacher":
            return self.mine_by_teacher(image_ids.new_empty(b, 0), image_ids, images, texts)
        rows = torch.arange(b, device=image_ids.device).view(-1, 1)
        i2t_pool = torch.cat([rows, self.random_pool(image_ids)], dim=1)
        t2i_pool = torch.cat([rows, self.random_pool(image_ids)], dim=1)
        s = self.student_scores(student, both_way_pairs(i2t_pool, t2i_pool), image_ids, images, texts, grad=False)
        n = i2t_pool.numel()
        i2t = self.keep_top(i2t_pool, s[:n].view_as(i2t_pool))
        t2i = self.keep_top(t2i_pool, s[n:].view_as(t2i_pool))
        t = self.teacher_scores(both_way_pairs(i2t, t2i), image_ids, images, texts)
        return i2t, t[:i2t.numel()].view_as(i2t), t2i, t[i2t.numel():].view_as(t2i)

    def forward(self, student, images, texts, image_ids: Tensor) -> LossOutput:
        if image_ids.numel() < 2:
            raise ValueError(f"image_ids: a fusion step needs a batch of at least 2; got {image_ids.numel()}")
        start, self.teacher_pairs, self.student_pairs = time.perf_counter(), 0, 0
        with torch.no_grad():
            i2t, i2t_t, t2i, t2i_t = self.candidates(student, image_ids, images, texts)
        seconds = time.perf_counter() - start
        z = self.student_scores(student, both_way_pairs(i2t, t2i), image_ids, images, texts, grad=True)
        n = i2t.numel()
        directions = [(z[:n].view_as(i2t), i2t_t, i2t >= 0), (z[n:].view_as(t2i), t2i_t, t2i >= 0)]
        if self.recipe == "authors":
            a, b = (authors_candidate_loss(zs, t, self.temperature, self.alpha, valid) for zs, t, valid in directions)
            ones = torch.ones_like(a.hard_weight)
            return LossOutput(0.5 * (a.loss + b.loss), None, 0.5 * (a.dist + b.dist), 0.5 * (a.hard + b.hard),
                              ones, a.hard_weight, torch.ones_like(b.hard_weight), b.hard_weight,
                              self.teacher_pairs, seconds)
        a, b = (candidate_loss(zs, t, self.temperature, self.kind, self.weighting, valid)
                for zs, t, valid in directions)
        dist, hard = 0.5 * (a.dist + b.dist), 0.5 * (a.hard + b.hard)
        loss = self.alpha * dist + (1 - self.alpha) * hard
        return LossOutput(loss, None, dist, hard, a.dist_weight, a.hard_weight, b.dist_weight, b.hard_weight,
                          self.teacher_pairs, seconds)

    def prepare(self, *args, **kwargs):
        raise TypeError("FusionLoss scores candidates with the student itself: call it as "
                        "loss(student, images, texts, image_ids)")

    compute = prepare

    def push(self, *args, **kwargs) -> None:
        return None

