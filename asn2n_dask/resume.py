"""An output's completion records and fingerprints: when a run resumes, skips or refuses.

A chunked run (:mod:`asn2n_dask.pipeline`) writes into an OME-Zarr store whose
``asn2n`` attributes hold the job it computes and one completion record per output
chunk (``.asn2n-progress/<plane>.<iy>.<ix>.json``).  From them, and from nothing else,
this module decides what a run may do with an existing output.  The guarantees:

1. **Only outputs of this package are resumed or replaced.**  A path that exists but is
   not a store written by asn2n-dask (a folder, a file, a link, a store without our
   attributes) is refused, ``--overwrite`` or not (:func:`refuse_foreign`).
2. **An output is resumed only by the same job.**  The job's fingerprint
   (:func:`fingerprint`) covers the input (path, array, shape, dtype, axes), the
   selection, the output's axes and labels, the model (:func:`model_sha`), the
   inference options, chunks, dtype, OME version, pyramid, device, package version and
   the channel statistics (content digests included).  An output of another job is
   refused, naming what differs (:func:`refuse_other_job`), unless ``--overwrite``;
   the part that needs no data (everything but the statistics) is checked before any
   pixel is read.
3. **A chunk counts as done only when its record matches the disk.**  A record holds
   the digest of the chunk's pixels and risk labels as written (:func:`digest`); a
   chunk whose record is missing, unreadable or does not match what the store now
   holds is recomputed (:func:`chunk_done`).
4. **A record never claims more than was written.**  It is written after its chunk, to
   a temporary file renamed into place (:func:`write_record`): a crash leaves no record
   or a true one, never a partial one.
5. **Complete means every chunk recorded, then the metadata.**  The status turns from
   ``running`` to ``complete`` only in the last write of a run (:func:`complete_attrs`),
   after every chunk has its record and the pyramid and OME metadata are written.
6. **A finished output is recognised without reading the input only on evidence.**  The
   input's listing (sizes, inodes and times of its files,
   :func:`asn2n_dask.stats_pass.source_listing`), taken before the run that made the
   output read anything, must equal a fresh one (:func:`complete_and_unchanged`);
   without that evidence the statistics are measured again and compared (2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputError

__all__ = ["PROGRESS_DIR", "fingerprint", "model_sha", "existing", "refuse_foreign", "refuse_other_job",
           "resumable", "remove_output", "complete_and_unchanged", "record_listing", "running_attrs",
           "complete_attrs", "record_path", "digest", "chunk_done", "write_record", "records_written"]

log = logging.getLogger(__name__)

#: Folder of completion records inside the output store.
PROGRESS_DIR = ".asn2n-progress"


def fingerprint(parts: dict[str, Any]) -> str:
    """SHA-256 of a job's description (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def model_sha(model_dir: str | os.PathLike[str]) -> str:
    """SHA-256 of a model's ``model.json`` (which holds its weights' checksums)."""
    return hashlib.sha256((Path(model_dir) / "model.json").read_bytes()).hexdigest()


def existing(output: Path) -> dict[str, Any] | None:
    """The asn2n attributes of an existing output: None if there is none, ``{}`` if
    what is there is not an output of this package."""
    import zarr

    if not output.exists() and not output.is_symlink():
        return None
    if output.is_symlink() or not output.is_dir():
        return {}
    try:
        attrs = dict(zarr.open_group(str(output), mode="r").attrs)
    except Exception:
        return {}
    asn = attrs.get("asn2n")
    return dict(asn) if isinstance(asn, dict) else {}


def refuse_foreign(output: Path, prev: dict[str, Any] | None) -> None:
    """Raise (one sentence) when ``output`` exists and is not an output of this package
    (``prev`` from :func:`existing`)."""
    if prev == {}:
        raise OutputError(f"output {output} already exists and was not written by asn2n-dask; --overwrite replaces "
                          "only outputs of asn2n-dask: move or delete it yourself, or choose another path.")


def refuse_other_job(output: Path, old: dict[str, Any], parts: dict[str, Any], *, check_stats: bool) -> None:
    """Raise (one sentence) when an existing output belongs to another job."""
    if old.get("input") != parts["input"]:
        why = "the input's path, array, shape, dtype or axes differ"
    elif check_stats and old.get("stats") != parts.get("stats"):
        why = "the input's content changed since (its statistics or content digest differ)"
    else:
        changed = sorted(k for k in parts if k != "stats" and old.get(k) != parts[k])
        if not changed:
            return
        why = f"its options differ ({', '.join(changed)})"
    raise OutputError(f"output {output} holds a different run ({why}); pass --overwrite to start again or "
                      "choose another path.")


