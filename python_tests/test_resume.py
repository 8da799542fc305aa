"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends with the weights of an uninterrupted run;
damaged, truncated or foreign checkpoint files are reported, never loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dcd_ext.students import load_student
from dcd_ext.train import main
from dcd_ext.train.checkpoint import (CorruptCheckpointError, latest_checkpoint, load_checkpoint, read_meta,
                                      save_checkpoint)
from train_fixtures import small_model_after_one_step, write_table

# the training command with every step slowed down, so the test can kill it between two checkpoints
SLOW_TRAIN = """
import sys, time
from dcd_ext.train import step
real = step.StepRunner.__call__
def slow(self, batch):
    time.sleep(0.25)
    return real(self, batch)
step.StepRunner.__call__ = slow
from dcd_ext.train import main
sys.exit(main(sys.argv[1:]))
"""




def dcd_flags(table, teacher, out):
    # teacher mining draws random pools and the queue carries embeddings across steps: both must resume
    return ["--data", table, "--teacher", teacher, "--mine-by", "teacher", "--teacher-pool", "4", "--k", "2",
            "--queue-size", "8", "--epochs", "3", "--batch-size", "8", "--image-size", "32",
            "--student-width", "16", "--student-layers", "1", "--embed-dim", "8", "--log-every", "1",
            "--save-every", "2", "--val-split", "none", "--rerank-k", "2", "--threads", "1",
            "--out", str(out), "--no-progress", "--seed", "5"]


def metric_rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "split" not in line]


def test_sigkill_mid_epoch_then_resume_reaches_the_uninterrupted_weights(tmp_path, tiny_vilt_dir):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")  # 36 training captions: 4 steps per epoch
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *dcd_flags(table, tiny_vilt_dir, killed)],
                            cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = killed / "checkpoints" / "student_dcd"
    deadline = time.monotonic() + 300
    while not (ckpts.is_dir() and any(n.startswith("step_") and n.endswith(".safetensors") for n in os.listdir(ckpts))):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no mid-epoch checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "student_dcd").exists()  # it really died before the end
    newest = latest_checkpoint(str(ckpts))
    progress = read_meta(newest)["progress"]
    assert 0 < progress["step"] < 4 and progress["global_step"] < 12  # mid-epoch

    assert main(dcd_flags(table, tiny_vilt_dir, killed) + ["--resume", str(killed)]) == 0
    assert main(dcd_flags(table, tiny_vilt_dir, tmp_path / "straight")) == 0
    resumed = load_student(str(killed / "student_dcd")).state_dict()
    straight = load_student(str(tmp_path / "straight" / "student_dcd")).state_dict()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, msg=key)
    rows, ref = metric_rows(killed), metric_rows(tmp_path / "straight")
    assert [r["step"] for r in rows] == list(range(1, 13)) == [r["step"] for r in ref]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], rel=1e-5)
    assert f"step {progress['step']} of 4" in (killed / "log.txt").read_text()
    # only the epoch checkpoints are left; no half-written file
    assert sorted(os.listdir(ckpts)) == ["epoch_001.safetensors", "epoch_002.safetensors", "epoch_003.safetensors"]


def test_sigterm_saves_the_interrupted_checkpoint_and_the_run_resumes(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    flags = ["--data", table, "--loss", "contrastive", "--epochs", "2", "--batch-size", "8", "--image-size", "32",
             "--student-width", "16", "--student-layers", "1", "--embed-dim", "8", "--log-every", "1",
             "--val-split", "none", "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *flags], cwd=str(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "training never logged a step"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-3000:]
    saved = tmp_path / "run" / "checkpoints" / "student_contrastive" / "interrupted.safetensors"
    assert read_meta(str(saved))["progress"]["global_step"] >= 1
    assert "--resume" in err.decode()  # the command to continue is printed
    assert main(flags + ["--resume", str(tmp_path / "run")]) == 0
    assert not saved.exists() and (tmp_path / "run" / "student_contrastive").is_dir()


def small_model_checkpoint(path):
    model, opt = small_model_after_one_step()
    save_checkpoint(str(path), model, opt, {"epoch": 1, "step": 0, "global_step": 4})
    return model, opt


def test_a_format_2_checkpoint_of_a_student_and_loss_container_still_loads(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from dcd_ext.train.checkpoint import digest

    path = tmp_path / "new.safetensors"
    model, opt = small_model_checkpoint(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    # format 2 kept the student in a {"student": ..., "loss": ...} container
    old = {("model.student." + k[len("model."):] if k.startswith("model.") else k): v for k, v in tensors.items()}
    old_path = tmp_path / "old.safetensors"
    save_file(old, str(old_path), metadata={**meta, "format": "dcd_ext.train/2", "sha256": digest(old)})

    fresh, fresh_opt = small_model_after_one_step()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_checkpoint(str(old_path), fresh, fresh_opt)
    for (name, want), got in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(want, got), name
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_damaged_truncated_and_foreign_checkpoints_are_reported(tmp_path):
    path = tmp_path / "epoch_001.safetensors"
    model, opt = small_model_checkpoint(path)
    data = bytearray(path.read_bytes())

    flipped = tmp_path / "flipped.safetensors"
    data[-100] ^= 0x40  # a bit inside the tensor data: the header still parses
    flipped.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="flipped.safetensors .*SHA-256 mismatch"):
        load_checkpoint(str(flipped), model, opt)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated.safetensors is unusable"):
        load_checkpoint(str(truncated), model, opt)

    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CorruptCheckpointError, match="not a dcd_ext.train/3 training checkpoint"):
        read_meta(str(foreign))
    # the intact file still loads, and restores what was saved
    fresh, _ = small_model_checkpoint(tmp_path / "other.safetensors")
    assert load_checkpoint(str(path), fresh)["global_step"] == 4


def test_resume_refuses_a_damaged_newest_checkpoint_and_names_the_intact_one(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    small_model_checkpoint(folder / "epoch_001.safetensors")
    time.sleep(0.01)
    (folder / "epoch_002.safetensors").write_bytes(b"\x00" * 64)  # a crash mid-copy, say
    (folder / "step_0000009.safetensors.tmp").write_bytes(b"half")  # half-written files are never candidates
    with pytest.raises(CorruptCheckpointError, match=r"epoch_002.safetensors is unusable.*newest readable one is "
                                                     r".*epoch_001.safetensors"):
        latest_checkpoint(str(folder))
    os.remove(folder / "epoch_002.safetensors")
    assert latest_checkpoint(str(folder)).endswith("epoch_001.safetensors")


def test_resume_of_a_run_whose_checkpoint_is_damaged_stops_with_the_reason(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    flags = ["--data", table, "--loss", "contrastive", "--epochs", "1", "--batch-size", "8", "--image-size", "32",
             "--student-width", "16", "--student-layers", "1", "--embed-dim", "8", "--val-split", "none",
             "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(flags) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "student_contrastive" / "epoch_001.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-8] ^= 0x01
    ckpt.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="SHA-256 mismatch"):
        main(flags + ["--resume", str(tmp_path / "run")])
