"""Benchmark records: JSON files of rows by key, written one row at a time.

Several benchmark processes may add rows to the same file at once (two stages started
side by side on a shared machine).  Each writer holds only the rows it makes: :func:`put`
takes an exclusive lock beside the file, re-reads the file, sets the one row and
replaces the file atomically, so no writer drops another's rows and a reader never sees
a half-written file.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path


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
