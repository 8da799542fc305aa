"""Training losses: :class:`DCDLoss` (mining -> teacher scoring -> fused DCD loss) and the contrastive baseline.

Per step, :class:`DCDLoss`
1. mines, for every image, the k in-batch captions the student ranks highest that are not its own
   (``similarity_topk`` with image ids masked), and the same for every caption (``mine_by="student"``); or
   lets the teacher rank a random pool of in-batch negatives per anchor and keeps its top k
   (``mine_by="teacher"``, the method authors' variant);
2. has the teacher score [positive, k negatives] for every anchor, each distinct pair once;
3. calls ``dcd_ext.ops.dynamic_contrastive_loss``. With an embedding queue the contrastive term also
   sees the queued embeddings as negatives; the candidate terms stay in-batch (the teacher needs the raw
   image and text of every candidate).

Used in your own training loop (no CLI; docs/plugin.md)::

    dcd = DCDLoss(teacher, k=7, alpha=0.2)       # a CrossEncoderTeacher, or teacher(images, texts, pairs)
    out = dcd(img_emb, txt_emb, logit_scale, image_ids, images, texts)
    out.loss.backward()                          # out.con, out.dist, out.hard, weights, teacher_seconds
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor, nn

from ..retrieval.teacher_scoring import both_way_pairs, score_unique_pairs
from ..loss_options import KINDS, WEIGHTINGS
from ..distributed import SINGLE, World, gather, gather_with_grad

MINE_BY = ("student", "teacher")


def ops():
    from .. import ops as compiled
    return compiled


class LossOutput(NamedTuple):
    """A step's loss and its named parts.

    ``loss`` = con_weight * ``con`` + alpha * ``dist`` + (1 - alpha) * ``hard`` (the only differentiable
    output callers need); ``con`` the bidirectional InfoNCE term, ``dist`` the distillation term and
    ``hard`` the student's own cross-entropy over its candidates (both averaged over the two directions);
    ``*_weight`` the per-anchor dynamic weights [B] of the two candidate terms in each direction;
    ``teacher_pairs`` the distinct (image, text) pairs the teacher scored and ``teacher_seconds`` the time
    spent mining and scoring them. The contrastive baseline fills ``loss`` and ``con`` only."""

    loss: Tensor
    con: Tensor
    dist: Optional[Tensor] = None
    hard: Optional[Tensor] = None
    i2t_dist_weight: Optional[Tensor] = None
    i2t_hard_weight: Optional[Tensor] = None
    t2i_dist_weight: Optional[Tensor] = None
    t2i_hard_weight: Optional[Tensor] = None
    teacher_pairs: int = 0
    teacher_seconds: float = 0.0


class EmbeddingQueue:
    """The most recent ``size`` (image, text, image id) embeddings, detached; oldest out first."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"queue_size must be >= 0; got {size}")
        self.size = size
        self.img: Optional[Tensor] = None
        self.txt: Optional[Tensor] = None
        self.ids: Optional[Tensor] = None

    def __len__(self) -> int:
        return 0 if self.ids is None else self.ids.numel()

    def push(self, img: Tensor, txt: Tensor, ids: Tensor) -> None:
        if self.size == 0:
            return
        img, txt, ids = img.detach(), txt.detach(), ids.detach()
        if self.ids is not None:
            img, txt, ids = torch.cat([img, self.img]), torch.cat([txt, self.txt]), torch.cat([ids, self.ids])
        self.img, self.txt, self.ids = img[: self.size], txt[: self.size], ids[: self.size]


def contrastive_with_queue(img: Tensor, txt: Tensor, logit_scale: Tensor, ids: Tensor,
                           queue: EmbeddingQueue) -> Tensor:
    """In-batch InfoNCE whose denominators also hold the queue; queued rows and columns carry no term."""
    if len(queue) == 0:
        return ops().contrastive_loss(img, txt, logit_scale, img_ids=ids, txt_ids=ids)
    b, q = img.shape[0], len(queue)
    pos = torch.cat([torch.arange(b, device=img.device), torch.full((q,), -1, dtype=torch.int64, device=img.device)])
    all_ids = torch.cat([ids, queue.ids])
    return ops().contrastive_loss(torch.cat([img, queue.img.to(img.dtype)]), torch.cat([txt, queue.txt.to(txt.dtype)]),
                                  logit_scale, pos_row=pos, pos_col=pos, img_ids=all_ids, txt_ids=all_ids)


