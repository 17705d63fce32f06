"""No silent wrong result, no lost data: one rule for both output routes, content-checked
resume, unique channel names, unfinished models, outputs that never land in or replace
what is not ours, one run per output."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from asn2n_dask import TrainConfig, fit, save_model
from asn2n_dask.checkpoint import load_model
from asn2n_dask.cli import app
from asn2n_dask.errors import InputError, ModelError, OutputError
from asn2n_dask.io import ImageMeta, lock_path, output_lock, write_image
from asn2n_dask.synthetic import noisy_frame

runner = CliRunner()
FAST = ["--preset", "tiny", "--steps", "3", "--patch", "32", "--batch", "2"]


def invoke(*args: object):
    return runner.invoke(app, ["-q", *map(str, args)])


def tree_digest(path: Path) -> str:
    """Every file under ``path`` (names and bytes), or the file itself."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    """A (T=3, C=2, 64, 80) OME-Zarr with channels named 'a' and 'b' of very different
    brightness, and a two-channel model whose networks are named 'a' and 'b'."""
    d = tmp_path_factory.mktemp("trust")
    frames = np.stack([np.stack([noisy_frame((64, 80), photons=p, seed=10 * t + c)[0] + off
                                 for c, (p, off) in enumerate([(4.0, 100), (40.0, 2000)])]) for t in range(3)])
    frames = frames.astype(np.uint16)
    write_image(d / "in.zarr", frames, ImageMeta(axes="TCYX", format="ome-zarr", channel_names=("a", "b")),
                chunks=(1, 1, 32, 40))
    model = fit(frames, axes="TCYX", channel_names=["a", "b"],
                config=TrainConfig(preset="tiny", steps=3, patch=32, batch=2))
    save_model(model, d / "model")
    return d, frames


def test_tif_and_zarr_outputs_pick_the_same_network_and_statistics_for_a_selection(named):
    d, frames = named
    args = ["--model", d / "model", "--tile", "32", "--channel", "b", "--time", "1:3"]
    r = invoke("denoise", d / "in.zarr", "-o", d / "b.tif", *args)
    assert r.exit_code == 0, r.output
    r = invoke("denoise", d / "in.zarr", "-o", d / "b.zarr", *args, "--workers", "1")
    assert r.exit_code == 0, r.output
    tif = tifffile.imread(d / "b.tif")
    zarr_out = zarr.open_group(str(d / "b.zarr"), mode="r")["0"][...]
    assert tif.shape == zarr_out.shape == (2, 1, 64, 80)
    np.testing.assert_allclose(tif, zarr_out, rtol=0, atol=1e-4 * float(np.ptp(frames[:, 1])))
    # channel 'b' (around 2000 ADU) went through network 'b' with b's statistics of all 3 time points
    assert abs(float(tif.mean()) - float(frames[1:, 1].mean())) < 0.05 * float(frames[1:, 1].mean())
    # every time point selected: the .tif route takes the statistics from what it read, in one pass
    args = ["--model", d / "model", "--tile", "32", "--channel", "b"]
    assert invoke("denoise", d / "in.zarr", "-o", d / "all.tif", *args).exit_code == 0
    assert invoke("denoise", d / "in.zarr", "-o", d / "all.zarr", *args, "--workers", "1").exit_code == 0
    np.testing.assert_allclose(tifffile.imread(d / "all.tif"), zarr.open_group(str(d / "all.zarr"), mode="r")["0"][...],
                               rtol=0, atol=1e-4 * float(np.ptp(frames[:, 1])))


def test_a_changed_order_of_frames_is_caught_when_resuming(named, tmp_path):
    """Two time points swapped: same shape, same histogram, other content."""
    from asn2n_dask import InferConfig
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import open_source

    d, frames = named
    src = tmp_path / "in.zarr"
    z = zarr.create_array(str(src), shape=frames.shape, chunks=(1, 1, 32, 40), dtype=frames.dtype,
                          dimension_names=["t", "c", "y", "x"])
    z[...] = frames
    opts = RunOptions(infer=InferConfig(tile=32))
    run_pipeline(open_source(src), tmp_path / "out.zarr", d / "model", options=opts, client="sync")
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r+")
    root.attrs["asn2n"] = {**dict(root.attrs["asn2n"]), "status": "running"}  # as if interrupted
    z[0], z[1] = frames[1], frames[0]
    kept = tree_digest(tmp_path / "out.zarr")
    with pytest.raises(OutputError, match="content changed"):
        run_pipeline(open_source(src), tmp_path / "out.zarr", d / "model", options=opts, client="sync")
    assert tree_digest(tmp_path / "out.zarr") == kept  # nothing touched


def test_two_channels_of_one_name_never_share_a_network(named, tmp_path):
    from asn2n_dask.pipeline import channel_map
    from asn2n_dask.source import Selection, open_source

    d, frames = named
    write_image(tmp_path / "twins.zarr", frames, ImageMeta(axes="TCYX", format="ome-zarr", channel_names=("a", "a")))
    model = load_model(d / "model")
    src = open_source(tmp_path / "twins.zarr")
    with pytest.raises(InputError, match="selected channels named 'a'"):
        channel_map(src, Selection(), model)
    r = invoke("denoise", tmp_path / "twins.zarr", "-o", tmp_path / "out.tif", "--model", d / "model")
    assert r.exit_code == 2 and "named 'a'" in r.output and not (tmp_path / "out.tif").exists()
    model.channels[1].name = "a"
    with pytest.raises(ModelError, match="networks named 'a'"):
        channel_map(open_source(d / "in.zarr"), Selection(), model)


def test_an_unfinished_model_is_refused_unless_asked_for_and_says_how_far_it_got(named, tmp_path):
    d, frames = named
    model = load_model(d / "model")
    save_model(model, tmp_path / "half", complete=False)
    with pytest.raises(ModelError, match=r"did not finish \(step 3 of 3 in channel 2"):
        load_model(tmp_path / "half")
    assert load_model(tmp_path / "half", allow_unfinished=True).n_channels == 2
    for out in ("x.tif", "x.zarr"):
        r = invoke("denoise", d / "in.zarr", "-o", tmp_path / out, "--model", tmp_path / "half", "--tile", "32")
        assert r.exit_code == 2 and "--allow-unfinished" in r.output and not (tmp_path / out).exists()
    r = invoke("denoise", d / "in.zarr", "-o", tmp_path / "y.tif", "--model", tmp_path / "half", "--tile", "32",
               "--allow-unfinished")
    assert r.exit_code == 0, r.output


def test_outputs_inside_the_input_are_refused_and_the_input_is_untouched(named):
    d, _ = named
    before = tree_digest(d / "in.zarr")
    cases = [
        ("denoise", d / "in.zarr", "-o", d / "in.zarr" / "out.tif", "--model", d / "model"),
        ("denoise", d / "in.zarr", "-o", d / "in.zarr" / "0" / "out.zarr", "--model", d / "model"),
        ("fit", d / "in.zarr", "--model", d / "in.zarr" / "m", *FAST),
        ("run", d / "in.zarr", "-o", d / "ok.tif", "--model", d / "in.zarr" / "m", *FAST),
    ]
    for args in cases:
        r = invoke(*args)
        assert r.exit_code == 2 and "inside the input" in r.output, (args, r.output)
    assert tree_digest(d / "in.zarr") == before


def test_overwrite_never_deletes_what_is_not_ours(named, tmp_path):
    d, _ = named
    foreign = tmp_path / "photos.zarr"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"precious")
    plain = tmp_path / "other.zarr"
    zarr.create_array(str(plain), shape=(4, 4), dtype="u1")  # a Zarr store of someone else's
    for out in (foreign, plain):
        before = tree_digest(out)
        r = invoke("denoise", d / "in.zarr", "-o", out, "--model", d / "model", "--overwrite")
        assert r.exit_code == 2 and "not written by asn2n-dask" in r.output, r.output
        assert tree_digest(out) == before
    folder = tmp_path / "folder.tif"
    (folder / "keep").mkdir(parents=True)
    r = invoke("denoise", d / "in.zarr", "-o", folder, "--model", d / "model", "--overwrite")
    assert r.exit_code == 2 and "is a folder" in r.output and (folder / "keep").is_dir()
    target = tmp_path / "real.tif"
    target.write_bytes(b"x")
    (tmp_path / "link.tif").symlink_to(target)
    r = invoke("denoise", d / "in.zarr", "-o", tmp_path / "link.tif", "--model", d / "model", "--overwrite")
    assert r.exit_code == 2 and "symbolic link" in r.output and target.read_bytes() == b"x"


def _holder(path: Path) -> subprocess.Popen:
    """A process holding the output lock of ``path`` until killed."""
    code = (f"import time; from asn2n_dask.io import output_lock\n"
            f"with output_lock({str(path)!r}):\n    print('held', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_on_the_same_output_is_refused_and_a_dead_holder_never_blocks(named, tmp_path):
    d, _ = named
    out = tmp_path / "busy.zarr"
    holder = _holder(out)
    try:
        for o in (out, tmp_path / "busy.zarr"):
            r = invoke("denoise", d / "in.zarr", "-o", o, "--model", d / "model", "--tile", "32")
            assert r.exit_code == 2 and "being written by another run" in r.output, r.output
            assert f"process {holder.pid}" in r.output and not out.exists()
        with pytest.raises(OutputError, match="another run"):
            with output_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # as a crash would
        holder.wait()
    with output_lock(out) as lock:  # the kernel released the dead holder's lock
        with output_lock(out):  # re-entrant in one process
            assert lock.exists()
    assert not lock_path(out).exists()


def test_two_runs_started_together_on_one_output_leave_one_complete_correct_output(named, tmp_path):
    """Real processes racing for one output: one writes it, the other is refused at once
    with one sentence; the output equals a run made alone."""
    d, _ = named
    args = ["denoise", str(d / "in.zarr"), "--model", str(d / "model"), "--tile", "32", "--workers", "1",
            "--chunks", "32"]
    cmd = [sys.executable, "-m", "asn2n_dask", "-q", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([*cmd, "-o", str(tmp_path / "race.zarr")], stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    refused = next(err for c, err in results if c == 2)
    assert "being written by another run" in refused and "Traceback" not in refused
    alone = subprocess.run([*cmd, "-o", str(tmp_path / "alone.zarr")], env=env, timeout=300)
    assert alone.returncode == 0
    a = zarr.open_group(str(tmp_path / "race.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "alone.zarr"), mode="r")
    assert a.attrs["asn2n"]["status"] == "complete"
    np.testing.assert_array_equal(a["0"][...], b["0"][...])


def test_training_files_are_matched_by_channel_name(named, tmp_path):
    """b.zarr stores the same channels in the other order: channel 'a' learns from the 'a'
    frames of both files (its statistics cover exactly those pixels)."""
    d, frames = named
    write_image(tmp_path / "swapped.zarr", frames[:, ::-1].copy(),
                ImageMeta(axes="TCYX", format="ome-zarr", channel_names=("b", "a")))
    cfg = TrainConfig(preset="tiny", steps=2, patch=32, batch=2)
    model = fit([str(d / "in.zarr"), str(tmp_path / "swapped.zarr")], config=cfg)
    stats = model.info["statistics"]
    assert [ch.name for ch in model.channels] == ["a", "b"]
    for c, name in enumerate("ab"):
        assert stats[name]["count"] == 2 * frames[:, c].size
        assert stats[name]["minimum"] == frames[:, c].min() and stats[name]["maximum"] == frames[:, c].max()
    write_image(tmp_path / "other.zarr", frames, ImageMeta(axes="TCYX", format="ome-zarr", channel_names=("a", "x")))
    with pytest.raises(InputError, match="same channel names"):
        fit([str(d / "in.zarr"), str(tmp_path / "other.zarr")], config=cfg)


def test_a_read_only_folder_and_an_unexpected_error_are_one_sentence(named, tmp_path, monkeypatch):
    d, _ = named
    if os.geteuid() == 0:
        # root writes anyway: make the write itself fail as a read-only folder does
        import asn2n_dask.io as io

        def denied(*a, **k):
            raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "out.tif"))

        monkeypatch.setattr(io, "write_image", denied)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = invoke("denoise", d / "in.zarr", "-o", ro / "out.tif", "--model", d / "model", "--tile", "32")
    finally:
        ro.chmod(0o755)
    assert r.exit_code == 2 and r.output.startswith("error: ") and "permission denied" in r.output
    assert "Traceback" not in r.output and not (ro / "out.tif").exists()

    import asn2n_dask.api as api

    def broken(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(api, "denoise_with_risk", broken)
    r = invoke("denoise", d / "in.zarr", "-o", tmp_path / "bug.tif", "--model", d / "model", "--tile", "32")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.startswith("error: unexpected ZeroDivisionError: a bug; the details are in ")
    log = Path(r.output.split("the details are in ")[1].split(". This is")[0])
    assert "ZeroDivisionError" in log.read_text() and "Traceback" in log.read_text()
    log.unlink()
    assert not (tmp_path / "bug.tif").exists()


def test_missing_input_chunks_are_said_on_the_tif_route_too(named, tmp_path):
    d, frames = named
    z = zarr.create_array(str(tmp_path / "gappy.zarr"), shape=(2, 64, 80), chunks=(1, 32, 40), dtype="u2",
                          fill_value=0, dimension_names=["t", "y", "x"])
    z[0] = frames[0, 0]  # time point 1 never written
    model = fit(frames[:, 0], axes="TYX", config=TrainConfig(preset="tiny", steps=2, patch=32, batch=2))
    save_model(model, tmp_path / "m")
    r = runner.invoke(app, ["denoise", str(tmp_path / "gappy.zarr"), "-o", str(tmp_path / "g.tif"), "--model",
                            str(tmp_path / "m"), "--tile", "32"])
    assert r.exit_code == 0, r.output
    assert "4 of 8 chunks" in r.stderr and "not stored" in r.stderr
    meta = tifffile.TiffFile(tmp_path / "g.tif").shaped_metadata[0]
    assert '"input_missing_chunks": [4, 8, 0]' in meta["asn2n"]


@pytest.fixture(scope="module")
def uninterrupted(named, tmp_path_factory):
    d, _ = named
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    r = invoke("denoise", d / "in.zarr", "-o", out, "--model", d / "model", "--tile", "32", "--chunks", "32",
               "--workers", "1")
    assert r.exit_code == 0, r.output
    return zarr.open_group(str(out), mode="r")["0"][...]


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_run_says_one_line_leaves_no_worker_and_resumes_identically(named, uninterrupted, tmp_path, how):
    """Ctrl-C reaches the whole process group (exit 130); SIGTERM (kill, a batch system's
    time limit) only the command (exit 143).  Either way: one line, no traceback, no
    worker left behind, and the same command again finishes the output exactly."""
    import psutil

    d, _ = named
    out = tmp_path / "int.zarr"
    cmd = [sys.executable, "-m", "asn2n_dask", "denoise", str(d / "in.zarr"), "-o", str(out), "--model",
           str(d / "model"), "--tile", "32", "--chunks", "32", "--workers", "1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    records = out / ".asn2n-progress"
    t0 = time.time()
    while time.time() - t0 < 120 and not (records.is_dir() and any(records.glob("*.json"))):
        time.sleep(0.05)
    children = psutil.Process(p.pid).children(recursive=True)
    if how == "ctrl-c":
        os.killpg(p.pid, signal.SIGINT)
    else:
        p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == (130 if how == "ctrl-c" else 143), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert ("interrupted" if how == "ctrl-c" else "terminated") in err
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [c.cmdline() for c in alive]
    assert zarr.open_group(str(out), mode="r").attrs["asn2n"]["status"] == "running"  # not presented as complete
    r = invoke("denoise", d / "in.zarr", "-o", out, "--model", d / "model", "--tile", "32", "--chunks", "32",
               "--workers", "1")
    assert r.exit_code == 0, r.output
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["asn2n"]["status"] == "complete"
    np.testing.assert_array_equal(root["0"][...], uninterrupted)


@pytest.mark.parametrize("verbose, quiet_level", [([], "CRITICAL"), (["-vv"], "INFO")])
def test_the_event_loop_stays_quiet_after_distributed_is_imported(verbose, quiet_level):
    """distributed sets tornado's loggers from its own configuration when a command first
    imports it; the CLI's levels must survive that, or a stopped run's shutdown prints a
    connection traceback (seen once in CI, on Ctrl-C)."""
    code = ("import logging, sys\n"
            "from typer.testing import CliRunner\n"
            "from asn2n_dask.cli import app\n"
            "assert 'distributed' not in sys.modules\n"
            f"r = CliRunner().invoke(app, {verbose!r} + ['risk', '--help'])\n"
            "import distributed\n"
            "print(*(logging.getLevelName(logging.getLogger(n).getEffectiveLevel())\n"
            "        for n in ('tornado', 'tornado.application', 'asyncio')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [quiet_level] * 3


def test_every_fault_of_the_reliability_record_names_a_test_that_exists():
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    import reliability

    for _, test, _ in reliability.FAULTS:
        path, _, name = test.partition("::")
        assert (root / path).is_file(), test
        assert not name or f"def {name}(" in (root / path).read_text(), test
