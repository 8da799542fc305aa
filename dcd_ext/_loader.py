"""Loads the compiled operators (dcd_ext._C) with actionable errors."""

from __future__ import annotations

import torch

REBUILD_HINT = (
    "Rebuild the extension against the installed torch: "
    "pip install --no-build-isolation --force-reinstall --no-deps ."
)


def source_tree_hint() -> str:
    """Explains the usual cause of a missing build: the repository root shadows the installed package."""
    from pathlib import Path

    package = Path(__file__).resolve().parent
    if (package.parent / "setup.py").exists() and not list(package.glob("_C*.so")):
        return (f" Python imported dcd_ext from the source tree {package} (the current directory comes first "
                "on sys.path), where nothing is compiled: run from another directory or with `python -P`, "
                "or build in place with `python setup.py build_ext --inplace`.")
    return ""


def build_info():
    try:
        from dcd_ext import _build_info
    except ImportError as exc:
        raise ImportError(f"dcd_ext was not built (no dcd_ext/_build_info.py). {REBUILD_HINT}"
                          f"{source_tree_hint()}") from exc
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
        raise ImportError(f"cannot load dcd_ext._C ({exc}). {REBUILD_HINT}{source_tree_hint()}") from exc
