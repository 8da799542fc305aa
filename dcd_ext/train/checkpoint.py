"""Training checkpoints in one safetensors file: weights, AdamW state, progress, and each process's RNG
and loss state (queue, sampling generator), so a resumed run continues exactly where it stopped.

Tensors live under ``model.*``, ``optimizer.<param>.<name>`` and ``rank<r>.*``; everything else (optimizer
hyper-parameters, progress, Python RNG states, the fp16 grad scaler) is JSON in the file's metadata, next to
a SHA-256 of every tensor. Files are written to a temporary name, flushed to disk and renamed, so a crash
leaves the previous checkpoint intact; a damaged file is reported by :class:`CorruptCheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import write_atomically

FORMAT = "dcd_ext.train/3"
# format 2 stored the student under ``model.student.*`` (a student + loss container); it still resumes
READABLE_FORMATS = ("dcd_ext.train/2", FORMAT)
SUFFIX = ".safetensors"


class CorruptCheckpointError(ValueError):
    """A checkpoint that cannot be trusted: truncated, damaged, or not one of ours."""

    def __init__(self, path: str, why: str):
        super().__init__(f"resume: checkpoint {path} is unusable: {why}")
        self.path = path


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory: give every tensor after the first its own copy."""
    seen, out = set(), {}
    for key, t in tensors.items():
        t = t.detach()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[key] = t.clone().contiguous() if ptr in seen or not t.is_contiguous() else t
        if ptr is not None:
            seen.add(ptr)
    return out


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def capture_rank_state(loss: Optional[torch.nn.Module] = None, device: Optional[torch.device] = None) -> dict:
    """This process's RNG states and the loss's resumable state (see ``StudentLoss.state_tensors``)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    if loss is not None and hasattr(loss, "state_tensors"):
        tensors.update({f"loss.{k}": v.detach().cpu() for k, v in loss.state_tensors().items()})
    return {"tensors": tensors, "python_rng": random.getstate()}


def restore_rank_state(state: dict, loss: Optional[torch.nn.Module] = None,
                       device: Optional[torch.device] = None) -> None:
    tensors = state["tensors"]
    torch.set_rng_state(tensors["rng.torch"])
    if device is not None and device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], device)
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    if loss is not None and hasattr(loss, "load_state_tensors"):
        loss.load_state_tensors({k[5:]: v.to(device or "cpu") for k, v in tensors.items() if k.startswith("loss.")})


def save_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, progress: dict,
                    rank_states: Optional[list[dict]] = None, extra: Optional[dict] = None) -> None:
    """Write atomically. ``rank_states``: one :func:`capture_rank_state` per process (default: this one's);
    ``extra``: JSON-able run facts (schedule, world size, grad scaler) returned by :func:`read_meta`."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, state in opt_state["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    rank_states = rank_states if rank_states is not None else [capture_rank_state()]
    for r, state in enumerate(rank_states):
        tensors.update({f"rank{r}.{k}": v for k, v in state["tensors"].items()})
    tensors = unshared({k: v.detach().cpu() for k, v in tensors.items()})
    metadata = {"format": FORMAT, "progress": json.dumps(progress), "extra": json.dumps(extra or {}),
                "optimizer_groups": json.dumps(opt_state["param_groups"]),
                "optimizer_scalars": json.dumps(scalars),
                "python_rng": json.dumps([s["python_rng"] for s in rank_states]),
                "sha256": digest(tensors)}
    write_atomically(path, lambda temp: save_file(tensors, temp, metadata=metadata), durable=True)


def read_meta(path: str) -> dict:
    """The file's metadata (progress, extra), checked to be one of ours; the tensors are not read."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume: checkpoint not found: {path}")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated or garbled headers
        raise CorruptCheckpointError(path, f"not a readable safetensors file ({e})") from None
    if meta.get("format") not in READABLE_FORMATS:
        raise CorruptCheckpointError(path, f"not a {FORMAT} training checkpoint (format {meta.get('format')!r})")
    try:
        return {**meta, "progress": json.loads(meta["progress"]), "extra": json.loads(meta["extra"])}
    except (KeyError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(path, f"damaged metadata ({e})") from None


def read_progress(path: str) -> dict:
    return read_meta(path)["progress"]


def read_tensors(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, every tensor), after checking the SHA-256 the writer stored."""
    meta = read_meta(path)
    try:
        with safe_open(path, "pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:
        raise CorruptCheckpointError(path, f"tensor data unreadable ({e})") from None
    if digest(tensors) != meta.get("sha256"):
        raise CorruptCheckpointError(path, "SHA-256 mismatch: the file was damaged after it was written")
    return meta, tensors


def checkpoint_mismatch(path: str, model: torch.nn.Module) -> Optional[str]:
    """Why the weights in ``path`` do not fit ``model`` (missing, extra or differently shaped tensors), or
    None. Reads the header only."""
    meta = read_meta(path)
    prefix = "model.student." if meta["format"] == "dcd_ext.train/2" else "model."
    try:
        with safe_open(path, "pt") as f:
            shapes = {k[len(prefix):]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(prefix)}
    except Exception as e:
        raise CorruptCheckpointError(path, f"tensor index unreadable ({e})") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = [f"{k}: {list(shapes[k])} in the checkpoint, {list(v)} here" for k, v in expected.items()
                if k in shapes and shapes[k] != v]
    missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    if missing:
        problems.append(f"{len(missing)} tensors missing from the checkpoint (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} tensors this student does not have (e.g. {extra[0]})")
    if not problems:
        return None
    return "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")


def check_checkpoint_fits(path: str, model: torch.nn.Module) -> None:
    """ValueError naming ``path`` when its weights belong to a student of another architecture."""
    why = checkpoint_mismatch(path, model)
    if why:
        raise ValueError(f"resume: checkpoint {path} holds a student of another architecture than this run "
                         f"builds ({why}); resume it with the settings it was written with")


def load_checkpoint(path: str, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    restore_rng: bool = True, rank: int = 0, loss: Optional[torch.nn.Module] = None,
                    device: Optional[torch.device] = None) -> dict:
    """Restore the model (and optimizer, and process ``rank``'s RNG and loss state); returns the progress.

    A checkpoint written by fewer processes than ``rank + 1`` restores weights and optimizer only."""
    meta, tensors = read_tensors(path)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        group, _, rest = key.partition(".")
        groups.setdefault(group, {})[rest] = value
    weights = groups.get("model", {})
    if meta["format"] == "dcd_ext.train/2":
        weights = {k[len("student."):]: v for k, v in weights.items() if k.startswith("student.")}
    model_device = next(model.parameters()).device
    check_checkpoint_fits(path, model)
    model.load_state_dict({k: v.to(model_device) for k, v in weights.items()})
    if optimizer is not None:
        state: dict[int, dict] = {}
        for key, value in groups.get("optimizer", {}).items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = value
        for pid, values in json.loads(meta["optimizer_scalars"]).items():
            state.setdefault(int(pid), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["optimizer_groups"])})
    python_rng = json.loads(meta["python_rng"])
    if restore_rng and rank < len(python_rng):
        restore_rank_state({"tensors": groups[f"rank{rank}"], "python_rng": python_rng[rank]}, loss, device)
    return meta["progress"]


