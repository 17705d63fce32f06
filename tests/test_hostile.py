"""Hostile input, generated: every shape, dtype and value pattern either gives a correct
result or one clear error, never a crash and never a silent wrong output."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asn2n_dask import InferConfig, denoise
from asn2n_dask.errors import Asn2nError, InputError

DTYPES = ["uint8", "uint16", "uint32", "int16", "int32", "int64", "float16", "float32", "float64", "bool"]
INFER = InferConfig(tile=32)


@st.composite
def images(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    h = draw(st.sampled_from([1, 2, 3, 4, 5, 17, 33, 64]))
    w = draw(st.sampled_from([1, 3, 4, 31, 64, 300]))
    kind = draw(st.sampled_from(["noise", "constant", "nan", "inf", "extremes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype.kind == "b":
        img = rng.random((h, w)) > 0.5
    elif kind == "constant":
        img = np.full((h, w), 7, dtype)
    elif kind == "extremes" and dtype.kind in "ui":
        info = np.iinfo(dtype)
        img = rng.choice([info.min, info.max, 0], (h, w)).astype(dtype)
    else:
        img = (rng.poisson(20.0, (h, w)) + (0 if dtype.kind == "u" else -5)).astype(dtype)
        if dtype.kind == "f" and kind in ("nan", "inf"):
            img.flat[rng.integers(0, img.size)] = np.nan if kind == "nan" else -np.inf
    return img


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(img=images())
def test_any_frame_is_denoised_correctly_or_refused_in_one_sentence(tiny_model, img):
    try:
        out = denoise(img, tiny_model, config=INFER)
    except InputError as e:
        msg = str(e)
        assert msg and "\n" not in msg and msg.endswith(".")
        reasons = (img.dtype.kind == "b", min(img.shape) < 4,
                   img.dtype.kind == "f" and not np.isfinite(img).all(),
                   img.dtype.kind in "ui" and np.abs(img.astype(np.float64)).max() > 2**53)  # beyond float64's exact
        assert any(reasons), f"refused a valid frame: {msg}"
        return
    except Asn2nError as e:  # any other refusal must also be one sentence
        raise AssertionError(f"unexpected refusal of {img.dtype} {img.shape}: {e}") from None
    assert img.dtype.kind != "b" and min(img.shape) >= 4
    assert out.shape == img.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    x = img.astype(np.float64)
    lo, hi = x.min(), x.max()
    if hi == lo:  # a constant frame stays that constant
        np.testing.assert_allclose(out, lo, rtol=1e-3, atol=1e-3 * max(1.0, abs(lo)))
    else:  # intensities stay in the input's units and range (with a margin for noise removal)
        margin = 0.5 * (hi - lo)
        assert lo - margin <= out.min() and out.max() <= hi + margin


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(["uint8", "uint16", "int32", "float32", "float64"]),
       shape=st.tuples(st.integers(1, 2), st.integers(4, 70), st.integers(4, 90)),
       in_chunks=st.tuples(st.integers(1, 2), st.integers(1, 70), st.integers(1, 90)),
       out_chunk=st.integers(16, 96), seed=st.integers(0, 1000))
def test_any_zarr_chunking_gives_the_in_memory_result(tiny_model, tmp_path_factory, dtype, shape, in_chunks, out_chunk,
                                                       seed):
    import zarr

    from asn2n_dask import save_model
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import open_source

    d = tmp_path_factory.mktemp("hyp")
    data = (np.random.default_rng(seed).poisson(30.0, shape)).astype(dtype)
    z = zarr.create_array(str(d / "in.zarr"), shape=shape, chunks=in_chunks, dtype=dtype,
                          dimension_names=["t", "y", "x"])
    z[...] = data
    save_model(tiny_model, d / "model")
    run_pipeline(open_source(d / "in.zarr"), d / "out.zarr", d / "model",
                 options=RunOptions(infer=INFER, chunks=(out_chunk, out_chunk)), client="sync")
    got = zarr.open_group(str(d / "out.zarr"), mode="r")["0"][...]
    want = denoise(data, tiny_model, axes="TYX", config=INFER)
    span = float(data.max()) - float(data.min()) or 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * span + 1e-5)
    assert not (np.asarray(zarr.open_array(str(d / "in.zarr"), mode="r")[...]) != data).any()  # input untouched


# ------------------------------------------------------------------ values, options and sizes out of range
def _cli(*args):
    from typer.testing import CliRunner

    from asn2n_dask.cli import app

    return CliRunner().invoke(app, ["-q", *map(str, args)])


def _one_sentence(r):
    """Exit status 2 and one sentence (after any notes, e.g. a cluster's dashboard link)."""
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert "Traceback" not in r.output and lines[-1].startswith("error: "), r.output
    assert [line for line in lines if line.startswith("error")] == lines[-1:], r.output
    return lines[-1]


_BASE = np.random.default_rng(1).poisson(20, (48, 40))


@pytest.mark.parametrize("img, needle", [
    ((_BASE + 2**62).astype(np.int64), "2\\*\\*53"),
    (_BASE.astype(np.uint64) + np.uint64(2**63), "2\\*\\*53"),
    (np.where(_BASE > 20, 1e308, -1e308), "float32"),
    (np.where(_BASE > 20, 3e38, 0).astype(np.float32), "float32"),
    (_BASE * 1e-300, "float32"),
    (_BASE + 1e12, "offset"),  # float64 values float32 cannot tell apart
])
def test_values_beyond_what_the_arithmetic_holds_are_refused_in_one_sentence(tiny_model, tmp_path, img, needle):
    import warnings

    import tifffile

    from asn2n_dask import save_model

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=needle) as e:
            denoise(img, tiny_model, config=INFER)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")
    tifffile.imwrite(tmp_path / "in.tif", img)
    save_model(tiny_model, tmp_path / "m")
    for out in ("out.tif", "out.zarr"):
        _one_sentence(_cli("denoise", tmp_path / "in.tif", "-o", tmp_path / out, "-m", tmp_path / "m", "--tile", "32"))


