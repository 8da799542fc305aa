"""Finds and loads the compiled operators (dcd_ext._C) with actionable errors.

The library is looked for next to the imported Python files first (an installed package, or an in-place
build). When those files come from an uncompiled source tree (``python -m dcd_ext.train`` run from the
repository root puts the root first on ``sys.path``), the library of the installed ``dcd_ext``
distribution is used instead, provided it was built for the same package version, Python and torch.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

import dcd_ext

REBUILD_HINT = (
    "Rebuild the extension against the installed torch: "
    "pip install --no-build-isolation --force-reinstall --no-deps ."
)
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CompiledLibrary:
    library: Path  # the _C shared object
    info: ModuleType  # its _build_info module
    origin: str  # "package" (next to the imported files) or "installed distribution"


def compiled_files(folder: Path) -> Optional[tuple[Path, Path]]:
    """(library, build info) in ``folder`` for this Python, or None."""
    info = folder / "_build_info.py"
    if not info.is_file():
        return None
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (folder / f"_C{suffix}").is_file():
            return folder / f"_C{suffix}", info
    return None


def read_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def installed_package_dirs() -> list[Path]:
    """Package folders of installed dcd_ext distributions other than the imported one (a source tree on
    ``sys.path`` may also show its own ``dcd_ext.egg-info``, which points back at itself)."""
    folders = []
    for dist in importlib.metadata.distributions(name="dcd_ext"):
        folder = Path(dist.locate_file("dcd_ext")).resolve()
        if folder == PACKAGE_DIR or folder in folders:
            continue
        if dist.version != dcd_ext.__version__:
            raise ImportError(f"dcd_ext {dcd_ext.__version__} was imported from the uncompiled source tree "
                              f"{PACKAGE_DIR}, but the installed distribution in {folder} is version {dist.version}. "
                              "Reinstall from this tree: pip install --no-build-isolation .")
        folders.append(folder)
    return folders


def find_library() -> CompiledLibrary:
    here = compiled_files(PACKAGE_DIR)
    if here is not None:
        return CompiledLibrary(here[0], read_module(here[1], "dcd_ext._build_info"), "package")
    found = next(filter(None, map(compiled_files, installed_package_dirs())), None)
    if found is None:
        raise ImportError(f"dcd_ext is not built: no compiled dcd_ext._C next to {PACKAGE_DIR} and no installed "
                          "dcd_ext distribution that has one. Install it: pip install --no-build-isolation .")
    return CompiledLibrary(found[0], read_module(found[1], "dcd_ext._installed_build_info"),
                           "installed distribution")


_LIBRARY: Optional[CompiledLibrary] = None


def compiled_library() -> CompiledLibrary:
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = find_library()
    return _LIBRARY


def build_info() -> ModuleType:
    """The ``_build_info`` module of the library that is (or will be) loaded."""
    return compiled_library().info


def load_extension() -> None:
    found = compiled_library()
    if found.info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"dcd_ext._C ({found.library}) was built against torch {found.info.TORCH_VERSION} but torch "
            f"{torch.__version__} is installed. {REBUILD_HINT}"
        )
    try:
        if found.origin == "package":
            from dcd_ext import _C  # noqa: F401  (registers torch.ops.dcd_ext.*)
        elif not hasattr(torch.ops.dcd_ext, "similarity_topk"):
            torch.ops.load_library(str(found.library))
    except (ImportError, OSError) as exc:
        raise ImportError(f"cannot load {found.library} ({exc}). {REBUILD_HINT}") from exc
