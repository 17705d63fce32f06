"""Channel statistics: one reduction over all the data of a channel, numpy or dask.

The normalisation range and the risk scale of every frame come from statistics of the
whole channel (all its time points and planes), computed once and handed to every
chunk, so that the result at a pixel never depends on how the data was cut into
pieces.  The same functions run on an in-memory numpy array and, lazily, on a dask
array of any size.  8- and 16-bit integer images (nearly all microscopy data) take a
single pass: a count of every possible value, from which the range and the
percentiles are read exactly (equal to ``numpy.percentile``'s).  Other data takes a
minimum/maximum pass, then a histogram pass; for integer data whose range fits in
:data:`HIST_BINS` bins the bins are single integer values, otherwise the bins holding
the wanted percentiles are refined by a third, fine histogram pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .config import NormConfig, RiskThresholds
from .errors import InputError
from .risk import FrameStats

__all__ = ["HIST_BINS", "ChannelStats", "channel_stats", "bin_edges"]

#: Histogram bins of the percentile pass.
HIST_BINS = 1 << 16

#: Integers beyond this magnitude are not all exact in float64, the arithmetic of the
#: statistics and of the normalisation.
MAX_EXACT_INT = 2**53
#: Largest magnitude accepted: results are computed and written as float32 (up to
#: 3.4e38), with room for the range between a channel's extremes and beyond.
MAX_MAGNITUDE = float(np.finfo(np.float32).max) / 16
#: Data no larger than this in magnitude is below what float32 resolves usefully.
MIN_MAGNITUDE = 1e-30
#: At a channel's values, float32 must resolve this fraction of the channel's range.
RESOLUTION = 2.0**-10


def check_value_range(minimum: Any, maximum: Any, dtype: Any, what: str = "the data") -> None:
    """Refuse values the arithmetic cannot hold: integers beyond 2**53 (float64 exact),
    magnitudes float32 (the results' type) cannot hold or resolve, and large values
    whose range float32 cannot tell apart (a big offset on a narrow range).

    Raises
    ------
    InputError
        Naming the values and the remedy (an offset, or a rescaling).
    """
    dt = np.dtype(dtype)
    mn, mx = float(minimum), float(maximum)
    big = max(abs(mn), abs(mx))
    if dt.kind in "ui" and max(abs(int(minimum)), abs(int(maximum))) > MAX_EXACT_INT:
        raise InputError(f"{what} holds integers up to {big:.3g} in magnitude, beyond 2**53 ({2.0**53:.3g}), the "
                         f"largest float64 holds exactly; subtract an offset (e.g. the minimum, {int(minimum)}) or "
                         "rescale the data first.")
    if big > MAX_MAGNITUDE:
        raise InputError(f"{what} holds values up to {big:.3g} in magnitude, more than float32 (up to 3.4e38), in "
                         "which results are computed and written, holds with room to spare; rescale the data (e.g. "
                         f"divide it by 1e{int(np.ceil(np.log10(big))) - 6}) first.")
    if 0 < big < MIN_MAGNITUDE:
        raise InputError(f"{what} holds values no larger than {big:.3g} in magnitude, too small for float32, in "
                         "which results are computed and written; rescale the data (e.g. multiply it by "
                         f"1e{-int(np.floor(np.log10(big)))}) first.")
    wide = dt.kind in "ui" and dt.itemsize >= 4 or dt.kind == "f" and dt.itemsize > 4
    if wide and mx > mn and float(np.spacing(np.float32(big))) > (mx - mn) * RESOLUTION:
        raise InputError(f"{what} holds values around {big:.6g} that span only {mx - mn:.3g}: float32, in which "
                         f"results are computed and written, cannot resolve them there; subtract an offset (e.g. "
                         f"the minimum, {mn:.10g}) first.")


@dataclass(frozen=True)
class ChannelStats:
    """What every chunk of one channel needs to know about the whole channel.

    Attributes
    ----------
    norm : FrameStats
        Normalisation range (``NormConfig`` low and high percentiles), input units.
    risk : FrameStats
        Risk scale of the estimator the statistics were computed for: the minimum
        (noise-aware estimator: the ``floor_percentile`` percentile) and the
        ``clip_percentile`` percentile.  :meth:`risk_scale` gives either estimator's.
    minimum, maximum : float
        Data range.
    count : int
        Pixels reduced.
    digest : str
        SHA-256 of the channel's histogram: the same for data that holds the same values
        in another order (frames swapped).
    content : str
        BLAKE2b of the channel's raw bytes, block by block in storage order, read in the
        same pass: changes when any pixel does, also when only their order does.  It
        depends on how the data is stored and read (the blocks), so two statistics are
        equal whatever their ``content``; a resumed run compares it on the same input.
    floor, clip : float, optional
        The ``floor_percentile`` and ``clip_percentile`` percentiles.
    """

    norm: FrameStats
    risk: FrameStats
    minimum: float
    maximum: float
    count: int
    digest: str = ""
    floor: float | None = None
    clip: float | None = None
    content: str = field(default="", compare=False)

    def risk_scale(self, thresholds: RiskThresholds) -> FrameStats:
        """The risk scale for ``thresholds``' estimator: from the ``floor_percentile``
        percentile for ``"noise-aware"``, else (``"reference"``, and ``"auto"`` before it
        is resolved) from the minimum; up to the clip percentile, or the maximum when
        that is not above the start."""
        if self.floor is None or self.clip is None:  # statistics from before both were kept
            return self.risk
        lo = self.floor if thresholds.estimator == "noise-aware" and thresholds.floor_percentile > 0 else self.minimum
        return FrameStats(lo=lo, hi=self.clip if self.clip > lo else self.maximum)

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm.to_dict(), "risk": self.risk.to_dict(), "minimum": self.minimum,
                "maximum": self.maximum, "count": self.count, "digest": self.digest, "floor": self.floor,
                "clip": self.clip, "content": self.content}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelStats:
        return cls(norm=FrameStats.from_dict(d["norm"]), risk=FrameStats.from_dict(d["risk"]),
                   minimum=float(d["minimum"]), maximum=float(d["maximum"]), count=int(d["count"]),
                   digest=str(d.get("digest", "")),
                   floor=None if d.get("floor") is None else float(d["floor"]),
                   clip=None if d.get("clip") is None else float(d["clip"]),
                   content=str(d.get("content", "")))


def _small_int(dtype: Any) -> bool:
    """8- and 16-bit integers (and booleans): every possible value gets a count."""
    dt = np.dtype(dtype)
    return dt.kind == "b" or (dt.kind in "ui" and dt.itemsize <= 2)


def _value_counts(block: NDArray[Any]) -> NDArray[np.int64]:
    """Counts of every possible value of a small-integer block, from the dtype's minimum."""
    dt = block.dtype
    if dt.kind == "b":
        return np.bincount(block.ravel().view(np.uint8), minlength=256)[:2].astype(np.int64)
    info = np.iinfo(dt)
    flat = block.ravel()
    if info.min < 0:
        flat = flat.astype(np.int32) - int(info.min)
    return np.bincount(flat, minlength=int(info.max) - int(info.min) + 1).astype(np.int64)


def _counts_of(plane: Any, xp: Any) -> Any:
    """:func:`_value_counts` over a whole numpy or dask array (one map and one sum)."""
    if xp is np:
        return _value_counts(np.asarray(plane))
    n = 2 if plane.dtype.kind == "b" else int(np.iinfo(plane.dtype).max) - int(np.iinfo(plane.dtype).min) + 1
    per_block = plane.map_blocks(lambda b: _value_counts(b).reshape((1,) * b.ndim + (n,)), new_axis=plane.ndim,
                                 chunks=(1,) * plane.ndim + (n,), dtype=np.int64)
    return per_block.sum(axis=tuple(range(plane.ndim)))


def _block_digest(block: NDArray[Any]) -> NDArray[np.uint8]:
    """BLAKE2b-128 of one block's raw bytes, shaped to stand in the block's place."""
    d = hashlib.blake2b(np.ascontiguousarray(block).tobytes(), digest_size=16).digest()
    return np.frombuffer(d, np.uint8).reshape((1,) * block.ndim + (16,))


def _content_of(plane: Any, xp: Any) -> Any:
    """Per-block digests of a numpy (one block) or dask array, in block order."""
    if xp is np:
        return _block_digest(np.asarray(plane))
    return plane.map_blocks(_block_digest, new_axis=plane.ndim, chunks=(1,) * plane.ndim + (16,), dtype=np.uint8)


def _content_digest(blocks: Any, shape: tuple[int, ...], dtype: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(int(v) for v in shape), str(np.dtype(dtype)))).encode())
    h.update(np.ascontiguousarray(blocks, np.uint8).tobytes())
    return h.hexdigest()