def contrastive_term(img: Tensor, txt: Tensor, logit_scale: Tensor, ids: Tensor, queue: EmbeddingQueue,
                     world: World = SINGLE) -> Tensor:
    """L_con of this process's rows. In a world of W processes each rank's rows and captions are ranked
    against the embeddings of every rank (gathered with their gradients) and the queue; the mean of the
    ranks' values is the global batch's L_con, and its gradient is what data-parallel averaging yields."""
    if not world.distributed:
        return contrastive_with_queue(img, txt, logit_scale, ids, queue)
    cols_img, cols_txt, col_ids = gather_with_grad(img), gather_with_grad(txt), gather(ids)
    if len(queue):
        cols_img = torch.cat([cols_img, queue.img.to(img.dtype)])
        cols_txt = torch.cat([cols_txt, queue.txt.to(txt.dtype)])
        col_ids = torch.cat([col_ids, queue.ids])
    b = img.shape[0]
    rows = world.rank * b + torch.arange(b, device=img.device)
    no_term = torch.full((col_ids.numel(),), -1, dtype=torch.int64, device=img.device)
    # a side with no terms contributes 0, so each call is half of this rank's mean row (caption) term
    i2t = ops().contrastive_loss(img, cols_txt, logit_scale, pos_row=rows, pos_col=no_term, img_ids=ids, txt_ids=col_ids)
    t2i = ops().contrastive_loss(txt, cols_img, logit_scale, pos_row=rows, pos_col=no_term, img_ids=ids, txt_ids=col_ids)
    return i2t + t2i


class Targets(NamedTuple):
    """What a step's loss needs besides the embeddings: candidate lists and their teacher logits."""
    i2t: Optional[Tensor] = None
    i2t_teacher: Optional[Tensor] = None
    t2i: Optional[Tensor] = None
    t2i_teacher: Optional[Tensor] = None
    teacher_pairs: int = 0
    teacher_seconds: float = 0.0


# how far a row's L2 norm may be from 1: rounding of 16-bit embeddings, and of float32 ones
NORM_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 2e-2}
NORM_TOLERANCE_DEFAULT = 1e-3


def check_normalised(img: Tensor, txt: Tensor) -> None:
    """ValueError naming the argument when a row of ``img`` or ``txt`` is not L2-normalised (O(B·D)): the loss's
    logits are ``logit_scale`` times cosine similarities, and un-normalised rows (a model's raw projection
    output, CLIP's ``get_image_features``) would train on logits many times too large without an error."""
    with torch.no_grad():
        for name, t in (("img", img), ("txt", txt)):
            norms = torch.linalg.vector_norm(t.detach().float(), dim=1)
            off = (norms - 1).abs()
            worst = int(off.argmax())
            if not bool(off[worst] <= NORM_TOLERANCE.get(t.dtype, NORM_TOLERANCE_DEFAULT)):  # also catches nan
                raise ValueError(f"{name}: DCDLoss needs L2-normalised embedding rows (docs/plugin.md); row {worst} "
                                 f"has norm {float(norms[worst]):.4g}: pass torch.nn.functional.normalize({name}, "
                                 "dim=-1)")