def resumable(output: Path, parts: dict[str, Any], *, overwrite: bool) -> bool:
    """Whether ``output`` holds this very job (``parts``, statistics included) to resume.

    False when there is nothing to resume (no output, or ``overwrite``: the caller then
    replaces it, :func:`remove_output`).  Raises when the output is not this package's
    or holds another job and ``overwrite`` is not given.
    """
    prev = existing(output)
    refuse_foreign(output, prev)
    if prev is not None and not overwrite:
        if prev.get("fingerprint") == fingerprint(parts):
            return True
        refuse_other_job(output, prev.get("job", {}), parts, check_stats=True)
    return False


def remove_output(output: Path) -> None:
    """Delete an existing output, once :func:`resumable` has found it is this package's."""
    if output.exists():
        shutil.rmtree(output) if output.is_dir() else output.unlink()


def complete_and_unchanged(prev: dict[str, Any] | None, parts: dict[str, Any], listing: str | None) -> bool:
    """Whether an existing output is the complete result of this very job (``parts``,
    the job without its statistics) on this input as it is now, shown without reading
    the input: the output is complete, its record with the statistics it was computed
    with is this job's, and the input's listing
    (:func:`asn2n_dask.stats_pass.source_listing`) equals the one taken before that run
    read it.  False whenever that evidence is missing or differs: the caller then
    measures the statistics and compares them, as for any run."""
    if not prev or prev.get("status") != "complete" or listing is None or prev.get("input_listing") != listing:
        return False
    job = prev.get("job")
    if not isinstance(job, dict) or not isinstance(job.get("stats"), list):
        return False
    return bool(prev.get("fingerprint") == fingerprint({**parts, "stats": job["stats"]}))


def record_listing(output: Path, listing: str) -> None:
    """Record the input's listing in a complete output whose statistics were just found
    equal to the ones it was computed with (an output that cannot be written keeps the
    old one: the next run reads the input again)."""
    import zarr

    try:
        root: Any = zarr.open_group(str(output), mode="r+")
        asn = dict(root.attrs.get("asn2n") or {})
        root.attrs.update({"asn2n": {**asn, "input_listing": listing}})
    except OSError as e:
        log.warning("could not record the input's listing in %s (%s)", output, e)


def running_attrs(provenance: dict[str, Any], parts: dict[str, Any]) -> dict[str, Any]:
    """The ``asn2n`` attributes of a new output: the provenance, the job and its
    fingerprint, and the status ``running``."""
    return {**provenance, "status": "running", "fingerprint": fingerprint(parts), "job": parts}


def complete_attrs(asn: dict[str, Any], listing: str | None) -> dict[str, Any]:
    """``asn`` (an output's ``asn2n`` attributes) marked complete, with the input's
    listing taken before the run read it (None: no such evidence)."""
    return {**asn, "status": "complete", "input_listing": listing}


def record_path(output: str | os.PathLike[str], p: int, *position: int) -> Path:
    """The completion record of the chunk at plane ``p`` and grid ``position`` (row
    ``iy``, column ``ix``)."""
    return Path(output) / PROGRESS_DIR / f"{'.'.join(str(int(i)) for i in (p, *position))}.json"


def digest(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def chunk_done(record: Path, written: Callable[[], Sequence[np.ndarray]], what: Any, output: str) -> bool:
    """Whether the chunk's ``record`` holds the digest of what the store now holds
    (``written()``, read only when there is a record).  A record that does not match,
    or cannot be read, is removed with a warning: the chunk is recomputed."""
    if not record.is_file():
        return False
    try:
        want = json.loads(record.read_text())["sha256"]
        if digest(*written()) == want:
            return True
    except Exception:  # unreadable record or chunk: recompute it
        pass
    log.warning("chunk %s of %s failed verification; recomputing it", what, output)
    record.unlink(missing_ok=True)
    return False


def write_record(record: Path, sha256: str, seconds: dict[str, float]) -> None:
    """Write a chunk's completion record, after the chunk: to a temporary file renamed
    into place, so a record is whole or absent."""
    import time

    record.parent.mkdir(exist_ok=True)
    tmp = record.with_name(f"{record.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"sha256": sha256, "time": time.time(), "seconds": seconds}))
    os.replace(tmp, record)


def records_written(output: Path) -> int:
    """How many chunks of ``output`` have a completion record."""
    return len(list((output / PROGRESS_DIR).glob("*.json")))
