"""The Python verbs return what they were given: numpy for numpy, a DataArray with its
dims, coords and attrs for a DataArray, and a lazy dask array for a dask array, with
nothing read before the user computes it."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback
from dask.delayed import Delayed

from asn2n_dask import InferConfig, RiskThresholds, TrainConfig, assess_risk, denoise, fit
from asn2n_dask.api import _weights_digest
from asn2n_dask.errors import InputError, ModelError
from asn2n_dask.risk import RiskReport
from asn2n_dask.synthetic import noisy_frame

INFER = InferConfig(tile=32)


class Counting:
    """An array whose every read is counted (what dask.array.from_array reads blocks from)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads = 0

    def __getitem__(self, key):
        self.reads += 1
        return self.data[key]


def lazy(data: np.ndarray, chunks) -> tuple[da.Array, Counting]:
    src = Counting(data)
    arr = da.from_array(src, chunks=chunks)
    src.reads = 0
    return arr, src


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    """(T, C, Y, X) uint16: three time points of two channels of different content."""
    f = noisy_frame((64, 96), photons=10.0, seed=3)[0]
    g = noisy_frame((64, 96), photons=4.0, seed=5)[0]
    return np.stack([np.stack([f, g]), np.stack([f[::-1], g[:, ::-1]]), np.stack([f[:, ::-1], g[::-1]])])


@pytest.fixture(scope="module")
def model(stack):
    return fit(stack, axes="TCYX", config=TrainConfig(preset="tiny", steps=2, patch=32, batch=2),
               channel_names=["mito", "er"])


@pytest.fixture(scope="module")
def reference(stack, model) -> np.ndarray:
    return denoise(stack, model, axes="TCYX", config=INFER)


@pytest.fixture
def labelled(stack) -> xr.DataArray:
    return xr.DataArray(stack, dims=("t", "c", "y", "x"), name="cells", attrs={"units": "ADU", "note": "day 1"},
                        coords={"t": [0.0, 1.5, 3.0], "c": ["mito", "er"], "y": np.arange(64) * 0.1,
                                "x": np.arange(96) * 0.1, "stage": ("t", [10, 11, 12])})


def test_numpy_in_numpy_out(stack, model, reference):
    assert type(reference) is np.ndarray and reference.shape == stack.shape and reference.dtype == np.float32


def test_a_dataarray_keeps_its_dims_coords_name_and_attrs(labelled, model, reference):
    out = denoise(labelled, model, config=INFER)  # no axes=: its dims name them
    assert isinstance(out, xr.DataArray) and type(out.data) is np.ndarray
    assert out.dims == labelled.dims and out.name == "cells"
    assert out.coords.to_dataset().identical(labelled.coords.to_dataset())
    assert {k: v for k, v in out.attrs.items() if k != "asn2n"} == labelled.attrs
    prov = out.attrs["asn2n"]
    assert prov["command"] == "denoise" and prov["axes"] == "TCYX" and prov["channels"] == ["mito", "er"]
    assert prov["infer"] == INFER.to_dict() and prov["weights_sha256"] == _weights_digest(model)
    np.testing.assert_array_equal(out.values, reference)
    assert labelled.attrs == {"units": "ADU", "note": "day 1"}  # the input is not touched


def test_the_dims_name_the_axes_in_any_order(labelled, model, reference):
    out = denoise(labelled.transpose("c", "y", "t", "x").transpose("c", "t", "y", "x"), model, config=INFER)
    assert out.dims == ("c", "t", "y", "x") and out.attrs["asn2n"]["axes"] == "CTYX"
    np.testing.assert_array_equal(out.transpose("t", "c", "y", "x").values, reference)
    longhand = labelled.rename(t="time", c="channel")
    np.testing.assert_array_equal(denoise(longhand, model, config=INFER).values, reference)


def test_dims_that_do_not_name_the_axes_need_axes(stack, model, reference):
    odd = xr.DataArray(stack, dims=("frame", "colour", "row", "col"))
    with pytest.raises(InputError, match=r"dims \('frame', 'colour', 'row', 'col'\) do not name its axes.*axes="):
        denoise(odd, model, config=INFER)
    out = denoise(odd, model, axes="TCYX", config=INFER)
    assert out.dims == odd.dims and out.attrs["asn2n"]["axes"] == "TCYX"
    np.testing.assert_array_equal(out.values, reference)


def test_a_dask_array_stays_lazy_until_computed(stack, model, reference):
    arr, src = lazy(stack, (1, 1, 32, 48))
    started = []
    with Callback(start=lambda dsk: started.append(len(dsk))):
        out = denoise(arr, model, axes="TCYX", config=INFER)
    assert src.reads == 0 and not started  # nothing read, no graph run
    assert isinstance(out, da.Array) and out.shape == stack.shape and out.dtype == np.float32
    assert out.chunks == ((1, 1, 1), (1, 1), (64,), (96,))  # one task per frame
    result = out.compute()
    assert src.reads > 0
    np.testing.assert_array_equal(result, reference)  # the statistics of the whole channel, as numpy's


