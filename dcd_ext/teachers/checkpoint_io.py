"""Safe loading of PyTorch checkpoint files (``torch.load`` without executing pickled code).

Checkpoints are read with ``weights_only=True``. Lightning checkpoints (such as the METER authors')
also pickle a few harmless container classes: Lightning's ``AttributeDict``, sacred's read-only
config containers, and callback *classes* used as dictionary keys. Those names, and only those, are
mapped to inert stand-ins (classes defined here that build plain dicts/lists) so the file loads without
importing or running anything from Lightning or sacred. Any other global makes loading fail with a
:class:`CheckpointError` naming it; ``allow_pickle=True`` is the explicit opt-in for trusted files.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "load_checkpoint_file", "INERT_GLOBAL_PREFIXES"]


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used: corrupt, truncated, unsafe or of the wrong layout."""


# Globals that only ever appear as containers or dictionary keys in training checkpoints.
INERT_GLOBAL_PREFIXES = (
    "pytorch_lightning.callbacks.",
    "lightning.pytorch.callbacks.",
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "sacred.config.custom_containers.ReadOnlyDict",
    "sacred.config.custom_containers.ReadOnlyList",
)


def _numpy_safe_globals() -> dict[str, Any]:
    """numpy scalar and dtype reconstructors (data only), under their old and new module names."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch wheels
        return {}
    found: dict[str, Any] = {"numpy.dtype": np.dtype}
    core = np._core if hasattr(np, "_core") else np.core
    scalar = getattr(core.multiarray, "scalar", None)
    if scalar is not None:
        found["numpy.core.multiarray.scalar"] = scalar
        found["numpy._core.multiarray.scalar"] = scalar
    for name in dir(getattr(np, "dtypes", object())):
        if name.endswith("DType"):
            found[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    return found


def _stand_in(full_name: str) -> type:
    """A class whose construction yields a plain dict (or list): the weights-only unpickler only
    fills exact dicts and lists, and nothing of the original class is ever run."""
    base = list if full_name.endswith("List") else dict

    def __new__(cls, *args, **kwargs):
        return base(*args, **kwargs)

    short = full_name.rsplit(".", 1)[-1]
    return type(short, (), {"__new__": __new__, "__module__": __name__, "__doc__": f"Inert stand-in for {full_name}."})


def _allowed_globals(names: list[str]) -> tuple[list[tuple[Any, str]], list[str]]:
    numpy_globals = _numpy_safe_globals()
    allowed, refused = [], []
    for name in names:
        if name in numpy_globals:
            allowed.append((numpy_globals[name], name))
        elif name.startswith(INERT_GLOBAL_PREFIXES):
            allowed.append((_stand_in(name), name))
        else:
            refused.append(name)
    return allowed, refused


def _default_stand_ins() -> list[tuple[Any, str]]:
    """Stand-ins for legacy (non-zip) files, whose globals cannot be listed before loading."""
    names = [p for p in INERT_GLOBAL_PREFIXES if not p.endswith(".")]
    return _allowed_globals(names + list(_numpy_safe_globals()))[0]


def load_checkpoint_file(path: str | Path, *, allow_pickle: bool = False) -> Any:
    """Load ``path`` onto the CPU; safe by default (see the module docstring).

    Raises FileNotFoundError for a missing path, IsADirectoryError for a directory, and
    :class:`CheckpointError` for a corrupt or truncated file or one that needs unsafe globals.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"expected a checkpoint file, got a directory: {path}")
    if allow_pickle:
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means an unusable file
            raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from exc

    if zipfile.is_zipfile(path):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {exc}") from exc
        allowed, refused = _allowed_globals(names)
        if refused:
            raise CheckpointError(
                f"checkpoint {path} pickles objects outside the safe allow-list: {sorted(refused)}. "
                "It was not loaded, so no code in it ran. If you trust the file, load it with "
                "allow_pickle=True (or re-save its state_dict alone)."
            )
    else:
        allowed = _default_stand_ins()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {path} could not be loaded safely ({exc}). If you trust the file, load it "
            "with allow_pickle=True."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - EOFError, RuntimeError from the zip reader, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {exc}") from exc
