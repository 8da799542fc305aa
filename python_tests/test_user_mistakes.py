"""The mistakes of the issue "Nothing silent, nothing overwritten": each test first sets up the scenario a new
user ran into, then asserts the fixed behaviour (training side; the serving side is in test_serving.py, the
command-line side in test_cli.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcd_ext.students import build_small_student, load_student, save_student
from dcd_ext.train import loop as train_loop
from dcd_ext.train import main
from train_fixtures import write_table

REPO = Path(__file__).resolve().parent.parent


def flags(table, out, *extra):
    return ["--data", str(table), "--loss", "contrastive", "--epochs", "2", "--batch-size", "8", "--image-size", "32",
            "--student-width", "16", "--student-layers", "1", "--embed-dim", "8", "--log-every", "1",
            "--out", str(out), "--no-progress", "--seed", "3", *extra]


def rows(run, split=None):
    out = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in out if r.get("split") == split]


def snapshot(folder) -> dict[str, bytes]:
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def interrupt_before_step(monkeypatch, step):
    """Ctrl-C when the loop asks for the learning rate of (0-based) ``step``: ``step`` steps are done."""
    real = train_loop.lr_at

    def lr_at(s, *args):
        if s == step:
            raise KeyboardInterrupt
        return real(s, *args)

    monkeypatch.setattr(train_loop, "lr_at", lr_at)
    return real


def weights(folder):
    return load_student(str(folder)).state_dict()


def assert_same_weights(got, want):
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, msg=key)


# ---- item 1: --resume RUN with no other flags resumes that run, and refuses what it cannot resume ----------

def test_resume_with_no_other_flags_continues_the_run_from_its_saved_settings(tmp_path, monkeypatch):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    assert main(flags(table, tmp_path / "straight")) == 0
    run = tmp_path / "run"
    real = interrupt_before_step(monkeypatch, 3)
    assert main(flags(table, run)) == 130
    monkeypatch.setattr(train_loop, "lr_at", real)
    before = json.loads((run / "config.json").read_text())

    monkeypatch.chdir(tmp_path.parent)  # from another folder: relative paths come from the saved config
    assert main(["--resume", str(run)]) == 0
    # before the fix this ran the built-in demo in the folder: config.json overwritten, demo rows appended,
    # a student_contrastive of the demo's size, then a load_state_dict size-mismatch dump
    config = json.loads((run / "config.json").read_text())
    assert config["mode"] == "train" and config["args"]["data"] == before["args"]["data"]
    assert config["resumes"][0]["overrides"] == {} and config["args"]["epochs"] == 2
    assert {r["run"] for r in rows(run)} == {"student_contrastive"}
    assert [r["step"] for r in rows(run)] == list(range(1, 9))
    assert not (run / "student_dcd").exists()
    assert_same_weights(weights(run / "student_contrastive"), weights(tmp_path / "straight" / "student_contrastive"))


def test_resume_refuses_flags_that_would_change_the_run_and_writes_nothing(tmp_path, monkeypatch):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    run = tmp_path / "run"
    interrupt_before_step(monkeypatch, 3)
    assert main(flags(table, run)) == 130
    monkeypatch.undo()
    saved = snapshot(run)
    with pytest.raises(ValueError, match=r"resume: .*run is resumed with the settings in its config\.json; these flags "
                                         r"would change them: --lr 0\.5 \(the run used 0\.0001\); --embed-dim 16 "
                                         r"\(the run used 8\)\. A resume may change only --device"):
        main(["--resume", str(run), "--lr", "0.5", "--embed-dim", "16"])
    with pytest.raises(ValueError, match="--out .*other.* continues in its own folder"):
        main(["--resume", str(run), "--out", str(tmp_path / "other")])
    assert snapshot(run) == saved
    # the same flags again are fine, and a resumable one is taken and remembered
    assert main(flags(table, run, "--resume", str(run), "--keep-checkpoints", "1")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["resumes"][-1]["overrides"] == {"keep_checkpoints": 1} and config["args"]["keep_checkpoints"] == 1
    assert sorted(os.listdir(run / "checkpoints" / "student_contrastive")) == ["epoch_002.safetensors"]


def test_resume_of_a_checkpoint_of_another_architecture_is_refused_before_writing(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    assert main(flags(table, tmp_path / "wide", "--epochs", "1", "--embed-dim", "16")) == 0
    narrow = tmp_path / "narrow"
    assert main(flags(table, narrow, "--epochs", "1")) == 0
    ckpts = narrow / "checkpoints" / "student_contrastive"
    for f in ckpts.iterdir():
        f.unlink()
    (tmp_path / "wide" / "checkpoints" / "student_contrastive" / "epoch_001.safetensors").rename(
        ckpts / "epoch_001.safetensors")  # say, copied into the wrong folder
    saved = snapshot(narrow)
    with pytest.raises(ValueError, match=r"resume: checkpoint .*epoch_001\.safetensors holds a student of another "
                                         r"architecture .*\[16, 16\] in the checkpoint, \[8, 16\] here"):
        main(["--resume", str(narrow)])
    assert snapshot(narrow) == saved


def test_the_demo_resumes_from_its_folder_alone(tmp_path):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    assert main(["--demo-size", "tiny", "--out", str(out), "--cache-dir", str(cache), "--no-progress",
                 "--epochs", "1"]) == 0
    assert main(["--resume", str(out), "--epochs", "2"]) == 0  # --epochs may change: one more epoch each
    config = json.loads((out / "config.json").read_text())
    assert config["mode"] == "demo" and config["args"]["demo_size"] == "tiny"
    for name in ("student_contrastive", "student_dcd"):
        assert sorted(os.listdir(out / "checkpoints" / name)) == ["epoch_001.safetensors", "epoch_002.safetensors"]
    assert "resumed from" in (out / "log.txt").read_text()


# ---- item 3: unreadable images are found before training, named with their line, or skipped ---------------

def break_images(tmp_path):
    """Truncate a training image and overwrite a test image with text; returns their paths."""
    truncated = tmp_path / "table_images" / "001.png"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "table_images" / "004.png"
    garbage.write_text("not an image")
    return truncated, garbage


def test_train_checks_every_image_before_training_and_names_the_bad_ones(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    break_images(tmp_path)
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"data: 2 of 24 image files cannot be read: .*001\.png \(pairs\.jsonl line 3\): "
                                      r"(image file is truncated|Truncated File Read); .*004\.png \(pairs\.jsonl line 9\): "
                                      r"cannot identify image file.*--skip-bad-images"):
        main(flags(table, out))
    assert not out.exists()  # checked before the run folder is made


def test_skip_bad_images_leaves_them_out_and_lists_them(tmp_path):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    truncated, garbage = break_images(tmp_path)
    out = tmp_path / "run"
    assert main(flags(table, out, "--skip-bad-images", "--epochs", "1")) == 0
    listed = [line.split("\t") for line in (out / "skipped_images.txt").read_text().splitlines()[1:]]
    assert [(s, p, o) for s, p, o, _ in listed] == [("pairs:train", str(truncated), "pairs.jsonl line 3"),
                                                    ("pairs:test", str(garbage), "pairs.jsonl line 9")]
    assert "left out 2 unreadable image files and their 4 captions" in (out / "log.txt").read_text()
    log = (out / "log.txt").read_text()
    assert "train pairs:train 17 images / 34 captions; eval pairs:test 5 / 10" in log


def test_an_image_that_breaks_after_the_check_is_named_with_its_line_mid_run(tmp_path, monkeypatch):
    from dcd_ext.train import components
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    break_images(tmp_path)
    monkeypatch.setattr(components, "find_bad_images", lambda paths, **kw: {})  # damaged after the check
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"pairs:train, pairs\.jsonl line 3: cannot read image file .*001\.png") as info:
        main(flags(table, out, "--workers", "1"))
    assert "traceback in" in " ".join(getattr(info.value, "__notes__", []))
    # item 7: the run had started, so its folder says it failed and its log keeps the traceback
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    assert "Traceback (most recent call last)" in (out / "log.txt").read_text()


def test_evaluate_names_an_unreadable_image_and_its_line(tmp_path):
    from dcd_ext.evaluate import main as evaluate_main
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    assert main(flags(table, tmp_path / "run", "--epochs", "1")) == 0
    break_images(tmp_path)
    with pytest.raises(OSError, match=r"pairs:test, pairs\.jsonl line 9: cannot read image file .*004\.png"):
        evaluate_main(["--student", str(tmp_path / "run" / "student_contrastive"), "--data", table])


# ---- item 6: what the tokenizers and --k silently do is said, with counts ---------------------------------

def test_train_warns_about_unknown_words_and_a_k_the_batch_cannot_supply(tmp_path, tiny_vilt_dir):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    narrow_vocab = tmp_path / "student"
    save_student(build_small_student(["a red circle"], image_size=32, width=16, embed_dim=8, image_channels=[8, 8],
                                     text_layers=1, max_length=6), str(narrow_vocab))
    out = tmp_path / "run"
    assert main(["--data", table, "--teacher", tiny_vilt_dir, "--student", str(narrow_vocab), "--k", "12",
                 "--epochs", "1", "--batch-size", "8", "--rerank-k", "2", "--out", str(out), "--no-progress"]) == 0
    log = (out / "log.txt").read_text()
    assert ("--k 12 asks for more hard negatives than a batch of 8 captions holds (7 other rows, fewer where "
            "captions of one image share the batch): k = 7 at most is effectively used") in log
    assert "student tokenizer: in 36 training captions" in log and "map to the unknown token [UNK]" in log
    assert "are longer than its 6 tokens and are truncated" in log
    assert log.count("student tokenizer: in 36 training captions") == 1  # once


# ---- item 7: a failed start leaves nothing behind; the console gets one line --------------------------------

def test_a_run_that_fails_to_start_leaves_no_folder_and_prints_one_line(tmp_path):
    table = write_table(str(tmp_path), num_images=8, fmt="jsonl")
    empty = tmp_path / "empty_teacher"
    empty.mkdir()
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="a teacher is a ViLT or BLIP Hugging Face folder"):
        main(["--data", table, "--teacher", str(empty), "--out", str(out), "--no-progress"])
    assert not out.exists()
    done = subprocess.run([sys.executable, "-m", "dcd_ext.train", "--data", str(tmp_path / "missing.csv"), "--loss",
                           "contrastive", "--out", str(out)], cwd=str(tmp_path), capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert done.returncode == 2
    # the data is checked before the device is resolved and the log starts: one line whatever the host's driver says
    assert done.stderr == f"error: pairs file not found: {tmp_path / 'missing.csv'}\n"
    assert not out.exists()


# ---- item 8: metrics rows are window means; a resumed epoch's summary covers the whole epoch ------------------

def epoch_lines(run):
    return [line.split(" | ")[-1] for line in (Path(run) / "log.txt").read_text().splitlines() if "] epoch " in line]


def test_metrics_rows_are_window_means_and_resume_reports_whole_epochs(tmp_path, monkeypatch):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")  # 36 training captions: 4 steps per epoch
    assert main(flags(table, tmp_path / "every")) == 0
    assert main(flags(table, tmp_path / "straight", "--log-every", "3")) == 0
    per_step = [r["loss"] for r in rows(tmp_path / "every")]
    windows = rows(tmp_path / "straight")
    assert [(r["step"], r["steps"]) for r in windows] == [(3, 3), (4, 1), (6, 2), (8, 2)]
    assert [r["loss"] for r in windows] == pytest.approx(
        [sum(per_step[0:3]) / 3, per_step[3], sum(per_step[4:6]) / 2, sum(per_step[6:8]) / 2], rel=1e-6)

    run = tmp_path / "run"
    real = interrupt_before_step(monkeypatch, 5)  # mid-epoch 2 and mid-window (step 5 of the window 5-6)
    assert main(flags(table, run, "--log-every", "3")) == 130
    monkeypatch.setattr(train_loop, "lr_at", real)
    assert main(["--resume", str(run)]) == 0
    assert [(r["step"], r["steps"]) for r in rows(run)] == [(3, 3), (4, 1), (6, 2), (8, 2)]
    assert [r["loss"] for r in rows(run)] == pytest.approx([r["loss"] for r in windows], rel=1e-6)
    # before: "epoch 2: loss ..." averaged over the 3 resumed steps only
    assert epoch_lines(run)[-1] == epoch_lines(tmp_path / "straight")[-1]
    assert epoch_lines(run)[-1].endswith("(4 steps)")


# ---- item 11: the best student by validation RSUM is kept, evaluate picks it; early stopping ---------------

def test_best_validation_student_is_kept_and_evaluate_picks_it(tmp_path, monkeypatch, capsys):
    from dcd_ext.evaluate import main as evaluate_main
    from dcd_ext.train.checkpoint import load_checkpoint
    table = write_table(str(tmp_path), num_images=32, fmt="jsonl", val_every=3)
    rsums = iter([50.0, 80.0, 60.0, 40.0, 30.0])
    real = train_loop.evaluate_student

    def scripted(student, split, *args):  # validation RSUM 50, 80, 60, 40, ...: epoch 2 is the best
        return {**real(student, split, *args), "rsum": next(rsums)}

    monkeypatch.setattr(train_loop, "evaluate_student", scripted)
    out = tmp_path / "run"
    assert main(flags(table, out, "--epochs", "6", "--early-stop", "2", "--keep-checkpoints", "0")) == 0
    log = (out / "log.txt").read_text()
    assert "early stop after epoch 4: validation RSUM has not improved for 2 epochs (best 80.0 at epoch 2" in log
    ckpts = out / "checkpoints" / "student_contrastive"
    assert sorted(os.listdir(ckpts))[-1] == "epoch_004.safetensors"
    best = out / "student_contrastive_best"
    assert json.loads((best / "validation.json").read_text())["epoch"] == 2
    at_epoch_2 = load_student(str(best))  # the same architecture; its weights are replaced just below
    load_checkpoint(str(ckpts / "epoch_002.safetensors"), at_epoch_2, restore_rng=False)
    assert_same_weights(weights(best), at_epoch_2.state_dict())
    assert "student_contrastive_best" in json.loads((out / "results.json").read_text())

    capsys.readouterr()
    assert evaluate_main(["--student", str(out), "--data", table, "--out", str(tmp_path / "e.json")]) == 0
    assert f"student: {best} (validation-best: epoch 2, RSUM 80.0)" in capsys.readouterr().out
    picked = json.loads((tmp_path / "e.json").read_text())["student"]
    assert picked["rsum"] == pytest.approx(json.loads((out / "results.json").read_text())
                                           ["student_contrastive_best"]["rsum"])
    assert evaluate_main(["--student", str(out), "--pick", "last", "--data", table]) == 0
    assert f"student: {out / 'student_contrastive'} (the final one)" in capsys.readouterr().out


def test_early_stop_needs_a_validation_split(tmp_path, capsys):
    table = write_table(str(tmp_path), num_images=8, fmt="jsonl")
    with pytest.raises(SystemExit):
        main(flags(table, tmp_path / "run", "--early-stop", "2", "--val-split", "none"))
    assert "--early-stop needs a validation split" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--early-stop 2 needs a validation split, and .*pairs\.jsonl has no 'val' "
                                         r"split"):  # rather than never stopping, silently
        main(flags(table, tmp_path / "run", "--early-stop", "2"))
    assert not (tmp_path / "run").exists()


# ---- item 9: what the package writes follows the umask (and stays atomic) ---------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o027, 0o640)])
def test_students_checkpoints_and_indexes_follow_the_umask(tmp_path, umask, mode):
    from dcd_ext.serving.index_file import GalleryIndex, save_index
    from dcd_ext.train.checkpoint import save_checkpoint
    from train_fixtures import small_model_after_one_step

    model, opt = small_model_after_one_step()
    old = os.umask(umask)
    try:
        save_student(model, str(tmp_path / "student"))
        save_checkpoint(str(tmp_path / "epoch_001.safetensors"), model, opt, {"epoch": 1, "step": 0, "global_step": 1})
        save_index(GalleryIndex(torch.zeros(2, 4), torch.arange(2), "image", "s", ["a", "b"], ["a", "b"]),
                   str(tmp_path / "g.idx"))
    finally:
        os.umask(old)
    written = [tmp_path / "student" / "config.json", tmp_path / "student" / "model.safetensors",
               tmp_path / "epoch_001.safetensors", tmp_path / "g.idx"]
    assert {str(p.name): oct(p.stat().st_mode & 0o777) for p in written} == {p.name: oct(mode) for p in written}
    assert not [p for p in tmp_path.rglob("*.tmp")]
