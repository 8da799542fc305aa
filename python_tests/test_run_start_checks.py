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


def sentencepiece_siglip_folder(tmp_path):
    """A SigLIP 1 style folder: the tokenizer is a sentencepiece ``spiece.model`` (no tokenizer.json)."""
    from dcd_ext.students.tiny_pretrained import build_tiny_siglip

    folder = build_tiny_siglip(tmp_path / "siglip", seed=2)
    (folder / "tokenizer.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "SiglipTokenizer"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "spiece.model").write_bytes(b"\x0a\x00")  # never read: the package that reads it is missing
    return folder


def without_sentencepiece(monkeypatch):
    """sentencepiece not installed: as it is, or simulated with the error transformers raises then."""
    import importlib.util

    if importlib.util.find_spec("sentencepiece") is None:
        return
    import transformers

    def from_pretrained(*args, **kwargs):
        raise ImportError("\nSiglipTokenizer requires the SentencePiece library but it was not found in your "
                          "environment. Check out the instructions on the\ninstallation page of its repo: ...\n")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", from_pretrained)


def test_a_sentencepiece_siglip_folder_without_sentencepiece_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    from dcd_ext.cli import run_command_line

    folder = sentencepiece_siglip_folder(tmp_path)
    without_sentencepiece(monkeypatch)
    monkeypatch.delenv("DCD_TRACEBACK", raising=False)
    table = write_table(str(tmp_path))
    code = run_command_line(main, ["--data", table, "--student", str(folder), "--loss", "contrastive", "--epochs", "1",
                                   "--batch-size", "8", "--out", str(tmp_path / "run"), "--no-progress",
                                   "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (f"error: student: the tokenizer of {folder} is a sentencepiece model (spiece.model), and the "
                       "sentencepiece package is not installed: pip install sentencepiece (SigLIP 2 folders ship a "
                       "tokenizer.json and need no extra package)")
    assert "Traceback" not in "\n".join(err)
    assert not os.path.exists(tmp_path / "run")


def test_the_resume_hint_of_an_interrupted_torchrun_names_its_process_count():
    """Issue 22 friction: the hint read ``torchrun --nproc_per_node N`` with a literal N."""
    from dcd_ext.distributed import World
    from dcd_ext.train.cli import launcher

    assert launcher(World(size=4, rank=0, local_rank=0)) == "torchrun --nproc_per_node 4 -m dcd_ext.train"
    assert launcher(World()) == "python -m dcd_ext.train"
