"""The repository stands on its own: nothing in it (README, docs, code, playbooks, scripts)
points at a folder beside the checkout, such as ``../shared``, which a clone does not have."""

from __future__ import annotations

import re
import subprocess

from .conftest import ROOT

OUTSIDE = re.compile(r"\.\./shared\b|/work/shared\b")


def tracked_text_files() -> list[str]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    if done.returncode != 0:  # not a git checkout (an unpacked release): every file then
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                if p.is_file() and not {".git", ".venv"} & set(p.relative_to(ROOT).parts)]
    return [name for name in done.stdout.decode().split("\0") if name]


def test_nothing_points_at_a_folder_outside_the_repository() -> None:
    hits = []
    files = tracked_text_files()
    assert "README.md" in files and "docs/architecture.md" in files  # the positive control
    for name in files:
        if name == "tests/test_repository.py":
            continue  # this file names what it looks for
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary (screenshots, keys stored binary) or gone from the work tree
        hits += [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}" for m in OUTSIDE.finditer(text)]
    assert hits == []


def test_the_check_finds_a_reference() -> None:
    assert OUTSIDE.search("see ../shared/notes.md") and OUTSIDE.search("cp /work/shared/x .")
    assert not OUTSIDE.search("../sharedlib") and not OUTSIDE.search("shared secret")
