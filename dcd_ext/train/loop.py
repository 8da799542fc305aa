"""The training loop of one student: AdamW with warm-up and cosine decay, a checkpoint every epoch, a
checkpoint on Ctrl-C, a validation recall after every epoch, the best student by validation RSUM kept in
``RUN/<name>_best/``, and optional early stopping.

Metrics rows hold the means of the losses over the steps since the previous row; epoch summaries the means
over the whole epoch. Both running sums are part of every checkpoint, so a resumed run reports exactly what
an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

from ..data import BatchCollator, RetrievalSet, make_train_loader, steps_per_epoch
from ..distributed import SINGLE, World, barrier, broadcast_object, gather_objects, mean_over_ranks
from ..retrieval.evaluation import evaluate_student
from ..students import save_student
from .checkpoint import (capture_rank_state, checkpoint_files, load_checkpoint, prune_checkpoints, read_meta,
                         remove_stale_temporaries, save_checkpoint)
from ..files import write_text_atomically
from .run_dir import RunDir, get_logger
from .step import StepRunner, apply_update


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    warmup: Optional[int] = None  # steps; None: 5% of all steps
    grad_clip: float = 1.0
    precision: str = "fp32"
    accum_steps: int = 1  # micro-batches per step and process (exact accumulation, see step.py)
    save_every: int = 0  # steps between mid-epoch checkpoints (0: at epoch ends only)
    device: torch.device = torch.device("cpu")
    seed: int = 0
    log_every: int = 10
    workers: int = 0
    keep_checkpoints: int = 3
    progress: bool = True  # progress bars on a terminal (never in logs or pipes)
    eval_batch_size: int = 256
    early_stop: int = 0  # epochs without a better validation RSUM before stopping (0: never)
    run_identity: Optional[dict] = None  # recorded in every checkpoint (dcd_ext.train.run_identity)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """No weight decay on biases, norms, embeddings' position tables and the logit scale (ndim < 2)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


class Interrupted(Exception):
    """Raised after Ctrl-C once the interrupted checkpoint is on disk."""

    def __init__(self, checkpoint: Optional[str]):
        super().__init__(f"interrupted; state saved to {checkpoint}" if checkpoint else "interrupted")
        self.checkpoint = checkpoint


def loss_terms(out) -> dict[str, float]:
    row = {"loss": out.loss.item()}
    if out.con is not None:  # a cross-encoder (fusion) student's loss has no contrastive term
        row["con"] = out.con.item()
    for key in ("dist", "hard"):
        if getattr(out, key) is not None:
            row[key] = getattr(out, key).item()
    return row


def check_layout(settings: TrainSettings, world: World) -> None:
    share = world.size * settings.accum_steps
    if settings.batch_size % share:
        raise ValueError(f"batch_size: {settings.batch_size} must be a multiple of processes x accum_steps "
                         f"({world.size} x {settings.accum_steps})")
    if settings.batch_size // world.size < 2:
        raise ValueError(f"batch_size: {settings.batch_size} leaves fewer than 2 rows per process")


def wrap_for_world(student: torch.nn.Module, world: World, device: torch.device):
    """The student itself, or its DistributedDataParallel wrapper (gradients averaged over processes)."""
    if not world.distributed:
        return student
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)


def schedule_facts(settings: TrainSettings, world: World, total: int, warmup: int) -> dict:
    return {"total_steps": total, "warmup": warmup, "lr": settings.lr, "batch_size": settings.batch_size,
            "world_size": world.size, "accum_steps": settings.accum_steps, "seed": settings.seed}


class Tally:
    """Running sums of the logged values over a span of steps (the logging window, the epoch)."""

    def __init__(self, state: Optional[dict] = None):
        state = state or {}
        self.steps: int = state.get("steps", 0)
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.teacher_pairs: int = state.get("teacher_pairs", 0)

    def add(self, row: dict[str, float], pairs: int) -> None:
        self.steps += 1
        self.teacher_pairs += pairs
        for key, value in row.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.steps) for k, v in self.sums.items()}

    def state(self) -> dict:
        return {"steps": self.steps, "sums": self.sums, "teacher_pairs": self.teacher_pairs}


def negatives_warning(loss_fn, settings: TrainSettings, world: World) -> Optional[str]:
    """What --k (and --teacher-pool) effectively are when a batch cannot supply that many negatives."""
    k = getattr(loss_fn, "k", None)
    if k is None:
        return None
    rows = settings.batch_size // world.size  # mining runs over each process's share of a batch
    available = rows - 1
    parts = []
    if k > available:
        parts.append(f"--k {k} asks for more hard negatives than a batch of {rows} captions"
                     + (" per process" if world.distributed else "") + f" holds ({available} other rows, fewer "
                     f"where captions of one image share the batch): k = {available} at most is effectively used")
    pool = getattr(loss_fn, "teacher_pool", None)
    if getattr(loss_fn, "mine_by", "student") == "teacher" and pool is not None and pool > available:
        parts.append(f"--teacher-pool {pool} exceeds the {available} other rows of a batch: pools of {available} "
                     "are drawn")
    return "; ".join(parts) or None


