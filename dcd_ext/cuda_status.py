"""Whether CUDA can run here, and if not why, as one short line of our own.

The first time anything asks torch for GPUs, torch reports a driver older than its CUDA, or an NVML that
cannot start, as a long ``UserWarning`` (with the line of torch that warned). Such hosts are common (GPU
servers whose driver lags the torch build), and a command would print that text before its own output or
its one-line error. Every device query of dcd_ext goes through :func:`cuda_status`, which asks torch once
with the warnings caught and keeps a one-line reason; a command prints it, once, when it resolves
``--device auto`` to the CPU (:func:`note_cuda_unavailable`). A host with no NVIDIA driver at all gets no
warning from torch and no note from us.
"""

from __future__ import annotations

import functools
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

# "CUDA initialization: The NVIDIA driver on your system is too old (found version 12020). Please update ..."
OLD_DRIVER = re.compile(r"driver on your system is too old \(found version (\d+)\)")
CUDA_WARNING = re.compile(r"CUDA|NVML|NVIDIA|cuda")


@dataclass(frozen=True)
class CudaStatus:
    available: bool
    device_count: int
    reason: Optional[str] = None  # why CUDA cannot run although a driver answered; None when it runs or none is there

    @property
    def summary(self) -> str:
        """One line for ``python -m dcd_ext.info``."""
        if self.available:
            return f"available, {self.device_count} device{'s' if self.device_count != 1 else ''}"
        if self.reason:
            return f"unavailable: {self.reason}"
        if not torch.version.cuda:
            return "unavailable: this torch is built without CUDA"
        return "unavailable: no NVIDIA GPU or driver found"


def driver_version_text(code: int) -> str:
    """CUDA's integer version (12020) as people write it (12.2)."""
    return f"{code // 1000}.{code % 1000 // 10}"


def reason_from_warnings(messages: list[str]) -> Optional[str]:
    """One short reason out of torch's CUDA warnings (the driver's version mismatch first)."""
    for message in messages:
        old = OLD_DRIVER.search(message)
        if old:
            return (f"the NVIDIA driver is older than this torch's CUDA {torch.version.cuda} "
                    f"(found {driver_version_text(int(old.group(1)))})")
    for message in messages:
        text = message.removeprefix("CUDA initialization: ").split(" (Triggered internally at", 1)[0]
        text = text.split(". ", 1)[0].strip().rstrip(".")
        if text:
            return text[0].lower() + text[1:]
    return None


@functools.lru_cache(maxsize=None)
def cuda_status() -> CudaStatus:
    """Asks torch once per process; its CUDA warnings become :attr:`CudaStatus.reason`, any other warning is
    passed on unchanged. Creates no CUDA context."""
    if not torch.version.cuda:
        return CudaStatus(False, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()  # the runtime's answer; NVML alone would count GPUs it cannot use
        count = torch.cuda.device_count() if available else 0
    cuda_messages = []
    for w in caught:
        if issubclass(w.category, UserWarning) and CUDA_WARNING.search(str(w.message)):
            cuda_messages.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return CudaStatus(available, count, None if available else reason_from_warnings(cuda_messages))


def cuda_available() -> bool:
    return cuda_status().available


@functools.lru_cache(maxsize=None)
def note_cuda_unavailable() -> None:
    """``note: CUDA unavailable: <reason>; running on the CPU`` on stderr, once per process, when a driver
    answered but CUDA cannot run."""
    reason = cuda_status().reason
    if reason:
        print(f"note: CUDA unavailable: {reason}; running on the CPU", file=sys.stderr)
