"""Synthetic fluorescence frames with a known ground truth, for the demo and the tests.

Filaments (random smooth curves) on the left and sparse elongated blobs on a dark
background, blurred by a Gaussian point-spread function, then imaged by a camera:
``ADU = gain * Poisson(photons + background) + Normal(0, read_sd) + offset``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["ground_truth", "camera", "noisy_frame"]


def _gaussian_blur(img: NDArray[np.float64], sigma: float) -> NDArray[np.float64]:
    ky = np.fft.fftfreq(img.shape[0])[:, None]
    kx = np.fft.rfftfreq(img.shape[1])[None, :]
    h = np.exp(-2 * (np.pi * sigma) ** 2 * (ky**2 + kx**2))
    return np.fft.irfft2(np.fft.rfft2(img) * h, s=img.shape)


def ground_truth(shape: tuple[int, int] = (256, 256), *, n_filaments: int = 12, n_blobs: int = 10,
                 psf_sigma: float = 1.5, seed: int = 0) -> NDArray[np.float32]:
    """A clean frame in [0, 1]: filaments and blobs, shape ``shape``."""
    rng = np.random.default_rng(seed)
    h, w = shape
    img = np.zeros(shape)
    t = np.linspace(0, 1, 4 * (h + w))
    for _ in range(n_filaments):
        y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
        ang = rng.uniform(0, np.pi)
        amp, freq, phase = rng.uniform(5, 30), rng.uniform(0.5, 2), rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.5, 1.2) * max(h, w)
        s = (t - 0.5) * length
        bend = amp * np.sin(2 * np.pi * freq * t + phase)
        yy = (y0 + s * np.sin(ang) + bend * np.cos(ang)).astype(int)
        xx = (x0 + s * np.cos(ang) - bend * np.sin(ang)).astype(int)
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        img[yy[ok], xx[ok]] = 1.0
    yy, xx = np.mgrid[:h, :w]
    for _ in range(n_blobs):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b, th = rng.uniform(4, 10), rng.uniform(2, 4), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        img = np.maximum(img, ((u / a) ** 2 + (v / b) ** 2 <= 1) * 0.6)
    out = _gaussian_blur(img, psf_sigma)
    return (out / max(out.max(), 1e-12)).astype(np.float32)


def camera(photons: NDArray[np.floating], *, gain: float = 2.0, read_sd: float = 2.0, offset: float = 100.0,
           background: float = 1.0, seed: int = 0) -> NDArray[np.uint16]:
    """Image expected photon counts with shot noise, read noise, gain and offset (uint16 ADU)."""
    rng = np.random.default_rng(seed)
    adu = gain * rng.poisson(np.asarray(photons, np.float64) + background) + rng.normal(0, read_sd, np.shape(photons))
    return np.clip(np.rint(adu + offset), 0, 65535).astype(np.uint16)


def noisy_frame(shape: tuple[int, int] = (256, 256), *, photons: float = 10.0,
                seed: int = 0) -> tuple[NDArray[np.uint16], NDArray[np.float32]]:
    """A noisy uint16 frame and its ground truth in expected ADU (gain 2, offset 100)."""
    truth = ground_truth(shape, seed=seed) * photons
    return camera(truth, seed=seed + 1), (2.0 * (truth + 1.0) + 100.0).astype(np.float32)
