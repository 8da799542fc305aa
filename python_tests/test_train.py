"""``python -m dcd_ext.train`` end to end on CPU: the tiny demo, runs on table data, resume, flags, checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dcd_ext.retrieval import METRIC_KEYS
from dcd_ext.students import build_small_student, load_student
from dcd_ext.train import main
from dcd_ext.train.checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from dcd_ext.train.params import build_parser
from train_fixtures import interrupt_at_step, small_model_after_one_step, write_table

RESULT_KEYS = set(METRIC_KEYS) | {"ms_per_query"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    code = main(["--demo-size", "tiny", "--out", str(root / "run"), "--cache-dir", str(root / "cache"),
                 "--no-progress"])
    return root, code


def test_tiny_demo_runs_end_to_end(tiny_demo, capsys):
    root, code = tiny_demo
    run = root / "run"
    assert code == 0
    results = json.loads((run / "results.json").read_text())
    assert list(results) == ["teacher", "student_contrastive", "student_dcd", "student_dcd_rerank"]
    for name, entry in results.items():
        assert set(entry) == RESULT_KEYS, name
        assert entry["ms_per_query"] > 0
        assert entry["rsum"] == pytest.approx(sum(entry[k] for k in METRIC_KEYS if k != "rsum"))
    # the teacher scores every pair; the student is orders of magnitude cheaper per query
    assert results["teacher"]["ms_per_query"] > results["student_dcd"]["ms_per_query"]
    config = json.loads((run / "config.json").read_text())
    assert config["mode"] == "demo" and config["preset"]["epochs"] == 2
    rows = read_rows(run / "metrics.jsonl")
    runs = {r["run"] for r in rows}
    assert {"teacher_warmup", "teacher_finetune", "student_contrastive", "student_dcd"} <= runs
    dcd_rows = [r for r in rows if r["run"] == "student_dcd" and "split" not in r]
    assert dcd_rows and all({"loss", "con", "dist", "hard", "lr", "teacher_pairs"} <= set(r) for r in dcd_rows)
    assert [r["epoch"] for r in rows if r["run"] == "student_dcd" and r.get("split") == "val"] == [1, 2]
    for name in ("loss.png", "recall.png", "retrieval_example.png"):
        assert (run / name).read_bytes()[:8] == PNG_MAGIC
    report = (run / "report.md").read_text()
    assert "| student_dcd |" in report and "![loss](loss.png)" in report
    assert "![retrieval example](retrieval_example.png)" in report and "## Retrieval example" in report
    assert "x the contrastive-only student's" in report and "x faster" in report
    for name in ("student_contrastive", "student_dcd"):
        assert sorted(os.listdir(run / "checkpoints" / name)) == ["epoch_001.safetensors", "epoch_002.safetensors"]
        assert load_student(str(run / name)).config.kind == "small"
    assert "demo teacher trained in" in (run / "log.txt").read_text()


def test_second_demo_run_reuses_the_teacher_and_reproduces_the_numbers(tiny_demo, capsys):
    root, _ = tiny_demo
    capsys.readouterr()
    assert main(["--demo-size", "tiny", "--out", str(root / "again"), "--cache-dir", str(root / "cache"),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "student_dcd_rerank" in printed and "x the contrastive-only student's" in printed
    assert "reusing the cached demo teacher" in (root / "again" / "log.txt").read_text()
    first = json.loads((root / "run" / "results.json").read_text())
    second = json.loads((root / "again" / "results.json").read_text())
    for name in first:
        for key in METRIC_KEYS:
            assert first[name][key] == pytest.approx(second[name][key]), (name, key)




def test_dcd_run_on_a_table_with_a_vilt_initialised_student(tmp_path, tiny_vilt_dir):
    table = write_table(str(tmp_path), num_images=24)
    out = tmp_path / "run"
    code = main(["--data", table, "--teacher", tiny_vilt_dir, "--student", "teacher", "--epochs", "1",
                 "--batch-size", "8", "--k", "2", "--embed-dim", "16", "--rerank-k", "4", "--out", str(out),
                 "--no-progress", "--mine-by", "teacher", "--teacher-pool", "4", "--queue-size", "8"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["student_dcd", "student_dcd_rerank", "teacher"]
    assert all(set(r) == RESULT_KEYS for r in results.values())
    student = load_student(str(out / "student_dcd"))
    assert student.config.kind == "vilt" and student.config.embed_dim == 16
    assert "no per-epoch validation" in (out / "log.txt").read_text()  # the table has no val split
    rows = [r for r in read_rows(out / "metrics.jsonl") if r["run"] == "student_dcd"]
    assert rows and all(r["teacher_pairs"] > 0 for r in rows)


def run_contrastive(tmp_path, out, extra=()):
    table = write_table(str(tmp_path), num_images=24, fmt="jsonl")
    return main(["--data", table, "--loss", "contrastive", "--epochs", "2", "--batch-size", "8",
                 "--image-size", "32", "--student-width", "16", "--student-layers", "1", "--embed-dim", "8",
                 "--log-every", "1", "--out", str(out), "--no-progress", "--seed", "3", *extra])


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    assert run_contrastive(tmp_path, tmp_path / "straight") == 0
    reference = load_student(str(tmp_path / "straight" / "student_contrastive")).state_dict()

    restore_loop = interrupt_at_step(monkeypatch, 3)
    out = tmp_path / "interrupted"
    assert run_contrastive(tmp_path, out) == 130
    saved = out / "checkpoints" / "student_contrastive" / "interrupted.safetensors"
    assert saved.is_file()
    restore_loop()
    assert run_contrastive(tmp_path, out, ["--resume", str(out)]) == 0
    assert not saved.exists()
    resumed = load_student(str(out / "student_contrastive")).state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(resumed[key], value, msg=key)
    steps = [r["step"] for r in read_rows(out / "metrics.jsonl") if "split" not in r]
    assert steps == sorted(set(steps))  # the interrupted steps are not logged twice
    straight = [r["loss"] for r in read_rows(tmp_path / "straight" / "metrics.jsonl") if "split" not in r]
    again = [r["loss"] for r in read_rows(out / "metrics.jsonl") if "split" not in r]
    assert again == pytest.approx(straight, rel=1e-5)


def test_bf16_run_with_gradient_accumulation(tmp_path):
    out = tmp_path / "bf16"
    assert run_contrastive(tmp_path, out, ["--precision", "bf16", "--accum-steps", "2", "--val-split", "none"]) == 0
    rows = [r for r in read_rows(out / "metrics.jsonl") if "split" not in r]
    assert len(rows) == 8 and all(r["loss"] > 0 for r in rows)  # 36 training captions / 8 = 4 steps x 2 epochs
    assert "2 micro-batches of 4" in (out / "log.txt").read_text() and "(bf16)" in (out / "log.txt").read_text()
    assert all(torch.isfinite(v).all() for v in load_student(str(out / "student_contrastive")).state_dict().values())


def test_checkpoints_restore_model_optimizer_and_rng(tmp_path):
    model, opt = small_model_after_one_step()
    for n, step in ((1, 10), (2, 20), (3, 30)):
        save_checkpoint(str(tmp_path / f"epoch_{n:03d}.safetensors"), model, opt,
                        {"epoch": n, "step": 0, "global_step": step})
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    fresh = build_small_student(["a red circle", "two blue squares"], width=8, embed_dim=4, image_channels=[4, 4, 4])
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    path = latest_checkpoint(str(tmp_path))
    assert path.endswith("epoch_003.safetensors")
    assert load_checkpoint(path, fresh, fresh_opt) == {"epoch": 3, "step": 0, "global_step": 30}
    torch.testing.assert_close(torch.rand(3), expected_draw)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    assert fresh_opt.param_groups[0]["lr"] == 0.1
    got, want = fresh_opt.state_dict()["state"], opt.state_dict()["state"]
    assert got.keys() == want.keys()
    for pid in want:
        for name, value in want[pid].items():
            torch.testing.assert_close(torch.as_tensor(got[pid][name]), torch.as_tensor(value))
    prune_checkpoints(str(tmp_path), keep=2)
    assert sorted(os.listdir(tmp_path)) == ["epoch_002.safetensors", "epoch_003.safetensors"]


def test_every_flag_has_help_and_help_exits_cleanly(capsys):
    parser = build_parser()
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, action.dest
            assert all(opt.startswith("--") and "_" not in opt for opt in action.option_strings), action.dest
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--data", "--images", "--teacher", "--student", "--epochs", "--batch-size", "--lr", "--k",
                 "--alpha", "--weighting", "--device", "--precision", "--seed", "--out", "--resume",
                 "--queue-size", "--mine-by", "--demo-size"):
        assert flag in text


def test_bad_arguments_are_named(tmp_path, capsys):
    table = write_table(str(tmp_path), num_images=8)
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", table])
    assert exit_info.value.code == 2 and "--loss dcd needs --teacher" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--epochs", "0"])
    assert "--epochs: must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--alpha", "2"])
    assert "must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="missing.json"):
        main(["--data", str(tmp_path / "missing.json"), "--images", str(tmp_path), "--loss", "contrastive",
              "--out", str(tmp_path / "r1"), "--no-progress"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: cuda was asked for"):
            main(["--demo-size", "tiny", "--device", "cuda", "--out", str(tmp_path / "r2")])
    with pytest.raises(FileNotFoundError, match="resume"):
        main(["--resume", str(tmp_path / "nothing")])


def test_evaluate_command_on_a_trained_student(tmp_path, capsys, tiny_vilt_dir):
    from dcd_ext.evaluate import main as evaluate_main
    assert run_contrastive(tmp_path, tmp_path / "run") == 0
    table = os.path.join(str(tmp_path), "pairs.jsonl")
    out = tmp_path / "eval.json"
    assert evaluate_main(["--student", str(tmp_path / "run" / "student_contrastive"), "--data", table,
                          "--teacher", tiny_vilt_dir, "--rerank-k", "4", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["student", "student_rerank", "teacher"]
    trained = json.loads((tmp_path / "run" / "results.json").read_text())["student_contrastive"]
    assert results["student"]["rsum"] == pytest.approx(trained["rsum"])
    assert "RSUM" in capsys.readouterr().out


def test_demo_story_lines_compute_the_ratio_gap_and_speed():
    from dcd_ext.train.demo import story

    def row(rsum, ms):
        return {"rsum": rsum, "ms_per_query": ms}

    lines = story({"teacher": row(250.0, 20.0), "student_contrastive": row(200.0, 0.1),
                   "student_dcd": row(230.0, 0.1), "student_dcd_rerank": row(240.0, 1.0)})
    assert lines[0] == "teacher RSUM 250.0 = 1.25x the contrastive-only student's 200.0"
    assert "+30.0 RSUM, 60% of the gap to the teacher closed" in lines[1]
    assert "+10.0 over the DCD student" in lines[2]
    assert lines[3].endswith("200x faster")
    weak = story({"teacher": row(190.0, 20.0), "student_contrastive": row(200.0, 0.1),
                  "student_dcd": row(210.0, 0.1), "student_dcd_rerank": row(205.0, 1.0)})
    assert "the teacher does not lead" in weak[1]


def test_retrieval_example_picks_a_caption_dcd_gets_and_the_baseline_misses():
    from dcd_ext.data import make_synthetic_split
    from dcd_ext.train.retrieval_example import pick_caption

    split = make_synthetic_split("test", 4, 0, 32)
    owner = torch.as_tensor(split.caption_image)
    wrong = (owner + 1) % 4
    base = torch.stack([owner, wrong], dim=1)
    dcd = torch.stack([wrong, owner], dim=1)
    assert pick_caption(split, base, dcd) == 0  # DCD right nowhere: falls back to caption 0
    dcd[3, 0], base[3, 0] = owner[3], wrong[3]
    dcd[1, 0] = owner[1]  # both right on caption 1
    base[1, 0] = owner[1]
    assert pick_caption(split, base, dcd) == 3
