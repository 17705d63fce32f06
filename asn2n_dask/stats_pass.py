"""The statistics pass over files: one reduction per selected channel, done once.

Every route that normalises a file (training, denoising to ``.tif`` or ``.zarr``, the
risk summary) takes its channel statistics from :func:`selection_stats`: one dask
reduction (:func:`asn2n_dask.stats.channel_stats`) over every time point of the
selected channels, read in blocks of whole frames (:func:`stats_blocks`).  A
:class:`StatsCache` hands the result of one command's pass to its next step (``asn2n
run``: training, then denoising) when a fresh listing of the input
(:func:`source_listing`) shows that nothing was written since.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .errors import InputError
from .source import Selection, Source
from .stats import ChannelStats, channel_stats

__all__ = ["selection_stats", "selection_array", "stats_blocks", "STATS_BLOCK_BYTES", "StatsCache", "source_listing"]

log = logging.getLogger(__name__)


def source_listing(source: Source) -> str | None:
    """:func:`asn2n_dask.io.input_listing` of a source: evidence, from a directory
    listing, that its data has not been written since (None: no such evidence)."""
    from .io import input_listing

    return input_listing(source.path, array_path=source.array_path, series=source.series)


class StatsCache:
    """Channel statistics measured in this process, for the next step of the same command.

    ``asn2n run`` trains on its input, then denoises it: both need the statistics of
    the same channels of the same input.  The training's pass leaves them here with
    the input's listing (:func:`source_listing`) taken before it read anything; the
    denoising takes them back (:meth:`get`) only when the sources, the channels, the
    normalisation percentiles and a fresh listing all equal what they were, and
    measures them again otherwise.  The statistics are those the pass gave, digests
    included, so the output is the one a second pass would have given.  Nothing is
    kept beyond the object's life, and no listing (a remote or changing input) means
    no reuse.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[str, ...], tuple[ChannelStats, ...]]] = {}

    @staticmethod
    def key(sources: Sequence[Source], selections: Sequence[Selection], norm: Any) -> str:
        """What the statistics are a function of: each source as stored (path, array,
        series, axes, shape, chunks, dtype), the channels its pass reads (every time
        point: the time range plays no part), and the normalisation options."""
        what = [[s.path, s.kind, s.array_path, s.series, s.axes, list(s.shape), list(s.chunks), s.dtype,
                 replace(sel, time=None).to_dict()] for s, sel in zip(sources, selections)]
        return json.dumps([what, norm.to_dict()], sort_keys=True, default=str)

    def get(self, key: str, listings: Sequence[str | None]) -> list[ChannelStats] | None:
        """The statistics kept under ``key`` when they were measured at ``listings``."""
        if any(v is None for v in listings) or key not in self._entries:
            return None
        then, stats = self._entries[key]
        return list(stats) if tuple(listings) == then else None

    def put(self, key: str, listings: Sequence[str | None], stats: Sequence[ChannelStats]) -> None:
        """Keep ``stats``, measured after ``listings`` were taken (not kept without them)."""
        if all(v is not None for v in listings):
            self._entries[key] = (tuple(str(v) for v in listings), tuple(stats))


#: Target size of one read block of the statistics pass.  Storage chunks are often small
#: (512² of uint16: 0.5 MB); one task per chunk made the pass on a cluster mostly
#: scheduling.  Blocks of whole frames, and of several planes of small frames, read the
#: same chunks in a sixteenth of the tasks or fewer.
STATS_BLOCK_BYTES = 16 << 20


def stats_blocks(shape: Sequence[int], chunks: Sequence[int], axes: str, itemsize: int,
                 target: int = STATS_BLOCK_BYTES) -> tuple[int, ...]:
    """Read blocks for the statistics pass: whole storage chunks, grouped into whole
    frames when a frame fits in ``target`` bytes, then into several planes (Z, then T;
    never channels) up to ``target``.  Frames larger than ``target`` keep the storage
    chunks."""
    out = list(chunks)
    per = shape[-2] * shape[-1] * itemsize
    if per > target:
        return tuple(out)
    out[-2], out[-1] = shape[-2], shape[-1]
    for i in range(len(axes) - 3, -1, -1):  # the leading axes, innermost first
        if axes[i] == "C":
            continue
        out[i] = min(shape[i], max(1, target // per // chunks[i]) * chunks[i])
        per *= out[i]
        if out[i] < shape[i]:
            break
    return tuple(out)


def selection_array(source: Source, selection: Selection, blocks: tuple[int, ...] | None = None) -> Any:
    """The selected channels of a source over all time points, as a lazy dask array
    with the channel axis first (``(C, ..., Y, X)``); ``blocks`` as
    :meth:`asn2n_dask.source.Source.to_xarray`'s ``chunks``."""
    import dask.array as da

    xa = source.to_xarray(blocks)
    idx = replace(selection, time=None).indices(source)
    arr = xa.isel({d: i for d, i in zip(xa.dims, idx)}).data
    c = source.axes.find("C")
    return arr[None] if c < 0 else da.moveaxis(arr, c, 0)


def selection_stats(sources: Sequence[Source], selections: Sequence[Selection], norm: Any,
                    client: Any = None, *, cache: StatsCache | None = None,
                    listings: Sequence[str | None] | None = None) -> list[ChannelStats]:
    """Channel statistics over the selected channels of one or more sources (same frame
    size), in one reduction pass (:func:`asn2n_dask.stats.channel_stats`).

    With a ``cache``, statistics it holds for the same sources, channels and
    normalisation, measured when the sources were listed as they are now, are returned
    without reading anything; otherwise the pass runs and its result is kept there.
    ``listings``: the sources' :func:`source_listing`, when just taken by the caller
    (default: taken here, before the pass).
    """
    import dask
    import dask.array as da

    if cache is not None:
        key = StatsCache.key(sources, selections, norm)
        listings = list(listings) if listings is not None else [source_listing(s) for s in sources]
        kept = cache.get(key, listings)
        if kept is not None:
            log.info("channel statistics of %s taken from this command's earlier pass (input unchanged since)",
                     sources[0].path)
            return kept
        stats = selection_stats(sources, selections, norm, client)
        cache.put(key, listings, stats)
        return stats
    parts = [selection_array(s, sel, stats_blocks(s.shape, s.chunks, s.axes, np.dtype(s.dtype).itemsize))
             for s, sel in zip(sources, selections)]
    arr = parts[0] if len(parts) == 1 else da.concatenate(parts, axis=1)
    with dask.config.set(scheduler="synchronous" if client in (None, "sync") else client):
        try:
            return channel_stats(arr, norm)
        except InputError as e:  # a message naming its file (a damaged chunk) already says where
            raise InputError(str(e) if str(e).startswith(sources[0].path) else f"{sources[0].path}: {e}") from None
