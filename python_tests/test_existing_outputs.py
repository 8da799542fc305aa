"""An output that already exists is refused unless --overwrite: a new run into an old run's folder, then
--resume, used to continue from the old run's checkpoints; train_teacher and index wrote over earlier results.
With --overwrite the old output is gone, so nothing of it is mixed into the new one."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from dcd_ext import index as index_cli
from dcd_ext import train_teacher
from dcd_ext.data import vocabulary
from dcd_ext.students import build_small_student, save_student
from dcd_ext.train import main
from train_fixtures import write_table

torch.set_num_threads(1)


def flags(table, out, *extra):
    return ["--data", str(table), "--loss", "contrastive", "--epochs", "2", "--batch-size", "8", "--image-size", "32",
            "--student-width", "16", "--student-layers", "1", "--embed-dim", "8", "--log-every", "1",
            "--val-split", "none", "--out", str(out), "--no-progress", "--seed", "3", "--threads", "1", *extra]


def listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files)


def test_a_new_run_into_a_run_folder_is_refused_and_overwrite_leaves_nothing_of_the_old_run(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    run = tmp_path / "run"
    assert main(flags(table, run, "--epochs", "3")) == 0
    before = listing(run)
    assert "checkpoints/student_contrastive/epoch_003.safetensors" in before
    with pytest.raises(ValueError, match=rf"out: {run} already holds a run; continue it with --resume {run}, or pass "
                                         r"--overwrite to replace it"):
        main(flags(table, run, "--epochs", "1"))
    assert listing(run) == before  # nothing written
    assert main(flags(table, run, "--epochs", "1", "--overwrite")) == 0
    assert sorted(os.listdir(run / "checkpoints" / "student_contrastive")) == ["epoch_001.safetensors"]
    # the resume continues this run (epoch 2 of 2), not the old run's epoch 3
    assert main(["--resume", str(run), "--epochs", "2"]) == 0
    log = (run / "log.txt").read_text()
    assert "epoch_001.safetensors at epoch 2, step 0" in log and "epoch_003" not in log
    assert sorted(os.listdir(run / "checkpoints" / "student_contrastive")) == ["epoch_001.safetensors",
                                                                               "epoch_002.safetensors"]


def test_overwrite_never_deletes_a_folder_that_is_not_a_run_and_is_not_a_resume(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match=rf"out: {notes} already holds files and is not a run; choose another --out"):
        main(flags(table, notes, "--overwrite"))
    assert (notes / "thesis.tex").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(flags(table, empty, "--epochs", "1")) == 0  # an empty folder is a fine new run folder
    with pytest.raises(SystemExit) as exit_info:
        main(["--resume", str(empty), "--overwrite"])
    assert exit_info.value.code == 2


def test_train_teacher_refuses_an_existing_teacher_folder_and_overwrite_replaces_it_whole(tmp_path, tiny_vilt_dir):
    table = write_table(str(tmp_path), num_images=8, with_split=False)
    out = tmp_path / "teacher"
    shutil.copytree(tiny_vilt_dir, out)
    (out / "stale_extra_file.bin").write_bytes(b"from the earlier teacher")
    before = listing(out)
    command = ["--data", table, "--teacher", str(tiny_vilt_dir), "--out", str(out), "--epochs", "1",
               "--batch-size", "4", "--negatives", "2", "--device", "cpu", "--no-progress"]
    with pytest.raises(ValueError, match=rf"out: {out} already holds a teacher folder; pass --overwrite"):
        train_teacher.main(command)
    assert listing(out) == before
    assert train_teacher.main(command + ["--overwrite"]) == 0
    assert "finetune_log.json" in os.listdir(out) and "stale_extra_file.bin" not in os.listdir(out)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".teacher.new")]


def test_index_refuses_an_existing_file_before_embedding_anything(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    from train_fixtures import write_images
    write_images(str(images), ["a.png", "b.png"])
    student = build_small_student(captions=vocabulary(), image_size=32, width=16, embed_dim=8,
                                  image_channels=[8, 8, 16], text_layers=1, heads=2)
    save_student(student, str(tmp_path / "student"))
    out = tmp_path / "gallery.idx"
    out.write_bytes(b"an earlier index")
    command = ["--student", str(tmp_path / "student"), "--images", str(images), "--out", str(out), "--device", "cpu",
               "--no-progress"]
    embedded = []
    real = index_cli.build_index
    monkeypatch.setattr(index_cli, "build_index", lambda *a, **k: embedded.append(1) or real(*a, **k))
    with pytest.raises(ValueError, match=rf"out: {out} already exists; pass --overwrite to replace it"):
        index_cli.main(command)
    assert not embedded and out.read_bytes() == b"an earlier index"
    assert index_cli.main(command + ["--overwrite"]) == 0
    assert out.read_bytes() != b"an earlier index"
