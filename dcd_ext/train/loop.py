"""The training loop of one student: AdamW with warm-up and cosine decay, a checkpoint every epoch, a
checkpoint on Ctrl-C, and a validation recall after every epoch."""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

from ..data import BatchCollator, RetrievalSet, make_train_loader, steps_per_epoch
from ..evaluate import evaluate_student
from .checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint
from .run_dir import RunDir, get_logger


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    warmup: Optional[int] = None  # steps; None: 5% of all steps
    grad_clip: float = 1.0
    precision: str = "fp32"
    device: torch.device = torch.device("cpu")
    seed: int = 0
    log_every: int = 10
    workers: int = 0
    keep_checkpoints: int = 3
    progress: bool = True  # progress bars on a terminal (never in logs or pipes)
    eval_batch_size: int = 256


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


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision: fp16 needs a CUDA device; use bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class Interrupted(Exception):
    """Raised after Ctrl-C once the interrupted checkpoint is on disk."""

    def __init__(self, checkpoint: str):
        super().__init__(f"interrupted; state saved to {checkpoint}")
        self.checkpoint = checkpoint


def optimisation_step(trained: torch.nn.ModuleDict, batch, optimizer, scaler, settings: TrainSettings, lr: float):
    """One step: forward, loss, backward, clip, update; returns the loss output."""
    student, loss_fn, device = trained["student"], trained["loss"], settings.device
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast_for(settings.precision, device):
        img, txt, scale = student(batch.pixels.to(device), batch.input_ids.to(device),
                                  batch.attention_mask.to(device))
    out = loss_fn(img, txt, scale.float(), batch.image_index.to(device), batch.images, batch.texts)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(out.loss).backward()
        scaler.unscale_(optimizer)
    else:
        out.loss.backward()
    if settings.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(trained.parameters(), settings.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    student.clamp_logit_scale()
    return out


def loss_terms(out) -> dict[str, float]:
    row = {"loss": out.loss.item(), "con": out.con.item()}
    for key in ("dist", "hard"):
        if getattr(out, key) is not None:
            row[key] = getattr(out, key).item()
    return row


def train_student(run_name: str, student, loss_fn, train_split: RetrievalSet, val_split: Optional[RetrievalSet],
                  settings: TrainSettings, run: RunDir, resume_from: Optional[str] = None) -> dict:
    """Train ``student`` in place; returns a summary (steps, seconds, teacher pairs, last validation metrics)."""
    log = get_logger()
    device = settings.device
    student.to(device)
    loader = make_train_loader(train_split, BatchCollator(student.image_transform, student.tokenizer),
                               settings.batch_size, settings.seed, settings.workers)
    per_epoch = steps_per_epoch(train_split, settings.batch_size)
    total = per_epoch * settings.epochs
    warmup = settings.warmup if settings.warmup is not None else max(1, total // 20)
    # a loss with weights of its own (the teacher's rank head while the demo teacher trains) trains with the
    # student and is checkpointed with it
    trained = torch.nn.ModuleDict({"student": student, "loss": loss_fn})
    optimizer = make_optimizer(trained, settings.lr, settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
    ckpt_dir = run.checkpoint_dir(run_name)

    start_epoch, skip, global_step = 0, 0, 0
    if resume_from is not None:
        progress = load_checkpoint(resume_from, trained, optimizer)
        start_epoch, skip, global_step = progress["epoch"], progress["step"], progress["global_step"]
        run.truncate_metrics(run_name, global_step)
        log.info(f"[{run_name}] resumed from {resume_from} at epoch {start_epoch + 1}, step {skip} of {per_epoch}")

    summary = {"steps": global_step, "seconds": 0.0, "teacher_pairs": 0, "teacher_seconds": 0.0, "val": None}
    started = time.perf_counter()
    log.info(f"[{run_name}] {settings.epochs} epochs x {per_epoch} steps of {settings.batch_size} captions "
             f"on {device} ({settings.precision})")
    for epoch in range(start_epoch, settings.epochs):
        trained.train()
        loader.sampler.set_epoch(epoch, skip * settings.batch_size)
        step_in_epoch, sums = skip, {}
        bar = tqdm(loader, total=per_epoch - skip, desc=f"{run_name} epoch {epoch + 1}/{settings.epochs}",
                   disable=None if settings.progress else True, leave=False, dynamic_ncols=True)
        try:
            for batch in bar:
                lr = lr_at(global_step, total, warmup, settings.lr)
                out = optimisation_step(trained, batch, optimizer, scaler, settings, lr)
                global_step += 1
                step_in_epoch += 1
                row = loss_terms(out)
                if not math.isfinite(row["loss"]):
                    raise FloatingPointError(f"[{run_name}] loss is {row['loss']} at step {global_step}")
                for key, value in row.items():
                    sums[key] = sums.get(key, 0.0) + value
                summary["teacher_pairs"] += out.teacher_pairs
                summary["teacher_seconds"] += out.teacher_seconds
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                if global_step % settings.log_every == 0 or step_in_epoch == per_epoch:
                    run.log_metrics({"run": run_name, "epoch": epoch + step_in_epoch / per_epoch, "step": global_step,
                                     "lr": lr, "logit_scale": student.logit_scale.item(),
                                     "teacher_pairs": out.teacher_pairs, **row})
        except KeyboardInterrupt:
            path = os.path.join(ckpt_dir, "interrupted.safetensors")
            save_checkpoint(path, trained, optimizer, {"epoch": epoch, "step": step_in_epoch, "global_step": global_step})
            log.info(f"[{run_name}] interrupted at epoch {epoch + 1}, step {step_in_epoch}; saved {path}")
            raise Interrupted(path) from None
        finally:
            bar.close()
        steps_run, skip = step_in_epoch - skip, 0
        end_of_epoch(epoch, global_step, trained, optimizer, ckpt_dir, settings.keep_checkpoints)
        message = f"[{run_name}] epoch {epoch + 1}: " + " ".join(f"{k} {v / max(1, steps_run):.4f}"
                                                                for k, v in sums.items())
        if val_split is not None:
            summary["val"] = evaluate_student(student, val_split, settings.eval_batch_size, device)
            run.log_metrics({"run": run_name, "epoch": epoch + 1, "step": global_step, "split": "val", **summary["val"]})
            message += f" | val RSUM {summary['val']['rsum']:.1f}"
        log.info(message)
    summary["steps"] = global_step
    summary["seconds"] = time.perf_counter() - started
    return summary


def end_of_epoch(epoch: int, global_step: int, trained, optimizer, ckpt_dir: str, keep: int) -> None:
    """The epoch checkpoint (replacing any interrupted one), then pruning of old ones."""
    path = os.path.join(ckpt_dir, f"epoch_{epoch + 1:03d}.safetensors")
    save_checkpoint(path, trained, optimizer, {"epoch": epoch + 1, "step": 0, "global_step": global_step})
    stale = os.path.join(ckpt_dir, "interrupted.safetensors")
    if os.path.exists(stale):
        os.remove(stale)
    prune_checkpoints(ckpt_dir, keep)
