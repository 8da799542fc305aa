"""Silence transformers' per-file progress bars while loading or saving teachers."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def hf_progress_bars_off():
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()
