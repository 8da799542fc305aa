"""Checkpoints record the run that wrote them (loss, student, a SHA-256 of the settings that define the run); a
resume refuses a checkpoint of another run by name, even when its tensors have this run's shapes."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from dcd_ext.train import main
from dcd_ext.train.checkpoint import read_meta
from train_fixtures import write_table

torch.set_num_threads(1)


def flags(table, out, *extra):
    return ["--data", str(table), "--epochs", "1", "--batch-size", "8", "--image-size", "32", "--student-width", "16",
            "--student-layers", "1", "--embed-dim", "8", "--k", "2", "--rerank-k", "2", "--val-split", "none",
            "--out", str(out), "--no-progress", "--seed", "3", "--threads", "1", *extra]


def listing(folder):
    return sorted((os.path.relpath(os.path.join(d, f), folder), os.path.getmtime(os.path.join(d, f)))
                  for d, _, files in os.walk(folder) for f in files)


def test_a_checkpoint_of_another_run_with_the_same_shapes_is_refused_by_name(tmp_path, tiny_vilt_dir):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    contrastive, dcd = tmp_path / "contrastive", tmp_path / "dcd"
    assert main(flags(table, contrastive, "--loss", "contrastive")) == 0
    assert main(flags(table, dcd, "--loss", "dcd", "--teacher", tiny_vilt_dir)) == 0
    own = dcd / "checkpoints" / "student_dcd" / "epoch_001.safetensors"
    identity = read_meta(str(own))["extra"]["run"]
    assert identity["loss"] == "dcd" and identity["student"] == "small" and len(identity["settings_sha256"]) == 64
    kept = tmp_path / "own.safetensors"
    shutil.copy(own, kept)
    # the contrastive run's checkpoint, copied into the DCD run: the same student, the same tensor shapes
    shutil.copy(contrastive / "checkpoints" / "student_contrastive" / "epoch_001.safetensors", own)
    before = listing(dcd)
    with pytest.raises(ValueError, match=r"resume: checkpoint .*epoch_001\.safetensors was written by another run "
                                         r"\(loss contrastive, student small\) than the one being resumed \(loss dcd, "
                                         r"student small\): --loss contrastive there, dcd here; --teacher None there"):
        main(["--resume", str(dcd), "--epochs", "2"])
    assert listing(dcd) == before  # nothing written
    shutil.copy(kept, own)
    assert main(["--resume", str(dcd), "--epochs", "2"]) == 0  # its own checkpoint resumes


def test_a_checkpoint_of_a_run_with_other_settings_names_them(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(flags(table, first, "--loss", "contrastive", "--lr", "0.001")) == 0
    assert main(flags(table, second, "--loss", "contrastive")) == 0
    ckpt = "checkpoints/student_contrastive/epoch_001.safetensors"
    shutil.copy(first / ckpt, second / ckpt)
    with pytest.raises(ValueError, match=r"another run .*: --lr 0\.001 there, 0\.0001 here; resume a checkpoint of "
                                         r"this run, or start a new run \(--out\)"):
        main(["--resume", str(second), "--epochs", "2"])