def _integer_bins(lo: float, hi: float, dtype: Any) -> bool:
    return np.dtype(dtype).kind in "uib" and hi - lo + 1 <= HIST_BINS


def bin_edges(lo: float, hi: float, dtype: Any) -> NDArray[np.float64]:
    """Histogram edges for data in ``[lo, hi]``: one bin per integer when that fits."""
    if _integer_bins(lo, hi, dtype):
        return np.arange(lo, hi + 2, dtype=np.float64) - 0.5
    if hi <= lo:
        return np.array([lo - 0.5, hi + 0.5])
    return np.linspace(lo, hi, HIST_BINS + 1)


def _value_at(k: int, cum: NDArray[np.integer], counts: NDArray[np.integer], edges: NDArray[np.float64],
              integer_bins: bool) -> tuple[int, float]:
    """Bin holding the ``k``-th smallest value (0-based) and the value's estimate."""
    b = int(np.searchsorted(cum, k, side="right"))
    if integer_bins:
        return b, float(0.5 * (edges[b] + edges[b + 1]))
    before = int(cum[b - 1]) if b else 0
    frac = (k - before + 0.5) / counts[b]
    return b, float(edges[b] + frac * (edges[b + 1] - edges[b]))


def _ranks(n: int, q: float) -> tuple[int, int, float]:
    pos = (n - 1) * q / 100.0
    return int(np.floor(pos)), int(np.ceil(pos)), pos - np.floor(pos)


