"""Started by test_distributed.py under torchrun: every process runs the library's training step on its share
of step_problem's global batch; rank r saves the reduced loss and its gradients as OUT/rank<r>-<case>.pt."""

from __future__ import annotations

import argparse

import torch

from dcd_ext.distributed import init_process_group, mean_over_ranks, shutdown, world_from_env
from dcd_ext.train.loop import wrap_for_world
from dcd_ext.train.step import StepRunner, split_batch
from step_problem import make_loss, make_problem

CASES = (("contrastive", 1), ("dcd", 1), ("dcd", 2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world, device = world_from_env(), torch.device("cpu")
    init_process_group(world, device)
    finished = False
    try:
        for kind, accum in CASES:
            student, batch, teacher = make_problem()
            share = split_batch(batch, world.size)[world.rank]
            loss_fn = make_loss(kind, teacher)
            runner = StepRunner(wrap_for_world(student, world, device), student, loss_fn, device,
                                accum_steps=accum, world=world)
            out = runner(share)
            loss = mean_over_ranks(world, {"loss": out.loss.item()}, device)["loss"]
            grads = {n: p.grad.detach().clone() for n, p in student.named_parameters()}
            torch.save({"loss": loss, "grads": grads}, f"{args.out}/rank{world.rank}-{kind}-{accum}.pt")
        finished = True
    finally:
        shutdown(world, finished)


if __name__ == "__main__":
    main()