def test_lazy_and_numpy_agree_on_float_data_in_any_chunking(stack, model):
    data = stack.astype(np.float32) * np.float32(0.37) + np.float32(2.5)  # percentiles from histograms
    want = denoise(data, model, axes="TCYX", config=INFER)
    for chunks in ((1, 2, 64, 96), (3, 1, 16, 96)):
        arr, src = lazy(data, chunks)
        out = denoise(arr, model, axes="TCYX", config=INFER)
        assert src.reads == 0
        np.testing.assert_array_equal(out.compute(), want)


def test_a_dataarray_of_a_dask_array_stays_lazy(labelled, model, reference):
    arr, src = lazy(labelled.values, (1, 2, 64, 96))
    out = denoise(labelled.copy(data=arr), model, config=INFER)
    assert src.reads == 0 and isinstance(out, xr.DataArray) and isinstance(out.data, da.Array)
    assert out.coords.to_dataset().identical(labelled.coords.to_dataset()) and out.attrs["asn2n"]["axes"] == "TCYX"
    computed = out.compute()
    assert src.reads > 0 and type(computed.data) is np.ndarray
    np.testing.assert_array_equal(computed.values, reference)


def test_lazy_input_is_checked_without_reading_and_nan_when_computed(stack, model):
    three, src = lazy(np.concatenate([stack, stack[:, :1]], axis=1), (1, 1, 64, 96))
    with pytest.raises(ModelError, match="trained for 2 channel"):
        denoise(three, model, axes="TCYX", config=INFER)
    with pytest.raises(InputError, match="dtype complex"):
        denoise(da.zeros((2, 64, 96), dtype=complex), model, axes="CYX", config=INFER)
    assert src.reads == 0
    bad = stack.astype(np.float32)
    bad[2, 1, 5, 7] = np.nan
    arr, src = lazy(bad, (1, 1, 64, 96))
    out = denoise(arr, model, axes="TCYX", config=INFER)  # the values are not read yet
    with pytest.raises(InputError, match="NaN or infinite"):
        out.compute()


def test_assess_risk_numpy_and_dataarray(labelled):
    frame = labelled.isel(t=0, c=1)
    plain = assess_risk(frame.values)
    assert isinstance(plain, RiskReport) and type(plain.risk_map) is np.ndarray
    labelled_report = assess_risk(frame)
    rm = labelled_report.risk_map
    assert isinstance(rm, xr.DataArray) and rm.dims == ("y", "x") and rm.shape == (1, 2) and rm.name == "risk"
    np.testing.assert_array_equal(rm.values, plain.risk_map)
    np.testing.assert_allclose(rm.x.values, [np.arange(64).mean() * 0.1, np.arange(64, 96).mean() * 0.1])
    np.testing.assert_allclose(rm.y.values, [np.arange(64).mean() * 0.1])
    assert rm.coords["c"].item() == "er" and rm.coords["t"].item() == 0.0 and rm.coords["stage"].item() == 10
    assert rm.attrs["units"] == "ADU" and rm.attrs["asn2n"]["patch"] == 64
    assert labelled_report.stats == plain.stats and labelled_report.high_risk_ratio == plain.high_risk_ratio
    with pytest.raises(InputError, match="one 2-D frame.*isel"):
        assess_risk(labelled)


def test_assess_risk_of_a_dask_frame_is_delayed(labelled):
    frame = labelled.isel(t=1, c=0)
    want = assess_risk(frame.values, thresholds=RiskThresholds(patch=32))
    arr, src = lazy(frame.values, (32, 48))
    report = assess_risk(arr, thresholds=RiskThresholds(patch=32))
    assert src.reads == 0 and isinstance(report, Delayed)
    got = report.compute()
    assert src.reads > 0 and got.stats == want.stats
    np.testing.assert_array_equal(got.risk_map, want.risk_map)
    arr, src = lazy(frame.values, (32, 48))
    on_grid = assess_risk(frame.copy(data=arr), thresholds=RiskThresholds(patch=32))
    assert src.reads == 0
    rm = on_grid.risk_map.compute()  # an attribute of a Delayed is a Delayed
    assert isinstance(rm, xr.DataArray) and rm.shape == (2, 3) and rm.coords["c"].item() == "mito"
    np.testing.assert_array_equal(rm.values, want.risk_map)


def test_fit_reads_the_axes_and_channel_names_of_a_dataarray(labelled, stack):
    m = fit(labelled.transpose("c", "t", "y", "x"), config=TrainConfig(preset="tiny", steps=1, patch=32, batch=2))
    assert [ch.name for ch in m.channels] == ["mito", "er"] and m.info["axes"] == "CTYX"
    assert m.info["shape"] == [[2, 3, 64, 96]]
