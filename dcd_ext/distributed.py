"""Multi-process training on ``torch.distributed``: the process group torchrun describes, embedding
gathers that keep gradients across ranks, and metric reduction.

A run started by ``torchrun --nproc_per_node N -m dcd_ext.train ...`` has WORLD_SIZE, RANK and LOCAL_RANK in
its environment; a plain ``python -m dcd_ext.train`` is a world of one and never touches the process group.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def world_from_env() -> World:
    """The world torchrun (or any env:// launcher) describes; a world of one otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(size, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")))


_WAIT_GROUP = None  # gloo, generous timeout: for ranks waiting while rank 0 validates or evaluates alone


def init_process_group(world: World, device: torch.device, timeout_minutes: float = 30.0,
                       wait_hours: float = 24.0) -> None:
    """NCCL between GPUs, gloo between CPU processes; collectives time out after ``timeout_minutes``, waits
    for rank 0's solo work (validation, the final evaluation) after ``wait_hours``."""
    global _WAIT_GROUP
    if not world.distributed or dist.is_initialized():
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size,
                            timeout=datetime.timedelta(minutes=timeout_minutes))
    _WAIT_GROUP = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=wait_hours))


def shutdown(world: World, finished: bool = True) -> None:
    """Leave the process group; ``finished`` ranks first wait for each other (gloo aborts a process that
    tears its group down while a peer is still working)."""
    global _WAIT_GROUP
    if world.distributed and dist.is_initialized():
        if finished:
            barrier(world)
        dist.destroy_process_group()
        _WAIT_GROUP = None


def _all_gather(t: Tensor) -> Tensor:
    # the list form: the single-tensor variants changed names between torch releases
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward sums every rank's gradient of each shard and returns the
    caller's own shard, so losses computed against gathered embeddings train the rank that owns them."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ctx.rows, ctx.rank = t.shape[0], dist.get_rank()
        return _all_gather(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == "nccl":
            out = torch.empty((ctx.rows,) + tuple(grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter(out, list(grad.chunk(dist.get_world_size())))
            return out
        # gloo has no reduce-scatter: sum everything, keep our rows
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows].clone()


def gather_with_grad(t: Tensor) -> Tensor:
    """[W * n, ...] rows of every rank in rank order; gradients flow back to each owner."""
    return _GatherWithGrad.apply(t)


@torch.no_grad()
def gather(t: Tensor) -> Tensor:
    return _all_gather(t)


def mean_over_ranks(world: World, values: dict[str, float], device: torch.device,
                    summed: tuple[str, ...] = ()) -> dict[str, float]:
    """Averages ``values`` over ranks (keys in ``summed`` are summed); every rank must pass the same keys."""
    if not world.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: t[i].item() / (1 if k in summed else world.size) for i, k in enumerate(keys)}


def gather_objects(world: World, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not world.distributed:
        return [obj]
    out: list[Optional[Any]] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(world: World, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(world: World) -> None:
    """Wait for every rank, however long rank 0's solo work takes."""
    if world.distributed:
        dist.barrier(group=_WAIT_GROUP)
