from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

torch.set_num_threads(2)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    the tiny 3-D convolutions of the volume tests gain nothing from a second thread, and lose a lot to
    waiting for it on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def frame() -> tuple[np.ndarray, np.ndarray]:
    """A small noisy uint16 frame and its ground truth (expected ADU)."""
    from asn2n_dask.synthetic import noisy_frame

    return noisy_frame((96, 128), photons=10.0, seed=3)


@pytest.fixture(scope="session")
def tiny_model(frame):
    """A tiny single-channel model trained for a few steps on ``frame``."""
    from asn2n_dask import TrainConfig, fit

    return fit(frame[0], config=TrainConfig(preset="tiny", steps=30, patch=32, batch=4, val_every=10))


@pytest.fixture(scope="session")
def scorer():
    sys.path.insert(0, str(SHARED / "bench"))
    import score

    return score