@pytest.mark.parametrize("img", [
    (_BASE * 2**40).astype(np.int64) - 2**45,
    (_BASE * 2**40).astype(np.uint64),
    (_BASE * 1e30).astype(np.float32),
    np.where(_BASE > 20, 60000, -60000).astype(np.float16),
    (_BASE * 1e-12).astype(np.float64),
])
def test_large_and_small_values_float_arithmetic_holds_stay_in_range(tiny_model, img):
    import warnings

    from asn2n_dask.io import cast_output

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = denoise(img, tiny_model, config=INFER)
        back = cast_output(out, img.dtype)
    x = img.astype(np.float64)
    lo, hi = x.min(), x.max()
    assert np.isfinite(out).all() and lo - 0.5 * (hi - lo) <= out.min() and out.max() <= hi + 0.5 * (hi - lo)
    assert back.dtype == img.dtype and np.isfinite(back.astype(np.float64)).all()


def test_uint64_and_int64_files_go_through_both_routes(tiny_model, tmp_path):
    import tifffile

    from asn2n_dask import save_model

    save_model(tiny_model, tmp_path / "m")
    for dt in ("uint64", "int64"):
        tifffile.imwrite(tmp_path / f"{dt}.tif", (_BASE * 1000).astype(dt))
        for out in (f"{dt}.tif", f"{dt}.zarr"):
            r = _cli("denoise", tmp_path / f"{dt}.tif", "-o", tmp_path / "out" / out, "-m", tmp_path / "m",
                     "--tile", "32", "--dtype", "input")
            assert r.exit_code == 0, r.output


@pytest.mark.parametrize("make", [
    lambda: InferConfig(tile=8192),
    lambda: InferConfig(overlap=0.95),
    lambda: InferConfig(tile=8, overlap=0.9),  # tiles 1 pixel apart
    lambda: InferConfig(batch=5000),
    lambda: __import__("asn2n_dask").TrainConfig(patch=2048),
    lambda: __import__("asn2n_dask").TrainConfig(batch=5000),
])
def test_option_bounds_are_checked_on_construction(make):
    from asn2n_dask.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make()
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_options_too_large_for_the_frame_are_refused(tiny_model, tmp_path):
    import zarr

    from asn2n_dask import save_model
    from asn2n_dask.errors import ConfigError
    from asn2n_dask.pipeline import RunOptions, make_plan
    from asn2n_dask.source import open_source

    frame = _BASE.astype(np.uint16)
    with pytest.raises(ConfigError, match="tile"):
        denoise(frame, tiny_model, config=InferConfig(tile=1024))
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=(2, 300, 400), chunks=(1, 300, 400), dtype="uint16",
                          dimension_names=["t", "y", "x"])
    z[...] = 7
    src = open_source(tmp_path / "in.zarr")
    with pytest.raises(ConfigError, match="chunks"):
        make_plan(src, options=RunOptions(infer=INFER, chunks=(1, 1)))
    assert make_plan(src, options=RunOptions(infer=INFER, chunks=(64, 400))).grid == (5, 1)
    with pytest.raises(ConfigError, match="tile"):
        make_plan(src, options=RunOptions(infer=InferConfig(tile=2048)))
    save_model(tiny_model, tmp_path / "m")
    base = ["denoise", tmp_path / "in.zarr", "-o", tmp_path / "o.zarr", "-m", tmp_path / "m", "--dry-run"]
    for extra in (["--overlap", "0.999"], ["--chunks", "1"], ["--tile", "100000"], ["--tile-batch", "100000"]):
        _one_sentence(_cli(*base, *extra))
    for extra in (["--patch", "100000"], ["--batch", "100000"]):
        _one_sentence(_cli("fit", tmp_path / "in.zarr", "--model", tmp_path / "fm", *extra))
    _one_sentence(_cli("demo", "-o", tmp_path / "demo", "--size", "1000000"))