def check_batch(img: Tensor, txt: Tensor, image_ids, images, texts) -> Tensor:
    """The image ids as an int64 tensor on the embeddings' device, after checking that every part of the
    batch describes the same B rows; a TypeError / ValueError naming the caller's argument otherwise.
    ``images`` / ``texts`` may be None (losses without a teacher do not read them)."""
    for name, t in (("img", img), ("txt", txt)):
        if not torch.is_tensor(t) or not t.is_floating_point() or t.dim() != 2:
            what = f"a {t.dtype} tensor of shape {tuple(t.shape)}" if torch.is_tensor(t) else type(t).__name__
            raise TypeError(f"{name}: expected a floating [B, D] tensor of embeddings; got {what}")
    if img.shape != txt.shape:
        raise ValueError(f"img and txt: row i of each is a positive pair, so their shapes must be equal; got "
                         f"{tuple(img.shape)} and {tuple(txt.shape)}")
    b = img.shape[0]
    ids = torch.as_tensor(image_ids, device=img.device)
    if ids.shape != (b,) or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"image_ids: expected an int64 tensor [{b}] (one image id per row); got {ids.dtype} of "
                         f"shape {tuple(ids.shape)}")
    for name, items in (("images", images), ("texts", texts)):
        if items is None:
            continue
        if isinstance(items, str) or not hasattr(items, "__len__"):
            raise TypeError(f"{name}: expected a list of the batch's {b} raw {name} (one per row, what the teacher "
                            f"reads); got {type(items).__name__}")
        if len(items) != b:
            raise ValueError(f"{name}: expected {b} {name} (one per row of img/txt); got {len(items)}")
    return ids.long()


class StudentLoss(nn.Module):
    """A loss in three parts, so that a step can mine once and evaluate the loss on embeddings assembled
    from several micro-batches and processes: :meth:`prepare` (no gradient: mining, teacher scores),
    :meth:`compute` (differentiable) and :meth:`push` (the queue, after the step)."""

    def __init__(self, queue_size: int = 0):
        super().__init__()
        self.queue = EmbeddingQueue(queue_size)

    def prepare(self, img: Tensor, txt: Tensor, image_ids: Tensor, images, texts) -> Targets:
        return Targets()

    def compute(self, img: Tensor, txt: Tensor, logit_scale: Tensor, image_ids: Tensor, targets: Targets,
                world: World = SINGLE) -> LossOutput:
        raise NotImplementedError

    def push(self, img: Tensor, txt: Tensor, image_ids: Tensor, world: World = SINGLE) -> None:
        """Queue this step's embeddings (every rank's, in a world of several)."""
        if self.queue.size == 0:
            return
        if world.distributed:
            img, txt, image_ids = gather(img.detach()), gather(txt.detach()), gather(image_ids)
        self.queue.push(img, txt, image_ids)

    def forward(self, img: Tensor, txt: Tensor, logit_scale: Tensor, image_ids: Tensor, images=None,
                texts=None) -> LossOutput:
        """The whole step's loss for a batch of B (image, text) rows (see :class:`DCDLoss`)."""
        image_ids = check_batch(img, txt, image_ids, images, texts)
        if not isinstance(logit_scale, Tensor):
            logit_scale = torch.tensor(float(logit_scale), device=img.device)
        targets = self.prepare(img.detach(), txt.detach(), image_ids, images, texts)
        out = self.compute(img, txt, logit_scale, image_ids, targets)
        self.push(img, txt, image_ids)
        return out

    def state_tensors(self) -> dict[str, Tensor]:
        """State a resumed run needs besides the weights (the queue)."""
        q = self.queue
        return {} if q.ids is None else {"queue.img": q.img, "queue.txt": q.txt, "queue.ids": q.ids}

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        """``state`` as :meth:`state_tensors` returned it, already on the training device."""
        q = self.queue
        q.img, q.txt, q.ids = (state.get(f"queue.{k}") for k in ("img", "txt", "ids"))


class ContrastiveLoss(StudentLoss):
    """The baseline: bidirectional InfoNCE with image-id masking (and the optional queue)."""

    def compute(self, img: Tensor, txt: Tensor, logit_scale: Tensor, image_ids: Tensor, targets: Targets,
                world: World = SINGLE) -> LossOutput:
        con = contrastive_term(img, txt, logit_scale, image_ids, self.queue, world)
        return LossOutput(con, con)


