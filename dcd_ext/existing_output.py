"""Outputs that already exist: a command that writes a run folder, a teacher folder or an index file refuses
one that is already there unless the user says ``--overwrite``, because writing a new result over an old one
leaves a mix of both (an old run's checkpoints under a new run's config, an old teacher's files beside a new
teacher's). With ``--overwrite`` the old output is removed when the new one is written, never before: a
command that fails on the way leaves the old output as it was.

``--overwrite`` removes only what the command itself writes: a folder holding other files (no run's
config.json, no teacher) is refused either way, so that ``--out ~`` can never delete a home folder.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable, Optional

OVERWRITE_HELP = "replace an existing --out (without it an existing, non-empty --out is refused)"


def add_overwrite_argument(parser, help: str = OVERWRITE_HELP) -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def is_empty_folder(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def check_new_folder(path: str, overwrite: bool, what: str, is_ours: Callable[[str], bool],
                     continue_hint: str = "", flag: str = "out") -> bool:
    """Whether writing the folder ``path`` replaces an existing one (True only with ``overwrite``). A missing
    or empty folder is fine; a file, or a non-empty folder without ``overwrite``, is a ValueError naming
    ``flag``; so is a non-empty folder that ``is_ours`` does not recognise as a ``what``, even with it."""
    if not os.path.lexists(path) or is_empty_folder(path):
        return False
    if not os.path.isdir(path):
        raise ValueError(f"{flag}: {path} is a file, not a folder")
    if not is_ours(path):
        raise ValueError(f"{flag}: {path} already holds files and is not a {what}; choose another --{flag}")
    if not overwrite:
        raise ValueError(f"{flag}: {path} already holds a {what}; "
                         + (f"{continue_hint}, or " if continue_hint else "")
                         + f"pass --overwrite to replace it (writing over it would mix the two)")
    return True


def check_new_file(path: Optional[str], overwrite: bool, flag: str = "out") -> bool:
    """Whether writing the file ``path`` replaces an existing one (True only with ``overwrite``)."""
    if not path or not os.path.lexists(path):
        return False
    if os.path.isdir(path):
        raise ValueError(f"{flag}: {path} is a folder, not a file")
    if not overwrite:
        raise ValueError(f"{flag}: {path} already exists; pass --overwrite to replace it")
    return True


def remove_folder(path: str) -> None:
    """Remove a folder :func:`check_new_folder` allowed to be replaced."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def replace_folder(path: str, write: Callable[[str], object]) -> None:
    """``write(temp)`` a new folder next to ``path``, then put it in the place of the old one: the old output is
    gone only once the new one is complete."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temp = os.path.join(parent, f".{os.path.basename(os.path.abspath(path))}.new-{os.getpid()}")
    remove_folder(temp)
    try:
        write(temp)
        remove_folder(path)
        os.replace(temp, path)
    except BaseException:
        remove_folder(temp)
        raise
