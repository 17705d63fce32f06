"""Files denoised with a 3-D model from the command line: the in-memory .tif route, the
chunked .zarr route (chunks along Z, Y and X), resume, and `asn2n run --dims 3`."""

import json

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from asn2n_dask import denoise, load_model
from asn2n_dask.cli import app

runner = CliRunner()
FAST3D = ["--dims", "3", "--preset", "tiny3d", "--steps", "2", "--batch", "2", "--patch", "8,16,16"]
SHAPE = (36, 32, 40)  # Z, Y, X: three Z chunks of 16 (the smallest chunk)
INFER = ["--tile", "16"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args):
    return runner.invoke(app, ["-q", *map(str, args)])


@pytest.fixture(scope="module")
def vol(tmp_path_factory):
    """A noisy ZYX stack (ImageJ TIFF, Z spacing 0.3 um, pixels 0.1 um) and a tiny 3-D model fitted on it."""
    d = tmp_path_factory.mktemp("run3d")
    z, y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    clean = 300 + 4 * z + 80 * (np.sin(x / 5) * np.cos(y / 4) > 0.2)
    data = np.random.default_rng(0).poisson(clean).astype(np.uint16)
    tifffile.imwrite(d / "zyx.tif", data, imagej=True, resolution=(10.0, 10.0),
                     metadata={"spacing": 0.3, "unit": "um", "axes": "ZYX"})
    r = invoke("fit", d / "zyx.tif", "--model", d / "m3", *FAST3D)
    assert r.exit_code == 0, r.output
    return d, data


def zarr_out(path):
    root = zarr.open_group(str(path), mode="r")
    return root, root["0"][...]


def test_the_tif_route_is_the_array_api_on_the_whole_stack(vol, tmp_path):
    d, data = vol
    r = invoke("denoise", d / "zyx.tif", "-o", tmp_path / "out.tif", "-m", d / "m3", *INFER)
    assert r.exit_code == 0, r.output
    got = tifffile.imread(tmp_path / "out.tif")
    model = load_model(d / "m3")
    from asn2n_dask import InferConfig

    want = denoise(data, model, axes="ZYX", config=InferConfig(tile=16))
    assert got.shape == data.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.ptp(data)))
    span = float(np.ptp(data))  # input units, held within the data's range widened by a quarter of it
    assert data.min() - 0.25 * span <= got.min() and got.max() <= data.max() + 0.25 * span
    assert np.abs(got - data).mean() > 1  # the network changed something


def test_the_zarr_route_is_chunk_invariant_along_z_and_equals_the_tif_route(vol, tmp_path):
    d, data = vol
    runs = {}
    for name, chunks in (("whole", []), ("z16", ["--chunks", "16x32x40"]), ("zyx", ["--chunks", "16x16x24"])):
        r = invoke("denoise", d / "zyx.tif", "-o", tmp_path / f"{name}.zarr", "-m", d / "m3", *INFER, *chunks)
        assert r.exit_code == 0, r.output
        runs[name] = zarr_out(tmp_path / f"{name}.zarr")
    root, whole = runs["whole"]
    assert whole.shape == data.shape and root["0"].chunks == data.shape
    assert runs["z16"][0]["0"].chunks == (16, 32, 40) and runs["zyx"][0]["0"].chunks == (16, 16, 24)
    tol = 1e-5 * float(np.ptp(data))
    for name in ("z16", "zyx"):
        np.testing.assert_allclose(runs[name][1], whole, rtol=0, atol=tol, err_msg=name)
    # no seam where Z chunks meet: the step between slices 15|16 and 31|32 is like the others
    out = runs["z16"][1].astype(np.float64)
    steps = np.abs(np.diff(out, axis=0)).mean(axis=(1, 2))
    border = steps[[15, 31]]
    others = np.delete(steps, [15, 31])
    assert border.max() <= 1.1 * others.mean() + 1e-6
    r = invoke("denoise", d / "zyx.tif", "-o", tmp_path / "t.tif", "-m", d / "m3", *INFER)
    assert r.exit_code == 0, r.output
    np.testing.assert_allclose(whole, tifffile.imread(tmp_path / "t.tif"), rtol=0, atol=tol)
    ms = root.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == pytest.approx([0.3, 0.1, 0.1])


