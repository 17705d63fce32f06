"""Risk-aware adaptive normalisation, and its exact inverse.

Every mode maps a frame to the network's range with a per-pixel affine transform
``y = (x - offset) / scale`` whose fields are kept, so that the network's output goes
back to the input's units with ``x = y * scale + offset``.

* ``global``: one (offset, scale) for the frame: its low and high percentiles.
* ``local``: each patch its own range (patch minimum and maximum, clipped to the global
  range, never narrower than ``min_range_fraction`` of it).
* ``adaptive``: high-risk patches (weak background, sparse bright) take the global
  range, safe patches keep their local one.
* ``dataset``: ``global`` or ``local`` for every frame, as decided once for the dataset
  (see :func:`asn2n_dask.risk.dataset_decision`).

Per-patch ranges are placed at the patch centres and interpolated bilinearly to every
pixel, so the transform is smooth and draws no block edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .config import NormConfig
from .risk import SAFE, FrameStats, RiskReport, assess_risk, frame_stats, patch_view

__all__ = ["NormParams", "norm_params", "normalize", "denormalize", "interp_matrix"]


@dataclass(frozen=True)
class NormParams:
    """The per-pixel affine transform of one frame.

    Attributes
    ----------
    offset, scale : ndarray, shape (H, W), float64
        Input units; ``scale > 0`` everywhere.
    mode : str
        The mode actually applied (``dataset`` resolves to ``global`` or ``local``).
    """

    offset: NDArray[np.float64]
    scale: NDArray[np.float64]
    mode: str


def interp_matrix(n: int, patch: int) -> NDArray[np.float64]:
    """Linear interpolation from patch centres to pixels along one axis.

    Returns
    -------
    ndarray, shape (n, ceil(n / patch))
        Row ``i`` holds the weights of the patch centres for pixel ``i``; rows sum to
        one, pixels outside the outermost centres take the nearest centre's value.
    """
    m = -(-n // patch)
    centres = np.minimum(np.arange(m) * patch + (patch - 1) / 2.0, n - 1)
    eye = np.eye(m)
    pos = np.arange(n, dtype=np.float64)
    if m == 1:
        return np.ones((n, 1))
    return np.stack([np.interp(pos, centres, eye[j]) for j in range(m)], axis=1)


def _smooth(field: NDArray[np.float64], shape: tuple[int, int], patch: int) -> NDArray[np.float64]:
    wy, wx = interp_matrix(shape[0], patch), interp_matrix(shape[1], patch)
    return wy @ field @ wx.T


def norm_params(image: NDArray[np.number], *, config: NormConfig = NormConfig(),
                stats: FrameStats | None = None, risk: RiskReport | None = None,
                dataset_mode: str | None = None) -> NormParams:
    """Compute the normalisation transform of one frame.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        One frame in input units.
    config : NormConfig
        Mode, percentiles and risk thresholds.
    stats : FrameStats, optional
        Global range (default: the frame's own ``config`` percentiles).  Pass
        channel-wide statistics to normalise every frame of a channel alike.
    risk : RiskReport, optional
        Risk of the frame (computed when needed and not given).
    dataset_mode : {"global", "local"}, optional
        The dataset-level decision, for ``mode="dataset"``.  When missing, it is
        decided from this frame alone.

    Returns
    -------
    NormParams
    """
    img = np.asarray(image, dtype=np.float64)
    if stats is None:
        stats = frame_stats(img, low=config.low_percentile, high=config.high_percentile)
    mode: str = config.mode
    if mode == "dataset":
        if dataset_mode is None:
            risk = risk or assess_risk(img, thresholds=config.risk)
            dataset_mode = "global" if risk.high_risk_ratio > config.risk.dataset_ratio else "local"
        mode = dataset_mode
    shape = img.shape
    if mode == "global":
        return NormParams(offset=np.full(shape, stats.lo), scale=np.full(shape, stats.span), mode=mode)

    patch = config.risk.patch
    v = patch_view(np.clip(img, stats.lo, stats.hi), patch)
    lo = np.nanmin(v, axis=-1)
    hi = np.nanmax(v, axis=-1)
    min_span = config.min_range_fraction * stats.span
    short = (hi - lo) < min_span
    centre = 0.5 * (hi + lo)
    lo = np.where(short, np.maximum(stats.lo, np.minimum(centre - 0.5 * min_span, stats.hi - min_span)), lo)
    hi = np.where(short, lo + min_span, hi)
    if mode == "adaptive":
        risk = risk or assess_risk(img, thresholds=config.risk)
        risky = risk.risk_map != SAFE
        lo = np.where(risky, stats.lo, lo)
        hi = np.where(risky, stats.lo + stats.span, hi)
    offset = _smooth(lo, shape, patch)
    scale = np.maximum(_smooth(hi, shape, patch) - offset, min_span)
    return NormParams(offset=offset, scale=scale, mode=mode)


def normalize(image: NDArray[np.number], params: NormParams) -> NDArray[np.float32]:
    """Apply a transform: ``(image - offset) / scale``, float32, same shape (..., H, W)."""
    return ((np.asarray(image, dtype=np.float64) - params.offset) / params.scale).astype(np.float32)


def denormalize(values: NDArray[np.floating], params: NormParams) -> NDArray[np.float64]:
    """Invert a transform: ``values * scale + offset``, back in input units (float64)."""
    return np.asarray(values, dtype=np.float64) * params.scale + params.offset
