"""The output's completion records and fingerprints (asn2n_dask.resume), on their own."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from asn2n_dask import resume
from asn2n_dask.errors import OutputError

PARTS = {"input": {"path": "/in.zarr"}, "chunks": [1, 64, 64], "stats": [{"digest": "a"}]}


def _output(path, parts=PARTS):
    root = zarr.open_group(str(path), mode="w", attributes={"asn2n": resume.running_attrs({"package": "asn2n-dask"},
                                                                                       parts)})
    (path / resume.PROGRESS_DIR).mkdir()
    return root


def test_a_record_is_trusted_only_while_it_matches_the_chunk(tmp_path):
    _output(tmp_path / "out.zarr")
    rec = resume.record_path(tmp_path / "out.zarr", 0, 1, 2)
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert not resume.chunk_done(rec, lambda: (data,), (0, 1, 2), "out")  # no record yet
    resume.write_record(rec, resume.digest(data), {"read": 0.0})
    assert rec.name == "0.1.2.json" and [p.name for p in rec.parent.iterdir()] == ["0.1.2.json"]  # no temp left
    assert resume.records_written(tmp_path / "out.zarr") == 1
    assert resume.chunk_done(rec, lambda: (data,), (0, 1, 2), "out")
    changed = data.copy()
    changed[0, 0] = 1
    assert not resume.chunk_done(rec, lambda: (changed,), (0, 1, 2), "out")
    assert not rec.exists()  # a record that does not match goes
    rec.write_text("{not json")
    assert not resume.chunk_done(rec, lambda: (data,), (0, 1, 2), "out") and not rec.exists()


def test_only_the_same_job_resumes_and_only_our_outputs_are_replaced(tmp_path):
    out = tmp_path / "out.zarr"
    assert not resume.resumable(out, PARTS, overwrite=False)  # nothing there
    _output(out)
    assert resume.resumable(out, PARTS, overwrite=False)
    assert not resume.resumable(out, PARTS, overwrite=True)  # --overwrite: start again
    other = {**PARTS, "chunks": [1, 32, 32]}
    with pytest.raises(OutputError, match=r"different run \(its options differ \(chunks\)\)"):
        resume.resumable(out, other, overwrite=False)
    with pytest.raises(OutputError, match="content changed"):
        resume.resumable(out, {**PARTS, "stats": [{"digest": "b"}]}, overwrite=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="not written by asn2n-dask"):
            resume.resumable(foreign, PARTS, overwrite=overwrite)


def test_a_complete_output_is_recognised_only_with_the_same_listing(tmp_path):
    out = tmp_path / "out.zarr"
    root = _output(out)
    job = {k: v for k, v in PARTS.items() if k != "stats"}
    prev = dict(root.attrs["asn2n"])
    assert not resume.complete_and_unchanged(prev, job, "L1")  # still running
    prev = resume.complete_attrs(prev, "L1")
    assert prev["status"] == "complete"
    assert resume.complete_and_unchanged(prev, job, "L1")
    assert not resume.complete_and_unchanged(prev, job, "L2") and not resume.complete_and_unchanged(prev, job, None)
    assert not resume.complete_and_unchanged(prev, {**job, "chunks": [1, 32, 32]}, "L1")
    root.attrs.update({"asn2n": prev})
    resume.record_listing(out, "L2")
    assert zarr.open_group(str(out), mode="r").attrs["asn2n"]["input_listing"] == "L2"


def test_the_fingerprint_is_the_job_in_any_key_order():
    shuffled = json.loads(json.dumps(dict(reversed(list(PARTS.items())))))
    assert resume.fingerprint(shuffled) == resume.fingerprint(PARTS)
    assert resume.fingerprint({**PARTS, "chunks": [1, 32, 32]}) != resume.fingerprint(PARTS)
