"""3-D networks on the chunked .zarr route where the tiled axes are not the input's last
ones: time as the depth axis (``--depth-axis T``: a (T, C, Y, X) time series denoised as
one volume per channel, chunked along T, Y and X, into an output with the input's axes),
and volumes of an ImageJ hyperstack (T, Z, C, Y, X), whose channels lie between Z and Y."""

import json

import numpy as np
import pytest
import tifffile
import zarr

from asn2n_dask import InferConfig, denoise, load_model
from asn2n_dask.risk import assess_risk
from asn2n_dask.stats import ChannelStats
from tests.test_volume_run import FAST3D, INFER, dies_at_chunk, invoke, zarr_out

SHAPE = (36, 2, 32, 40)  # T, C, Y, X: three T chunks of 16 (the smallest chunk)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """A noisy two-channel TCYX time series as a Zarr array, and a tiny 3-D model with
    time as its depth axis fitted on it."""
    d = tmp_path_factory.mktemp("tdepth")
    t, _, y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2], 0 : SHAPE[3]]
    clean = 200 + 3 * t + 90 * (np.sin((x + t) / 5) * np.cos(y / 4) > 0.2)
    clean[: SHAPE[0] // 2, 1] = 20  # channel 1: dark (nothing but noise) for the first half of the time points
    data = np.random.default_rng(0).poisson(clean).astype(np.uint16)
    arr = zarr.create_array(str(d / "tcyx.zarr"), shape=SHAPE, chunks=(8, 1, 32, 40), dtype="uint16",
                            dimension_names=["t", "c", "y", "x"])
    arr[...] = data
    r = invoke("fit", d / "tcyx.zarr", "--model", d / "mt", *FAST3D, "--depth-axis", "T")
    assert r.exit_code == 0, r.output
    return d, data


def test_time_as_depth_is_chunk_invariant_and_equals_the_in_memory_route(movie, tmp_path):
    d, data = movie
    runs = {}
    for name, chunks in (("whole", []), ("t16", ["--chunks", "16x32x40"]), ("tyx", ["--chunks", "16x16x24"])):
        r = invoke("denoise", d / "tcyx.zarr", "-o", tmp_path / f"{name}.zarr", "-m", d / "mt", *INFER, *chunks)
        assert r.exit_code == 0, r.output
        runs[name] = zarr_out(tmp_path / f"{name}.zarr")
    root, whole = runs["whole"]
    assert whole.shape == data.shape and whole.dtype == np.float32
    assert runs["tyx"][0]["0"].chunks == (16, 1, 16, 24)  # T, C, Y, X: chunked along T, one channel each
    ms = root.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["t", "c", "y", "x"]
    tol = 1e-5 * float(np.ptp(data))
    for name in ("t16", "tyx"):
        np.testing.assert_allclose(runs[name][1], whole, rtol=0, atol=tol, err_msg=name)
    want = denoise(data, load_model(d / "mt"), axes="TCYX", config=InferConfig(tile=16))
    np.testing.assert_allclose(whole, want, rtol=0, atol=tol)
    assert np.abs(whole - data).mean() > 1  # the network changed something
    # no seam where T chunks meet: the step between time points 15|16 and 31|32 is like the others (channel 0:
    # channel 1 turns bright between 17 and 18)
    steps = np.abs(np.diff(runs["t16"][1][:, 0].astype(np.float64), axis=0)).mean(axis=(1, 2))
    assert steps[[15, 31]].max() <= 1.1 * np.delete(steps, [15, 31]).mean() + 1e-6


def test_time_as_depth_labels_each_frame_of_each_channel(movie, tmp_path):
    d, data = movie
    r = invoke("denoise", d / "tcyx.zarr", "-o", tmp_path / "o.zarr", "-m", d / "mt", *INFER, "--chunks", "16x32x40")
    assert r.exit_code == 0, r.output
    root = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    labels = {c: root[f"labels/risk-{c}/0"][...] for c in ("0", "1")}
    assert all(lab.shape == (SHAPE[0], SHAPE[2], SHAPE[3]) for lab in labels.values())  # T, Y, X
    assert [a["name"] for a in root["labels/risk-1"].attrs["ome"]["multiscales"][0]["axes"]] == ["t", "y", "x"]
    model = load_model(d / "mt")
    attrs = json.loads((tmp_path / "o.zarr" / "zarr.json").read_text())["attributes"]["asn2n"]
    for c in (0, 1):  # each time point's patches classified as a frame's, on the channel's statistics
        thr = model.method(c).norm(model.train.norm).risk
        stats = ChannelStats.from_dict(attrs["stats"][c]).risk_scale(thr)
        maps = np.stack([assess_risk(f, thresholds=thr, stats=stats).risk_map for f in data[:, c].astype(np.float32)])
        ys, xs = np.arange(SHAPE[2]) // thr.patch, np.arange(SHAPE[3]) // thr.patch
        np.testing.assert_array_equal(labels[str(c)], maps[:, ys][:, :, xs])
    assert labels["1"][: SHAPE[0] // 2].all() and not labels["1"][SHAPE[0] // 2 :].any()  # the dark time points


def test_a_time_depth_run_stopped_midway_resumes_to_the_same_bytes(movie, tmp_path, monkeypatch):
    import asn2n_dask.pipeline as pipeline
    from asn2n_dask.source import open_source

    d, _ = movie
    src = open_source(d / "tcyx.zarr")
    opts = pipeline.RunOptions(infer=InferConfig(tile=16), chunks=(16, 16, 24))

    def run(name):
        return pipeline.run_pipeline(src, tmp_path / name, d / "mt", options=opts, client="sync")

    assert run("clean.zarr").computed == 2 * 3 * 2 * 2  # channels x T x Y x X chunks
    dies_at_chunk(5, lambda: run("k.zarr"), monkeypatch)
    again = run("k.zarr")
    assert again.skipped == 4 and again.computed == 2 * 3 * 2 * 2 - 4
    assert zarr_out(tmp_path / "k.zarr")[1].tobytes() == zarr_out(tmp_path / "clean.zarr")[1].tobytes()


def test_time_as_depth_refuses_a_time_selection_and_a_z_axis_before_any_work(movie, tmp_path):
    d, _ = movie
    r = invoke("denoise", d / "tcyx.zarr", "-o", tmp_path / "t.zarr", "-m", d / "mt", *INFER, "--time", "0:20")
    assert r.exit_code == 2 and "leave --time out" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.zarr").exists()
    r = invoke("run", d / "tcyx.zarr", "-o", tmp_path / "r.zarr", *FAST3D, "--depth-axis", "T", "--time", "0:20")
    assert r.exit_code == 2 and "leave --time out" in r.stderr, r.output
    assert list(tmp_path.iterdir()) == []  # refused before training: no model, no output
    tzyx = np.random.default_rng(2).poisson(50, (2, 20, 32, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "tzyx.tif", tzyx, imagej=True, metadata={"axes": "TZYX"})
    r = invoke("denoise", tmp_path / "tzyx.tif", "-o", tmp_path / "z.zarr", "-m", d / "mt", *INFER)
    assert r.exit_code == 2 and "its Z axis would be left out" in r.stderr, r.output
    assert not (tmp_path / "z.zarr").exists()


def test_run_dims_3_with_time_as_depth_fits_and_denoises_a_zarr_series(movie, tmp_path):
    d, data = movie
    r = invoke("run", d / "tcyx.zarr", "-o", tmp_path / "out.zarr", *FAST3D, "--depth-axis", "T", *INFER,
               "--chunks", "16x32x40")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "out.zarr.model" / "model.json").read_text())
    assert doc["volume"]["depth_axis"] == "T"
    assert zarr_out(tmp_path / "out.zarr")[1].shape == data.shape


def test_a_hyperstacks_volumes_are_read_across_its_channel_axis(tmp_path):
    """TZCYX: the output is TCZYX, each (time point, channel) volume read from Z, Y and X
    of the input as stored; the same as the in-memory route."""
    data = np.random.default_rng(3).poisson(100, (2, 20, 2, 32, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "tzcyx.tif", data, imagej=True, metadata={"axes": "TZCYX"})
    r = invoke("fit", tmp_path / "tzcyx.tif", "--model", tmp_path / "m", *FAST3D)
    assert r.exit_code == 0, r.output
    r = invoke("denoise", tmp_path / "tzcyx.tif", "-o", tmp_path / "o.zarr", "-m", tmp_path / "m", *INFER,
               "--chunks", "16x32x32")
    assert r.exit_code == 0, r.output
    root, got = zarr_out(tmp_path / "o.zarr")
    assert [a["name"] for a in root.attrs["ome"]["multiscales"][0]["axes"]] == ["t", "c", "z", "y", "x"]
    want = denoise(data, load_model(tmp_path / "m"), axes="TZCYX", config=InferConfig(tile=16))
    np.testing.assert_allclose(got, np.moveaxis(want, 2, 1), rtol=0, atol=1e-5 * float(np.ptp(data)))
