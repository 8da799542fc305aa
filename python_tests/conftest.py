"""Shared fixtures of the test suite (helpers live in op_helpers.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
