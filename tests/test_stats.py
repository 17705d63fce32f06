"""Channel statistics: exact for integer images, robust to outliers, numpy and dask alike."""

import dask.array as da
import numpy as np
import pytest

from asn2n_dask import NormConfig
from asn2n_dask.errors import InputError
from asn2n_dask.stats import channel_stats

NORM = NormConfig(low_percentile=1.0, high_percentile=99.0)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_integer_percentiles_equal_numpy(dtype):
    info = np.iinfo(dtype)
    x = np.random.default_rng(0).integers(max(info.min, -3000), min(info.max, 3000), (2, 3, 50, 40)).astype(dtype)
    for c, s in enumerate(channel_stats(x, NORM)):
        lo, hi, clip = np.percentile(x[c].astype(float), [1.0, 99.0, 99.99])
        assert (s.norm.lo, s.norm.hi, s.risk.hi) == pytest.approx((lo, hi, clip), abs=1e-9)
        assert s.minimum == x[c].min() and s.maximum == x[c].max()


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint32", "int32"])
def test_a_few_extreme_pixels_do_not_blur_the_percentiles(dtype):
    x = np.random.default_rng(1).gamma(2.0, 100.0, (1, 200, 300))
    x[0, 5, 5] = 4e9 if dtype != "int32" else 2e9  # a hot pixel 10^7 times the signal
    x = x.astype(dtype)
    s = channel_stats(x, NORM)[0]
    lo, hi, clip = np.percentile(x.astype(float), [1.0, 99.0, 99.99])
    tol = 1e-3 * (hi - lo)
    assert s.norm.lo == pytest.approx(lo, abs=tol) and s.norm.hi == pytest.approx(hi, abs=tol)
    assert s.risk.hi == pytest.approx(clip, abs=tol)


def test_dask_and_numpy_give_the_same_statistics():
    x = np.random.default_rng(2).normal(1000, 50, (2, 4, 64, 64)).astype(np.float32)
    a = channel_stats(x)
    b = channel_stats(da.from_array(x, chunks=(1, 1, 20, 33)))
    assert a == b


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "bool"])
def test_the_one_pass_count_of_small_integers_equals_the_two_pass_histogram(dtype):
    rng = np.random.default_rng(4)
    if dtype == "bool":
        x = rng.random((2, 3, 50, 40)) < 0.3
    else:
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -2000), min(info.max, 2500), (2, 3, 50, 40)).astype(dtype)
        x[1, 0, 0, 0] = info.max  # the ends of the dtype's range
        x[1, 0, 0, 1] = info.min
    one = channel_stats(da.from_array(x, chunks=(1, 2, 20, 33)), NORM)  # counts of every value, one pass
    two = channel_stats(x.astype(np.int32), NORM)  # min/max, then an integer-bin histogram
    assert one == two == channel_stats(x, NORM)


def test_constant_and_almost_constant_channels_keep_a_usable_range():
    const = channel_stats(np.full((1, 30, 30), 7, np.uint16))[0]
    assert const.norm.lo == const.norm.hi == 7 and const.norm.span > 0
    sparse = np.zeros((1, 200, 200), np.uint16)
    sparse[0, 10, 10] = 900  # 1 pixel in 40,000: every percentile is 0
    s = channel_stats(sparse)[0]
    assert s.norm.hi == 900 and s.risk.hi == 900


def test_the_digest_follows_the_data():
    x = np.random.default_rng(3).integers(0, 500, (1, 40, 40)).astype(np.uint16)
    y = x.copy()
    y[0, 0, 0] += 1
    assert channel_stats(x)[0].digest == channel_stats(x.copy())[0].digest != channel_stats(y)[0].digest


def test_non_finite_values_are_refused_with_a_sentence():
    x = np.ones((2, 8, 8), np.float32)
    x[1, 2, 2] = np.inf
    with pytest.raises(InputError, match="channel 1 holds NaN or infinite"):
        channel_stats(da.from_array(x, chunks=4))
