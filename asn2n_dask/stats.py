"""Channel statistics: one reduction over all the data of a channel, numpy or dask.

The normalisation range and the risk scale of every frame come from statistics of the
whole channel (all its time points and planes), computed once and handed to every
chunk, so that the result at a pixel never depends on how the data was cut into
pieces.  The same functions run on an in-memory numpy array and, lazily, on a dask
array of any size: a minimum/maximum pass, then one histogram pass from which the
percentiles are read.  For integer data whose range fits in :data:`HIST_BINS` bins
(all 8- and 16-bit images) the bins are single integer values and the percentiles
equal ``numpy.percentile``'s; otherwise they are exact to one bin width
(``(max - min) / HIST_BINS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .config import NormConfig
from .risk import FrameStats

__all__ = ["HIST_BINS", "ChannelStats", "channel_stats", "bin_edges", "percentiles_from_hist"]

#: Histogram bins of the percentile pass.
HIST_BINS = 1 << 16


@dataclass(frozen=True)
class ChannelStats:
    """What every chunk of one channel needs to know about the whole channel.

    Attributes
    ----------
    norm : FrameStats
        Normalisation range (``NormConfig`` low and high percentiles), input units.
    risk : FrameStats
        Risk scale: the minimum and the ``clip_percentile`` percentile.
    minimum, maximum : float
        Data range.
    count : int
        Pixels reduced.
    """

    norm: FrameStats
    risk: FrameStats
    minimum: float
    maximum: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm.to_dict(), "risk": self.risk.to_dict(), "minimum": self.minimum,
                "maximum": self.maximum, "count": self.count}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelStats:
        return cls(norm=FrameStats.from_dict(d["norm"]), risk=FrameStats.from_dict(d["risk"]),
                   minimum=float(d["minimum"]), maximum=float(d["maximum"]), count=int(d["count"]))


def _integer_bins(lo: float, hi: float, dtype: Any) -> bool:
    return np.dtype(dtype).kind in "uib" and hi - lo + 1 <= HIST_BINS


def bin_edges(lo: float, hi: float, dtype: Any) -> NDArray[np.float64]:
    """Histogram edges for data in ``[lo, hi]``: one bin per integer when that fits."""
    if _integer_bins(lo, hi, dtype):
        return np.arange(lo, hi + 2, dtype=np.float64) - 0.5
    if hi <= lo:
        return np.array([lo - 0.5, hi + 0.5])
    return np.linspace(lo, hi, HIST_BINS + 1)


def percentiles_from_hist(counts: NDArray[np.integer], edges: NDArray[np.float64], qs: list[float],
                          integer_bins: bool) -> list[float]:
    """Percentiles (numpy's ``linear`` definition) read off a histogram.

    With one bin per integer value the result is exact; otherwise values are placed
    evenly inside their bin.
    """
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = []
    for q in qs:
        pos = (n - 1) * q / 100.0
        lo_i, hi_i = int(np.floor(pos)), int(np.ceil(pos))
        vals = []
        for k in (lo_i, hi_i):
            b = int(np.searchsorted(cum, k, side="right"))
            if integer_bins:
                vals.append(0.5 * (edges[b] + edges[b + 1]))
            else:
                before = cum[b - 1] if b else 0
                frac = (k - before + 0.5) / counts[b]
                vals.append(edges[b] + frac * (edges[b + 1] - edges[b]))
        out.append(float(vals[0] + (pos - lo_i) * (vals[1] - vals[0])))
    return out


def channel_stats(planes: Any, norm: NormConfig = NormConfig()) -> list[ChannelStats]:
    """Statistics of each channel of a (C, ...) numpy or dask array.

    Parameters
    ----------
    planes : ndarray or dask array, shape (C, ...)
        Channel first; all other dimensions reduce together.  Must be finite.
    norm : NormConfig
        Which percentiles the normalisation and the risk scale use.

    Returns
    -------
    list of ChannelStats, one per channel

    Examples
    --------
    >>> import numpy as np
    >>> s = channel_stats(np.arange(101, dtype=np.uint16).reshape(1, 101))
    >>> s[0].norm.lo, s[0].risk.hi
    (0.0, 99.99)
    """
    is_dask = type(planes).__module__.startswith("dask")
    xp: Any
    if is_dask:
        import dask
        import dask.array as xp
    else:
        xp = np
    nc = planes.shape[0]
    rest = tuple(range(1, planes.ndim))
    mins, maxs = planes.min(axis=rest), planes.max(axis=rest)
    if is_dask:
        mins, maxs = dask.compute(mins, maxs)
    hists = []
    edges_all = []
    for c in range(nc):
        lo, hi = float(mins[c]), float(maxs[c])
        edges = bin_edges(lo, hi, planes.dtype)
        edges_all.append(edges)
        hists.append(xp.histogram(planes[c], bins=edges)[0])
    if is_dask:
        hists = list(dask.compute(*hists))
    out = []
    qs = [norm.low_percentile, norm.high_percentile, norm.risk.clip_percentile]
    for c in range(nc):
        mn, mx = float(mins[c]), float(maxs[c])
        integer = _integer_bins(mn, mx, planes.dtype)
        if mx > mn:
            lo_q, hi_q, clip_q = percentiles_from_hist(np.asarray(hists[c]), edges_all[c], qs, integer)
        else:
            lo_q = hi_q = clip_q = mn
        out.append(ChannelStats(norm=FrameStats(lo=lo_q if norm.low_percentile > 0 else mn, hi=hi_q),
                                risk=FrameStats(lo=mn, hi=clip_q), minimum=mn, maximum=mx,
                                count=int(np.asarray(hists[c]).sum())))
    return out
