"""Multi-process and accumulated training steps against the single-process reference of the same global batch.

A torchrun world of 2 CPU processes (gloo) runs the library's step on its halves of a fixed batch; its loss
(averaged over ranks) and every rank's gradients must equal those of step_problem.reference_step, which
embeds the same chunks in one process and writes the loss with dcd_ext.reference's math.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dcd_ext.students import load_student
from dcd_ext.train import main
from dcd_ext.train.step import StepRunner
from distributed_step_worker import CASES
from step_problem import make_loss, make_problem, reference_step
from train_fixtures import write_table

HERE = os.path.dirname(os.path.abspath(__file__))


def torchrun(args, cwd, timeout=300):
    """``torchrun --nproc_per_node 2 ...`` with one thread per process (the CI machine has 2 cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


@pytest.fixture(scope="module")
def two_process_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    torchrun([os.path.join(HERE, "distributed_step_worker.py"), "--out", str(out)], cwd=HERE)
    return out


def assert_grads_close(got, want, msg=""):
    assert got.keys() == want.keys()
    for name, g in want.items():
        # float32 sums in another order; batch norm's backward cancels, so scale atol with the tensor
        atol = 5e-5 * (1 + g.abs().max().item())
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=atol, msg=lambda m: f"{msg} {name}: {m}")


@pytest.mark.parametrize("kind,accum", CASES)
def test_two_processes_match_one_process_on_the_global_batch(two_process_steps, kind, accum):
    student, batch, teacher = make_problem()
    loss, grads = reference_step(student, batch, teacher, kind, processes=2, accum=accum)
    for rank in (0, 1):
        saved = torch.load(two_process_steps / f"rank{rank}-{kind}-{accum}.pt")
        assert saved["loss"] == pytest.approx(loss.item(), rel=1e-5)
        assert_grads_close(saved["grads"], grads, f"rank {rank}")


@pytest.mark.parametrize("kind", ["contrastive", "dcd"])
@pytest.mark.parametrize("accum", [1, 2, 4])
def test_accumulated_step_is_the_gradient_of_the_whole_batch(kind, accum):
    student, batch, teacher = make_problem()
    loss, grads = reference_step(student, batch, teacher, kind, processes=1, accum=accum)
    expected_stats = {k: b.clone() for k, b in student.named_buffers()}  # after one pass over the chunks

    student, batch, teacher = make_problem()
    runner = StepRunner(student, student, make_loss(kind, teacher), torch.device("cpu"), accum_steps=accum)
    out = runner(batch)
    assert out.loss.item() == pytest.approx(loss.item(), rel=1e-5)
    assert_grads_close({n: p.grad for n, p in student.named_parameters()}, grads, f"accum {accum}")
    # the graph-free pass leaves batch-norm statistics alone: they advance once per micro-batch
    for name, value in student.named_buffers():
        torch.testing.assert_close(value, expected_stats[name], msg=name)


def test_bf16_accumulated_step_follows_the_float32_gradient():
    student, batch, teacher = make_problem()
    _, grads = reference_step(student, batch, teacher, "dcd", processes=1, accum=2)
    student, batch, teacher = make_problem()
    out = StepRunner(student, student, make_loss("dcd", teacher), torch.device("cpu"), "bf16", accum_steps=2)(batch)
    assert torch.isfinite(out.loss)
    got = torch.cat([p.grad.flatten() for p in student.parameters()])
    want = torch.cat([g.flatten() for g in grads.values()])
    assert torch.nn.functional.cosine_similarity(got, want, dim=0) > 0.99


def test_step_rejects_layouts_it_cannot_run(tmp_path):
    student, batch, teacher = make_problem()
    with pytest.raises(ValueError, match="accum_steps: 3 does not divide"):
        StepRunner(student, student, make_loss("dcd", teacher), torch.device("cpu"), accum_steps=3)(batch)

    table = write_table(str(tmp_path), num_images=8)
    with pytest.raises(ValueError, match="batch_size: 8 must be a multiple of processes x accum_steps"):
        main(["--data", table, "--loss", "contrastive", "--batch-size", "8", "--accum-steps", "3",
              "--out", str(tmp_path / "run"), "--no-progress"])


def contrastive_run_flags(table, out, extra=()):
    return ["--data", table, "--loss", "contrastive", "--epochs", "2", "--batch-size", "8", "--image-size", "32",
            "--student-width", "16", "--student-layers", "1", "--embed-dim", "8", "--log-every", "1",
            "--val-split", "none", "--out", str(out), "--no-progress", "--seed", "3", *extra]


def test_torchrun_training_matches_one_process_and_only_rank_0_writes(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    # one process with 2 micro-batches embeds exactly the chunks the 2 processes embed
    assert main(contrastive_run_flags(table, tmp_path / "one", ["--accum-steps", "2", "--threads", "1"])) == 0
    torchrun(["-m", "dcd_ext.train", *contrastive_run_flags(table, tmp_path / "two")], cwd=str(tmp_path))
    one = load_student(str(tmp_path / "one" / "student_contrastive"))
    two = load_student(str(tmp_path / "two" / "student_contrastive"))
    for (name, p1), (_, p2) in zip(one.named_parameters(), two.named_parameters()):
        torch.testing.assert_close(p2, p1, rtol=1e-4, atol=1e-5, msg=name)
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in ref]  # one row per step: rank 0 alone logs
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], rel=1e-4)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    log = (tmp_path / "two" / "log.txt").read_text()
    assert log.count("epoch 1:") == 1 and "2 processes" in log
    assert set(json.loads((tmp_path / "two" / "results.json").read_text())) == {"student_contrastive"}


def test_a_two_process_checkpoint_resumes_in_one_process_with_a_warning(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    flags = contrastive_run_flags(table, tmp_path / "run", ["--save-every", "2"])
    torchrun(["-m", "dcd_ext.train", *flags], cwd=str(tmp_path))
    ckpt = tmp_path / "run" / "checkpoints" / "student_contrastive" / "epoch_001.safetensors"
    assert main(flags + ["--resume", str(ckpt), "--threads", "1"]) == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "resuming with different settings" in log and "world_size 2 -> 1" in log
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # epoch 2 logged again by the resumed run, once
