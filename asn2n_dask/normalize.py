"""Risk-aware adaptive normalisation, and its exact inverse.

Every mode maps a frame to the network's range with a per-pixel affine transform
``y = (x - offset) / scale`` whose fields are kept, so that the network's output goes
back to the input's units with ``x = y * scale + offset``.

* ``global`` (the default): one (offset, scale) for the frame: its low and high
  percentiles.
* ``local``: each patch its own range (patch minimum and maximum, clipped to the global
  range, never narrower than ``min_range_fraction`` of it).
* ``adaptive``: high-risk patches (weak background, sparse bright) take the global
  range; a safe patch moves from the global range towards its local one by a weight in
  [0, 1] (:func:`local_weight`): by default (``adaptive_weight="range"``) the share of
  its local range that its pixel noise does not explain, so noise-set ranges stay
  global; on data the dataset rule calls high-risk, ``adaptive_floor`` (default 1)
  gives every patch the global range.
* ``dataset``: ``global`` or ``local`` for every frame, as decided once for the dataset
  (see :func:`asn2n_dask.risk.dataset_decision`).

Per-patch ranges are placed at the patch centres and interpolated bilinearly to every
pixel, so the transform is smooth and draws no block edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from .config import NormConfig
from .method import applied_mode
from .risk import (
    SAFE,
    FrameStats,
    RiskReport,
    assess_risk,
    assess_risk_torch,
    frame_stats,
    patch_moments,
    patch_moments_torch,
    patch_noise_var,
    patch_noise_var_torch,
    patch_view,
)
from .stats import ChannelStats

__all__ = ["NormParams", "norm_params", "normalize", "denormalize", "interp_matrix", "interp_weights",
           "patch_ranges", "patch_ranges_torch", "local_weight", "local_weight_torch", "fields_at", "patch_span",
           "window_fields"]


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


def interp_weights(positions: NDArray[np.integer], n: int, patch: int, j0: int = 0,
                   j1: int | None = None) -> NDArray[np.float64]:
    """Linear interpolation weights from patch centres to pixel positions along one axis.

    Parameters
    ----------
    positions : ndarray of int
        Pixel positions in ``[0, n)``.
    n : int
        Length of the frame along this axis.
    patch : int
        Patch side; patch ``j`` has its centre at ``j * patch + (patch - 1) / 2`` (the
        last, cut patch at most at ``n - 1``).
    j0, j1 : int
        The patches to return weights for (default all); callers must include every
        patch whose weight is non-zero at ``positions``.

    Returns
    -------
    ndarray, shape (len(positions), j1 - j0)
        Rows sum to one over all patches; pixels outside the outermost centres take the
        nearest centre's value.
    """
    m = -(-n // patch)
    j1 = m if j1 is None else j1
    pos = np.asarray(positions, dtype=np.float64)
    out = np.zeros((pos.size, j1 - j0))
    if m == 1:
        out[:, 0 - j0] = 1.0
        return out
    centres = np.minimum(np.arange(m) * patch + (patch - 1) / 2.0, n - 1)
    k = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, m - 2)
    t = np.clip((pos - centres[k]) / (centres[k + 1] - centres[k]), 0.0, 1.0)
    rows = np.arange(pos.size)
    for j, wt in ((k, 1.0 - t), (k + 1, t)):
        inside = (j >= j0) & (j < j1)
        np.add.at(out, (rows[inside], j[inside] - j0), wt[inside])
    return out


def interp_matrix(n: int, patch: int) -> NDArray[np.float64]:
    """:func:`interp_weights` for every pixel and every patch: shape (n, ceil(n / patch))."""
    return interp_weights(np.arange(n), n, patch)


#: Patch variance (relative to the squared global range) below which a patch counts as flat.
_FLAT = 1e-20


def local_weight(region: NDArray[np.floating], stats: FrameStats, config: NormConfig,
                 risk_map: NDArray[np.int8], lo: NDArray[np.float64] | None = None,
                 hi: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """How far each patch of a region moves from the global range towards its local one
    under ``adaptive`` (0: global range, 1: its own).

    High-risk patches 0.  Safe ones, by ``config.adaptive_weight``:

    * ``class``: 1 (the published rule).
    * ``signal``: the share of the patch's variance that is signal, ``1 - noise /
      variance`` (variance with ddof 1).
    * ``range`` (default): the share of the patch's local range (``hi - lo``, needed)
      that its noise does not explain, ``1 - 2 sqrt(2 ln n) noise_sd / (hi - lo)``:
      ``2 sqrt(2 ln n)`` noise standard deviations is about the range of ``n`` pixels of
      pure noise, so a patch whose minimum and maximum its noise sets keeps the global
      range, and only structure well above the noise gets its own.

    Both clipped to [0, 1]; noise from the 2x2 diagonal differences
    (:func:`asn2n_dask.risk.patch_noise_var`), all on the pixels relative to the global
    range; 0 for a flat patch (variance or range under 1e-20).

    Returns
    -------
    ndarray, shape of ``risk_map``, float64
    """
    safe = (np.asarray(risk_map) == SAFE).astype(np.float64)
    if config.adaptive_weight == "class":
        return safe
    patch = config.risk.patch
    x = (np.asarray(region, np.float64) - stats.lo) / stats.span
    noise = patch_noise_var(x, patch)
    if config.adaptive_weight == "range":
        if lo is None or hi is None:
            raise ValueError("the range weight needs the patches' local ranges")
        n = np.sum(~np.isnan(patch_view(x, patch)), axis=-1).astype(np.float64)
        spread = (np.asarray(hi) - np.asarray(lo)) / stats.span
        live = spread > _FLAT
        expect = 2.0 * np.sqrt(2.0 * np.log(np.maximum(n, 2.0))) * np.sqrt(noise)
        share = np.where(live, 1.0 - expect / np.where(live, spread, 1.0), 0.0)
    else:
        _, std, _ = patch_moments(x, patch)
        var = std * std
        live = var > _FLAT  # a flat patch (rounding aside) is all noise-free background: weight 0
        share = np.where(live, 1.0 - noise / np.where(live, var, 1.0), 0.0)
    return safe * np.clip(share, 0.0, 1.0)


def local_weight_torch(region: torch.Tensor, stats: FrameStats, config: NormConfig,
                       risk_map: torch.Tensor, lo: torch.Tensor | None = None,
                       hi: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`local_weight` in torch (float64 advised), on the region's device."""
    safe = (risk_map == SAFE).to(region.dtype)
    if config.adaptive_weight == "class":
        return safe
    patch = config.risk.patch
    x = (region - stats.lo) / stats.span
    noise = patch_noise_var_torch(x, patch)
    one, zero = torch.ones_like(noise), torch.zeros_like(noise)
    if config.adaptive_weight == "range":
        if lo is None or hi is None:
            raise ValueError("the range weight needs the patches' local ranges")
        h, w = x.shape
        ny, nx = -(-h // patch), -(-w // patch)
        rows = torch.clamp(h - torch.arange(ny, device=x.device) * patch, max=patch)
        cols = torch.clamp(w - torch.arange(nx, device=x.device) * patch, max=patch)
        n = (rows[:, None] * cols[None, :]).to(x.dtype)
        spread = (hi - lo) / stats.span
        live = spread > _FLAT
        expect = 2.0 * torch.sqrt(2.0 * torch.log(torch.clamp(n, min=2.0))) * torch.sqrt(noise)
        share = torch.where(live, 1.0 - expect / torch.where(live, spread, one), zero)
    else:
        _, std, _ = patch_moments_torch(x, patch)
        var = std * std
        live = var > _FLAT
        share = torch.where(live, 1.0 - noise / torch.where(live, var, one), zero)
    return safe * torch.clamp(share, 0.0, 1.0)


def patch_ranges(region: NDArray[np.floating], stats: FrameStats, config: NormConfig, mode: str,
                 risk_map: NDArray[np.int8] | None,
                 min_fraction: float | None = None) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-patch normalisation range (lo, hi) of a region aligned to the patch grid.

    Parameters
    ----------
    region : ndarray, shape (h, w)
        Pixels of whole patches (cut only at the frame's far edges), input units.
    stats : FrameStats
        The global range (channel statistics).
    config : NormConfig
    mode : {"global", "local", "adaptive"}
    risk_map : ndarray of int8, shape (ceil(h / patch), ceil(w / patch))
        Risk classes of the region's patches; needed for ``adaptive``.
    min_fraction : float, optional
        Narrowest local range as a fraction of the global one (default
        ``config.min_range_fraction``; see :func:`asn2n_dask.method.applied_mode`).

    Returns
    -------
    lo, hi : ndarray, shape (ceil(h / patch), ceil(w / patch)), input units
    """
    patch = config.risk.patch
    ny, nx = -(-region.shape[0] // patch), -(-region.shape[1] // patch)
    if mode == "global":
        return np.full((ny, nx), stats.lo), np.full((ny, nx), stats.lo + stats.span)
    v = patch_view(np.clip(np.asarray(region, np.float64), stats.lo, stats.hi), patch)
    lo = np.nanmin(v, axis=-1)
    hi = np.nanmax(v, axis=-1)
    min_span = (config.min_range_fraction if min_fraction is None else min_fraction) * stats.span
    short = (hi - lo) < min_span
    centre = 0.5 * (hi + lo)
    lo = np.where(short, np.maximum(stats.lo, np.minimum(centre - 0.5 * min_span, stats.hi - min_span)), lo)
    hi = np.where(short, lo + min_span, hi)
    if mode == "adaptive":
        if risk_map is None:
            raise ValueError("adaptive normalisation needs the risk map")
        wt = local_weight(region, stats, config, risk_map, lo, hi)
        lo = stats.lo + wt * (lo - stats.lo)
        hi = (stats.lo + stats.span) + wt * (hi - (stats.lo + stats.span))
    return lo, hi


def patch_ranges_torch(region: torch.Tensor, stats: FrameStats, config: NormConfig, mode: str,
                       risk_map: torch.Tensor | None,
                       min_fraction: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`patch_ranges` in torch (float64 advised), on the region's device."""
    patch = config.risk.patch
    h, w = region.shape
    ny, nx = -(-h // patch), -(-w // patch)
    dt, dev = region.dtype, region.device
    if mode == "global":
        return (torch.full((ny, nx), stats.lo, dtype=dt, device=dev),
                torch.full((ny, nx), stats.lo + stats.span, dtype=dt, device=dev))
    padded = torch.full((ny * patch, nx * patch), float("nan"), dtype=dt, device=dev)
    padded[:h, :w] = torch.clamp(region, stats.lo, stats.hi)
    v = padded.reshape(ny, patch, nx, patch).permute(0, 2, 1, 3).reshape(ny, nx, patch * patch)
    nan = torch.isnan(v)
    lo = torch.where(nan, torch.inf, v).amin(-1)
    hi = torch.where(nan, -torch.inf, v).amax(-1)
    min_span = (config.min_range_fraction if min_fraction is None else min_fraction) * stats.span
    short = (hi - lo) < min_span
    centre = 0.5 * (hi + lo)
    lo = torch.where(short, torch.clamp(torch.clamp(centre - 0.5 * min_span, max=stats.hi - min_span), min=stats.lo),
                     lo)
    hi = torch.where(short, lo + min_span, hi)
    if mode == "adaptive":
        if risk_map is None:
            raise ValueError("adaptive normalisation needs the risk map")
        wt = local_weight_torch(region, stats, config, risk_map, lo, hi)
        lo = stats.lo + wt * (lo - stats.lo)
        hi = (stats.lo + stats.span) + wt * (hi - (stats.lo + stats.span))
    return lo, hi


def fields_at(lo: NDArray[np.float64], hi: NDArray[np.float64], rows: NDArray[np.integer],
              cols: NDArray[np.integer], frame_shape: tuple[int, int], patch: int, first_patch: tuple[int, int],
              min_span: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Offset and scale fields at the pixels ``rows x cols`` of a frame.

    ``lo`` and ``hi`` hold the ranges of the patches ``first_patch + (i, j)``, which must
    include every patch adjacent to the requested pixels.

    Returns
    -------
    offset, scale : ndarray, shape (len(rows), len(cols)), input units, scale > 0
    """
    (p0, q0), (np_, nq) = first_patch, lo.shape
    wy = interp_weights(rows, frame_shape[0], patch, p0, p0 + np_)
    wx = interp_weights(cols, frame_shape[1], patch, q0, q0 + nq)
    offset = wy @ lo @ wx.T
    scale = np.maximum(wy @ hi @ wx.T - offset, min_span)
    return offset, scale


def norm_params(image: NDArray[np.number], *, config: NormConfig = NormConfig(),
                stats: FrameStats | None = None, risk: RiskReport | None = None,
                dataset_mode: str | None = None) -> NormParams:
    """Compute the normalisation transform of one whole frame.

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
    if config.mode in ("adaptive", "dataset") and risk is None and not (config.mode == "dataset" and dataset_mode):
        risk = assess_risk(img, thresholds=config.risk)
    mode, frac = applied_mode(config, dataset_mode, risk.high_risk_ratio if risk is not None else None)
    lo, hi = patch_ranges(img, stats, config, mode, risk.risk_map if risk is not None else None, frac)
    h, w = img.shape
    offset, scale = fields_at(lo, hi, np.arange(h), np.arange(w), (h, w), config.risk.patch, (0, 0),
                              frac * stats.span)
    return NormParams(offset=offset, scale=scale, mode=mode)


def normalize(image: NDArray[np.number], params: NormParams) -> NDArray[np.float32]:
    """Apply a transform: ``(image - offset) / scale``, float32, same shape (..., H, W)."""
    return ((np.asarray(image, dtype=np.float64) - params.offset) / params.scale).astype(np.float32)


def denormalize(values: NDArray[np.floating], params: NormParams) -> NDArray[np.float64]:
    """Invert a transform: ``values * scale + offset``, back in input units (float64)."""
    return np.asarray(values, dtype=np.float64) * params.scale + params.offset


def patch_span(n: int, r0: int, r1: int, patch: int) -> tuple[int, int]:
    """Risk patches ``[p0, p1)`` along an axis of ``n`` pixels that the normalisation
    fields at pixels ``r0..r1`` (inclusive, inside the axis) depend on: their own
    patches and the ones whose centres bracket them (the fields are interpolated
    between patch centres).  Arithmetic only: O(1) for an axis of any length."""
    p0, p1 = _patch_spans(n, np.asarray(r0, np.int64), np.asarray(r1, np.int64), patch)
    return int(p0), int(p1)


def _patch_spans(n: int, r0: NDArray[np.int64], r1: NDArray[np.int64],
                 patch: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """:func:`patch_span` for arrays of ``r0`` and ``r1``.

    Patch ``k``'s centre is ``min(k * patch + (patch - 1) / 2, n - 1)``; in halves of a
    pixel, ``2 k patch + patch - 1``, so every count below is integer arithmetic.
    """
    m = -(-n // patch)
    le = np.clip((2 * r0 - patch + 1) // (2 * patch) + 1, 0, m)  # centres <= r0
    le = np.where(r0 >= n - 1, m, le)
    lt = np.clip(-((-(2 * r1 - patch + 1)) // (2 * patch)), 0, m)  # centres < r1 (r1 <= n - 1)
    p0 = np.minimum(np.maximum(0, le - 1), r0 // patch)
    p1 = np.maximum(np.minimum(m - 1, lt), r1 // patch) + 1
    return p0, p1


def window_fields(img: torch.Tensor, frame_shape: tuple[int, int], patches: tuple[tuple[int, int], tuple[int, int]],
                  rows: NDArray[np.integer], cols: NDArray[np.integer], *, stats: ChannelStats,
                  norm: NormConfig, dataset_mode: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Risk classes and normalisation fields of a region of a frame: the one code path
    that training (patch sampling) and inference (tiles) both use.

    Parameters
    ----------
    img : Tensor, shape (h, w), float64
        The frame's pixels over the rows and columns of risk patches ``patches``
        (``[p0 * patch, min(p1 * patch, H))``), input units, on the working device.
    frame_shape : (int, int)
        The whole frame's (H, W).
    patches : ((int, int), (int, int))
        Risk patches ``[p0, p1)`` along Y and X that ``img`` covers (see :func:`patch_span`).
    rows, cols : ndarray of int
        Frame coordinates at which the fields are wanted.
    stats : ChannelStats
        Statistics of the frame's whole channel.

    Returns
    -------
    risk_map : Tensor, shape (p1 - p0, q1 - q0), int8
        Risk class of each patch of the region.
    offset, scale : Tensor, shape (len(rows), len(cols)), float64
        ``(x - offset) / scale`` is what the network sees; input units.
    """
    dev = img.device
    patch = norm.risk.patch
    risk_map = assess_risk_torch(img, stats.risk_scale(norm.risk), norm.risk)
    mode, frac = applied_mode(norm, dataset_mode, float((risk_map != 0).double().mean()))
    lo, hi = patch_ranges_torch(img, stats.norm, norm, mode, risk_map, frac)
    (p0, p1), (q0, q1) = patches
    wy = torch.from_numpy(interp_weights(np.asarray(rows), frame_shape[0], patch, p0, p1)).to(dev)
    wx = torch.from_numpy(interp_weights(np.asarray(cols), frame_shape[1], patch, q0, q1)).to(dev)
    offset = wy @ lo @ wx.T
    scale = torch.clamp(wy @ hi @ wx.T - offset, min=frac * stats.norm.span)
    return risk_map, offset, scale
