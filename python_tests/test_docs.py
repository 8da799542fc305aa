"""The repository documents itself: no tracked file points at a design document outside the repository
(a clone does not have it); the contract lives in docs/design.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE_POINTERS = re.compile(r"\.\./shared|shared/DESIGN|DESIGN section|DESIGN §")


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name]


def test_no_tracked_file_points_outside_the_repository():
    this = Path(__file__).resolve().relative_to(ROOT).as_posix()
    hits = []
    for name in tracked_files():
        path = ROOT / name
        if name == this or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        hits += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                 for m in OUTSIDE_POINTERS.finditer(text)]
    assert not hits, "pointers to a design document outside the repository (use docs/design.md):\n" + "\n".join(hits)


def test_design_doc_sections_that_the_code_cites_exist():
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", design, flags=re.M))
    cited = set()
    for name in tracked_files():
        path = ROOT / name
        if not path.is_file() or path.suffix not in (".py", ".h", ".cpp", ".cu", ".cuh", ".md", ".sh"):
            continue
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"design\.md,? sections? (\d+(?:\.\d+)?)(?:-(\d+(?:\.\d+)?))?", text):
            cited.update(group for group in match.groups() if group)
    assert cited, "nothing cites docs/design.md by section"
    assert cited <= headings, f"cited sections missing from docs/design.md: {sorted(cited - headings)}"