def test_dry_run_of_a_huge_store_prints_its_plan_in_seconds_and_a_run_is_refused(tiny_model, tmp_path):
    import time

    import zarr

    from asn2n_dask import save_model
    from asn2n_dask.pipeline import RunOptions, make_plan, run_pipeline
    from asn2n_dask.source import open_source

    save_model(tiny_model, tmp_path / "m")
    zarr.create_array(str(tmp_path / "wide.zarr"), shape=(10**12, 10**12), chunks=(2048, 2048), dtype="uint16",
                      dimension_names=["y", "x"])
    zarr.create_array(str(tmp_path / "long.zarr"), shape=(10**8, 64, 64), chunks=(1, 64, 64), dtype="uint16",
                      dimension_names=["t", "y", "x"])
    for name in ("wide.zarr", "long.zarr"):
        t0 = time.perf_counter()
        r = _cli("denoise", tmp_path / name, "-o", tmp_path / f"out-{name}", "-m", tmp_path / "m", "--dry-run")
        assert r.exit_code == 0 and "tasks" in r.output and "halo" in r.output, r.output
        assert time.perf_counter() - t0 < 20
        t0 = time.perf_counter()
        with pytest.raises(InputError, match="tasks"):
            run_pipeline(open_source(tmp_path / name), tmp_path / f"run-{name}", tmp_path / "m",
                         options=RunOptions(infer=INFER), client="sync")
        assert time.perf_counter() - t0 < 20
    _one_sentence(_cli("risk", tmp_path / "wide.zarr"))  # a lazy read of more blocks than one pass schedules
    plan = make_plan(open_source(tmp_path / "wide.zarr"), options=RunOptions(infer=INFER))
    assert plan.n_tasks == (-(-10**12 // 2048)) ** 2
    assert plan.bytes_read() >= 2 * 10**24 and plan.halo[0] > 0
    small = make_plan(open_source(tmp_path / "long.zarr"), options=RunOptions(infer=INFER, chunks=(64, 64)))
    assert small.window_plan(0).window == (0, 64, 0, 64) and len(small.windows) == 1


def test_windows_of_a_plan_are_the_ones_it_computes(tmp_path):
    import zarr

    from asn2n_dask.pipeline import RunOptions, make_plan
    from asn2n_dask.predict import window_plan
    from asn2n_dask.source import open_source

    zarr.create_array(str(tmp_path / "in.zarr"), shape=(1, 700, 530), chunks=(1, 700, 530), dtype="uint16",
                      dimension_names=["t", "y", "x"])
    plan = make_plan(open_source(tmp_path / "in.zarr"), options=RunOptions(infer=INFER, chunks=(128, 100)))
    wins = list(plan.windows)
    assert len(wins) == plan.grid[0] * plan.grid[1] == 6 * 6
    assert wins[7] == (128, 256, 100, 200) and wins[-1] == (640, 700, 500, 530) and plan.windows[-1] == wins[-1]
    plans = [window_plan(plan.frame_shape, w, plan.infer, plan.patch) for w in wins]
    area = sum((p.read[0][1] - p.read[0][0]) * (p.read[1][1] - p.read[1][0]) for p in plans)
    assert plan.bytes_read() == area * plan.itemsize
    hy = max(max(p.window[0] - p.read[0][0], p.read[0][1] - p.window[1]) for p in plans)
    hx = max(max(p.window[2] - p.read[1][0], p.read[1][1] - p.window[3]) for p in plans)
    assert plan.halo == (hy, hx)


def test_the_pyramid_stops_before_levels_smaller_than_16_pixels(tiny_model, tmp_path, caplog):
    import json
    import math

    import zarr

    from asn2n_dask import save_model
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import open_source

    save_model(tiny_model, tmp_path / "m")
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=(40, 70), chunks=(40, 70), dtype="uint16",
                          dimension_names=["y", "x"])
    z[...] = _BASE[:40, :40].repeat(2, axis=1)[:, :70]
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        run_pipeline(open_source(tmp_path / "in.zarr"), tmp_path / "out.zarr", tmp_path / "m",
                     options=RunOptions(infer=INFER, pyramid=6), client="sync")
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    ms = json.loads((tmp_path / "out.zarr" / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"] and root["1"].shape == (20, 35)
    assert "2" not in root and "pyramid" in caplog.text
    assert all(math.isfinite(v) for d in ms["datasets"] for v in d["coordinateTransformations"][0]["scale"])