def train_student(run_name: str, student, loss_fn, train_split: RetrievalSet, val_split: Optional[RetrievalSet],
                  settings: TrainSettings, run: RunDir, resume_from: Optional[str] = None,
                  world: World = SINGLE) -> dict:
    """Train ``student`` in place; returns a summary (steps, seconds, teacher pairs, last validation metrics,
    the best validation epoch).

    In a world of several processes every rank calls this with the same arguments; rank 0 alone writes."""
    log = get_logger()
    device = settings.device
    student.to(device)
    check_layout(settings, world)
    warning = negatives_warning(loss_fn, settings, world)
    if warning and world.is_main:
        log.warning(f"[{run_name}] {warning}")
    # a loss may bring its own collator and step (dcd_ext.losses.fusion: a cross-encoder student reads raw rows)
    collate = loss_fn.collator() if hasattr(loss_fn, "collator") else BatchCollator(student.image_transform,
                                                                                    student.tokenizer)
    loader = make_train_loader(train_split, collate, settings.batch_size, settings.seed, settings.workers,
                               world.rank, world.size)
    per_epoch = steps_per_epoch(train_split, settings.batch_size)
    total = per_epoch * settings.epochs
    warmup = settings.warmup if settings.warmup is not None else max(1, total // 20)
    optimizer = make_optimizer(student, settings.lr, settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
    model = wrap_for_world(student, world, device)
    runner = getattr(loss_fn, "step_runner", StepRunner)(model, student, loss_fn, device, settings.precision,
                                                         settings.accum_steps, world, scaler)
    ckpt_dir = run.checkpoint_dir(run_name)
    best_dir = run.file(f"{run_name}_best")
    facts = schedule_facts(settings, world, total, warmup)
    window, epoch_tally = Tally(), Tally()
    summary = {"steps": 0, "seconds": 0.0, "teacher_pairs": 0, "teacher_seconds": 0.0, "val": None, "best": None}

    def checkpoint(name: str, epoch: int, step: int, global_step: int) -> Optional[str]:
        """Every rank hands its RNG and loss state to rank 0, which writes the file."""
        states = gather_objects(world, capture_rank_state(loss_fn, device))
        if not world.is_main:
            return None
        path = os.path.join(ckpt_dir, name)
        tracking = {"window": window.state(), "epoch": epoch_tally.state(), "best": summary["best"],
                    "early_stopped": summary.get("early_stopped"),
                    "teacher_pairs": summary["teacher_pairs"], "teacher_seconds": summary["teacher_seconds"]}
        extra = {"schedule": facts, "scaler": scaler.state_dict() if scaler is not None else None,
                 "tracking": tracking, "run": settings.run_identity}
        save_checkpoint(path, student, optimizer, {"epoch": epoch, "step": step, "global_step": global_step},
                        states, extra)
        for old in checkpoint_files(ckpt_dir):  # mid-epoch and interrupted files this one supersedes
            if old != path and not os.path.basename(old).startswith("epoch_"):
                os.remove(old)
        return path

    start_epoch, skip, global_step = 0, 0, 0
    if resume_from is not None:
        saved = read_meta(resume_from)["extra"]
        changed = {k: (v, facts[k]) for k, v in saved.get("schedule", {}).items() if facts.get(k) != v}
        if changed:
            log.warning(f"[{run_name}] resuming with different settings, so not exactly where the run stopped: "
                        + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        progress = load_checkpoint(resume_from, student, optimizer, rank=world.rank, loss=loss_fn, device=device)
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        start_epoch, skip, global_step = progress["epoch"], progress["step"], progress["global_step"]
        tracking = saved.get("tracking")
        if tracking:
            window, epoch_tally = Tally(tracking["window"]), Tally(tracking["epoch"])
            summary.update(best=tracking["best"], teacher_pairs=tracking["teacher_pairs"],
                           teacher_seconds=tracking["teacher_seconds"])
            if tracking.get("early_stopped"):
                summary["early_stopped"] = tracking["early_stopped"]
                start_epoch = settings.epochs  # the run had stopped early: nothing left to train
        elif skip:
            log.warning(f"[{run_name}] {resume_from} predates saved running sums: this epoch's summary and the "
                        "next metrics row cover only the resumed steps")
        if world.is_main:
            run.truncate_metrics(run_name, global_step, validated=skip < per_epoch)
            remove_stale_temporaries(ckpt_dir)
        log.info(f"[{run_name}] resumed from {resume_from} at epoch {start_epoch + 1}, step {skip} of {per_epoch}")

    summary["steps"] = global_step
    started = time.perf_counter()
    layout = (f"{world.size} processes x " if world.distributed else "") + \
             (f"{settings.accum_steps} micro-batches of {settings.batch_size // (world.size * settings.accum_steps)}"
              if settings.accum_steps > 1 else "")
    log.info(f"[{run_name}] {settings.epochs} epochs x {per_epoch} steps of {settings.batch_size} captions"
             + (f" ({layout.rstrip(' x')})" if layout else "") + f" on {device} ({settings.precision})")

    def interrupted(epoch: int, step_in_epoch: int) -> Interrupted:
        if world.distributed:  # the other ranks may be anywhere: no collective is safe now
            log.info(f"[{run_name}] interrupted at epoch {epoch + 1}, step {step_in_epoch}; resume from the "
                     "newest checkpoint (--save-every sets how often they are written)")
            return Interrupted(None)
        path = checkpoint("interrupted.safetensors", epoch, step_in_epoch, global_step)
        log.info(f"[{run_name}] interrupted at epoch {epoch + 1}, step {step_in_epoch}; saved {path}")
        return Interrupted(path)

    for epoch in range(start_epoch, settings.epochs):
        student.train()
        loader.sampler.set_epoch(epoch, skip)
        step_in_epoch = skip
        bar = tqdm(loader, total=per_epoch - skip, desc=f"{run_name} epoch {epoch + 1}/{settings.epochs}",
                   disable=None if settings.progress and world.is_main else True, leave=False, dynamic_ncols=True)
        try:
            for batch in bar:
                lr = lr_at(global_step, total, warmup, settings.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                out = runner(batch)
                apply_update(student, optimizer, scaler, settings.grad_clip)
                global_step += 1
                step_in_epoch += 1
                row = mean_over_ranks(world, {**loss_terms(out), "teacher_pairs": out.teacher_pairs,
                                              "teacher_seconds": out.teacher_seconds}, device,
                                      summed=("teacher_pairs",))
                pairs, teacher_seconds = int(row.pop("teacher_pairs")), row.pop("teacher_seconds")
                if not math.isfinite(row["loss"]):
                    raise FloatingPointError(f"[{run_name}] loss is {row['loss']} at step {global_step}")
                window.add(row, pairs)
                epoch_tally.add(row, pairs)
                summary["teacher_pairs"] += pairs
                summary["teacher_seconds"] += teacher_seconds
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                if global_step % settings.log_every == 0 or step_in_epoch == per_epoch:
                    if world.is_main:
                        run.log_metrics({"run": run_name, "epoch": epoch + step_in_epoch / per_epoch,
                                         "step": global_step, "steps": window.steps, "lr": lr,
                                         **({"logit_scale": student.logit_scale.item()}
                                            if hasattr(student, "logit_scale") else {}),
                                         "teacher_pairs": window.teacher_pairs, **window.means()})
                    window = Tally()
                if settings.save_every and global_step % settings.save_every == 0 and step_in_epoch < per_epoch:
                    checkpoint(f"step_{global_step:07d}.safetensors", epoch, step_in_epoch, global_step)
        except KeyboardInterrupt:
            raise interrupted(epoch, step_in_epoch) from None
        finally:
            bar.close()
        skip = 0
        message = (f"[{run_name}] epoch {epoch + 1}: " + " ".join(f"{k} {v:.4f}" for k, v in epoch_tally.means().items())
                   + f" ({epoch_tally.steps} steps)")
        stop = False
        if val_split is not None:
            if world.is_main:
                try:
                    summary["val"] = evaluate_student(student, val_split, settings.eval_batch_size, device)
                except KeyboardInterrupt:  # the epoch's steps are done: resuming validates and saves it
                    raise interrupted(epoch, step_in_epoch) from None
                rsum = summary["val"]["rsum"]
                run.log_metrics({"run": run_name, "epoch": epoch + 1, "step": global_step, "split": "val",
                                 **summary["val"]})
                message += f" | val RSUM {rsum:.1f}"
                best = summary["best"]
                if best is None or rsum > best["rsum"]:
                    summary["best"] = {"epoch": epoch + 1, "step": global_step, "rsum": rsum}
                    save_student(student, best_dir)
                    write_text_atomically(os.path.join(best_dir, "validation.json"), json.dumps(
                        {"run": run_name, **summary["best"], "metrics": summary["val"]}, indent=1) + "\n")
                    message += " (best so far: saved to " + os.path.basename(best_dir) + ")"
                elif settings.early_stop and epoch + 1 - best["epoch"] >= settings.early_stop:
                    stop = True
            barrier(world)
            stop, summary["best"] = broadcast_object(world, (stop, summary["best"]))
        epoch_tally = Tally()
        if stop:
            summary["early_stopped"] = epoch + 1
        checkpoint(f"epoch_{epoch + 1:03d}.safetensors", epoch + 1, 0, global_step)
        if world.is_main:
            prune_checkpoints(ckpt_dir, settings.keep_checkpoints)
        log.info(message)
        if stop:
            best = summary["best"]
            log.info(f"[{run_name}] early stop after epoch {epoch + 1}: validation RSUM has not improved for "
                     f"{settings.early_stop} epochs (best {best['rsum']:.1f} at epoch {best['epoch']}, kept in "
                     f"{best_dir})")
            break
    summary["steps"] = global_step
    summary["seconds"] = time.perf_counter() - started
    return summary
