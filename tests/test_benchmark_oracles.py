"""The real-data benchmark's oracle filters (benchmarks/realdata.py): the yardsticks the
README compares the default command with must do what their names say."""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
pytestmark = pytest.mark.skipif(not (SHARED / "score.py").is_file(), reason="needs ../shared/bench/score.py")


@pytest.fixture(scope="module")
def realdata():
    saved = list(sys.path)
    sys.path[:0] = [str(ROOT / "benchmarks"), str(SHARED)]
    try:
        import realdata
    finally:
        sys.path[:] = saved
    return realdata


def scene() -> np.ndarray:
    yy, xx = np.mgrid[:64, :64]
    return 100 + 50 * np.sin(xx / 5.0) * np.cos(yy / 7.0)


def test_the_oracle_wiener_filter_passes_a_clean_image_unchanged(realdata):
    out, sd = realdata.wiener(scene()[None], scene()[None])
    np.testing.assert_allclose(out[0], scene(), atol=1e-9)
    assert sd[0] < 1e-9


def test_the_oracle_wiener_filter_measures_the_noise_and_beats_the_best_gaussian(realdata):
    clean = np.stack([scene(), scene()[::-1]])
    noisy = clean + np.random.default_rng(0).normal(0, 10, clean.shape)
    out, sd = realdata.wiener(noisy, clean)
    np.testing.assert_allclose(sd, 10, rtol=0.05)
    gauss, _ = realdata.gaussian(noisy, clean)

    def mse(x):
        return float(np.mean((x - clean) ** 2))

    assert mse(out) < mse(gauss) < 0.5 * mse(noisy)


def test_the_neighbour_subsampler_takes_two_adjacent_pixels_of_each_cell(realdata):
    torch = pytest.importorskip("torch")
    h, w = 8, 10
    index = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w).repeat(3, 1, 1, 1)
    rng = np.random.default_rng(0)
    pick = realdata.NEIGHBOURS[rng.integers(0, len(realdata.NEIGHBOURS), (3, h // 2, w // 2))]
    first, second = (t.numpy().astype(int) for t in realdata.neighbour_subsample(index, pick))
    assert first.shape == second.shape == (3, 1, h // 2, w // 2)
    (y1, x1), (y2, x2) = np.divmod(first, w), np.divmod(second, w)
    cy, cx = np.mgrid[: h // 2, : w // 2]
    for y, x in ((y1, x1), (y2, x2)):  # both from the cell they stand for
        assert (y // 2 == cy).all() and (x // 2 == cx).all()
    assert (np.abs(y1 - y2) + np.abs(x1 - x2) == 1).all()  # neighbours: never itself, never the diagonal
    assert len({tuple(p) for p in pick.reshape(-1, 2)}) == len(realdata.NEIGHBOURS)  # every pairing drawn


def noisy_scenes() -> tuple[np.ndarray, np.ndarray]:
    clean = np.stack([np.roll(scene(), 9 * k, axis=1) for k in range(4)])
    return clean + np.random.default_rng(0).normal(0, 20, clean.shape), clean


@pytest.mark.parametrize("name", ["supervised", "nb2nb"])
def test_the_trained_yardsticks_denoise_in_the_input_units(realdata, name):
    pytest.importorskip("torch")
    noisy, clean = noisy_scenes()
    kwargs = {"gt": clean * 0.5 + 7} if name == "supervised" else {}  # references at another scale and offset
    out = getattr(realdata, name)(noisy, steps=150, batch=4, patch=16 if name == "nb2nb" else 32, preset="tiny",
                                  **kwargs)
    assert out.shape == noisy.shape

    def mse(x):
        return float(np.mean((x - clean) ** 2))

    assert mse(out) < 0.5 * mse(noisy)  # in the noisy frames' units: no affine fit here
