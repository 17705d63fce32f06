import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asn2n_dask.errors import InputError
from asn2n_dask.testing import diagonal_halves, fourier_upsample, make_twins


def smooth(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return 2.0 + np.sin(x / 7.0) + 0.5 * np.cos(y / 9.0) + 0.3 * np.sin((x + y) / 11.0)


@pytest.mark.parametrize("shape", [(64, 64), (65, 70), (33, 47), (128, 96)])
def test_noise_free_smooth_image_gives_twins_equal_to_it(shape):
    img = smooth(*shape)
    a, b = make_twins(img)
    assert a.shape == b.shape == img.shape
    span = img.max() - img.min()
    assert np.abs(a - img)[4:-4, 4:-4].max() < 0.005 * span  # interior: on the same pixel grid
    h, w = shape[0] // 2 * 2, shape[1] // 2 * 2  # an odd last row/column is extrapolated
    assert np.abs(a - img)[:h, :w].max() < 0.05 * span  # edges: mirrored extension, no wrap-around
    assert np.abs(a - img).max() < 0.1 * span
    assert np.abs(a - b).max() < 0.005 * span


def test_twins_of_pure_noise_are_uncorrelated_with_half_variance():
    noise = np.random.default_rng(0).normal(size=(256, 256))
    a, b = make_twins(noise)
    r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert abs(r) < 0.02
    assert 0.4 < a.var() < 0.6 and 0.4 < b.var() < 0.6


@given(st.integers(2, 40), st.integers(2, 40), st.floats(0, 1000))
@settings(max_examples=40, deadline=None)
def test_mean_preserved_and_shape_kept(h, w, level):
    rng = np.random.default_rng(h * 100 + w)
    img = level + rng.poisson(5.0, (h, w)).astype(float)
    a, b = make_twins(img)
    assert a.shape == (h, w)
    even = img[: h // 2 * 2, : w // 2 * 2]
    assert abs(0.5 * (a.mean() + b.mean()) - even.mean()) < 0.35 * (1 + even.std())


def test_stacks_are_processed_frame_by_frame():
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(3, 20, 22))
    a, b = make_twins(stack)
    for i in range(3):
        ai, bi = make_twins(stack[i])
        np.testing.assert_allclose(a[i], ai)
        np.testing.assert_allclose(b[i], bi)


def test_diagonal_halves_are_the_diagonal_means():
    x = np.arange(16, dtype=float).reshape(4, 4)
    a, b = diagonal_halves(x)
    np.testing.assert_array_equal(a, [[(0 + 5) / 2, (2 + 7) / 2], [(8 + 13) / 2, (10 + 15) / 2]])
    np.testing.assert_array_equal(b, [[(1 + 4) / 2, (3 + 6) / 2], [(9 + 12) / 2, (11 + 14) / 2]])


def test_fourier_upsample_of_a_band_limited_signal_is_exact_inside():
    n = 64
    t_half = 2 * np.arange(n) + 0.5
    f = lambda t: np.cos(2 * np.pi * 3 * t / (2 * n))  # noqa: E731
    up = fourier_upsample(f(t_half), 2 * n, axis=0)
    assert np.abs(up - f(np.arange(2 * n)))[8:-8].max() < 1e-3


def test_too_small_frame_is_refused():
    with pytest.raises(InputError):
        make_twins(np.ones((1, 5)))


@pytest.mark.parametrize("shape", [(16, 16), (17, 23), (2, 9), (3, 2, 12, 10)])
def test_torch_twins_match_the_numpy_reference(shape):
    import torch

    from asn2n_dask.pairs import make_twins_torch

    x = np.random.default_rng(3).poisson(7.0, shape).astype(np.float64)
    ta, tb = make_twins_torch(torch.from_numpy(x))
    a, b = make_twins(x)
    np.testing.assert_allclose(ta.numpy(), a, atol=1e-10)
    np.testing.assert_allclose(tb.numpy(), b, atol=1e-10)
