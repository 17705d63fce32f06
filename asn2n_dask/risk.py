"""Risk assessment: which patches of a frame patch-wise normalisation would harm.

The frame is clipped at a high percentile and min-max scaled to [0, 1]; every
non-overlapping patch of a grid anchored at the frame origin gets its mean, standard
deviation and unbiased skewness, and from them a class: 0 safe, 1 weak background,
2 sparse bright signal.  Edge patches that are cut by the frame border use the pixels
they have.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from .config import RiskThresholds

__all__ = [
    "SAFE",
    "WEAK_BACKGROUND",
    "SPARSE_BRIGHT",
    "FrameStats",
    "frame_stats",
    "patch_view",
    "patch_moments",
    "classify",
    "RiskReport",
    "assess_risk",
    "dataset_decision",
    "dataset_rule",
    "patch_moments_torch",
    "classify_torch",
    "assess_risk_torch",
    "patch_noise_var",
    "patch_noise_var_torch",
    "noise_level",
    "resolve_estimator",
]

SAFE, WEAK_BACKGROUND, SPARSE_BRIGHT = 0, 1, 2


@dataclass(frozen=True)
class FrameStats:
    """Intensity range of a frame (or of a whole channel), in input units.

    ``lo`` maps to 0 and ``hi`` to 1 in the risk scale and in global normalisation.
    """

    lo: float
    hi: float

    @property
    def span(self) -> float:
        """``hi - lo``, never narrower than float32 resolves at these values (relative:
        data in units of 1e-9 keeps its own scale)."""
        return max(self.hi - self.lo, float(np.finfo(np.float32).eps) * max(abs(self.hi), abs(self.lo), 1e-30))

    def to_dict(self) -> dict[str, float]:
        return {"lo": self.lo, "hi": self.hi}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameStats:
        return cls(lo=float(d["lo"]), hi=float(d["hi"]))


def frame_stats(image: NDArray[np.number], *, low: float = 0.0, high: float = 99.99) -> FrameStats:
    """Percentile range of an image (any shape), in its own units.

    Parameters
    ----------
    image : ndarray
        Pixel values; all planes of a stack count together.
    low, high : float
        Percentiles mapped to 0 and 1 (0 is the minimum).
    """
    arr = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(arr, [low, high])
    if hi <= lo:  # almost every pixel has one value: keep the few others in range (as channel_stats does)
        hi = float(arr.max())
    return FrameStats(lo=float(lo), hi=float(hi))


def patch_view(image: NDArray[np.floating], patch: int) -> NDArray[np.float64]:
    """View a frame as a grid of ``patch x patch`` blocks anchored at the origin.

    Returns
    -------
    ndarray, shape (nY, nX, patch * patch), float64
        Edge blocks are completed with NaN.
    """
    h, w = image.shape
    ny, nx = -(-h // patch), -(-w // patch)
    padded = np.full((ny * patch, nx * patch), np.nan)
    padded[:h, :w] = image
    return padded.reshape(ny, patch, nx, patch).transpose(0, 2, 1, 3).reshape(ny, nx, patch * patch)


def patch_moments(scaled: NDArray[np.floating], patch: int) -> tuple[NDArray[np.float64], ...]:
    """Mean, standard deviation (ddof 1) and unbiased skewness of every patch.

    Parameters
    ----------
    scaled : ndarray, shape (H, W)
        Frame in the risk scale ([0, 1]).
    patch : int
        Patch side in pixels.

    Returns
    -------
    mean, std, skew : ndarray, shape (ceil(H / patch), ceil(W / patch))
        Skewness is the adjusted Fisher-Pearson coefficient ``G1`` (as MATLAB's
        ``skewness(x, 0)``); 0 for flat patches or patches of fewer than 3 pixels.
    """
    v = patch_view(scaled, patch)
    n = np.sum(~np.isnan(v), axis=-1).astype(np.float64)
    mean = np.nansum(v, axis=-1) / n
    d = v - mean[..., None]
    m2 = np.nansum(d * d, axis=-1) / n
    m3 = np.nansum(d * d * d, axis=-1) / n
    std = np.sqrt(m2 * n / np.maximum(n - 1, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        g1 = m3 / m2**1.5
        skew = g1 * np.sqrt(n * (n - 1)) / (n - 2)
    skew = np.where((m2 > 1e-20) & (n >= 3), skew, 0.0)
    return mean, std, skew


def patch_noise_var(scaled: NDArray[np.floating], patch: int) -> NDArray[np.float64]:
    """Noise variance of every patch, from the diagonal differences of its 2x2 blocks.

    ``(x00 + x11 - x01 - x10) / 2`` cancels any signal that is locally linear and keeps
    the variance of independent pixel noise; its mean square over a patch's complete
    2x2 blocks estimates that variance (0 for a patch with no complete block).

    Returns
    -------
    ndarray, shape (ceil(H / patch), ceil(W / patch))
    """
    v = patch_view(np.asarray(scaled, np.float64), patch)
    ny, nx = v.shape[:2]
    e = patch // 2 * 2
    q = v.reshape(ny, nx, patch, patch)[:, :, :e, :e]
    d = 0.5 * (q[:, :, 0::2, 0::2] + q[:, :, 1::2, 1::2] - q[:, :, 0::2, 1::2] - q[:, :, 1::2, 0::2])
    d2 = (d * d).reshape(ny, nx, -1)
    n = np.sum(~np.isnan(d2), axis=-1)
    return np.where(n > 0, np.nansum(d2, axis=-1) / np.maximum(n, 1), 0.0)


def noise_level(frames: Iterable[NDArray[np.number]], patch: int, scale: FrameStats,
                quantile: float = 0.25) -> float:
    """Pixel-noise standard deviation of the quieter patches of frames, on the reference
    [0, 1] risk scale.

    Parameters
    ----------
    frames : iterable of ndarray (H, W)
        Frames (or windows of frames) of one channel, in input units.
    patch : int
        Risk patch side in pixels.
    scale : FrameStats
        The reference risk scale (minimum to clip percentile) of the channel, or of the
        one frame given.
    quantile : float
        Which patches speak: the default, the lower quartile, is the noise of the
        quieter patches (background, where the weak-background test applies); fine
        texture in bright patches, which the diagonal differences cannot tell from
        noise, does not move it.

    Returns
    -------
    float
        The square root of the ``quantile`` quantile, over all patches of all frames,
        of the noise variance from the 2x2 diagonal differences
        (:func:`patch_noise_var`); 0 for no frames.
    """
    variances = [patch_noise_var((np.asarray(f, dtype=np.float64) - scale.lo) / scale.span, patch).ravel()
                 for f in frames]
    return float(np.sqrt(np.quantile(np.concatenate(variances), quantile))) if variances else 0.0


def resolve_estimator(thresholds: RiskThresholds, noise_sd: float) -> RiskThresholds:
    """The thresholds with ``estimator="auto"`` replaced by the estimator the data needs.

    ``"noise-aware"`` when the pixel noise (``noise_sd``, from :func:`noise_level`)
    exceeds ``bg_std``: no patch of such data can pass the reference rule's
    weak-background test, whatever it shows.  ``"reference"`` otherwise.  Thresholds
    with a set estimator are returned unchanged.

    Examples
    --------
    >>> from asn2n_dask.config import RiskThresholds
    >>> resolve_estimator(RiskThresholds(), 0.09).estimator
    'noise-aware'
    >>> resolve_estimator(RiskThresholds(), 0.002).estimator
    'reference'
    """
    if thresholds.estimator != "auto":
        return thresholds
    return replace(thresholds, estimator="noise-aware" if noise_sd > thresholds.bg_std else "reference")


def classify(mean: NDArray[np.floating], std: NDArray[np.floating], skew: NDArray[np.floating],
             thresholds: RiskThresholds = RiskThresholds()) -> NDArray[np.int8]:
    """Risk class of each patch from its moments (0 safe, 1 weak background, 2 sparse bright)."""
    t = thresholds
    weak = ((mean <= t.bg_mean) & (std <= t.bg_std)) | ((skew <= t.bg_skew) & (std <= t.bg_std_skew))
    sparse = (mean <= t.sb_mean) & (std >= t.sb_std) & (skew >= t.sb_skew)
    out = np.zeros(mean.shape, np.int8)
    out[sparse] = SPARSE_BRIGHT
    out[weak] = WEAK_BACKGROUND
    return out


@dataclass(frozen=True)
class RiskReport:
    """Risk of one frame.

    Attributes
    ----------
    risk_map : ndarray, shape (nY, nX), int8
        Class per patch (0 safe, 1 weak background, 2 sparse bright); an
        ``xarray.DataArray`` on the patch grid when the frame was one
        (:func:`asn2n_dask.api.assess_risk`).
    stats : FrameStats
        The range that defined the [0, 1] risk scale.
    patch : int
        Patch side in pixels.
    """

    risk_map: NDArray[np.int8]
    stats: FrameStats
    patch: int

    @property
    def n_patches(self) -> int:
        return int(self.risk_map.size)

    @property
    def weak_ratio(self) -> float:
        return float(np.mean(self.risk_map == WEAK_BACKGROUND))

    @property
    def sparse_ratio(self) -> float:
        return float(np.mean(self.risk_map == SPARSE_BRIGHT))

    @property
    def high_risk_ratio(self) -> float:
        """Fraction of patches that are not safe."""
        return float(np.mean(self.risk_map != SAFE))

    def pixel_map(self, shape: tuple[int, int]) -> NDArray[np.int8]:
        """The risk map expanded to pixels, shape ``shape``."""
        p = self.patch
        full = np.repeat(np.repeat(np.asarray(self.risk_map), p, axis=0), p, axis=1)
        return full[: shape[0], : shape[1]]

    def summary(self) -> dict[str, Any]:
        return {
            "patches": self.n_patches,
            "weak_background": self.weak_ratio,
            "sparse_bright": self.sparse_ratio,
            "high_risk": self.high_risk_ratio,
        }


def assess_risk(image: NDArray[np.number], *, thresholds: RiskThresholds = RiskThresholds(),
                stats: FrameStats | None = None) -> RiskReport:
    """Classify every patch of a 2-D frame by the harm local normalisation would do.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        One frame in input units.
    thresholds : RiskThresholds
        Patch size, clip percentile and class thresholds.  The ``"auto"`` estimator is
        resolved from this frame alone (:func:`resolve_estimator`); pass thresholds
        resolved for the whole channel to classify its frames alike.
    stats : FrameStats, optional
        The range defining the [0, 1] scale.  By default the frame's minimum (or, for
        the noise-aware estimator, its ``floor_percentile`` percentile) and its
        ``thresholds.clip_percentile`` percentile; pass channel-wide statistics to make
        the result independent of how a dataset is cut into pieces.

    Returns
    -------
    RiskReport

    Examples
    --------
    >>> import numpy as np
    >>> r = assess_risk(np.random.default_rng(0).normal(100, 1, (128, 128)))
    >>> r.risk_map.shape
    (2, 2)
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"assess_risk takes one 2-D frame; got shape {img.shape}")
    if thresholds.estimator == "auto":
        scale = stats if stats is not None else frame_stats(img, low=0.0, high=thresholds.clip_percentile)
        thresholds = resolve_estimator(thresholds, noise_level([img], thresholds.patch, scale))
    aware = thresholds.estimator == "noise-aware"
    if stats is None:
        stats = frame_stats(img, low=thresholds.floor_percentile if aware else 0.0, high=thresholds.clip_percentile)
    scaled = (np.clip(img, stats.lo, stats.hi) - stats.lo) / stats.span
    mean, std, skew = patch_moments(scaled, thresholds.patch)
    if aware:
        noise = patch_noise_var((img - stats.lo) / stats.span, thresholds.patch)
        std = np.sqrt(np.maximum(std * std - noise, 0.0))
    return RiskReport(risk_map=classify(mean, std, skew, thresholds), stats=stats, patch=thresholds.patch)


