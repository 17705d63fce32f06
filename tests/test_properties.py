"""Properties over generated inputs: what is written reads back the same, the plan's
arithmetic equals counting window by window, and a damaged model.json or OME-Zarr
metadata gives a correct load or one of the package's errors, never anything else."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asn2n_dask.errors import Asn2nError
from asn2n_dask.io import ImageMeta, read_image, write_image
from asn2n_dask.source import Selection, open_source

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64"]


def _pixels(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    return (rng.standard_normal(shape) * 1e3).astype(dt)


@st.composite
def images(draw):
    """Axes (a subset of T, C, Z in that order, then YX), a small shape and a dtype.

    Frames are at least 4x4, the smallest the package takes (tifffile's Zarr view of a
    stack of 1-pixel-wide frames cannot index them).
    """
    stack = draw(st.sampled_from(["", "T", "C", "Z", "TC", "CZ", "TZ", "TCZ"]))
    axes = stack + "YX"
    shape = tuple(draw(st.integers(1, 3)) for _ in stack) + (draw(st.integers(4, 17)), draw(st.integers(4, 19)))
    dtype = draw(st.sampled_from(DTYPES))
    return axes, _pixels(dtype, shape, draw(st.integers(0, 2**16)))


@FAST
@given(image=images(), suffix=st.sampled_from([".tif", ".zarr"]), data=st.data())
def test_write_then_read_gives_the_same_pixels_axes_and_dtype(tmp_path_factory, image, suffix, data):
    axes, pixels = image
    d = tmp_path_factory.mktemp("rt")
    chunks = None
    if suffix == ".zarr":
        chunks = tuple(data.draw(st.integers(1, n)) for n in pixels.shape)
    out = write_image(d / f"img{suffix}", pixels, ImageMeta(axes=axes, format="x"), chunks=chunks)
    back, meta = read_image(out)
    assert meta.axes == axes and back.dtype == pixels.dtype
    np.testing.assert_array_equal(back, pixels)
    src = open_source(out)  # the lazy route reads the same
    assert src.axes == axes and src.shape == pixels.shape and np.dtype(src.dtype) == pixels.dtype
    np.testing.assert_array_equal(np.asarray(src.open()[...]), pixels)
    np.testing.assert_array_equal(src.to_xarray().values, pixels)


@FAST
@given(image=images(), data=st.data())
def test_selections_read_lazily_equal_indexing_in_memory(tmp_path_factory, image, data):
    axes, pixels = image
    chunks = tuple(data.draw(st.integers(1, n)) for n in pixels.shape)
    path = tmp_path_factory.mktemp("sel") / "img.zarr"
    z = zarr.create_array(str(path), shape=pixels.shape, chunks=chunks, dtype=pixels.dtype,
                          dimension_names=[a.lower() for a in axes])
    z[...] = pixels
    src = open_source(path)
    channels = time = None
    if "C" in axes:
        n = pixels.shape[axes.index("C")]
        channels = [str(i) for i in data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))]
    if "T" in axes:
        n = pixels.shape[axes.index("T")]
        a = data.draw(st.integers(0, n - 1))
        time = f"{a}:{data.draw(st.integers(a + 1, n))}"
    sel = Selection.parse(src, channels, time)
    idx = sel.indices(src)
    want = pixels[np.ix_(*[np.asarray(i) for i in idx])]
    got = src.to_xarray().isel({d: list(i) for d, i in zip("".join(axes).lower(), idx)}).values
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), chunk=st.integers(1, 400), tile=st.sampled_from([8, 16, 32, 64, 128]),
       overlap=st.sampled_from([0.0, 0.25, 0.5, 0.75]), patch=st.sampled_from([4, 16, 48, 64]))
def test_a_plans_read_arithmetic_equals_counting_every_window(n, chunk, tile, overlap, patch):
    from asn2n_dask.config import InferConfig
    from asn2n_dask.plan import _axis_reads
    from asn2n_dask.predict import window_plan

    infer = InferConfig(tile=tile, overlap=overlap)
    c = min(chunk, n)
    plans = [window_plan((n, 1), (a, min(n, a + c), 0, 1), infer, patch) for a in range(0, n, c)]
    ext = [p.read[0][1] - p.read[0][0] for p in plans]
    got = _axis_reads(n, c, tile, infer.stride, patch)
    assert got.total == sum(ext)
    assert got.halo == max(max(p.window[0] - p.read[0][0], p.read[0][1] - p.window[1]) for p in plans)
    first = plans[int(np.argmax(ext))]
    assert (got.largest, got.tiles, got.span) == (max(ext), first.tiles[0].count, len(first.tiles[0].source))


# ------------------------------------------------------------------ damaged metadata
def _json_values():
    leaves = (st.none() | st.booleans() | st.integers(-10, 10) | st.sampled_from([10**400, -(2**70), 2**63])
              | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6)
              | st.sampled_from(["", "0", "../x", "scale", "local", "global", "reference"]))
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def _paths(node, here=()):
    yield here
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, here + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, here + (i,))


@st.composite
def mutations(draw, doc):
    """A copy of ``doc`` with one node replaced (by any JSON value, a deep nesting, the
    node in a list) or removed, as JSON text; or the text cut short."""
    paths = [p for p in _paths(doc) if p]
    path = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["replace", "replace", "remove", "deep", "wrap", "cut"]))
    new = json.loads(json.dumps(doc))
    parent = new
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    if kind == "remove":
        del parent[key]
    elif kind == "deep":
        parent[key] = "DEEP-NESTING"
    elif kind == "wrap":
        parent[key] = [parent[key]]
    elif kind != "cut":
        parent[key] = draw(_json_values())
    text = json.dumps(new).replace('"DEEP-NESTING"', "[" * 50_000 + "]" * 50_000)
    if kind == "cut":
        text = text[: draw(st.integers(0, len(text) - 1))]
    return text


@pytest.fixture(scope="module")
def model_copy(tiny_model, tmp_path_factory):
    from asn2n_dask import save_model

    d = tmp_path_factory.mktemp("fuzz") / "m"
    save_model(tiny_model, d)
    return d, (d / "model.json").read_text()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_model_json_loads_correctly_or_is_refused(model_copy, data):
    from asn2n_dask import load_model
    from asn2n_dask.checkpoint import Model

    d, original = model_copy
    text = data.draw(mutations(json.loads(original)))
    (d / "model.json").write_text(text)
    try:
        model = load_model(d)
    except Asn2nError as e:
        assert str(e) and "\n" not in str(e)
        return
    finally:
        (d / "model.json").write_text(original)
    assert isinstance(model, Model) and model.n_channels >= 1
    for ch in model.channels:
        assert ch.dataset_mode in ("local", "global") and ch.risk_estimator in ("reference", "noise-aware")
        assert np.isfinite([ch.stats.lo, ch.stats.hi, ch.high_risk_ratio, ch.seconds]).all()


@pytest.fixture(scope="module")
def ome_copy(tmp_path_factory):
    d = tmp_path_factory.mktemp("ome")
    pixels = np.arange(2 * 3 * 20 * 24, dtype=np.uint16).reshape(2, 3, 20, 24)
    out = write_image(d / "img.zarr", pixels, ImageMeta(axes="TCYX", format="ome-zarr", scale=(1.0, 1.0, 0.2, 0.2),
                                                        units=("second", None, "micrometer", "micrometer"),
                                                        channel_names=("a", "b", "c")))
    return out, (out / "zarr.json").read_text(), pixels


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_ome_metadata_reads_correctly_or_is_refused(ome_copy, data):
    path, original, pixels = ome_copy
    doc = json.loads(original)
    text = data.draw(mutations(doc["attributes"]["ome"]))
    whole = json.dumps({**doc, "attributes": {**doc["attributes"], "ome": "OME"}})
    (path / "zarr.json").write_text(whole.replace('"OME"', text))  # a cut text leaves zarr.json broken

    def check(back, meta):
        assert back.shape == pixels.shape and len(meta.axes) == 4 and meta.axes.endswith("YX")
        np.testing.assert_array_equal(back, pixels)
        assert meta.scale is None or (len(meta.scale) == 4 and np.isfinite(meta.scale).all())

    try:
        check(*read_image(path))
        src = open_source(path)
        check(np.asarray(src.open()[...]), src.meta)
    except Asn2nError as e:
        assert str(e) and "\n" not in str(e)
    finally:
        (path / "zarr.json").write_text(original)


def test_the_fuzzed_copies_are_intact_afterwards(model_copy, ome_copy):
    from asn2n_dask import load_model

    assert load_model(model_copy[0]).n_channels == 1
    np.testing.assert_array_equal(read_image(ome_copy[0])[0], ome_copy[2])
