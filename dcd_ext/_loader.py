"""Loads the compiled operators (dcd_ext._C) with actionable errors."""

from __future__ import annotations

import torch

REBUILD_HINT = (
    "Rebuild the extension against the installed torch: "
    "pip install --no-build-isolation --force-reinstall --no-deps ."
)


def build_info():
    try:
        from dcd_ext import _build_info
    except ImportError as exc:
        raise ImportError(f"dcd_ext was not built (no dcd_ext/_build_info.py). {REBUILD_HINT}") from exc
    return _build_info


def load_extension() -> None:
    info = build_info()
    if info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"dcd_ext._C was built against torch {info.TORCH_VERSION} but torch {torch.__version__} is installed. "
            f"{REBUILD_HINT}"
        )
    try:
        from dcd_ext import _C  # noqa: F401  (registers torch.ops.dcd_ext.*)
    except ImportError as exc:
        raise ImportError(f"cannot load dcd_ext._C ({exc}). {REBUILD_HINT}") from exc
