"""The input is read for its statistics only when needed: a complete output of the same
job on an unchanged input is recognised from a directory listing, and ``asn2n run``
hands its training's statistics to the denoising."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from asn2n_dask import InferConfig, TrainConfig, fit, save_model
from asn2n_dask.cli import app
from asn2n_dask.errors import OutputError
from asn2n_dask.io import input_listing
from asn2n_dask.pipeline import RunOptions, run_pipeline
from asn2n_dask.source import open_source
from asn2n_dask.synthetic import noisy_frame

runner = CliRunner()
FAST = ["--preset", "tiny", "--steps", "3", "--patch", "32", "--batch", "2"]
OPTS = RunOptions(infer=InferConfig(tile=32))


from tests.test_trust import tree_digest  # noqa: E402


def invoke(*args: object):
    return runner.invoke(app, list(map(str, args)))


def settle(path: Path) -> None:
    """Date every file under ``path`` a minute back, as data written before the run
    (a listing vouches only for files not modified in the last moments)."""
    past = time.time_ns() - 60_000_000_000
    for p in [path, *path.rglob("*")]:
        if p.is_file():
            os.utime(p, ns=(past, past))


def write_input(path: Path, frames: np.ndarray) -> zarr.Array:
    z = zarr.create_array(str(path), shape=frames.shape, chunks=(1, 1, 32, 32), dtype=frames.dtype,
                          dimension_names=["t", "c", "y", "x"])
    z[...] = frames
    return z


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A (T=2, C=2, 64, 64) uint16 Zarr, settled, and a two-channel tiny model."""
    d = tmp_path_factory.mktemp("once")
    frames = np.stack([np.stack([noisy_frame((64, 64), photons=5.0 + 10 * c, seed=10 * t + c)[0]
                                 for c in range(2)]) for t in range(2)]).astype(np.uint16)
    write_input(d / "in.zarr", frames)
    settle(d / "in.zarr")
    save_model(fit(frames, axes="TCYX", config=TrainConfig(preset="tiny", steps=3, patch=32, batch=2)), d / "model")
    return d, frames


@pytest.fixture
def passes(monkeypatch):
    """Counts the statistics passes (every route reaches them through the statistics
    pass's ``channel_stats``)."""
    import asn2n_dask.stats_pass as sp

    real, calls = sp.channel_stats, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sp, "channel_stats", counted)
    return calls


def denoise_once(src: Path, out: Path, model: Path):
    return run_pipeline(open_source(src), out, model, options=OPTS, client="sync")


def test_a_complete_output_is_recognised_without_reading_the_input(data, tmp_path, monkeypatch):
    d, _ = data
    out = tmp_path / "out.zarr"
    first = denoise_once(d / "in.zarr", out, d / "model")
    assert first.computed == first.tasks and not first.already_complete
    assert zarr.open_group(str(out), mode="r").attrs["asn2n"]["input_listing"] == input_listing(d / "in.zarr")
    kept = tree_digest(out)

    import asn2n_dask.io as io
    import asn2n_dask.source as source
    import asn2n_dask.stats_pass as sp

    def no_read(*args, **kwargs):
        raise AssertionError("the input's pixels were read")

    monkeypatch.setattr(sp, "channel_stats", no_read)
    monkeypatch.setattr(source._Reader, "__getitem__", no_read)
    monkeypatch.setattr(io.CheckedArray, "__getitem__", no_read)
    again = denoise_once(d / "in.zarr", out, d / "model")
    assert again.already_complete and again.computed == 0 and again.skipped == again.tasks
    r = invoke("denoise", d / "in.zarr", "-o", out, "--model", d / "model", "--tile", "32")
    assert r.exit_code == 0, r.output
    assert "already complete" in r.stdout
    assert tree_digest(out) == kept


def test_a_touched_input_is_read_again_and_a_changed_one_refused_as_before(data, tmp_path, passes):
    d, frames = data
    src = tmp_path / "in.zarr"
    shutil.copytree(d / "in.zarr", src)
    settle(src)
    out = tmp_path / "out.zarr"
    denoise_once(src, out, d / "model")
    assert len(passes) == 1
    chunk = sorted(p for p in (src / "c").rglob("*") if p.is_file())[0]
    past = time.time_ns() - 30_000_000_000
    os.utime(chunk, ns=(past, past))  # touched, content unchanged: the statistics decide, as before
    s = denoise_once(src, out, d / "model")
    assert s.already_complete and len(passes) == 2
    s = denoise_once(src, out, d / "model")  # the listing was recorded again: no second read
    assert s.already_complete and len(passes) == 2
    kept = tree_digest(out)
    z = zarr.open_array(str(src), mode="r+")
    z[0, 0, :4, :4] = 60000  # content changed
    settle(src)
    with pytest.raises(OutputError, match="content changed"):
        denoise_once(src, out, d / "model")
    assert len(passes) == 3 and tree_digest(out) == kept


