"""Shared fixtures of the test suite (helpers live in op_helpers.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def tiny_vilt_dir(tmp_path_factory):
    """A tiny random-init ViLT folder (teacher for training tests)."""
    from dcd_ext.data import vocabulary
    from dcd_ext.teachers.vilt import build_tiny_vilt
    out = tmp_path_factory.mktemp("vilt")
    build_tiny_vilt(out, vocabulary(), image_size=32, patch_size=8, hidden=32, layers=1, heads=2,
                    max_text_len=16, seed=0)
    return str(out)
