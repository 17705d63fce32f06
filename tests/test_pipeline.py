"""The chunked pipeline: chunk invariance, write-once, selection, metadata, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from asn2n_dask import InferConfig, TrainConfig, denoise, fit, save_model
from asn2n_dask.errors import OutputError
from asn2n_dask.io import ImageMeta, read_image, write_image
from asn2n_dask.pipeline import PROGRESS_DIR, RunOptions, make_plan, run_pipeline
from asn2n_dask.source import Selection, open_source
from asn2n_dask.synthetic import noisy_frame

INFER = InferConfig(tile=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A (T=2, C=2, 150, 170) uint16 time-lapse as Zarr v3, and a 2-channel tiny model."""
    d = tmp_path_factory.mktemp("pipe")
    frames = np.stack([np.stack([noisy_frame((150, 170), photons=6.0 + 4 * c, seed=10 * t + c)[0]
                                 for c in range(2)]) for t in range(2)])
    z = zarr.create_array(str(d / "in.zarr"), shape=frames.shape, chunks=(1, 1, 64, 64), dtype=frames.dtype,
                          dimension_names=["t", "c", "y", "x"])
    z[...] = frames
    model = fit(frames, axes="TCYX", config=TrainConfig(preset="tiny", steps=4, patch=32, batch=2))
    save_model(model, d / "model")
    return d, frames, model


def run(d: Path, out: str, **kw):
    opts = RunOptions(infer=INFER, **{k: kw.pop(k) for k in list(kw) if k in ("chunks", "dtype", "ome", "overwrite",
                                                                              "pyramid")})
    return run_pipeline(open_source(d / kw.pop("src", "in.zarr")), d / out, d / "model", options=opts,
                        client=kw.pop("client", "sync"), **kw)


def output(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The denoised image and its risk labels, the channels' label images stacked along C."""
    from asn2n_dask.io import risk_labels

    src = open_source(path)
    labels = [np.asarray(a) for a in risk_labels(path, src.axes, src.shape)]
    risk = np.stack(labels, axis=src.axes.index("C")) if "C" in src.axes else labels[0]
    return zarr.open_group(str(path), mode="r")["0"][...], risk


def test_output_does_not_depend_on_the_chunking_and_equals_the_in_memory_core(data):
    d, frames, model = data
    ref = denoise(frames, model, axes="TCYX", config=INFER)
    tol = 1e-5 * float(np.ptp(frames))
    for i, chunks in enumerate([(150, 170), (64, 64), (23, 37)]):  # whole, aligned, smaller than a tile
        s = run(d, f"inv{i}.zarr", chunks=chunks)
        assert s.computed == s.tasks
        out, risk = output(d / f"inv{i}.zarr")
        assert out.shape == frames.shape and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=0, atol=tol)
        if i == 0:
            first_risk = risk
        np.testing.assert_array_equal(risk, first_risk)


def test_every_voxel_is_written_exactly_once_and_the_halo_never(data, monkeypatch):
    d, frames, _ = data
    import asn2n_dask.pipeline as pl

    one_channel = frames.shape[:1] + frames.shape[2:]
    counts = {"0": np.zeros(frames.shape, int), "risk-0": np.zeros(one_channel, int),
              "risk-1": np.zeros(one_channel, int)}
    real = pl._open_outputs

    class Counting:
        def __init__(self, arr, name):
            self.arr, self.name = arr, name

        def __getitem__(self, key):
            return self.arr[key]

        def __setitem__(self, key, value):
            counts[self.name][key] += 1
            self.arr[key] = value

        @property
        def dtype(self):
            return self.arr.dtype

    monkeypatch.setattr(pl, "_open_outputs", lambda p, label: tuple(Counting(a, n) for a, n in zip(real(p, label),
                                                                                                    ("0", label))))
    s = run(d, "once.zarr", chunks=(40, 50))
    assert s.computed == s.tasks == 2 * 2 * 4 * 4
    assert all((n == 1).all() for n in counts.values())  # the image, and each channel's label image
    assert len(list((d / "once.zarr" / PROGRESS_DIR).glob("*.json"))) == s.tasks


