"""Training checkpoints in one safetensors file: model weights, AdamW state, progress and RNG states.

Tensors are stored under ``model.*``, ``optimizer.<param>.<name>`` and ``rng.*``; everything else (optimizer
hyper-parameters, epoch and step, Python's RNG state) is JSON in the file's metadata.
"""

from __future__ import annotations

import json
import os
import random
from typing import Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "dcd_ext.train/1"


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


def save_checkpoint(path: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    progress: dict) -> None:
    """Write atomically (a crash mid-write leaves the previous checkpoint intact)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, state in opt_state["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    metadata = {"format": FORMAT, "progress": json.dumps(progress),
                "optimizer_groups": json.dumps(opt_state["param_groups"]),
                "optimizer_scalars": json.dumps(scalars), "rng_python": json.dumps(random.getstate())}
    tmp = path + ".tmp"
    save_file(unshared({k: v.cpu() for k, v in tensors.items()}), tmp, metadata=metadata)
    os.replace(tmp, path)


def read_progress(path: str) -> dict:
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"resume: {path} is not a dcd_ext training checkpoint")
    return json.loads(meta["progress"])


def load_checkpoint(path: str, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                    restore_rng: bool = True) -> dict:
    """Restore the model (and optimizer and RNGs); returns the saved progress dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"resume: checkpoint not found: {path}")
    progress = read_progress(path)
    model_state, opt_tensors, rng = {}, {}, {}
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        for key in f.keys():
            group, _, rest = key.partition(".")
            target = {"model": model_state, "optimizer": opt_tensors, "rng": rng}[group]
            target[rest] = f.get_tensor(key)
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in model_state.items()})
    if optimizer is not None:
        state: dict[int, dict] = {}
        for key, value in opt_tensors.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = value
        for pid, values in json.loads(meta["optimizer_scalars"]).items():
            state.setdefault(int(pid), {}).update(values)
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["optimizer_groups"])})
    if restore_rng:
        torch.set_rng_state(rng["torch"])
        cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
        version, internal, gauss = json.loads(meta["rng_python"])
        random.setstate((version, tuple(internal), gauss))
    return progress


def latest_checkpoint(folder: str) -> Optional[str]:
    """The checkpoint in a folder that got furthest (epoch or interrupted), or None."""
    if not os.path.isdir(folder):
        return None
    files = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors")]
    return max(files, key=lambda f: read_progress(f)["global_step"]) if files else None


def prune_checkpoints(folder: str, keep: int) -> None:
    """Keep the newest ``keep`` epoch checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    epochs = sorted(n for n in os.listdir(folder) if n.startswith("epoch_") and n.endswith(".safetensors"))
    for name in epochs[:-keep]:
        os.remove(os.path.join(folder, name))
