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