def test_plan_reads_the_halo_and_writes_chunk_aligned_windows(data):
    d, _, _ = data
    plan = make_plan(open_source(d / "in.zarr"), options=RunOptions(infer=INFER, chunks=(64, 64)))
    assert plan.n_tasks == 4 * 3 * 3 and plan.chunks == (1, 1, 64, 64)
    for k, (y0, y1, x0, _) in enumerate(plan.windows):
        assert y0 % 64 == 0 and x0 % 64 == 0
        wp = plan.window_plan(k)
        assert wp.read[0][0] <= max(0, y0 - INFER.tile // 2) and wp.read[0][1] >= min(150, y1 + INFER.tile // 2)
    text = plan.describe()
    assert "halo" in text and "tasks      36" in text


def test_selection_by_channel_name_and_time_range(data, tmp_path):
    d, frames, model = data
    meta = ImageMeta(axes="TCYX", format="ome-zarr", scale=(2.0, 1.0, 0.1, 0.1),
                     units=("second", None, "micrometer", "micrometer"), channel_names=("er", "mito"))
    write_image(tmp_path / "ome.zarr", frames, meta)
    save_model(model, tmp_path / "model")
    src = open_source(tmp_path / "ome.zarr")
    sel = Selection.parse(src, ["mito"], "1:2")
    run_pipeline(src, tmp_path / "sel.zarr", tmp_path / "model", selection=sel, options=RunOptions(infer=INFER),
                 client="sync")
    run_pipeline(src, tmp_path / "all.zarr", tmp_path / "model", options=RunOptions(infer=INFER), client="sync")
    sub, _ = output(tmp_path / "sel.zarr")
    full, _ = output(tmp_path / "all.zarr")
    assert sub.shape == (1, 1, 150, 170)
    np.testing.assert_allclose(sub[0, 0], full[1, 1], atol=1e-5 * float(np.ptp(frames)))
    back, bmeta = read_image(tmp_path / "sel.zarr")
    assert bmeta.channel_names == ("mito",)


@pytest.mark.parametrize("ome", ["0.4", "0.5"])
def test_ome_metadata_round_trip_in_zarr_v2_and_v3(data, tmp_path, ome):
    d, frames, model = data
    meta = ImageMeta(axes="TCYX", format="ome-zarr", scale=(2.0, 1.0, 0.1, 0.1),
                     units=("second", None, "micrometer", "micrometer"), channel_names=("er", "mito"))
    write_image(tmp_path / "ome.zarr", frames, meta)
    save_model(model, tmp_path / "model")
    run_pipeline(open_source(tmp_path / "ome.zarr"), tmp_path / "out.zarr", tmp_path / "model",
                 options=RunOptions(infer=INFER, ome=ome, pyramid=1), client="sync")
    out = tmp_path / "out.zarr"
    assert (out / (".zattrs" if ome == "0.4" else "zarr.json")).is_file()
    data_back, m = read_image(out)
    assert m.format == "ome-zarr" and m.axes == "TCYX" and m.channel_names == ("er", "mito")
    assert m.scale == (2.0, 1.0, 0.1, 0.1) and m.units == ("second", None, "micrometer", "micrometer")
    assert data_back.shape == frames.shape
    root = zarr.open_group(str(out), mode="r")
    attrs = dict(root.attrs)
    ms = (attrs["ome"] if ome == "0.5" else attrs)["multiscales"][0]
    assert [ds["path"] for ds in ms["datasets"]] == ["0", "1"]
    assert root["1"].shape == (2, 2, 75, 85)
    assert attrs["asn2n"]["status"] == "complete" and attrs["asn2n"]["stats"]
    for name in ("risk-er", "risk-mito"):  # one label image per channel, named after it
        labels = dict(root[f"labels/{name}"].attrs)
        assert "image-label" in (labels["ome"] if ome == "0.5" else labels)
        assert root[f"labels/{name}/1"].shape == (2, 75, 85)


def test_zarr_v2_and_tiff_inputs(data, tmp_path):
    import tifffile

    d, frames, model = data
    save_model(model, tmp_path / "model")
    z2 = zarr.create_array(str(tmp_path / "v2.zarr"), shape=frames.shape, chunks=(1, 1, 50, 50), dtype=frames.dtype,
                           zarr_format=2, attributes={"_ARRAY_DIMENSIONS": ["t", "c", "y", "x"]})
    z2[...] = frames
    tifffile.imwrite(tmp_path / "in.tif", frames, photometric="minisblack", metadata={"axes": "TCYX"})
    ref = denoise(frames, model, axes="TCYX", config=INFER)
    for name in ("v2.zarr", "in.tif"):
        run_pipeline(open_source(tmp_path / name), tmp_path / f"{name}.out.zarr", tmp_path / "model",
                     options=RunOptions(infer=INFER, chunks=(64, 64)), client="sync")
        out, _ = output(tmp_path / f"{name}.out.zarr")
        np.testing.assert_allclose(out, ref, atol=1e-5 * float(np.ptp(frames)))


def test_existing_outputs_are_resumed_or_refused(data, tmp_path):
    d, frames, _ = data
    s1 = run(d, "again.zarr", chunks=(75, 85))
    s2 = run(d, "again.zarr", chunks=(75, 85))
    assert s1.computed == s1.tasks and s2.already_complete
    with pytest.raises(OutputError, match="options differ"):
        run(d, "again.zarr", chunks=(50, 50))
    s3 = run(d, "again.zarr", chunks=(50, 50), overwrite=True)
    assert s3.computed == s3.tasks
    (tmp_path / "foreign.zarr").mkdir()
    with pytest.raises(OutputError, match="not written by asn2n"):
        run_pipeline(open_source(d / "in.zarr"), tmp_path / "foreign.zarr", d / "model",
                     options=RunOptions(infer=INFER), client="sync")


def test_a_changed_input_is_not_mixed_into_an_unfinished_run(data, tmp_path):
    d, frames, model = data
    src = tmp_path / "in.zarr"
    z = zarr.create_array(str(src), shape=frames.shape, chunks=(1, 1, 64, 64), dtype=frames.dtype,
                          dimension_names=["t", "c", "y", "x"])
    z[...] = frames
    save_model(model, tmp_path / "model")
    run_pipeline(open_source(src), tmp_path / "out.zarr", tmp_path / "model", options=RunOptions(infer=INFER),
                 client="sync")
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r+")
    root.attrs["asn2n"] = {**dict(root.attrs["asn2n"]), "status": "running"}  # as if it had been interrupted
    z[0, 0, :10, :10] = 60000
    with pytest.raises(OutputError, match="content changed"):
        run_pipeline(open_source(src), tmp_path / "out.zarr", tmp_path / "model", options=RunOptions(infer=INFER),
                     client="sync")


def test_a_damaged_chunk_is_detected_and_recomputed(data, tmp_path):
    d, frames, _ = data
    s = run(d, "dmg.zarr", chunks=(75, 85))
    clean, _ = output(d / "dmg.zarr")
    root = zarr.open_group(str(d / "dmg.zarr"), mode="r+")
    root["0"][0, 0, :75, :85] = 0  # data changed behind the record's back
    root.attrs["asn2n"] = {**dict(root.attrs["asn2n"]), "status": "running"}
    s = run(d, "dmg.zarr", chunks=(75, 85))
    assert s.computed == 1 and s.skipped == s.tasks - 1
    np.testing.assert_array_equal(output(d / "dmg.zarr")[0], clean)


def _records(out: Path) -> int:
    return len(list((out / PROGRESS_DIR).glob("*.json"))) if (out / PROGRESS_DIR).is_dir() else 0


def _cli(d: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "asn2n_dask", "denoise", str(d / "big.zarr"), "-o", str(d / out),
            "--model", str(d / "model"), "--tile", "32", "--chunks", "32", "--workers", "1"]


def test_a_killed_worker_and_a_killed_run_end_identical_to_an_uninterrupted_run(data):
    import psutil

    d, frames, _ = data
    big = np.concatenate([frames] * 3)  # (6, 2, 150, 170): 240 tasks of 32x32
    z = zarr.create_array(str(d / "big.zarr"), shape=big.shape, chunks=(1, 1, 64, 64), dtype=big.dtype,
                          dimension_names=["t", "c", "y", "x"])
    z[...] = big
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    clean = subprocess.run(_cli(d, "clean.zarr"), env=env, capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr

    # 1. a worker process killed mid-run: the cluster restarts it and the run still finishes
    proc = subprocess.Popen(_cli(d, "w.zarr"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while _records(d / "w.zarr") < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
               if "spawn" in " ".join(c.cmdline()) and "resource_tracker" not in " ".join(c.cmdline())]
    assert workers and proc.poll() is None, "the run ended before a worker could be killed"
    workers[0].send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err

    # 2. the whole run killed mid-way (client, scheduler and workers), then the same command again
    proc = subprocess.Popen(_cli(d, "k.zarr"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 300
    while _records(d / "k.zarr") < 40 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _records(d / "k.zarr")
    assert 0 < done_before < 240
    attrs = json.loads((d / "k.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["asn2n"]["status"] == "running" and "ome" not in attrs  # not presented as complete
    again = subprocess.run(_cli(d, "k.zarr"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "already done" in again.stdout

    want = output(d / "clean.zarr")
    for name in ("w.zarr", "k.zarr"):
        got = output(d / name)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), name


def test_big_endian_input_gives_the_same_result(data, tmp_path):
    d, frames, model = data
    be = frames.astype(">u2")
    z = zarr.create_array(str(tmp_path / "be.zarr"), shape=be.shape, chunks=(1, 1, 64, 64), dtype=be.dtype,
                          zarr_format=2, attributes={"_ARRAY_DIMENSIONS": ["t", "c", "y", "x"]})
    z[...] = be
    save_model(model, tmp_path / "model")
    run_pipeline(open_source(tmp_path / "be.zarr"), tmp_path / "out.zarr", tmp_path / "model",
                 options=RunOptions(infer=INFER), client="sync")
    np.testing.assert_allclose(output(tmp_path / "out.zarr")[0], denoise(frames, model, axes="TCYX", config=INFER),
                               atol=1e-5 * float(np.ptp(frames)))


def test_axes_or_dtypes_the_output_cannot_hold_are_refused_before_any_work(tmp_path):
    from asn2n_dask.errors import InputError

    z = zarr.create_array(str(tmp_path / "q.zarr"), shape=(3, 40, 40), chunks=(1, 40, 40), dtype="uint16",
                          dimension_names=["angle", "y", "x"])
    z[...] = 100
    with pytest.raises(InputError, match="axes QYX"):
        make_plan(open_source(tmp_path / "q.zarr"))
    c = zarr.create_array(str(tmp_path / "c.zarr"), shape=(40, 40), chunks=(40, 40), dtype="complex64")
    c[...] = 1
    with pytest.raises(InputError, match="complex64"):
        make_plan(open_source(tmp_path / "c.zarr"))


def test_output_inside_or_around_the_input_is_refused(data, tmp_path):
    d, frames, _ = data
    for out in (d / "in.zarr", d / "in.zarr" / "sub.zarr"):
        with pytest.raises(OutputError, match="input"):
            run_pipeline(open_source(d / "in.zarr"), out, d / "model", options=RunOptions(infer=INFER), client="sync")
    assert np.array_equal(zarr.open_array(str(d / "in.zarr"), mode="r")[...], frames)


def test_channel_names_that_do_not_match_the_channels_are_not_used(data, tmp_path):
    d, frames, _ = data
    meta = ImageMeta(axes="TCYX", format="ome-zarr", channel_names=("only-one",))
    write_image(tmp_path / "ome.zarr", frames, meta)
    src = open_source(tmp_path / "ome.zarr")
    assert src.meta.channel_names is None
    assert make_plan(src, options=RunOptions(infer=INFER)).n_planes == 4


def test_cast_to_the_input_dtype_never_wraps_around():
    from asn2n_dask.io import cast_output

    assert cast_output(np.array([5e9, -3.0], np.float32), "uint32").tolist() == [4294967295, 0]
    assert cast_output(np.array([3e9, -3e9], np.float32), "int32").tolist() == [2147483647, -2147483648]


def test_a_full_disk_stops_with_one_sentence_keeps_true_records_and_resumes_identically(data, tmp_path, monkeypatch):
    import errno

    import asn2n_dask.pipeline as pl
    from asn2n_dask.errors import OutputError

    d, _, _ = data
    clean = run(d, "full-ref.zarr", chunks=(64, 64))
    real = pl._open_outputs
    writes = {"n": 0}

    class Full:
        def __init__(self, arr):
            self.arr = arr

        def __getitem__(self, key):
            return self.arr[key]

        def __setitem__(self, key, value):
            writes["n"] += 1
            if writes["n"] > 7:  # the disk fills up after a few chunks
                raise OSError(errno.ENOSPC, "No space left on device")
            self.arr[key] = value

        @property
        def dtype(self):
            return self.arr.dtype

    monkeypatch.setattr(pl, "_open_outputs", lambda path, label: tuple(Full(a) for a in real(path, label)))
    out = tmp_path / "full.zarr"
    with pytest.raises(OutputError, match="disk holding .* is full"):
        run(d, str(out), chunks=(64, 64))
    recs = list((out / PROGRESS_DIR).glob("*.json"))
    assert 0 < len(recs) < clean.tasks
    assert dict(zarr.open_group(str(out), mode="r").attrs)["asn2n"]["status"] != "complete"
    monkeypatch.setattr(pl, "_open_outputs", real)  # space freed
    s = run(d, str(out), chunks=(64, 64))
    # a chunk is skipped only when its record's checksum matches the data on disk: all records were true
    assert s.skipped == len(recs) and s.computed == clean.tasks - len(recs)
    np.testing.assert_array_equal(output(out)[0], output(d / "full-ref.zarr")[0])


def test_a_truncated_chunk_file_is_detected_and_recomputed(data, tmp_path):
    d, _, _ = data
    s = run(d, "trunc.zarr", chunks=(75, 85))
    clean, _ = output(d / "trunc.zarr")
    chunk = sorted(p for p in (d / "trunc.zarr" / "0" / "c").rglob("*") if p.is_file())[0]
    chunk.write_bytes(chunk.read_bytes()[:10])  # a file cut short (a crash mid-write, a bad disk)
    root = zarr.open_group(str(d / "trunc.zarr"), mode="r+")
    root.attrs["asn2n"] = {**dict(root.attrs["asn2n"]), "status": "running"}
    s = run(d, "trunc.zarr", chunks=(75, 85))
    assert s.computed == 1 and s.skipped == s.tasks - 1
    np.testing.assert_array_equal(output(d / "trunc.zarr")[0], clean)


def test_missing_input_chunks_are_read_as_the_fill_value_said_and_recorded(data, tmp_path):
    d, frames, model = data
    import shutil

    src = tmp_path / "gappy.zarr"
    shutil.copytree(d / "in.zarr", src)
    (src / "c" / "1" / "0" / "1" / "1").unlink()  # chunk t=1, c=0, y 64:128, x 64:128 lost in a copy
    said: list[str] = []
    run_pipeline(open_source(src), tmp_path / "out.zarr", d / "model", options=RunOptions(infer=INFER),
                 client="sync", echo=said.append)
    assert any("1 of 36 chunks" in m and "fill value 0" in m for m in said), said
    attrs = dict(zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs)["asn2n"]
    assert attrs["input_missing_chunks"] == [1, 36, 0]
    gappy = frames.copy()
    gappy[1, 0, 64:128, 64:128] = 0
    want = denoise(gappy, model, axes="TCYX", config=INFER)
    got, _ = output(tmp_path / "out.zarr")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.ptp(frames)))


def test_default_workers_keep_one_chunk_in_flight_on_cpu_and_several_per_gpu(monkeypatch):
    from asn2n_dask import cluster

    monkeypatch.setattr(cluster, "_cores", lambda: 16)
    assert cluster.default_workers() == (1, 1, 16)
    assert cluster.default_workers(gpu=True) == (1, cluster.GPU_THREADS, 16 // cluster.GPU_THREADS)


def test_worker_processes_get_the_allocator_setting_back_and_compute_the_same(data):
    """A Dask nanny starts its workers with MALLOC_TRIM_THRESHOLD_ set, which made every
    network pass there up to 1.8x slower (benchmarks/results/pipeline.md); the pipeline
    registers a worker plugin that resets glibc's thresholds in each worker."""
    from distributed import Client, LocalCluster

    from asn2n_dask.cluster import relax_malloc_trim

    d, frames, model = data
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as c, \
            Client(c) as cl:
        assert None not in cl.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values()  # the nanny's setting
        s = run(d, "procs.zarr", client=cl)
        assert s.computed == s.tasks
        plugins = cl.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert all("asn2n-allocator" in p for p in plugins.values())
        assert all(cl.run(relax_malloc_trim).values())  # glibc took the thresholds there
    run(d, "procs-ref.zarr")  # the same job in this process
    np.testing.assert_array_equal(output(d / "procs.zarr")[0], output(d / "procs-ref.zarr")[0])


@pytest.mark.parametrize("shape, chunks, axes, itemsize", [
    ((16, 2, 2048, 2048), (1, 1, 512, 512), "TCYX", 2),
    ((240, 2, 1024, 1024), (1, 1, 512, 512), "TCYX", 2),
    ((3, 2, 5, 256, 256), (1, 1, 1, 64, 64), "TCZYX", 2),
    ((100, 300, 300), (7, 64, 64), "TYX", 4),
    ((4, 2, 8192, 8192), (1, 1, 1024, 1024), "TCYX", 2),  # frames larger than a block keep the chunks
])
def test_statistics_blocks_are_whole_chunks_of_one_channel_and_bounded(shape, chunks, axes, itemsize):
    from asn2n_dask.pipeline import STATS_BLOCK_BYTES, stats_blocks

    b = stats_blocks(shape, chunks, axes, itemsize)
    for n, c, k in zip(shape, chunks, b):
        assert k == n or k % c == 0  # whole storage chunks, or the whole axis
    if "C" in axes:
        assert b[axes.index("C")] == chunks[axes.index("C")]
    frame = shape[-2] * shape[-1] * itemsize
    assert int(np.prod(b)) * itemsize <= max(STATS_BLOCK_BYTES, int(np.prod(chunks)) * itemsize)
    assert b == tuple(chunks) if frame > STATS_BLOCK_BYTES else b[-2:] == shape[-2:]


def test_statistics_do_not_depend_on_the_read_blocks(data):
    from asn2n_dask import NormConfig
    from asn2n_dask.pipeline import selection_stats
    from asn2n_dask.stats import channel_stats

    d, frames, _ = data
    got = selection_stats([open_source(d / "in.zarr")], [Selection()], NormConfig(), client="sync")
    want = channel_stats(np.moveaxis(frames, 1, 0), NormConfig())
    assert [g.to_dict() for g in got] == [w.to_dict() for w in want]


def test_the_plan_every_task_carries_does_not_grow_with_the_time_points(tmp_path):
    """Every task carries the plan; a per-time-point table in it made each task's copy
    grow with the dataset (and a worker held one copy per finished task)."""
    import pickle

    sizes = []
    for t in (3, 30000):
        zarr.create_array(str(tmp_path / f"t{t}.zarr"), shape=(t, 2, 64, 64), chunks=(1, 1, 64, 64), dtype="uint16",
                          dimension_names=["t", "c", "y", "x"])  # metadata only
        src = open_source(tmp_path / f"t{t}.zarr")
        plan = make_plan(src, Selection.parse(src, None, f"1:{t}"), options=RunOptions(infer=INFER))
        sizes.append(len(pickle.dumps(plan)))
        out, source, c = plan.plane_index(2 * (t - 1) - 1)  # the last plane: t - 1, channel 1
        assert out == (t - 2, 1) and source == (t - 1, 1) and c == 1
    assert abs(sizes[1] - sizes[0]) < 64, sizes
    src = open_source(tmp_path / "t3.zarr")
    plan = make_plan(src, Selection.parse(src, ["1", "0"], None), options=RunOptions(infer=INFER))
    assert [plan.plane_index(p)[1] for p in range(6)] == [(0, 1), (0, 0), (1, 1), (1, 0), (2, 1), (2, 0)]


def test_finished_chunks_are_forgotten_by_the_cluster_while_the_run_goes_on(data):
    """The client holds a chunk's future only until its status arrives, so the scheduler
    and the workers do not keep every finished task of a long run."""
    from distributed import Client, LocalCluster

    d, _, _ = data
    seen: list[tuple[int, int]] = []

    def held(dask_scheduler) -> int:
        return sum(1 for k in dask_scheduler.tasks if "asn2n-chunk" in str(k))

    def progress(stage: str, n: int, total: int) -> None:
        if stage == "denoising" and n == total // 2:
            deadline = time.monotonic() + 10
            while (h := cl.run_on_scheduler(held)) > total - n and time.monotonic() < deadline:
                time.sleep(0.05)  # releases reach the scheduler a moment later
            seen.append((h, total - n))

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as c, \
            Client(c) as cl:
        s = run(d, "forget.zarr", client=cl, chunks=(64, 64), progress=progress)
    assert s.computed == s.tasks == 36
    assert len(seen) == 1 and seen[0][0] <= seen[0][1] + 1, seen  # + the future just reported
    run(d, "forget-ref.zarr", chunks=(64, 64))  # the same job in this process
    np.testing.assert_array_equal(output(d / "forget.zarr")[0], output(d / "forget-ref.zarr")[0])


def test_each_chunk_record_and_the_output_say_where_the_time_went(data):
    d, _, _ = data
    s = run(d, "timed.zarr", chunks=(75, 85))
    records = [json.loads(p.read_text()) for p in sorted((d / "timed.zarr" / PROGRESS_DIR).glob("*.json"))]
    assert len(records) == s.tasks
    for r in records:
        assert set(r["seconds"]) == {"read", "denoise", "write"} and min(r["seconds"].values()) > 0
    assert sum(sum(r["seconds"].values()) for r in records) < s.seconds - s.stats_seconds  # one thread
    attrs = zarr.open_group(str(d / "timed.zarr"), mode="r").attrs["asn2n"]
    assert attrs["stats_seconds"] == s.stats_seconds > 0
