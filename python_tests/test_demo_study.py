"""``python -m dcd_ext.train.demo_study``: the demo over seeds plus the DCD ablations, tiny preset."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from dcd_ext.train import demo_study

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    argv = ["--demo-size", "tiny", "--seeds", "0,1", "--ablation-seeds", "1", "--out", str(root / "s"),
            "--cache-dir", str(root / "cache"), "--threads", "1", "--no-progress"]
    assert demo_study.main(argv) == 0
    return root / "s", argv


def test_study_tables_match_the_runs(study):
    out, _ = study
    data = json.loads((out / "study.json").read_text())
    text = (out / "study.md").read_text()
    for row in demo_study.ROWS:
        values = [json.loads((out / f"seed{s}" / "results.json").read_text())[row]["rsum"] for s in (0, 1)]
        assert f"| {row} | {statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} |" in text
    assert sorted(data["ablations"]) == sorted(name for name, _ in demo_study.ABLATIONS)
    # the dcd weighting row is the seed's own demo run; the others trained a DCD student with one flag changed
    assert data["ablations"]["weighting dcd"]["1"]["dcd"] == data["demos"]["1"]["student_dcd"]
    none = json.loads((out / "ablation-weighting-none-seed1" / "config.json").read_text())
    assert none["args"]["weighting"] == "none" and none["args"]["seed"] == 1
    mined = json.loads((out / "ablation-mine-by-teacher-seed1" / "config.json").read_text())
    assert mined["args"]["mine_by"] == "teacher"
    for name in data["ablations"]:
        assert f"| {name} |" in text


def test_study_reuses_finished_runs(study, capsys):
    out, argv = study
    before = (out / "study.md").read_text()
    stamp = (out / "seed0" / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert demo_study.main(argv) == 0
    assert (out / "study.md").read_text() == before
    assert (out / "seed0" / "results.json").stat().st_mtime_ns == stamp


def test_study_names_bad_seeds(tmp_path):
    with pytest.raises(ValueError, match="--seeds"):
        demo_study.main(["--seeds", "0,x", "--out", str(tmp_path)])
