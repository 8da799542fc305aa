"""Atomic file writes, used for everything the package writes (run files, checkpoints, indexes, students)."""

from __future__ import annotations

import os
import tempfile
from typing import Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_folder(folder: str) -> None:
    """Make a rename inside ``folder`` durable (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_atomically(path: str, write: Callable[[str], None], durable: bool = False) -> str:
    """Call ``write(temp_path)`` for a temporary file next to ``path``, then rename it onto ``path``: a
    reader sees the old file or the whole new one, never part of it. The file gets the permissions a plain
    ``open(path, "w")`` would (0666 less the umask). ``durable``: fsync the data and the rename too."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~_umask())
        if durable:
            with open(temp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    if durable:
        fsync_folder(folder)
    return path


def follow_umask(folder) -> None:
    """Give the files directly in ``folder`` the permissions ``open(path, "w")`` would (0666 less the umask):
    for folders written by other libraries (safetensors writes its files 0600)."""
    mode = 0o666 & ~_umask()
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, mode)


def write_text_atomically(path: str, text: str) -> str:
    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
    return write_atomically(path, write)


def check_writable(path: str, flag: str) -> None:
    """Refuse, before any long work, a file ``path`` that cannot be written: its nearest existing folder is
    not a folder or not writable (the folders below it would be created). OSError names ``flag``."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise OSError(f"{flag}: cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"{flag}: cannot write {path}: no permission to write in {folder}")