def channel_stats(planes: Any, norm: NormConfig = NormConfig(), *, scheduler: str | None = None
                  ) -> list[ChannelStats]:
    """Statistics of each channel of a (C, ...) numpy or dask array.

    Three reductions: minimum and maximum; a histogram of :data:`HIST_BINS` bins over
    that range; for data that does not fit one bin per integer, a fine histogram inside
    each bin holding a wanted percentile (so a few extreme pixels cannot blur the
    percentiles: the result is exact to ``range / HIST_BINS**2``).

    Parameters
    ----------
    planes : ndarray or dask array, shape (C, ...)
        Channel first; all other dimensions reduce together.
    norm : NormConfig
        Which percentiles the normalisation and the risk scale use.
    scheduler : str, optional
        A dask array: the dask scheduler of the passes (default: dask's current one);
        ``"sync"`` runs them in this thread, as inside a task of a larger graph.

    Returns
    -------
    list of ChannelStats, one per channel

    Raises
    ------
    InputError
        A channel holds NaN or infinite values (found by the first reduction).

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

    def compute(*xs: Any) -> list[Any]:
        return list(dask.compute(*xs, scheduler=scheduler)) if is_dask else list(xs)

    nc = planes.shape[0]
    # the content digests ride on the first pass: every block is read once for both
    digests = [_content_of(planes[c], xp) for c in range(nc)]
    if _small_int(planes.dtype):  # one pass: counts of every value give the range and the histogram
        first = 0 if planes.dtype.kind == "b" else int(np.iinfo(planes.dtype).min)
        mins, maxs, hists = [], [], []
        *all_counts, digests = compute(*[_counts_of(planes[c], xp) for c in range(nc)], digests)
        for c, counts in enumerate(all_counts):
            seen = np.flatnonzero(np.asarray(counts))
            if seen.size == 0:
                raise InputError(f"channel {c} holds no pixels.")
            mins.append(first + int(seen[0]))
            maxs.append(first + int(seen[-1]))
            hists.append(np.asarray(counts)[seen[0] : seen[-1] + 1])
        edges_all = [bin_edges(float(mins[c]), float(maxs[c]), planes.dtype) for c in range(nc)]
    else:
        rest = tuple(range(1, planes.ndim))
        mins, maxs, digests = compute(planes.min(axis=rest), planes.max(axis=rest), digests)
        for c in range(nc):
            if not (np.isfinite(mins[c]) and np.isfinite(maxs[c])):
                raise InputError(f"channel {c} holds NaN or infinite values; replace them (e.g. with the "
                                 "background level) before denoising.")
            check_value_range(mins[c], maxs[c], planes.dtype, f"channel {c}")
        edges_all = [bin_edges(float(mins[c]), float(maxs[c]), planes.dtype) for c in range(nc)]
        hists = [np.asarray(h) for h in compute(*[xp.histogram(planes[c], bins=edges_all[c])[0]
                                                  for c in range(nc)])]
    qs = [norm.low_percentile, norm.high_percentile, norm.risk.clip_percentile, norm.risk.floor_percentile]
    # the bins to refine: every rank's bin, for channels without one bin per integer
    wanted: dict[tuple[int, int], Any] = {}
    for c in range(nc):
        if _integer_bins(float(mins[c]), float(maxs[c]), planes.dtype) or maxs[c] <= mins[c]:
            continue
        cum = np.cumsum(hists[c])
        for q in qs:
            for k in _ranks(int(cum[-1]), q)[:2]:
                b = int(np.searchsorted(cum, k, side="right"))
                if (c, b) not in wanted:
                    fine_edges = np.linspace(edges_all[c][b], edges_all[c][b + 1], HIST_BINS + 1)
                    wanted[(c, b)] = (fine_edges, xp.histogram(planes[c], bins=fine_edges)[0])
    fine = dict(zip(wanted, compute(*[v[1] for v in wanted.values()])))
    out = []
    for c in range(nc):
        mn, mx = float(mins[c]), float(maxs[c])
        counts, edges = hists[c], edges_all[c]
        integer = _integer_bins(mn, mx, planes.dtype)
        cum = np.cumsum(counts)
        n = int(cum[-1])
        vals = []
        for q in qs:
            if mx <= mn:
                vals.append(mn)
                continue
            k0, k1, f = _ranks(n, q)
            pair = []
            for k in (k0, k1):
                b, v = _value_at(k, cum, counts, edges, integer)
                if (c, b) in fine:
                    fc = np.asarray(fine[(c, b)])
                    before = int(cum[b - 1]) if b else 0
                    inside = min(k - before, int(fc.sum()) - 1)
                    v = _value_at(inside, np.cumsum(fc), fc, wanted[(c, b)][0], False)[1]
                pair.append(v)
            vals.append(float(pair[0] + f * (pair[1] - pair[0])))
        lo_q, hi_q, clip_q, floor_q = vals
        if hi_q <= lo_q:  # almost every pixel has one value: keep the few others in range
            hi_q = mx
        digest = hashlib.sha256(np.ascontiguousarray(counts, np.int64).tobytes() + edges.tobytes()).hexdigest()
        cs = ChannelStats(norm=FrameStats(lo=lo_q if norm.low_percentile > 0 else mn, hi=hi_q),
                          risk=FrameStats(mn, mx), minimum=mn, maximum=mx, count=n, digest=digest, floor=floor_q,
                          clip=clip_q, content=_content_digest(digests[c], planes.shape[1:], planes.dtype))
        out.append(replace(cs, risk=cs.risk_scale(norm.risk)))
    return out
