"""``python -m dcd_ext.train --demo-fusion``: the built-in demo plus the DCD authors' student form.

After the demo's teacher and its two dual-encoder students, two shallow cross-encoder (fusion) students
are distilled from the same teacher on the same training split, with the same seed, initial weights, data
order and number of steps: one with DCD's candidate terms (``--recipe dcd``), one with the authors' loss
(``--recipe authors``). Both start from a subset of the teacher's layers (``--fusion-layers``, default half
of them) on its frozen embeddings. The test split then measures each fusion student scoring every pair, and
each re-ranking the DCD dual encoder's top k (the cascade, ``--cascade-k``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..losses.fusion import FusionLoss
from ..retrieval.cascade import evaluate_cascade, evaluate_cross_encoder, parse_depths
from ..students import build_fusion_student, load_student, save_student
from .checkpoint import latest_checkpoint
from .loop import TrainSettings, train_student
from .run_dir import get_logger


@dataclass(frozen=True)
class FusionPreset:
    epochs: int
    lr: float
    k: int
    teacher_pool: int


FUSION_PRESETS = {
    "tiny": FusionPreset(epochs=1, lr=3e-3, k=3, teacher_pool=6),
    # the authors' pool of 15 random in-batch negatives, the top 7 kept
    "default": FusionPreset(epochs=10, lr=3e-3, k=7, teacher_pool=15),
}


def run_fusion_demo(args, run, device: torch.device, preset, teacher, train, val, test, dual_student) -> tuple[dict, str]:
    """Train, save, reload and evaluate the two fusion students; returns (results entries, report text)."""
    log = get_logger()
    fusion = FUSION_PRESETS[args.demo_size]
    epochs = args.fusion_epochs or fusion.epochs
    depths = parse_depths(args.cascade_k)
    settings = TrainSettings(epochs=epochs, batch_size=preset.batch_size, lr=fusion.lr,
                             weight_decay=args.weight_decay, warmup=args.warmup, grad_clip=args.grad_clip,
                             precision=args.precision, save_every=args.save_every, device=device, seed=args.seed,
                             log_every=args.log_every, keep_checkpoints=args.keep_checkpoints,
                             progress=not args.no_progress, eval_batch_size=args.eval_batch_size)
    results, seconds, layers = {}, {}, None
    for recipe in ("dcd", "authors"):
        name = f"student_fusion_{recipe}"
        torch.manual_seed(args.seed)
        student = build_fusion_student(teacher, args.fusion_layers)
        layers = f"{list(student.layers_kept)} of {student.teacher_layers}"
        loss = FusionLoss(teacher, recipe, k=fusion.k, alpha=preset.alpha, temperature=args.temperature,
                          kind=args.distill_kind, weighting=args.weighting, mine_by=args.mine_by,
                          teacher_pool=fusion.teacher_pool, seed=args.seed)
        log.info(f"[{name}] fusion student: teacher layers {layers}, "
                 f"{sum(p.numel() for p in student.parameters()):,} trained parameters")
        resume = latest_checkpoint(run.file("checkpoints", name)) if args.resume else None
        start = time.perf_counter()
        train_student(name, student, loss, train, val, settings, run, resume)
        seconds[name] = time.perf_counter() - start
        save_student(student, run.file(name))

    log.info(f"evaluating the fusion students on the test split ({test.num_images} x {test.num_captions} pairs)")
    for recipe in ("dcd", "authors"):
        name = f"student_fusion_{recipe}"
        student = load_student(run.file(name), device)
        results[name], _ = evaluate_cross_encoder(student, test, args.teacher_eval_max_pairs, seed=args.seed)
        cascade = evaluate_cascade(dual_student, student, test, depths, args.eval_batch_size, device)
        results.update({f"cascade_{recipe}_top{k}": cascade[f"cascade_top{k}"] for k in depths})
    text = "\n".join([
        f"- fusion students: teacher layers {layers} on its frozen embeddings, {epochs} epochs x batch "
        f"{preset.batch_size}, lr {fusion.lr}, k = {fusion.k} of a random pool of {fusion.teacher_pool}; "
        f"DCD recipe: kind {args.distill_kind}, weighting {args.weighting}, mining by {args.mine_by}; authors' recipe: "
        f"alpha {preset.alpha} T^2 MSE + entropy-weighted BCE, mining by the teacher",
        "- training time: " + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items()),
        f"- cascade_<recipe>_top<k>: student_dcd retrieves, the fusion student re-ranks its top k "
        f"(k in {list(depths)}); no teacher at query time"])
    return results, text
