"""The commands with models you bring: ``python -m dcd_ext.train --student CLIP_FOLDER --teacher BLIP_FOLDER``
end to end, then evaluate / index / search / speed with the saved student; SigLIP and open_clip students
through the same flags."""

from __future__ import annotations

import json

import pytest
import torch

from dcd_ext import evaluate as evaluate_cli
from dcd_ext import index as index_cli
from dcd_ext import search as search_cli
from dcd_ext import speed as speed_cli
from dcd_ext.data import load_split, vocabulary
from dcd_ext.students import load_student
from dcd_ext.students.factory import student_folder_kind
from dcd_ext.students.tiny_pretrained import build_tiny_clip, build_tiny_siglip
from dcd_ext.teachers import load_teacher
from dcd_ext.teachers.blip import build_tiny_blip
from dcd_ext.train import main as train_main
from train_fixtures import write_table

torch.set_num_threads(1)

FLAGS = ["--epochs", "1", "--batch-size", "8", "--k", "3", "--no-progress", "--threads", "1", "--rerank-k", "4"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    data = write_table(str(root), num_images=16, captions_per_image=2)
    clip = build_tiny_clip(root / "clip", vocabulary(), image_size=32, patch_size=16, projection_dim=16, seed=1)
    blip = build_tiny_blip(root / "blip", vocabulary(), init_std=0.2, seed=2)
    return root, data, clip, blip


@pytest.fixture(scope="module")
def clip_run(models):
    root, data, clip, blip = models
    run = root / "run"
    code = train_main(["--data", data, "--student", str(clip), "--teacher", str(blip), "--out", str(run)] + FLAGS)
    return run, code


def test_train_a_clip_folder_with_a_blip_teacher(models, clip_run):
    root, data, clip, blip = models
    run, code = clip_run
    assert code == 0
    student_dir = run / "student_dcd"
    assert student_folder_kind(str(student_dir)) == "clip"
    assert json.loads((student_dir / "config.json").read_text())["model_type"] == "clip"
    results = json.loads((run / "results.json").read_text())
    assert list(results) == ["student_dcd", "student_dcd_rerank", "teacher"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("teacher_pairs", 0) > 0 and "dist" in r for r in rows)
    trained, start = load_student(str(student_dir)), load_student(str(clip))
    moved = max((a - b).abs().max().item() for a, b in zip(trained.parameters(), start.parameters()))
    assert moved > 0, "the student did not train"


def test_evaluate_index_search_speed_with_the_trained_student(models, clip_run, tmp_path, capsys):
    root, data, clip, blip = models
    run, _ = clip_run
    student_dir = str(run / "student_dcd")
    trained = json.loads((run / "results.json").read_text())

    out = tmp_path / "eval.json"
    assert evaluate_cli.main(["--student", student_dir, "--teacher", str(blip), "--data", data, "--split", "test",
                              "--rerank-k", "4", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    for key in ("i2t_r1", "t2i_r5", "rsum"):  # the saved student evaluates as the trained one did
        assert results["student"][key] == trained["student_dcd"][key]
        assert results["student_rerank"][key] == trained["student_dcd_rerank"][key]

    index = str(tmp_path / "gallery.index.safetensors")
    assert index_cli.main(["--student", student_dir, "--data", data, "--split", "test", "--out", index,
                           "--no-progress"]) == 0
    split = load_split(data, None, "test", 5, all_rows_without_split_column=True)
    query = split.captions[0]
    hits = tmp_path / "hits.json"
    assert search_cli.main(["--index", index, "--text", query, "--k", "3", "--teacher", str(blip),
                            "--rerank-depth", "4", "--json", str(hits)]) == 0
    doc = json.loads(hits.read_text())
    (entry,) = doc["queries"]
    answer = entry["results"]
    student, teacher = load_student(student_dir), load_teacher("blip", blip)
    images = split.load_images(range(split.num_images))
    with torch.no_grad():
        gallery = student.encode_image(student.preprocess_images(images))
        q = student.encode_text(*student.tokenizer([query]))[0]
    for hit in answer:  # student and teacher scores are theirs, recomputed here
        position = int(hit["id"])
        assert hit["student_score"] == pytest.approx(float(gallery[position] @ q), abs=1e-5)
        assert hit["teacher_score"] == pytest.approx(float(teacher.score([images[position]], [query])[0]), abs=1e-4)
    assert [h["teacher_score"] for h in answer] == sorted((h["teacher_score"] for h in answer), reverse=True)

    report = tmp_path / "speed.json"
    assert speed_cli.main(["--student", student_dir, "--teacher", str(blip), "--gallery-measured", "2", "--gallery",
                           "100", "--queries", "1", "--k", "2", "--threads", "1", "--json", str(report)]) == 0
    (result,) = json.loads(report.read_text())["results"]
    assert result["teacher"] == "blip" and "clip student" in result["config"]
    assert result["rows"][1]["teacher_all_pairs_ms_per_query"] > 0
    with pytest.raises(ValueError, match="--student and --teacher go together"):
        speed_cli.main(["--student", student_dir])


def test_siglip_folder_trains_through_the_same_flag(models, tmp_path):
    root, data, _, _ = models
    siglip = build_tiny_siglip(tmp_path / "siglip", image_size=32, patch_size=16, seed=3)
    run = tmp_path / "run"
    assert train_main(["--data", data, "--student", str(siglip), "--loss", "contrastive", "--out", str(run)]
                      + FLAGS) == 0
    saved = run / "student_contrastive"
    assert student_folder_kind(str(saved)) == "siglip"
    assert set(json.loads((run / "results.json").read_text())) == {"student_contrastive"}


def test_open_clip_student_through_the_command_line(models, tmp_path):
    pytest.importorskip("open_clip")
    from dcd_ext.students.tiny_pretrained import build_tiny_open_clip

    root, data, _, blip = models
    config, weights = build_tiny_open_clip(tmp_path / "oc", name="tiny-vit-cli", seed=5)
    run = tmp_path / "run"
    assert train_main(["--data", data, "--student", f"open_clip:{config}", "--student-weights", str(weights),
                       "--teacher", str(blip), "--out", str(run)] + FLAGS) == 0
    saved = run / "student_dcd"
    assert student_folder_kind(str(saved)) == "open_clip"
    index = str(tmp_path / "oc.index.safetensors")
    assert index_cli.main(["--student", str(saved), "--data", data, "--split", "test", "--out", index,
                           "--no-progress"]) == 0
    with pytest.raises(ValueError, match="needs its checkpoint file"):
        train_main(["--data", data, "--student", f"open_clip:{config}", "--loss", "contrastive",
                    "--out", str(tmp_path / "bad")] + FLAGS)


def test_student_flag_errors(models, tmp_path):
    root, data, clip, blip = models
    with pytest.raises(ValueError, match="--student-weights goes with --student open_clip:ARCH"):
        train_main(["--data", data, "--student", str(clip), "--student-weights", "w.pt", "--loss", "contrastive",
                    "--out", str(tmp_path / "a")] + FLAGS)
    with pytest.raises(ValueError, match="takes towers from a ViLT or METER teacher, not blip"):
        train_main(["--data", data, "--student", "teacher", "--teacher", str(blip), "--out", str(tmp_path / "b")]
                   + FLAGS)
    with pytest.raises(ValueError, match="a CLIP or SigLIP folder"):
        train_main(["--data", data, "--student", str(tmp_path), "--loss", "contrastive",
                    "--out", str(tmp_path / "c")] + FLAGS)