def mine_candidates(img: Tensor, txt: Tensor, k: int, image_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Candidate lists [B, k+1] both ways, the positive (row's own pair) first, then the k most similar
    captions of other images (``i2t``) and the k most similar other images (``t2i``), -1 padded."""
    rows = torch.arange(img.shape[0], device=img.device).view(-1, 1)
    i2t = torch.cat([rows, ops().similarity_topk(img, txt, k, image_ids, image_ids)[1]], dim=1)
    t2i = torch.cat([rows, ops().similarity_topk(txt, img, k, image_ids, image_ids)[1]], dim=1)
    return i2t, t2i


def first_row_of_id(ids: Tensor) -> Tensor:
    """For each row, the first row holding the same id (rows showing one image share its teacher work)."""
    _, inverse = torch.unique(ids, return_inverse=True)
    rows = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((int(inverse.max()) + 1,), ids.numel(), dtype=torch.int64, device=ids.device)
    return first.scatter_reduce(0, inverse, rows, reduce="amin")[inverse]


PairScorer = Callable[[Sequence[Any], Sequence[Any], Tensor], Tensor]


def pair_scorer(teacher) -> PairScorer:
    """The function DCD calls on the mined pairs: ``teacher.score_pairs`` (a
    :class:`~dcd_ext.teachers.CrossEncoderTeacher` or anything with that method), else ``teacher`` itself,
    called as ``teacher(images, texts, pairs)`` with ``pairs`` an int64 [P, 2] CPU tensor of (index into
    images, index into texts) and returning P scores (higher = better match; a tensor or a sequence)."""
    if teacher is None:
        raise ValueError("teacher: DCDLoss needs a teacher: a CrossEncoderTeacher (load_teacher) or a callable "
                         "teacher(images, texts, pairs) -> scores [P]")
    score = getattr(teacher, "score_pairs", None)
    if callable(score):
        return score
    if callable(teacher):
        return teacher
    raise TypeError(f"teacher: expected a CrossEncoderTeacher or a callable teacher(images, texts, pairs); "
                    f"got {type(teacher).__name__}")


def checked_scores(scores, count: int) -> Tensor:
    """A teacher's answer as float32 [count], or a ValueError that says what came back."""
    scores = torch.as_tensor(scores).detach()
    if scores.shape != (count,):
        raise ValueError(f"teacher: returned scores of shape {tuple(scores.shape)} for {count} pairs; "
                         f"expected [{count}]")
    scores = scores.float()
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("teacher: returned non-finite scores (nan or inf)")
    return scores


class DCDLoss(StudentLoss):
    """Dynamic contrastive distillation: ``loss_fn(img, txt, logit_scale, image_ids, images, texts)``.

    Call arguments (one row per (image, caption) pair of the batch, B >= 2 rows):

    - ``img`` [B, D], ``txt`` [B, D]: the student's L2-normalised image and caption embeddings; row i of each
      is a positive pair (the same image may fill several rows, once per caption). Floating point, one device.
      A row whose norm is not 1 (to rounding) is a ValueError naming the argument: normalise them first.
    - ``logit_scale``: the student's scale σ, a one-element tensor (it receives a gradient).
    - ``image_ids`` [B] int64: rows with equal ids show the same image, so their captions are never each
      other's negatives (in the contrastive denominators and in mining).
    - ``images``: B PIL images, row i's image, and ``texts``: B strings, row i's caption: what the teacher
      reads. All three lists describe the same rows as ``img``/``txt``.

    The teacher is a :class:`~dcd_ext.teachers.CrossEncoderTeacher` (``load_teacher("blip", folder)`` ...) or
    any object with ``score_pairs(images, texts, pairs)``, or any callable ``teacher(images, texts, pairs)``:
    ``pairs`` [P, 2] int64 (image index, text index) into the lists it is given, one float score per pair,
    higher for a better match (a cross-encoder's logit); it is asked only for the mined pairs, each distinct
    pair once per step, without gradients (see docs/plugin.md).

    Returns :class:`LossOutput` (``loss``, ``con``, ``dist``, ``hard``, the per-anchor weights, and the
    number of distinct pairs the teacher scored).

    The dynamic weights (``weighting``: ``entropy``, ``wsl``, ``dcd``) are computed from the teacher's and the
    student's candidate logits but are constants for the gradient (stop-gradient): they scale each anchor's
    distillation and hard terms and do not themselves get trained towards any value
    (docs/design.md section 3.3).
    """

    def __init__(self, teacher, k: int = 7, alpha: float = 0.2, temperature: float = 1.0, kind: str = "kl",
                 weighting: str = "dcd", con_weight: float = 1.0, mine_by: str = "student",
                 teacher_pool: int = 32, queue_size: int = 0, seed: int = 0):
        self._score_pairs = pair_scorer(teacher)
        if k < 1:
            raise ValueError(f"k must be at least 1; got {k}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}")
        for name, value, allowed in (("kind", kind, KINDS), ("weighting", weighting, WEIGHTINGS),
                                     ("mine_by", mine_by, MINE_BY)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if mine_by == "teacher" and teacher_pool < k:
            raise ValueError(f"teacher_pool ({teacher_pool}) must be at least k ({k})")
        super().__init__(queue_size)
        self.teacher = teacher
        self.k, self.alpha, self.temperature, self.kind = k, alpha, temperature, kind
        self.weighting, self.con_weight, self.mine_by, self.teacher_pool = weighting, con_weight, mine_by, teacher_pool
        self.generator = torch.Generator().manual_seed(seed)
        self.teacher_pairs = 0  # distinct pairs the teacher scored in the last step

    def teacher_scores(self, pairs: Tensor, image_ids: Tensor, images, texts) -> Tensor:
        """Teacher scores of (batch row, batch column) pairs; -inf where the pair holds -1."""
        canonical = first_row_of_id(image_ids)
        pairs = torch.stack([torch.where(pairs[:, 0] >= 0, canonical[pairs[:, 0].clamp_min(0)], pairs[:, 0]),
                             pairs[:, 1]], dim=1)
        def score(unique: Tensor) -> Tensor:
            self.teacher_pairs += unique.shape[0]
            return checked_scores(self._score_pairs(images, texts, unique.cpu()), unique.shape[0])

        return score_unique_pairs(score, pairs)

    def mine_by_student(self, img: Tensor, txt: Tensor, image_ids: Tensor, images, texts):
        i2t, t2i = mine_candidates(img, txt, self.k, image_ids)
        scores = self.teacher_scores(both_way_pairs(i2t, t2i), image_ids, images, texts)
        n = i2t.numel()
        return i2t, scores[:n].view_as(i2t), t2i, scores[n:].view_as(t2i)

    def random_pool(self, image_ids: Tensor) -> Tensor:
        """[B, pool] random in-batch negatives per anchor (never a row of the same image), -1 padded.
        Drawn in row blocks, so memory stays O(B * block) rather than O(B^2)."""
        b = image_ids.numel()
        pool = min(self.teacher_pool, b - 1)
        block = max(1, (1 << 20) // b)
        ids = image_ids.cpu()
        out = []
        for start in range(0, b, block):
            rows = ids[start:start + block]
            keys = torch.rand(rows.numel(), b, generator=self.generator)
            keys = keys.masked_fill(rows.view(-1, 1) == ids.view(1, -1), -1.0)
            values, index = keys.topk(pool, dim=1)
            out.append(index.masked_fill(values < 0, -1))
        return torch.cat(out).to(image_ids.device)

    def mine_by_teacher(self, img: Tensor, image_ids: Tensor, images, texts):
        rows = torch.arange(img.shape[0], device=img.device).view(-1, 1)
        i2t_pool = torch.cat([rows, self.random_pool(image_ids)], dim=1)
        t2i_pool = torch.cat([rows, self.random_pool(image_ids)], dim=1)
        scores = self.teacher_scores(both_way_pairs(i2t_pool, t2i_pool), image_ids, images, texts)
        n = i2t_pool.numel()

        def keep_top(pool: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
            k = min(self.k, pool.shape[1] - 1)
            top_s, top_i = s[:, 1:].topk(k, dim=1)  # absent slots score -inf and sort last
            cand = torch.gather(pool[:, 1:], 1, top_i).masked_fill(top_s == float("-inf"), -1)
            return torch.cat([pool[:, :1], cand], dim=1), torch.cat([s[:, :1], top_s], dim=1)

        i2t, i2t_t = keep_top(i2t_pool, scores[:n].view_as(i2t_pool))
        t2i, t2i_t = keep_top(t2i_pool, scores[n:].view_as(t2i_pool))
        return i2t, i2t_t, t2i, t2i_t

    def forward(self, img: Tensor, txt: Tensor, logit_scale: Tensor, image_ids: Tensor, images, texts) -> LossOutput:
        """The DCD loss of one batch; every argument is required (see the class docstring)."""
        return super().forward(img, txt, logit_scale, image_ids, images, texts)

    def prepare(self, img: Tensor, txt: Tensor, image_ids: Tensor, images, texts) -> Targets:
        """Mining and teacher scores for [B, D] L2-normalised embeddings of row i's image and caption;
        ``images``/``texts`` are the raw batch the teacher reads, ``image_ids`` [B] mark rows of one image."""
        check_batch(img, txt, image_ids, images, texts)
        for name, items in (("images", images), ("texts", texts)):
            if items is None:
                raise TypeError(f"{name}: DCDLoss needs the batch's raw {name} (what the teacher reads); got None")
        check_normalised(img, txt)
        if img.shape[0] < 2:
            raise ValueError(f"img: a DCD step needs a batch of at least 2 rows; got {img.shape[0]}")
        start, self.teacher_pairs = time.perf_counter(), 0
        with torch.no_grad():
            a, t = img.detach(), txt.detach()
            if self.mine_by == "student":
                i2t, i2t_t, t2i, t2i_t = self.mine_by_student(a, t, image_ids, images, texts)
            else:
                i2t, i2t_t, t2i, t2i_t = self.mine_by_teacher(a, image_ids, images, texts)
            # absent candidates carry -inf; the op ignores their teacher value, but it must be finite
            i2t_t = i2t_t.masked_fill(i2t < 0, 0.0)
            t2i_t = t2i_t.masked_fill(t2i < 0, 0.0)
        return Targets(i2t, i2t_t, t2i, t2i_t, self.teacher_pairs, time.perf_counter() - start)

    def compute(self, img: Tensor, txt: Tensor, logit_scale: Tensor, image_ids: Tensor, targets: Targets,
                world: World = SINGLE) -> LossOutput:
        """The DCD loss; in a world of several processes the contrastive term spans every rank's batch while
        the candidate terms stay with this rank's rows."""
        i2t, i2t_t, t2i, t2i_t, pairs, seconds = targets
        if len(self.queue) == 0 and not world.distributed:
            out = ops().dynamic_contrastive_loss(img, txt, logit_scale, i2t, i2t_t, t2i, t2i_t, image_ids,
                                                 image_ids, self.alpha, self.temperature, self.kind,
                                                 self.weighting, self.con_weight)
            # the weights are stop-gradient constants (design section 3.3): hand them out without a graph
            return LossOutput(*out[:4], *(w.detach() for w in out[4:]), teacher_pairs=pairs, teacher_seconds=seconds)
        con = contrastive_term(img, txt, logit_scale, image_ids, self.queue, world)
        a2b = ops().distill_loss(img, txt, i2t, i2t_t, logit_scale, self.temperature, self.kind, self.weighting)
        b2a = ops().distill_loss(txt, img, t2i, t2i_t, logit_scale, self.temperature, self.kind, self.weighting)
        dist, hard = 0.5 * (a2b[0] + b2a[0]), 0.5 * (a2b[1] + b2a[1])
        loss = self.con_weight * con + self.alpha * dist + (1 - self.alpha) * hard
        return LossOutput(loss, con, dist, hard, a2b[2].detach(), a2b[3].detach(), b2a[2].detach(), b2a[3].detach(),
                          pairs, seconds)

    def state_tensors(self) -> dict[str, Tensor]:
        return {**super().state_tensors(), "generator": self.generator.get_state()}

    def load_state_tensors(self, state: dict[str, Tensor]) -> None:
        super().load_state_tensors(state)
        if "generator" in state:
            self.generator.set_state(state["generator"])