def test_the_dry_run_plans_chunks_along_z(vol, tmp_path):
    d, _ = vol
    r = invoke("denoise", d / "zyx.tif", "-o", tmp_path / "p.zarr", "-m", d / "m3", *INFER, "--chunks",
               "16x32x40", "--dry-run")
    assert r.exit_code == 0, r.output
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    assert "3 = 1 planes x 3 x 1 x 1 chunks" in lines["tasks"] and "chunks (16, 32, 40)" in lines["output"]
    assert "(Z)" in lines["halo"] and "8 x 16 x 16 voxels (Z Y X)" in lines["tiles"]
    assert not (tmp_path / "p.zarr").exists()


def dies_at_chunk(n, run, monkeypatch):
    """``run()`` with the process dying (an OSError) as its ``n``-th chunk starts; the
    pipeline's own chunk function is back afterwards."""
    import asn2n_dask.pipeline as pipeline

    real, calls = pipeline.run_chunk, []

    def dies(spec, p, *position):
        calls.append(position)
        if len(calls) == n:
            raise OSError("the machine went away")
        return real(spec, p, *position)

    monkeypatch.setattr(pipeline, "run_chunk", dies)
    with pytest.raises(OSError, match="went away"):
        run()
    monkeypatch.setattr(pipeline, "run_chunk", real)


def test_a_3d_run_stopped_midway_resumes_to_the_same_bytes(vol, tmp_path, monkeypatch):
    import asn2n_dask.pipeline as pipeline
    from asn2n_dask import InferConfig
    from asn2n_dask.source import open_source

    d, _ = vol
    src = open_source(d / "zyx.tif")
    opts = pipeline.RunOptions(infer=InferConfig(tile=16), chunks=(16, 16, 24))

    def run(name):
        return pipeline.run_pipeline(src, tmp_path / name, d / "m3", options=opts, client="sync")

    assert run("clean.zarr").computed == 3 * 2 * 2
    dies_at_chunk(4, lambda: run("k.zarr"), monkeypatch)
    attrs = json.loads((tmp_path / "k.zarr" / "zarr.json").read_text())["attributes"]
    assert attrs["asn2n"]["status"] == "running" and "ome" not in attrs  # not presented as complete
    again = run("k.zarr")
    assert again.skipped == 3 and again.computed == 3 * 2 * 2 - 3
    _, want = zarr_out(tmp_path / "clean.zarr")
    root, got = zarr_out(tmp_path / "k.zarr")
    assert got.tobytes() == want.tobytes()
    assert root["labels/risk/0"][...].tobytes() == zarr.open_group(str(tmp_path / "clean.zarr"), mode="r")[
        "labels/risk/0"][...].tobytes()


def test_run_dims_3_fits_and_denoises_a_stack(vol, tmp_path):
    d, data = vol
    r = invoke("run", d / "zyx.tif", "-o", tmp_path / "out.tif", *FAST3D, *INFER)
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "out.tif.model" / "model.json").read_text())
    assert doc["dims"] == 3 and doc["volume"]["anisotropy"] == pytest.approx(3.0)  # 0.3 um over 0.1 um
    assert tifffile.imread(tmp_path / "out.tif").shape == data.shape


def test_2d_only_options_and_a_time_depth_model_on_a_volume_are_refused(vol, tmp_path):
    d, _ = vol
    r = invoke("run", d / "zyx.tif", "-o", tmp_path / "o.tif", *FAST3D, "--risk-estimator", "reference")
    assert r.exit_code == 2 and "--risk-estimator applies to 2-D training only" in r.stderr, r.output
    tifffile.imwrite(tmp_path / "tyx.tif", np.random.default_rng(1).poisson(50, (12, 32, 32)).astype(np.uint16),
                     metadata={"axes": "TYX"})
    r = invoke("fit", tmp_path / "tyx.tif", "--model", tmp_path / "mt", *FAST3D, "--depth-axis", "T")
    assert r.exit_code == 0, r.output
    r = invoke("denoise", d / "zyx.tif", "-o", tmp_path / "t.zarr", "-m", tmp_path / "mt", *INFER)
    assert r.exit_code == 2 and "its Z axis would be left out" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.zarr").exists()
    r = invoke("denoise", tmp_path / "tyx.tif", "-o", tmp_path / "t.zarr", "-m", tmp_path / "mt", *INFER)
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("dims", "chunks"), [(["--dims", "3", "--preset", "tiny3d"], "8x32x40"), ([], "8")])
def test_chunks_too_small_are_refused_before_any_training(vol, tmp_path, dims, chunks):
    d, _ = vol
    r = invoke("run", d / "zyx.tif", "-o", tmp_path / "o.zarr", *dims, "--steps", "2", "--chunks", chunks)
    assert r.exit_code == 2 and "is too small" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    assert list(tmp_path.iterdir()) == []  # no model trained, no output