def dataset_decision(reports: list[RiskReport], thresholds: RiskThresholds = RiskThresholds()) -> str:
    """The one normalisation the ``dataset`` mode applies: ``global`` or ``local``.

    ``global`` when more than ``thresholds.dataset_ratio`` of all patches of all frames
    are high-risk, as the published tool decides.
    """
    total = sum(r.n_patches for r in reports)
    risky = sum(int(np.sum(r.risk_map != SAFE)) for r in reports)
    return dataset_rule(risky / total, thresholds) if total else "local"


def dataset_rule(high_risk_ratio: float, thresholds: RiskThresholds = RiskThresholds()) -> str:
    """The dataset rule: ``global`` when more than ``thresholds.dataset_ratio`` of the
    patches are high-risk (``high_risk_ratio``), else ``local``.

    Examples
    --------
    >>> dataset_rule(0.5), dataset_rule(0.1)
    ('global', 'local')
    """
    return "global" if high_risk_ratio > thresholds.dataset_ratio else "local"


def patch_moments_torch(scaled: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`patch_moments` in torch (any device, float64 advised), same definitions."""
    h, w = scaled.shape
    ny, nx = -(-h // patch), -(-w // patch)
    padded = torch.full((ny * patch, nx * patch), float("nan"), dtype=scaled.dtype, device=scaled.device)
    padded[:h, :w] = scaled
    v = padded.reshape(ny, patch, nx, patch).permute(0, 2, 1, 3).reshape(ny, nx, patch * patch)
    n = (~torch.isnan(v)).sum(-1).to(scaled.dtype)
    mean = torch.nansum(v, dim=-1) / n
    d = v - mean[..., None]
    m2 = torch.nansum(d * d, dim=-1) / n
    m3 = torch.nansum(d * d * d, dim=-1) / n
    std = torch.sqrt(m2 * n / torch.clamp(n - 1, min=1))
    skew = m3 / m2**1.5 * torch.sqrt(n * (n - 1)) / (n - 2)
    skew = torch.where((m2 > 1e-20) & (n >= 3), skew, torch.zeros_like(skew))
    return mean, std, skew


def classify_torch(mean: torch.Tensor, std: torch.Tensor, skew: torch.Tensor,
                   thresholds: RiskThresholds = RiskThresholds()) -> torch.Tensor:
    """:func:`classify` in torch: int8 classes per patch."""
    t = thresholds
    weak = ((mean <= t.bg_mean) & (std <= t.bg_std)) | ((skew <= t.bg_skew) & (std <= t.bg_std_skew))
    sparse = (mean <= t.sb_mean) & (std >= t.sb_std) & (skew >= t.sb_skew)
    out = torch.where(sparse, SPARSE_BRIGHT, SAFE)
    return torch.where(weak, WEAK_BACKGROUND, out).to(torch.int8)


def assess_risk_torch(image: torch.Tensor, stats: FrameStats,
                      thresholds: RiskThresholds = RiskThresholds()) -> torch.Tensor:
    """Risk classes of every patch of a 2-D tensor, as :func:`assess_risk` (int8, on its device).

    ``thresholds.estimator`` must be resolved (:func:`resolve_estimator`): a piece of a
    frame cannot choose it for the whole channel.
    """
    if thresholds.estimator == "auto":
        raise ValueError("resolve the risk estimator for the channel first (risk.resolve_estimator)")
    scaled = (torch.clamp(image, stats.lo, stats.hi) - stats.lo) / stats.span
    mean, std, skew = patch_moments_torch(scaled, thresholds.patch)
    if thresholds.estimator == "noise-aware":
        noise = patch_noise_var_torch((image - stats.lo) / stats.span, thresholds.patch)
        std = torch.sqrt(torch.clamp(std * std - noise, min=0.0))
    return classify_torch(mean, std, skew, thresholds)


def patch_noise_var_torch(scaled: torch.Tensor, patch: int) -> torch.Tensor:
    """:func:`patch_noise_var` in torch."""
    h, w = scaled.shape
    ny, nx = -(-h // patch), -(-w // patch)
    padded = torch.full((ny * patch, nx * patch), float("nan"), dtype=scaled.dtype, device=scaled.device)
    padded[:h, :w] = scaled
    e = patch // 2 * 2
    q = padded.reshape(ny, patch, nx, patch).permute(0, 2, 1, 3)[:, :, :e, :e]
    d = 0.5 * (q[:, :, 0::2, 0::2] + q[:, :, 1::2, 1::2] - q[:, :, 0::2, 1::2] - q[:, :, 1::2, 0::2])
    d2 = (d * d).reshape(ny, nx, -1)
    n = (~torch.isnan(d2)).sum(-1)
    return torch.where(n > 0, torch.nansum(d2, dim=-1) / torch.clamp(n, min=1), torch.zeros_like(d2[..., 0]))
