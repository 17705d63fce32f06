"""Benchmark records: JSON files of rows by key, written one row at a time.

Several benchmark processes may add rows to the same file at once (two stages started
side by side on a shared machine).  Each writer holds only the rows it makes: :func:`put`
takes an exclusive lock beside the file, re-reads the file, sets the one row and
replaces the file atomically, so no writer drops another's rows and a reader never sees
a half-written file.

A row names the commit of the code that made it: :func:`code_state` is read once per
process, when the benchmark starts, so checking out another commit while a long stage
runs does not relabel its rows.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path) -> dict:
    """The rows of ``path`` (empty when the file does not exist yet)."""
    return json.loads(path.read_text()) if path.exists() else {}


def put(path: Path, key: str, row: dict) -> dict:
    """Set row ``key`` of ``path`` to ``row``, keeping every other row as the file holds it now.

    Returns the file's rows after the write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = load(path)
        rows[key] = row
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        os.replace(tmp, path)
    return rows


@functools.cache
def code_state() -> tuple[str, bool]:
    """The commit checked out when this process first asked, and whether tracked files
    other than the records differed from it then."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results")
    return git("rev-parse", "HEAD"), bool(changed)
