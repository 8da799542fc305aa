"""Which run a training checkpoint belongs to: its loss, its student, and the settings that define the run (every
flag but those a resume may change, see :data:`~dcd_ext.train.params.RESUMABLE`), with their SHA-256.

Every checkpoint records it (``extra["run"]``); a resume compares it with the run being resumed before anything
is written, so a checkpoint of another run (copied into the folder, or left there by an earlier run) whose
tensors happen to have the same shapes is refused by name instead of being continued as this run.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from .params import NOT_RESTORED, RESUMABLE, absolute, as_saved, flag_name


def run_identity(args) -> dict:
    """The identity of the run ``args`` describe (a new run's flags, or a resumed run's restored settings)."""
    settings = {dest: as_saved(absolute(dest, value, os.getcwd())) for dest, value in sorted(vars(args).items())
                if dest not in RESUMABLE and dest not in NOT_RESTORED}
    text = json.dumps(settings, sort_keys=True)
    return {"loss": settings.get("loss"), "student": settings.get("student"), "settings": settings,
            "settings_sha256": hashlib.sha256(text.encode()).hexdigest()}


def identity_mismatch(saved: Optional[dict], ours: dict) -> Optional[str]:
    """How the run that wrote a checkpoint (``saved``) differs from this one, or None. A checkpoint written
    before runs recorded their identity (``saved`` None) is not refused. Settings either side lacks (a flag
    added in a later version) are not compared."""
    if not saved or saved.get("settings_sha256") == ours["settings_sha256"]:
        return None
    theirs, mine = saved.get("settings", {}), ours["settings"]
    differing = [d for d in sorted(set(theirs) & set(mine), key=lambda d: (d not in ("loss", "student"), d))
                 if theirs[d] != mine[d]]
    if not differing:
        return None
    shown = "; ".join(f"{flag_name(d)} {theirs[d]} there, {mine[d]} here" for d in differing[:4])
    return shown + ("; ..." if len(differing) > 4 else "")


def check_checkpoint_identity(path: str, saved: Optional[dict], ours: dict) -> None:
    """ValueError naming ``path`` and the settings at fault when it was written by another run."""
    why = identity_mismatch(saved, ours)
    if why:
        raise ValueError(f"resume: checkpoint {path} was written by another run (loss {saved.get('loss')}, student "
                         f"{saved.get('student')}) than the one being resumed (loss {ours['loss']}, student "
                         f"{ours['student']}): {why}; resume a checkpoint of this run, or start a new run (--out)")
