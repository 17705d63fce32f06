"""Hostile input, generated: every shape, dtype and value pattern either gives a correct
result or one clear error, never a crash and never a silent wrong output."""

from __future__ import annotations

import numpy as np
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
                   img.dtype.kind == "f" and not np.isfinite(img).all())
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
       out_chunk=st.integers(4, 96), seed=st.integers(0, 1000))
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