def test_an_input_written_moments_before_the_run_is_read_again(data, tmp_path, passes):
    d, frames = data
    write_input(tmp_path / "fresh.zarr", frames)  # not settled: a write in the same clock tick could hide
    out = tmp_path / "out.zarr"
    denoise_once(tmp_path / "fresh.zarr", out, d / "model")
    assert zarr.open_group(str(out), mode="r").attrs["asn2n"]["input_listing"] is None
    assert denoise_once(tmp_path / "fresh.zarr", out, d / "model").already_complete
    assert len(passes) == 2


def test_the_listing_sees_every_write_and_vouches_for_nothing_it_cannot_list(data, tmp_path):
    d, frames = data
    src = tmp_path / "in.zarr"
    shutil.copytree(d / "in.zarr", src)
    settle(src)
    base = input_listing(src)
    assert base is not None and input_listing(src) == base
    chunk = sorted(p for p in (src / "c").rglob("*") if p.is_file())[0]
    st = chunk.stat()
    time.sleep(0.05)
    chunk.write_bytes(bytes(reversed(chunk.read_bytes())))  # same size, times put back: the status change shows
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert input_listing(src) != base
    settle(src)
    base = input_listing(src)
    copy = chunk.with_name("copy")
    shutil.copy2(chunk, copy)  # another file of the same size and times put in its place
    os.replace(copy, chunk)
    assert input_listing(src) != base
    settle(src)
    base = input_listing(src)
    (src / "c" / "9").mkdir()
    (src / "c" / "9" / "9").write_bytes(b"x")  # a chunk added
    settle(src)
    assert input_listing(src) != base
    (src / "c" / "link").symlink_to(chunk)
    assert input_listing(src) is None  # a link could point anywhere
    assert input_listing(tmp_path / "missing.zarr") is None
    tifffile.imwrite(tmp_path / "in.tif", frames[0, 0])
    assert input_listing(tmp_path / "in.tif") is None  # just written
    settle(tmp_path)
    assert input_listing(tmp_path / "in.tif") is not None


@pytest.mark.parametrize("output, extra", [("out.zarr", ["--workers", "1"]), ("out.tif", ["--time", "0:1"])])
def test_run_reads_the_input_once_for_statistics_and_equals_fit_then_denoise(data, tmp_path, passes, output, extra):
    d, _ = data
    args = [*FAST, "--tile", "32", *extra]
    r = invoke("run", d / "in.zarr", "-o", tmp_path / output, "--model", tmp_path / "run.model", *args)
    assert r.exit_code == 0, r.output
    assert len(passes) == 1  # the training's pass, handed to the denoising
    picked = [a for a in extra if a != "--workers" and a != "1"]  # the training's own options: --time
    r = invoke("fit", d / "in.zarr", "--model", tmp_path / "fit.model", *FAST, *picked)
    assert r.exit_code == 0, r.output
    infer = ["--tile", "32", *extra]
    r = invoke("denoise", d / "in.zarr", "-o", tmp_path / f"sep-{output}", "--model", tmp_path / "fit.model", *infer)
    assert r.exit_code == 0, r.output
    assert len(passes) == 3  # fit and denoise as two commands: a pass each
    if output.endswith(".tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / output), tifffile.imread(tmp_path / f"sep-{output}"))
        return
    run_out = zarr.open_group(str(tmp_path / output), mode="r")
    sep_out = zarr.open_group(str(tmp_path / f"sep-{output}"), mode="r")
    np.testing.assert_array_equal(run_out["0"][...], sep_out["0"][...])
    assert run_out.attrs["asn2n"]["stats"] == sep_out.attrs["asn2n"]["stats"]  # digests and content included
    assert run_out.attrs["asn2n"]["job"]["stats"] == sep_out.attrs["asn2n"]["job"]["stats"]
    r = invoke("run", d / "in.zarr", "-o", tmp_path / output, "--model", tmp_path / "run.model", *args)
    assert r.exit_code == 0 and "already complete" in r.stdout
    assert len(passes) == 3  # the finished run again: the model reused, the input not read


def test_run_measures_again_when_the_input_cannot_be_shown_unchanged(data, tmp_path, passes):
    d, frames = data
    write_input(tmp_path / "fresh.zarr", frames)  # written moments ago: no listing vouches for it
    r = invoke("run", tmp_path / "fresh.zarr", "-o", tmp_path / "out.tif", *FAST, "--tile", "32", "--time", "0:1")
    assert r.exit_code == 0, r.output
    assert len(passes) == 2
