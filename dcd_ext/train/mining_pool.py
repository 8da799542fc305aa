"""What DCD's hard-negative mining sees in one step, recorded in config.json and report.md.

Mining (and the teacher's scores and the candidate terms built on it) runs over each process's share of the
global batch: ``batch_size / processes`` captions. ``--accum-steps`` does not change it (the loss runs once
on the whole share), the process count does; the contrastive (InfoNCE) term spans the global batch either
way. So a DCD run depends on the process count, and ``--accum-steps A`` in one process does not reproduce
an A-process run."""

from __future__ import annotations

from typing import Optional


def mining_pool(loss_fn, batch_size: int, processes: int, accum_steps: int) -> Optional[dict]:
    """The mining pool of a step, or None for a loss that mines no negatives (contrastive)."""
    k = getattr(loss_fn, "k", None)
    if k is None:
        return None
    return {"captions_per_process": batch_size // processes, "processes": processes, "global_batch": batch_size,
            "accum_steps": accum_steps, "k": k, "mine_by": getattr(loss_fn, "mine_by", "student"),
            "teacher_pool": getattr(loss_fn, "teacher_pool", None)}


def describe_mining_pool(pool: dict) -> str:
    procs = pool["processes"]
    return (f"DCD mining pool: {pool['captions_per_process']} captions per process per step (the global batch of "
            f"{pool['global_batch']} over {procs} process{'es' if procs != 1 else ''}; --accum-steps "
            f"{pool['accum_steps']} does not change it, another process count does)")
