"""How each channel is processed: decided once, when a model is fitted, then only read.

The training options leave three things to the data of each colour channel:

* the risk estimator: ``"auto"`` becomes ``"reference"`` or ``"noise-aware"`` from the
  channel's pixel noise (:func:`asn2n_dask.risk.resolve_estimator`);
* the ``dataset`` rule's decision, ``global`` or ``local``, from the share of the
  channel's patches at risk (:func:`asn2n_dask.risk.dataset_rule`);
* the narrowest local scale, as a fraction of the global range, that the mode and that
  decision imply (``min_range_fraction``, or ``adaptive_floor`` for ``adaptive`` on data
  the dataset rule calls high-risk).

:func:`decide_method` takes these decisions at fit time into a :class:`ChannelMethod`;
the model keeps it (:meth:`asn2n_dask.checkpoint.Model.method`, the ``method`` of each
channel in ``model.json``) and denoising, the chunked pipeline and exported packages
read it instead of deciding again.  :func:`applied_mode` is the same rule for code that
normalises without a model (one frame, a window): there the decision comes from the
image itself.  :func:`normalisation_range` chooses the range data is normalised on when
a model denoises it: the model's training range, or the data's own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from .config import NormConfig, NormMode, NormRange, parse_choice
from .errors import ConfigError
from .risk import FrameStats, dataset_rule, resolve_estimator
from .stats import ChannelStats

log = logging.getLogger(__name__)

__all__ = ["ChannelMethod", "ResolvedEstimator", "DatasetMode", "decide_method", "channel_norm", "applied_mode",
           "normalisation_range", "ranges_agree",
           "denoising_stats"]

#: A risk estimator once ``"auto"`` is resolved.
ResolvedEstimator = Literal["reference", "noise-aware"]
#: The ``dataset`` rule's decision.
DatasetMode = Literal["global", "local"]


def applied_mode(norm: NormConfig, dataset_mode: str | None,
                 high_risk_ratio: float | None = None) -> tuple[str, float]:
    """The mode applied and the narrowest local scale it allows.

    Parameters
    ----------
    norm : NormConfig
        The normalisation options.
    dataset_mode : {"global", "local"}, optional
        The channel's dataset decision (a model's, :attr:`ChannelMethod.dataset_mode`).
    high_risk_ratio : float, optional
        The image's high-risk share: decides ``dataset`` mode when ``dataset_mode`` is
        not given.

    Returns
    -------
    mode : str
        ``norm.mode``, with ``dataset`` replaced by its decision.
    range_fraction : float
        The narrowest local scale, as a fraction of the global range:
        ``max(min_range_fraction, adaptive_floor)`` for ``adaptive`` on data decided
        ``global``, else ``min_range_fraction``.

    Examples
    --------
    >>> applied_mode(NormConfig(mode="dataset"), None, 0.5)
    ('global', 0.05)
    >>> applied_mode(NormConfig(mode="adaptive"), "global")
    ('adaptive', 1.0)
    """
    mode: str = norm.mode
    if mode == "dataset":
        if dataset_mode is not None:
            mode = dataset_mode
        elif high_risk_ratio is None:
            raise ValueError("dataset mode needs the dataset decision or the image's high-risk ratio")
        else:
            mode = dataset_rule(high_risk_ratio, norm.risk)
    if mode == "adaptive" and dataset_mode == "global":
        return mode, max(norm.min_range_fraction, norm.adaptive_floor)
    return mode, norm.min_range_fraction


def channel_norm(norm: NormConfig, noise_sd: Callable[[], float]) -> tuple[NormConfig, float | None]:
    """``norm`` with an ``"auto"`` risk estimator resolved for one channel.

    ``noise_sd()`` measures the channel's pixel noise on its reference risk scale
    (:func:`asn2n_dask.sampling.channel_noise`); it is called only for ``"auto"``.

    Returns
    -------
    norm : NormConfig
        With ``risk.estimator`` ``"reference"`` or ``"noise-aware"``.
    noise : float or None
        The noise that decided it; None when the estimator was set.
    """
    if norm.risk.estimator != "auto":
        return norm, None
    noise = float(noise_sd())
    return replace(norm, risk=resolve_estimator(norm.risk, noise)), noise


def _number(v: Any, high: float) -> bool:
    """Whether ``v`` is a finite real number in [0, high] (not a bool)."""
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= high
    except OverflowError:  # an integer too large for a float
        return False


@dataclass(frozen=True)
class ChannelMethod:
    """How one channel is processed, decided once from the training options and its data.

    Attributes
    ----------
    risk_estimator : {"reference", "noise-aware"}
        The risk estimator (``"auto"`` resolved).
    norm_mode : {"adaptive", "local", "global", "dataset"}
        The normalisation mode, as configured.
    dataset_mode : {"global", "local"}
        The dataset rule's decision on the channel's data (applied by ``dataset``, and
        by ``adaptive`` through ``range_fraction``).
    range_fraction : float
        The narrowest local scale, as a fraction of the global range (see
        :func:`applied_mode`).
    stats : FrameStats
        The channel's normalisation range in the training data, input units.
    high_risk_ratio : float
        The share of the channel's patches at risk, which decided ``dataset_mode``.
    noise_sd : float or None
        The pixel noise on the reference risk scale that resolved ``"auto"``; None when
        the estimator was set.
    spatial_dims : int
        Spatial axes the network sees at once: 2, frames (Y, X); 3, volumes (Z, Y, X, or
        T, Y, X for a stack seen as one volume).  Volumes are normalised on one global
        scale, the channel's percentile range (``norm_mode`` and ``dataset_mode``
        ``global``, no risk classes).
    """

    risk_estimator: ResolvedEstimator
    norm_mode: NormMode
    dataset_mode: DatasetMode
    range_fraction: float
    stats: FrameStats
    high_risk_ratio: float = 0.0
    noise_sd: float | None = None
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "risk_estimator",
                           parse_choice(self.risk_estimator, ResolvedEstimator, "risk estimator"))
        object.__setattr__(self, "norm_mode", parse_choice(self.norm_mode, NormMode, "normalisation mode"))
        object.__setattr__(self, "dataset_mode", parse_choice(self.dataset_mode, DatasetMode, "dataset mode"))
        for name, high in (("range_fraction", 1.0), ("high_risk_ratio", 1.0), ("noise_sd", math.inf)):
            v = getattr(self, name)
            if not (v is None and name == "noise_sd" or _number(v, high)):
                raise ConfigError(f"{name} must be a number in [0, {high}]; got {v!r:.40}.")
        if not isinstance(self.stats, FrameStats):
            raise ConfigError(f"stats must be frame statistics; got {self.stats!r:.40}.")
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise ConfigError(f"spatial_dims must be 2 (frames) or 3 (volumes); got {self.spatial_dims!r:.40}.")
        if self.spatial_dims == 3 and (self.norm_mode, self.dataset_mode) != ("global", "global"):
            raise ConfigError(f"spatial_dims 3 (volumes) takes one global scale, norm_mode and dataset_mode "
                              f"global; got {self.norm_mode} and {self.dataset_mode}.")

    @classmethod
    def of(cls, norm: NormConfig, stats: FrameStats, *, risk_estimator: str | None, dataset_mode: str,
           high_risk_ratio: float = 0.0, noise_sd: float | None = None, spatial_dims: int = 2) -> ChannelMethod:
        """The method of a channel from decisions already taken, with what ``norm``
        implies (``norm_mode``, ``range_fraction``); ``spatial_dims`` 3 for a 3-D
        network's channel.

        ``risk_estimator=None``: not recorded (models saved before the choice was kept
        per channel), which means the configured estimator, ``"reference"`` for ``"auto"``.
        """
        if risk_estimator is None:
            risk_estimator = norm.risk.estimator if norm.risk.estimator != "auto" else "reference"
        _, fraction = applied_mode(norm, dataset_mode)
        return cls(risk_estimator=risk_estimator, norm_mode=norm.mode, dataset_mode=dataset_mode,  # type: ignore[arg-type]
                   range_fraction=fraction, stats=stats, high_risk_ratio=high_risk_ratio, noise_sd=noise_sd,
                   spatial_dims=spatial_dims)

    @property
    def mode(self) -> str:
        """The mode applied: ``norm_mode``, with ``dataset`` replaced by ``dataset_mode``."""
        return self.dataset_mode if self.norm_mode == "dataset" else self.norm_mode

    def norm(self, base: NormConfig) -> NormConfig:
        """``base`` (the training options' normalisation) with this channel's risk estimator."""
        if base.mode != self.norm_mode:
            raise ValueError(f"the channel was decided for normalisation mode {self.norm_mode}, not {base.mode}")
        return replace(base, risk=replace(base.risk, estimator=self.risk_estimator))

    def to_dict(self) -> dict[str, Any]:
        return {"risk_estimator": self.risk_estimator, "norm_mode": self.norm_mode, "dataset_mode": self.dataset_mode,
                "range_fraction": self.range_fraction, "stats": self.stats.to_dict(),
                "high_risk_ratio": self.high_risk_ratio, "noise_sd": self.noise_sd, "spatial_dims": self.spatial_dims}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelMethod:
        """Read :meth:`to_dict`'s output.

        Raises
        ------
        ConfigError
            On an unknown or missing key, or a value of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a channel method must be an object; got {type(data).__name__}.")
        known = {"risk_estimator", "norm_mode", "dataset_mode", "range_fraction", "stats", "high_risk_ratio",
                 "noise_sd", "spatial_dims"}
        unknown = sorted(set(data) - known)
        missing = sorted({"risk_estimator", "norm_mode", "dataset_mode", "range_fraction", "stats"} - set(data))
        if unknown or missing:
            raise ConfigError(f"a channel method has {'unknown' if unknown else 'no'} key(s) "
                              f"{', '.join(unknown or missing)}.")
        stats = data["stats"]
        if not isinstance(stats, dict) or set(stats) != {"lo", "hi"} or not all(
                isinstance(stats[k], (int, float)) and not isinstance(stats[k], bool) for k in ("lo", "hi")):
            raise ConfigError(f"a channel method's stats must be {{lo, hi}} numbers; got {stats!r:.60}.")
        return cls(**{**data, "stats": FrameStats.from_dict(stats)})


def decide_method(norm: NormConfig, stats: FrameStats, *, noise_sd: Callable[[], float],
                  high_risk_ratio: Callable[[NormConfig], float]) -> ChannelMethod:
    """Decide how one channel is processed, once, from the options and its data.

    Parameters
    ----------
    norm : NormConfig
        The training options' normalisation (its estimator may be ``"auto"``).
    stats : FrameStats
        The channel's normalisation range, input units.
    noise_sd : callable
        ``noise_sd()``: the channel's pixel noise on its reference risk scale
        (:func:`asn2n_dask.sampling.channel_noise`).  Called only for ``"auto"``.
    high_risk_ratio : callable
        ``high_risk_ratio(norm)``: the share of the channel's patches at risk,
        classified with ``norm`` (the risk estimator resolved).

    Returns
    -------
    ChannelMethod

    Examples
    --------
    >>> m = decide_method(NormConfig(mode="adaptive"), FrameStats(100.0, 200.0), noise_sd=lambda: 0.09,
    ...                   high_risk_ratio=lambda norm: 0.5)
    >>> m.risk_estimator, m.dataset_mode, m.range_fraction
    ('noise-aware', 'global', 1.0)
    """
    resolved, noise = channel_norm(norm, noise_sd)
    ratio = float(high_risk_ratio(resolved))
    return ChannelMethod.of(norm, stats, risk_estimator=resolved.risk.estimator,
                            dataset_mode=dataset_rule(ratio, norm.risk), high_risk_ratio=ratio, noise_sd=noise)


#: Two ranges agree when their overlap covers at least this share of the narrower one.
RANGE_AGREEMENT = 0.5


def ranges_agree(a: FrameStats, b: FrameStats) -> bool:
    """Whether two intensity ranges overlap by at least :data:`RANGE_AGREEMENT` of the
    narrower one: data from the same instrument and settings as the training data
    (a brighter or dimmer field, a minimum an ADU away) agree; data with another camera
    offset or gain, or in other units, do not."""
    if (a.lo, a.hi) == (b.lo, b.hi):  # the same range, a constant image's empty one included
        return True
    overlap = min(a.hi, b.hi) - max(a.lo, b.lo)
    return overlap >= RANGE_AGREEMENT * min(a.span, b.span)


def normalisation_range(trained: FrameStats, data: FrameStats, rule: NormRange) -> tuple[FrameStats, bool]:
    """The range a channel is normalised on when a model denoises new data.

    Parameters
    ----------
    trained : FrameStats
        The channel's range in the model's training data (:attr:`ChannelMethod.stats`).
    data : FrameStats
        The same percentiles of the data being denoised.
    rule : {"auto", "model", "data"}
        ``model``: ``trained``; ``data``: ``data``; ``auto``: ``trained`` when the two
        :func:`ranges_agree`, else ``data``.

    Returns
    -------
    range : FrameStats
    unlike : bool
        True when ``auto`` fell back to ``data`` because the ranges do not agree: the
        data is unlike the training data, which the caller should tell the user.

    Notes
    -----
    A network learns intensities in the units its training data was normalised to.
    The default range is the minimum to the 99.99th percentile, extreme statistics that
    move by an ADU or two between frames of the same low-photon acquisition; the p5
    benchmark model lost 2.7 dB on a frame whose minimum was 91 instead of its training
    data's 90 when that frame was normalised on its own range, and nothing on the
    model's.  Normalising on the training range keeps the intensities the network sees
    where they were in training, as CAREamics does with its training mean and
    standard deviation.
    """
    parse_choice(rule, NormRange, "normalisation range")
    if rule == "model":
        return trained, False
    if rule == "data":
        return data, False
    agree = ranges_agree(trained, data)
    return (trained if agree else data), not agree


def denoising_stats(methods: Sequence[ChannelMethod], stats: Sequence[ChannelStats], rule: NormRange, *,
                    names: Sequence[str] | None = None, warn: bool = True) -> list[ChannelStats]:
    """Each channel's statistics with the normalisation range it is denoised on.

    Parameters
    ----------
    methods : sequence of ChannelMethod
        The method of the network that denoises each channel (its training range).
    stats : sequence of ChannelStats
        The statistics of the data of each channel.
    rule : {"auto", "model", "data"}
        :func:`normalisation_range`'s rule.
    names : sequence of str, optional
        Channel names for the warning (default: their positions).
    warn : bool
        Log a warning for each channel whose range ``auto`` took from the data because
        it does not agree with the training range.

    Returns
    -------
    list of ChannelStats
        ``stats`` with ``norm`` replaced; the risk scale and everything else stay the data's.
    """
    if len(methods) != len(stats):
        raise ValueError(f"{len(stats)} channel statistics for {len(methods)} networks")
    out = []
    for c, (m, s) in enumerate(zip(methods, stats)):
        chosen, unlike = normalisation_range(m.stats, s.norm, rule)
        if unlike and warn:
            name = names[c] if names is not None else str(c)
            log.warning("channel %s ranges %.6g to %.6g, unlike the model's training data (%.6g to %.6g); it is "
                        "normalised on its own range, and the network sees intensities it was not trained on. "
                        "Check that the model fits this data (same instrument and settings), or choose "
                        "with 'asn2n denoise --norm-range model' or 'data' (InferConfig.norm_range).",
                        name, s.norm.lo, s.norm.hi, m.stats.lo, m.stats.hi)
        out.append(s if chosen == s.norm else replace(s, norm=chosen))
    return out
