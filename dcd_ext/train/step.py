"""One optimisation step: embed, mine, loss, backward, update; over micro-batches and processes.

With ``accum_steps`` A > 1 the step is exact gradient accumulation for a batch-level loss (the GradCache
scheme): every micro-batch is embedded without a graph, the loss (mining, teacher scores, the fused
contrastive term over the whole batch) runs once on those embeddings, and each micro-batch is then embedded
again with a graph and back-propagated with its slice of the embedding gradient. Memory holds one
micro-batch's activations plus O(B) embeddings; the result equals the gradient of the loss over the whole
batch with every micro-batch embedded on its own (batch norm sees micro-batches, as it sees each process's
share in data-parallel training).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
from torch import Tensor, nn

from ..data import Batch
from ..distributed import SINGLE, World
from ..losses import LossOutput, StudentLoss


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision: fp16 needs a CUDA device; use bf16 on CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    n = batch.pixels.shape[0]
    if n % parts:
        raise ValueError(f"accum_steps: {parts} does not divide this process's batch of {n}")
    size = n // parts
    return [Batch(*(field[i * size:(i + 1) * size] for field in (
        batch.pixels, batch.input_ids, batch.attention_mask, batch.image_index, batch.caption_index,
        batch.images, batch.texts))) for i in range(parts)]


def embed(model: nn.Module, batch: Batch, device: torch.device, precision: str) -> tuple[Tensor, Tensor, Tensor]:
    """(image embeddings, text embeddings, logit scale); both embeddings in one dtype, the scale in float32."""
    with autocast_for(precision, device):
        img, txt, scale = model(batch.pixels.to(device), batch.input_ids.to(device), batch.attention_mask.to(device))
    if img.dtype != txt.dtype:
        dtype = torch.promote_types(img.dtype, txt.dtype)
        img, txt = img.to(dtype), txt.to(dtype)
    return img, txt, scale.float()


def rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


class StepRunner:
    """Forward and backward of one step for ``student`` (``model`` is the student itself, or its
    DistributedDataParallel wrapper) and a loss, in ``world`` processes with ``accum_steps`` micro-batches."""

    def __init__(self, model: nn.Module, student: nn.Module, loss: StudentLoss, device: torch.device,
                 precision: str = "fp32", accum_steps: int = 1, world: World = SINGLE,
                 scaler: Optional[torch.amp.GradScaler] = None):
        self.model, self.student, self.loss, self.device = model, student, loss, device
        self.precision, self.accum_steps, self.world, self.scaler = precision, accum_steps, world, scaler

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def __call__(self, batch: Batch) -> LossOutput:
        ids = batch.image_index.to(self.device)
        if self.accum_steps == 1:
            img, txt, scale = embed(self.model, batch, self.device, self.precision)
            targets = self.loss.prepare(img.detach(), txt.detach(), ids, batch.images, batch.texts)
            out = self.loss.compute(img, txt, scale, ids, targets, self.world)
            self.backward(out.loss)
            self.loss.push(img, txt, ids, self.world)
            return out
        return self.accumulated(batch, ids)

    def accumulated(self, batch: Batch, ids: Tensor) -> LossOutput:
        micro = split_batch(batch, self.accum_steps)
        # the graph-free pass must leave batch-norm statistics and the RNG as the graph pass will find them
        buffers = {k: b.clone() for k, b in self.student.named_buffers()}
        states, parts = [], []
        with torch.no_grad():
            for m in micro:
                states.append(rng_state(self.device))
                parts.append(embed(self.student, m, self.device, self.precision))
        with torch.no_grad():
            for k, b in self.student.named_buffers():
                b.copy_(buffers[k])
        after = rng_state(self.device)
        img = torch.cat([p[0] for p in parts]).requires_grad_()
        txt = torch.cat([p[1] for p in parts]).requires_grad_()
        scale = parts[0][2].detach().requires_grad_()
        targets = self.loss.prepare(img.detach(), txt.detach(), ids, batch.images, batch.texts)
        out = self.loss.compute(img, txt, scale, ids, targets, self.world)
        self.backward(out.loss)
        g_img, g_txt, g_scale = img.grad.float(), txt.grad.float(), scale.grad / len(micro)
        size = img.shape[0] // len(micro)
        for j, m in enumerate(micro):
            set_rng_state(states[j], self.device)
            last = j == len(micro) - 1
            sync = nullcontext() if last or not self.world.distributed else self.model.no_sync()
            with sync:
                mi, mt, ms = embed(self.model, m, self.device, self.precision)
                rows = slice(j * size, (j + 1) * size)
                # every micro-batch carries 1/A of the scale's gradient so every parameter gets one each time
                ((mi.float() * g_img[rows]).sum() + (mt.float() * g_txt[rows]).sum() + ms * g_scale).backward()
        set_rng_state(after, self.device)
        self.loss.push(img.detach(), txt.detach(), ids, self.world)
        return out._replace(loss=out.loss.detach())


def apply_update(student: nn.Module, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler],
                 grad_clip: float) -> None:
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(student.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    student.clamp_logit_scale()
