"""Issue 22 items 9 and 10: what a run can check before its folder is made is checked there; a student folder
that cannot read its own data (or whose tokenizer needs a package that is missing) is a one-line user error
and leaves no run folder."""

from __future__ import annotations

import json
import os

import pytest

from dcd_ext.students.tiny_pretrained import build_tiny_clip
from dcd_ext.train import main
from teacher_fixtures import VOCAB_WORDS
from train_fixtures import write_table


def test_a_clip_folder_whose_processor_makes_other_sized_images_fails_before_the_run_folder(tmp_path):
    table = write_table(str(tmp_path))
    clip = build_tiny_clip(tmp_path / "clip", VOCAB_WORDS, projection_dim=16, seed=1)  # a 32 px model
    config = json.loads((clip / "preprocessor_config.json").read_text())
    config["size"], config["crop_size"] = {"shortest_edge": 48}, {"height": 48, "width": 48}
    (clip / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"student: .*clip cannot embed a training example \(image "
                                         r"table_images/\d+\.png, caption '.*'\): ValueError: Input image size "
                                         r"\(48\*48\) doesn't match model \(32\*32\)"):
        main(["--data", table, "--student", str(clip), "--loss", "contrastive", "--epochs", "1", "--batch-size", "8",
              "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"])
    assert not os.path.exists(tmp_path / "run")
