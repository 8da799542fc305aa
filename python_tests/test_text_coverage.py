"""Tokenizer coverage counts only a caption's own tokens (CLIP's unknown token is also its end-of-text token,
which it adds to every caption), and a sub-word tokenizer that reads most tokens as unknown is an error, not a
warning users learn to ignore."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dcd_ext.students.hf_dual import load_hf_student
from dcd_ext.students.tiny_pretrained import build_tiny_clip
from dcd_ext.text_coverage import coverage_warnings, student_coverage
from dcd_ext.train import main
from teacher_fixtures import VOCAB_WORDS
from train_fixtures import write_table

torch.set_num_threads(1)
CAPTIONS = ["a cat", "a red square left of a blue circle", "two green triangles"]


@pytest.fixture
def clip_dir(tmp_path):
    return build_tiny_clip(tmp_path / "clip", VOCAB_WORDS, projection_dim=16, seed=1)


def test_a_clip_student_reading_every_caption_gets_no_unknown_token_warning(clip_dir):
    student = load_hf_student(str(clip_dir))
    coverage = student_coverage(student, CAPTIONS)
    # the captions' own 20 tokens ("cat" in byte-fallback pieces); the 3 start and 3 end tokens are not counted
    assert coverage.unknown == 0 and coverage.total == 20
    assert coverage_warnings(CAPTIONS, student) == []
    # truncation still counts the special tokens: 75 words + start + end exceed 77 positions by one
    assert student_coverage(student, ["a " * 75, "a " * 76]).truncated == 1


def break_tokenizer(folder):
    """A CLIP folder whose tokenizer files are not the model's: a vocabulary of the specials and one word."""
    os.remove(folder / "tokenizer.json")
    (folder / "vocab.json").write_text(json.dumps({"a</w>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def test_a_tokenizer_that_reads_most_tokens_as_unknown_stops_training_before_the_run_folder(clip_dir, tmp_path):
    break_tokenizer(clip_dir)
    student = load_hf_student(str(clip_dir))
    with pytest.raises(ValueError, match=r"student: its tokenizer does not read these captions: in 3 captions, "
                                         r"\d+ of \d+ tokens \(\d+\.\d%\) map to the unknown token"):
        coverage_warnings(CAPTIONS, student)
    table = write_table(str(tmp_path), num_images=12)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"student: its tokenizer does not read these training captions: .* Is its "
                                         r"tokenizer missing or not the model's"):
        main(["--data", table, "--student", str(clip_dir), "--loss", "contrastive", "--epochs", "1",
              "--batch-size", "8", "--val-split", "none", "--out", str(out), "--no-progress", "--threads", "1"])
    assert not out.exists()