def checkpoint_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(SUFFIX))


def latest_checkpoint(folder: str) -> Optional[str]:
    """The checkpoint in a folder that got furthest, or None. An unreadable file written after the newest
    readable one is an error naming both: resuming from the older one silently would lose work."""
    readable, broken = [], []
    for path in checkpoint_files(folder):
        try:
            readable.append((read_progress(path)["global_step"], path))
        except CorruptCheckpointError as e:
            broken.append(e)
    newest = max(readable)[1] if readable else None
    newer_broken = [e for e in broken if newest is None or os.path.getmtime(e.path) >= os.path.getmtime(newest)]
    if newer_broken:
        hint = f"; the newest readable one is {newest} (pass it to --resume)" if newest else "; no readable one is left"
        raise CorruptCheckpointError(newer_broken[0].path, str(newer_broken[0]).split(" is unusable: ", 1)[1] + hint)
    return newest


def remove_stale_temporaries(folder: str) -> None:
    """Half-written ``.tmp`` files a killed run left behind."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".tmp") and SUFFIX in name:
                os.remove(os.path.join(folder, name))


def prune_checkpoints(folder: str, keep: int) -> None:
    """Keep the newest ``keep`` epoch checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    epochs = sorted(n for n in os.listdir(folder) if n.startswith("epoch_") and n.endswith(SUFFIX))
    for name in epochs[:-keep]:
        os.remove(os.path.join(folder, name))
