"""Denoise a dataset of any size chunk by chunk, on a Dask cluster, into OME-Zarr.

The data flow is one way: read (a lazy :class:`~asn2n_dask.source.Source`) -> plan
(:class:`Plan`, built before any graph: one task per output chunk, the halo'd region it
reads, the tiles anchored to the frame) -> one reduction pass for the channel
statistics -> one task per output chunk (read its own region straight from the store,
risk, normalisation, network, Gaussian blending, back to input units, write its own
chunk, then its completion record) -> finalise the metadata.

Every chunk is computed by :func:`asn2n_dask.predict.denoise_window`, the same function
that denoises a whole frame in memory, from channel statistics computed once; so the
output does not depend on the chunking.  A run that is stopped part-way is resumed by
running the same command again: chunks whose completion record matches the data on
disk are skipped, the others recomputed.  A finished one run again reads nothing of the
input when its listing (:func:`source_listing`) shows that the input was not written
since; otherwise the statistics pass decides, as for a resume.  What may be resumed,
skipped or refused, and the records that decide it, are :mod:`asn2n_dask.resume`'s.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import ome, resume
from ._version import __version__
from .axes import canonical_order
from .config import InferConfig
from .errors import ConfigError, InputError, ModelError, OutputError
from .io import TIFF_SUFFIXES, cast_output
from .predict import WindowPlan, axis_reads, resolve_device, window_plan
from .resume import PROGRESS_DIR, model_sha
from .risk import SPARSE_BRIGHT, WEAK_BACKGROUND
from .source import Selection, Source, check_source
from .stats import ChannelStats
from .stats_pass import (  # noqa: F401  (re-exported: asn2n_dask.pipeline.selection_stats, ...)
    STATS_BLOCK_BYTES,
    StatsCache,
    selection_array,
    selection_stats,
    source_listing,
    stats_blocks,
)

__all__ = ["RunOptions", "Plan", "make_plan", "run_pipeline", "check_output_path", "RunSummary", "PROGRESS_DIR",
           "run_chunk", "StatsCache", "source_listing"]

log = logging.getLogger(__name__)

#: Most chunk tasks one run schedules (a graph of more would take more memory and
#: scheduling time than the work itself).
MAX_TASKS = 1 << 22
#: Smallest output chunk side, in pixels (or the frame's side, when smaller): every
#: task reads a halo of tiles and a normalisation patch around its chunk.
MIN_CHUNK = 16
#: The smallest level of a ``--pyramid``, in pixels along Y and X.
MIN_LEVEL = 16
COMPUTED, SKIPPED = 1, 2
OME_ORDER = "TCZYX"


@dataclass(frozen=True)
class RunOptions:
    """Options of a pipeline run besides the model.

    Attributes
    ----------
    infer : InferConfig
        Tiles, overlap, blending, inference domain, device.
    chunks : (int, int), optional
        Output chunk side along Y and X (default: the input's, at least 1024 and at
        most 2048: a task recomputes the tiles its halo shares with its neighbours, about
        (1 + tile / chunk)^2 of the work, so small chunks cost throughput).  One task per
        output chunk.
    dtype : {"float32", "input"}
        Output dtype: float32 in input units, or the input's dtype (rounded, clipped).
    ome : {"0.5", "0.4"}
        OME-Zarr version: 0.5 (Zarr v3) or 0.4 (Zarr v2).
    pyramid : int
        Extra 2x-downsampled levels written after the run, for viewing: the image's
        (mean of 2x2 pixels) and the risk labels' (their most frequent value).
    overwrite : bool
        Delete an existing output (also an unfinished run of the same job) and start
        again.  Without it, an unfinished run of the same job is resumed and any other
        existing output is refused.  Only outputs of this package are ever deleted.
    allow_unfinished : bool
        Use a model whose training did not finish (a checkpoint), instead of refusing it.
    """

    infer: InferConfig = InferConfig()
    chunks: tuple[int, int] | None = None
    dtype: str = "float32"
    ome: str = "0.5"
    pyramid: int = 0
    overwrite: bool = False
    allow_unfinished: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "input"):
            raise ConfigError(f"--dtype must be float32 or input; got {self.dtype!r}.")
        if self.ome not in ("0.4", "0.5"):
            raise ConfigError(f"--ome must be 0.4 (Zarr v2) or 0.5 (Zarr v3); got {self.ome!r}.")
        if self.chunks is not None and (len(self.chunks) != 2 or min(self.chunks) < 1):
            raise ConfigError(f"--chunks must be two positive sizes (Y X); got {self.chunks}.")
        if not 0 <= self.pyramid <= ome.MAX_LEVELS:
            raise ConfigError(f"--pyramid must be between 0 and {ome.MAX_LEVELS}; got {self.pyramid}.")


@dataclass(frozen=True)
class Plan:
    """Everything a run will do, decided before any data is read.

    Attributes
    ----------
    source : Source
    selection : Selection
    axes : str
        Output axes: the input's, in T, C, Z, Y, X order (OME-NGFF's).
    shape, chunks : tuple of int
        Output shape and chunk shape (1 along every axis but Y and X).
    plane_shape : tuple of int
        Output sizes of the axes other than Y and X (planes = their product).
    plane_sources : tuple of sequences of int
        Per non-YX output axis, the source index of each output index (a ``range``
        where the selection is evenly spaced, so the plan every task carries stays a
        few hundred bytes for any number of time points).
    channel_axis : int or None
        Position of ``C`` among the non-YX output axes.
    grid : (int, int)
        Chunks along Y and X.
    windows : Windows
        Per chunk position ``iy * grid[1] + ix``: the window ``(y0, y1, x0, x1)`` it
        writes (the same for every plane); :meth:`window_plan` gives the region it reads.
        A sequence computed on demand: a plan is a few hundred bytes for any frame.
    infer : InferConfig
    patch : int
        Risk/normalisation patch side.
    itemsize : int
        Bytes per input pixel.
    out_itemsize : int
        Bytes per output pixel.
    order : tuple of int
        Per output axis, the input axis it is read from (:func:`asn2n_dask.axes.canonical_order`;
        empty: the same order).  Tasks read their region of the input as stored and
        only the order of the index changes: the input is never transposed.
    labels : tuple of str
        The risk label images in the output's ``labels`` group, one per output channel
        (``risk-<channel>``, over the output axes without ``C``), or ``("risk",)`` for
        an output without ``C`` (:func:`asn2n_dask.ome.channel_label_names`).
    """

    source: Source
    selection: Selection
    axes: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    plane_shape: tuple[int, ...]
    plane_sources: tuple[Sequence[int], ...]
    channel_axis: int | None
    grid: tuple[int, int]
    windows: Sequence[tuple[int, int, int, int]]
    infer: InferConfig
    patch: int
    itemsize: int
    out_itemsize: int = 4
    order: tuple[int, ...] = ()
    labels: tuple[str, ...] = ("risk",)

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.plane_shape, dtype=np.int64)) if self.plane_shape else 1

    @property
    def n_tasks(self) -> int:
        return self.n_planes * len(self.windows)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    def window_plan(self, k: int) -> WindowPlan:
        """Tiles, patches and region read of chunk position ``k``."""
        return window_plan(self.frame_shape, self.windows[k], self.infer, self.patch)

    def _reads(self) -> tuple[AxisReads, AxisReads]:
        """What the windows read, along Y and along X (the region of window ``(iy, ix)``
        is the product of its row and column ranges, so each axis is summed apart)."""
        t, s = self.infer.tile, self.infer.stride
        (h, w), (cy, cx) = self.frame_shape, self.chunks[-2:]
        return _axis_reads(h, cy, t, s, self.patch), _axis_reads(w, cx, t, s, self.patch)

    @property
    def halo(self) -> tuple[int, int]:
        """Largest number of pixels a task reads beyond its window, along Y and X."""
        ry, rx = self._reads()
        return ry.halo, rx.halo

    def check_size(self) -> None:
        """Refuse a run of more chunk tasks than :data:`MAX_TASKS`, before any data is read.

        Raises
        ------
        InputError
        """
        if self.n_tasks > MAX_TASKS:
            raise InputError(f"{self.source.path}: the run would be {self.n_tasks} chunk tasks ({self.n_planes} "
                             f"planes x {self.grid[0]} x {self.grid[1]} chunks), more than the {MAX_TASKS} one run "
                             "schedules; select fewer time points or channels (--time, --channel), or use larger "
                             "--chunks.")

    def plane_index(self, p: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """Output index (non-YX output axes), source index (non-YX input axes, in the
        input's order) and output channel of plane ``p``."""
        out = tuple(int(i) for i in np.unravel_index(p, self.plane_shape)) if self.plane_shape else ()
        src = [0] * len(out)
        for a, i in enumerate(out):
            src[self.order[a] if self.order else a] = int(self.plane_sources[a][i])
        c = out[self.channel_axis] if self.channel_axis is not None else 0
        return out, tuple(src), c

    @property
    def label_axes(self) -> str:
        """Axes of a risk label image: the output's without ``C``."""
        return str(ome.drop_channel(self.axes)[0])

    def label_index(self, out: tuple[int, ...]) -> tuple[int, ...]:
        """The index of a label image from an output index (``C``'s entry dropped)."""
        return tuple(i for a, i in enumerate(out) if a != self.channel_axis)

    def bytes_read(self) -> int:
        ry, rx = self._reads()
        return ry.total * rx.total * self.n_planes * self.itemsize

    def bytes_written(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * (self.out_itemsize + 1)

    def peak_task_bytes(self, widths: tuple[int, ...] = (32, 64, 128)) -> int:
        """Estimated peak memory of one task: region, tile block, tiles, network activations."""
        ry, rx = self._reads()  # the window reading the largest region
        region = ry.largest * rx.largest
        span = ry.span * rx.span
        n_tiles = ry.tiles * rx.tiles
        t2 = self.infer.tile**2
        views = 2 if self.infer.infer_on == "twins" else 1
        acts = self.infer.batch * views * t2 * 4 * 3 * sum(c / 4**i for i, c in enumerate(widths))
        return int(region * 8 * 3 + span * 4 * 3 * 2 + n_tiles * t2 * 4 * 5 + acts + span * 8 * 4)

    def describe(self, preset: str = "small") -> str:
        """The plan as text (``--dry-run``), memory estimated for the network ``preset``."""
        from .config import PRESETS

        hy, hx = self.halo
        gib = 1024**3
        reordered = "" if self.axes == self.source.axes else f" (the input's {self.source.axes} in OME order)"
        lines = [
            f"input      {self.source.path} ({self.source.kind}, axes {self.source.axes}, shape "
            f"{self.source.shape}, chunks {self.source.chunks}, {self.source.dtype})",
            f"selection  {json.dumps(self.selection.to_dict())}",
            f"output     axes {self.axes}{reordered}, shape {self.shape}, chunks {self.chunks}",
            f"labels     {', '.join('labels/' + n for n in self.labels)} (axes {self.label_axes})",
            f"tiles      {self.infer.tile} px at {self.infer.overlap:.0%} overlap (stride {self.infer.stride}), "
            f"{self.infer.blend} blending, anchored to the frame origin",
            f"halo       {hy} px (Y), {hx} px (X): tiles overlapping a chunk plus one {self.patch}-px "
            "normalisation patch",
            f"tasks      {self.n_tasks} = {self.n_planes} planes x {self.grid[0]} x {self.grid[1]} chunks",
            f"read       {self.bytes_read() / gib:.3f} GiB ({self.bytes_read() / max(1, self._input_bytes()):.2f}x "
            "the selected input)",
            f"written    {self.bytes_written() / gib:.3f} GiB (denoised + risk labels)",
            f"memory     about {self.peak_task_bytes(PRESETS[preset]) / 1024**2:.0f} MiB per running task "
            f"(preset {preset})",
        ]
        return "\n".join(lines)

    def _input_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        hy, hx = self.halo
        return {"input": self.source.path, "input_axes": self.source.axes, "axes": self.axes,
                "labels": list(self.labels), "shape": list(self.shape), "chunks": list(self.chunks),
                "halo": [hy, hx], "tasks": self.n_tasks, "bytes_read": self.bytes_read(),
                "bytes_written": self.bytes_written(), "peak_task_bytes": self.peak_task_bytes(),
                "selection": self.selection.to_dict()}


@dataclass(frozen=True)
class Windows(Sequence[tuple[int, int, int, int]]):
    """The windows ``(y0, y1, x0, x1)`` of a frame cut into chunks, row by row, computed
    on demand (a frame of any size is a few numbers)."""

    frame: tuple[int, int]
    chunk: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        (h, w), (cy, cx) = self.frame, self.chunk
        return -(-h // cy), -(-w // cx)

    def __len__(self) -> int:
        gy, gx = self.grid
        return gy * gx

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        n = len(self)
        k = int(k) + n if int(k) < 0 else int(k)
        if not 0 <= k < n:
            raise IndexError(f"window {k} of {n}")
        iy, ix = divmod(k, self.grid[1])
        (h, w), (cy, cx) = self.frame, self.chunk
        return iy * cy, min(h, (iy + 1) * cy), ix * cx, min(w, (ix + 1) * cx)


@dataclass(frozen=True)
class AxisReads:
    """What the windows of one axis read (:func:`_axis_reads`).

    Attributes
    ----------
    total : int
        Pixels read along the axis, summed over its windows.
    halo : int
        Most pixels a window reads beyond its own, on either side.
    largest, tiles, span : int
        Of the window reading the most (the first such): pixels read, tiles covering
        it and their extent.
    """

    total: int
    halo: int
    largest: int
    tiles: int
    span: int


#: Windows evaluated at once when summing what an axis's windows read.
_BLOCK = 1 << 20


@functools.lru_cache(maxsize=64)
def _axis_reads(n: int, c: int, tile: int, stride: int, patch: int) -> AxisReads:
    """Sum, halo and largest read of the windows ``[k c, (k + 1) c)`` of an axis of
    ``n`` pixels, in time independent of ``n``.

    Windows near the axis's ends see its mirrored edges and are evaluated one by one;
    the others read the same extent as the window ``lcm(stride, patch)`` pixels (a
    whole number of tile strides and normalisation patches) before them, so one period
    of them is evaluated and repeated.
    """
    g = -(-n // c)
    period_px = math.lcm(stride, patch)
    period = period_px // math.gcd(period_px, c)  # windows after which the pattern repeats
    edge = min(g, -(-(tile + 3 * patch + 2 * stride) // c) + 2)
    inner = max(0, g - 2 * edge)
    totals, halo, best = 0, 0, (-1, 0, 0)

    def visit(ks: np.ndarray) -> tuple[int, np.ndarray]:
        nonlocal halo, best
        a = ks * c
        b = np.minimum(a + c, n)
        r0, r1, tiles, span = axis_reads(n, a, b, tile, stride, patch)
        ext = r1 - r0
        halo = max(halo, int(np.max(np.maximum(a - r0, r1 - b))))
        i = int(np.argmax(ext))
        if int(ext[i]) > best[0]:
            best = (int(ext[i]), int(tiles[i]), int(span[i]))
        return int(ext.sum()), ext

    def visit_range(k0: int, k1: int) -> int:
        total = 0
        for lo in range(k0, k1, _BLOCK):
            total += visit(np.arange(lo, min(k1, lo + _BLOCK), dtype=np.int64))[0]
        return total

    head = min(g, edge)
    totals += visit_range(0, head)
    if inner <= 4 * period:
        totals += visit_range(head, head + inner)
    else:  # whole periods of identical windows, then the rest of one
        full, rest = divmod(inner, period)
        one = visit_range(head, head + period)
        part = visit_range(head, head + rest)
        totals += full * one + part
    totals += visit_range(head + inner, g)
    return AxisReads(total=totals, halo=halo, largest=best[0], tiles=best[1], span=best[2])


def _compact(index: Any) -> Sequence[int]:
    """Source indices as a ``range`` when evenly spaced (a time range, one channel), else a tuple."""
    if isinstance(index, range):
        return index
    v = [int(i) for i in np.asarray(index).ravel()]
    step = v[1] - v[0] if len(v) > 1 else 1
    if v and step and all(b - a == step for a, b in zip(v, v[1:])):
        return range(v[0], v[-1] + step, step)
    return tuple(v)


def _default_chunk(src_chunk: int, n: int) -> int:
    return int(min(n, max(1024, min(2048, src_chunk))))


def make_plan(source: Source, selection: Selection = Selection(), *, options: RunOptions = RunOptions(),
              patch: int = 64, out_itemsize: int = 4) -> Plan:
    """Plan a run: output chunks and, for each, the region it reads.

    The output holds the input's axes in T, C, Z, Y, X order (an ImageJ hyperstack's
    TZCYX gives TCZYX): each task reads its own region of the input as stored, the
    plan only reorders the index.

    Raises
    ------
    InputError
        Frames smaller than 4x4 pixels, or an axis that is not T, C, Z, Y or X.
    """
    check_source(source)
    if not set(source.axes) <= set(OME_ORDER):
        raise InputError(f"{source.path} has axes {source.axes}; OME-Zarr output needs every axis named T, C, Z, Y "
                         "or X (name the others with --axes).")
    order = canonical_order(source.axes, OME_ORDER)
    h, w = source.frame_shape
    from .blend import check_tile_frame

    check_tile_frame(options.infer, (h, w))
    if options.chunks is not None and (options.chunks[0] < min(MIN_CHUNK, h) or options.chunks[1] < min(MIN_CHUNK, w)):
        raise ConfigError(f"--chunks {options.chunks[0]}x{options.chunks[1]} is too small: chunks must be at least "
                          f"{MIN_CHUNK} pixels (or the frame's {h}x{w}) along Y and X, each task reading tiles and a "
                          "normalisation patch around its chunk; use 1024 or more.")
    axes = "".join(source.axes[i] for i in order)
    kept = selection.indices(source)  # per input axis
    idx = [kept[i] for i in order]
    shape = tuple(len(i) for i in idx)
    cy, cx = options.chunks or (_default_chunk(source.chunks[-2], h), _default_chunk(source.chunks[-1], w))
    cy, cx = min(cy, h), min(cx, w)
    chunks = (1,) * (len(shape) - 2) + (cy, cx)
    windows = Windows((h, w), (cy, cx))
    non_yx = axes[:-2]
    c_ax = non_yx.index("C") if "C" in non_yx else None
    labels = ome.channel_label_names("risk", None if c_ax is None else channel_labels(source, idx[c_ax]))
    return Plan(source=source, selection=selection, axes=axes, shape=shape, chunks=chunks,
                plane_shape=shape[:-2], plane_sources=tuple(_compact(i) for i in idx[:-2]),
                channel_axis=c_ax, grid=windows.grid, windows=windows,
                infer=options.infer, patch=patch, itemsize=np.dtype(source.dtype).itemsize,
                out_itemsize=out_itemsize, order=order if order != tuple(range(len(order))) else (),
                labels=tuple(labels))


def channel_labels(source: Source, channels: Sequence[int]) -> list[str]:
    """The output's name of each selected channel (source indices): the input's channel
    name, else the source index."""
    names = source.meta.channel_names
    return [names[int(i)] if names else str(int(i)) for i in channels]


# ------------------------------------------------------------------ worker side
@dataclass(frozen=True)
class RunSpec:
    """What every task needs (a few KiB: the plan holds windows, not regions)."""

    plan: Plan
    output: str
    model_dir: str
    model_sha: str
    channel_map: tuple[int, ...]
    stats: tuple[dict[str, Any], ...]
    dtype: str
    device: str
    torch_threads: int | None = None


_MODELS: dict[tuple[str, str, str, str, bool], Any] = {}
_LOCK = threading.Lock()


def _model(spec: RunSpec) -> Any:
    """The model, loaded once per process and device."""
    infer = spec.plan.infer
    key = (spec.model_dir, spec.model_sha, spec.device, infer.precision, infer.compile)
    with _LOCK:
        if key not in _MODELS:
            from .checkpoint import load_model
            from .predict import compiles, network_fn, resolve_device

            if spec.torch_threads:
                import torch

                torch.set_num_threads(spec.torch_threads)
            model = load_model(spec.model_dir, allow_unfinished=True)  # the client has decided
            if model_sha(spec.model_dir) != spec.model_sha:
                raise ModelError(f"the model in {spec.model_dir} changed during the run; start again.")
            dev = resolve_device(spec.device)
            compiled = compiles(infer, dev)
            fns = [network_fn(ch.net, dev, infer.precision, compiled) for ch in model.channels]
            if compiled:  # compile here, once, under the lock: not in every thread (kernels from the cache)
                import torch

                views = 2 if infer.infer_on == "twins" else 1
                for fn in fns:
                    fn(torch.zeros(views * infer.batch, 1, infer.tile, infer.tile, device=dev))
            _MODELS[key] = (model, fns, dev)
        return _MODELS[key]


def _open_outputs(path: str, label: str) -> tuple[Any, Any]:
    """Level 0 of the output image and of the risk label image ``label``."""
    import zarr

    root = zarr.open_group(path, mode="r+")
    return root["0"], root[f"labels/{label}/0"]


def run_chunk(spec: RunSpec, p: int, iy: int, ix: int) -> int:
    """Compute and write one output chunk, unless a verified record says it is done.

    The chunk's record holds the digest of what was written and the seconds spent
    reading its region, denoising it (risk, normalisation, network, blend; a worker's
    first chunk also loads, and may compile, the network) and writing it.

    Returns :data:`COMPUTED` or :data:`SKIPPED`.
    """
    from .predict import denoise_window

    plan = spec.plan
    k = iy * plan.grid[1] + ix
    wp = plan.window_plan(k)
    out_idx, src_idx, c = plan.plane_index(p)
    y0, y1, x0, x1 = wp.window
    where = out_idx + (slice(y0, y1), slice(x0, x1))
    label_where = plan.label_index(out_idx) + (slice(y0, y1), slice(x0, x1))
    rec = resume.record_path(spec.output, p, iy, ix)
    out_arr, risk_arr = _open_outputs(spec.output, plan.labels[c])
    if resume.chunk_done(rec, lambda: (out_arr[where], risk_arr[label_where]), (p, iy, ix), spec.output):
        return SKIPPED
    (ry0, ry1), (rx0, rx1) = wp.read
    t0 = time.perf_counter()
    region = np.asarray(plan.source.open()[src_idx + (slice(ry0, ry1), slice(rx0, rx1))])
    t_read = time.perf_counter()
    if region.dtype.kind == "f" and not np.isfinite(region).all():
        raise InputError(f"{plan.source.path} holds NaN or infinite values in plane {src_idx}; replace them "
                         "before denoising.")
    model, fns, dev = _model(spec)
    mc = spec.channel_map[c]
    method = model.method(mc)
    out, risk = denoise_window(region, wp, plan.frame_shape, fns[mc], stats=ChannelStats.from_dict(spec.stats[c]),
                               norm=method.norm(model.train.norm), infer=plan.infer, device=dev,
                               multiple=model.multiple, dataset_mode=method.dataset_mode)
    t_denoise = time.perf_counter()
    data = cast_output(out, plan.source.dtype) if spec.dtype == "input" else out
    labels = risk.astype(np.uint8)
    out_arr[where] = data
    risk_arr[label_where] = labels
    seconds = {"read": t_read - t0, "denoise": t_denoise - t_read, "write": time.perf_counter() - t_denoise}
    resume.write_record(rec, resume.digest(data.astype(out_arr.dtype), labels), seconds)
    return COMPUTED


def _run_block(spec: RunSpec, block_info: Any = None) -> np.ndarray:
    p, iy, ix = block_info[None]["chunk-location"]
    return np.full((1, 1, 1), run_chunk(spec, p, iy, ix), np.int8)


# ------------------------------------------------------------------ client side
def channel_map(source: Source, selection: Selection, model: Any) -> tuple[int, ...]:
    """Model channel for each selected channel: by name, else by source index, else by
    position.  The one rule for every route (``.zarr`` and ``.tif`` outputs alike).

    Raises
    ------
    ModelError
        The model names two networks alike, or does not fit the selection.
    InputError
        The selected channels of the input share a name (they would share a network).
    """
    c_ax = source.axes.find("C")
    out_src = [int(i) for i in selection.indices(source)[c_ax]] if c_ax >= 0 else [0]
    names = [ch.name for ch in model.channels]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelError(f"the model holds {names.count(twice[0])} networks named {twice[0]!r}; each channel needs "
                         "its own name: train the model again.")
    src_names = list(source.meta.channel_names or [])
    picked = [src_names[i] for i in out_src] if src_names else []
    twice = sorted({n for n in picked if picked.count(n) > 1})
    if twice:
        raise InputError(f"{source.path} has {picked.count(twice[0])} selected channels named {twice[0]!r}; they "
                         "would share one network: rename them in the file or select one with --channel.")
    if picked and all(n in names for n in picked):
        return tuple(names.index(n) for n in picked)
    n_src = source.shape[c_ax] if c_ax >= 0 else 1
    if model.n_channels == n_src:
        mapping = tuple(out_src)
    elif model.n_channels == len(out_src):
        mapping = tuple(range(len(out_src)))
    else:
        mapping = ()
    if mapping:
        labels = [src_names[i] if src_names else str(i) for i in out_src]
        other = [(lab, names[m]) for lab, m in zip(labels, mapping) if names[m] != lab]
        if other:  # by position: said, since the names do not confirm it
            log.warning("the model has no network named %s; channel %s goes to network %s by position",
                        " or ".join(repr(lab) for lab, _ in other), ", ".join(lab for lab, _ in other),
                        ", ".join(repr(m) for _, m in other))
        return mapping
    raise ModelError(f"the model was trained for {model.n_channels} channel(s) but {len(out_src)} are selected "
                     f"from {source.path} ({n_src} in all); train a model on the same channels or select them with "
                     "--channel.")


def missing_note(source: Source) -> tuple[str | None, list[Any] | None]:
    """A note for the user when a Zarr input has chunks that are not stored, and the
    ``(missing, total, fill)`` record for the output's attributes."""
    gaps = source.missing_chunks()
    if not gaps or not gaps[0]:
        return None, list(gaps) if gaps else None
    return (f"note: {gaps[0]} of {gaps[1]} chunks of {source.path} are not stored; they are read as the fill value "
            f"{gaps[2]} (zarr's rule for unwritten chunks). If the input was copied, check the copy is complete.",
            list(gaps))


def compute_stats(plan: Plan, norm: Any, client: Any = None, *, cache: StatsCache | None = None,
                  listing: str | None = None) -> list[ChannelStats]:
    """The reduction pass: statistics of every selected channel over all its planes.

    All time points count, whatever ``--time`` selects, so that a dataset denoised in
    time batches gives the same result as in one run.  A plan of more tasks than one
    run schedules is refused first (:meth:`Plan.check_size`).  ``cache``: as for
    :func:`selection_stats`; ``listing``: the source's :func:`source_listing`, just
    taken (None: there is none, and ``cache`` cannot vouch for its statistics).
    """
    plan.check_size()
    return selection_stats([plan.source], [plan.selection], norm, client, cache=cache, listings=[listing])


def _in_output_order(plan: Plan, values: Sequence[Any] | None) -> tuple[Any, ...] | None:
    """Per-axis ``values`` of the input (a scale, units) in the output's axis order."""
    if values is None or not plan.order:
        return None if values is None else tuple(values)
    return tuple(values[i] for i in plan.order)


def _scale(plan: Plan) -> tuple[float, ...] | None:
    """The input's pixel scale when usable (:func:`asn2n_dask.io.usable_scale`), else
    None; in the output's axis order."""
    from .io import usable_scale

    return _in_output_order(plan, usable_scale(plan.source.meta.scale, len(plan.source.axes), plan.source.path))


def _units(plan: Plan) -> tuple[str | None, ...] | None:
    """The input's units per axis, in the output's axis order (None where unknown)."""
    units = plan.source.meta.units
    if units is None or len(units) != len(plan.source.axes):
        return None
    return _in_output_order(plan, units)


def pyramid_levels(plan: Plan, extra: int) -> int:
    """Levels written for ``--pyramid extra``: level 0, then halvings while both frame
    sides stay at least :data:`MIN_LEVEL` pixels (a warning says when that stops it)."""
    h, w = plan.frame_shape
    levels = 1
    while levels <= extra and min(h >> levels, w >> levels) >= MIN_LEVEL:
        levels += 1
    if levels <= extra:
        log.warning("--pyramid %d: %d extra level(s) written; a further halving of the %dx%d frames would be smaller "
                    "than %d pixels", extra, levels - 1, h, w, MIN_LEVEL)
    return levels


@dataclass
class RunSummary:
    """What a run did."""

    output: str
    tasks: int
    computed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    stats_seconds: float = 0.0
    resumed: bool = False
    already_complete: bool = False
    plan: dict[str, Any] = field(default_factory=dict)


def _prepare_output(output: Path, plan: Plan, parts: dict[str, Any], options: RunOptions,
                    provenance: dict[str, Any]) -> bool:
    """Create the output store, or decide to resume the existing one (:func:`asn2n_dask.resume.resumable`).
    Returns True when resuming."""
    if resume.resumable(output, parts, overwrite=options.overwrite):
        return True
    try:
        resume.remove_output(output)
        return _create_output(output, plan, parts, options, provenance)
    except PermissionError as e:
        raise OutputError(f"cannot write {output}: permission denied ({e.filename}); choose a folder you can "
                          "write to.") from None


def _create_output(output: Path, plan: Plan, parts: dict[str, Any], options: RunOptions,
                   provenance: dict[str, Any]) -> bool:
    import zarr

    zf: Literal[2, 3] = 2 if options.ome == "0.4" else 3
    job = resume.running_attrs(provenance, parts)
    root: Any = zarr.open_group(str(output), mode="w", zarr_format=zf, attributes={"asn2n": job})
    dtype = plan.source.dtype if options.dtype == "input" else "float32"
    root.create_array("0", shape=plan.shape, chunks=plan.chunks, dtype=dtype,
                      **ome.array_kwargs(options.ome, plan.axes))
    labels = root.create_group("labels")
    _, shape, chunks = ome.drop_channel(plan.axes, plan.shape, plan.chunks)
    for name in plan.labels:  # one per channel, without C: viewers align it with its channel's image layer
        labels.create_group(name).create_array("0", shape=shape, chunks=chunks, dtype="uint8",
                                               **ome.array_kwargs(options.ome, plan.label_axes))
    (output / resume.PROGRESS_DIR).mkdir(exist_ok=True)
    return False


_COLOURS = ("00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF")
#: Classes of the risk label images: name and display colour per label value.
RISK_CLASSES = {WEAK_BACKGROUND: ("weak background", (0, 120, 255, 160)),
                SPARSE_BRIGHT: ("sparse bright", (255, 150, 0, 160))}


def _finalise(output: Path, plan: Plan, options: RunOptions, client: Any, listing: str | None = None) -> None:
    """After every chunk is recorded: the pyramid levels of the image and of its risk
    label images (the same levels, shapes and scales, less ``C``), then the OME
    metadata, and last the status that presents the output as complete, with the
    input's ``listing`` taken before the run read it (:func:`source_listing`).  Each
    step may be redone: a run stopped here is finished by running the same command
    again."""
    import zarr

    root: Any = zarr.open_group(str(output), mode="r+")
    levels = pyramid_levels(plan, options.pyramid)
    # (group, axes, chunks, 2x2 reduction) of the image and of each label image
    images = [(root, plan.axes, plan.chunks, ome.block_mean)]
    _, label_chunks = ome.drop_channel(plan.axes, plan.chunks)
    images += [(root[f"labels/{name}"], plan.label_axes, label_chunks, ome.block_mode) for name in plan.labels]
    if options.ome == "0.4":  # level 0 of a run begun before its arrays' dimensions were named
        for group, axes, _, _ in images:
            group["0"].attrs.update(ome.array_kwargs(options.ome, axes)["attributes"])
    if levels > 1:
        import dask.array as da

        for lv in range(1, levels):
            sources, targets = [], []
            for group, axes, chunks, reduce in images:
                prev = group[str(lv - 1)]
                src = da.from_zarr(prev)
                factors = {i: (2 if a in "YX" and src.shape[i] >= 2 else 1) for i, a in enumerate(axes)}
                small = da.coarsen(reduce, src, factors, trim_excess=True).astype(prev.dtype)
                arr = group.create_array(str(lv), shape=small.shape, dtype=prev.dtype, overwrite=True,
                                         chunks=tuple(min(c, n) for c, n in zip(chunks, small.shape)),
                                         **ome.array_kwargs(options.ome, axes))
                sources.append(small.rechunk(arr.chunks))
                targets.append(arr)
            if client is not None and not isinstance(client, str):
                da.store(sources, targets, lock=False, scheduler=client)
            else:
                da.store(sources, targets, lock=False, scheduler="synchronous" if client == "sync" else None)
    chans: list[dict[str, Any]] = []
    if plan.channel_axis is not None:  # channel names, colours and display windows for viewers (napari-ome-zarr)
        stats = (dict(root.attrs).get("asn2n") or {}).get("stats") or []
        names = channel_labels(plan.source, plan.plane_sources[plan.channel_axis])
        for k, name in enumerate(names):
            ch: dict[str, Any] = {"label": name, "active": True, "color": _COLOURS[k % len(_COLOURS)]}
            if k < len(stats):
                st = stats[k]
                ch["window"] = {"start": st["norm"]["lo"], "end": st["norm"]["hi"], "min": st["minimum"],
                                "max": st["maximum"]}
            chans.append(ch)
    scale, units = _scale(plan), _units(plan)
    _, label_scale, label_units = ome.drop_channel(plan.axes, scale, units)
    root["labels"].attrs.update(ome.labels_attrs(options.ome, list(plan.labels)))
    for name in plan.labels:
        root[f"labels/{name}"].attrs.update(ome.label_attrs(options.ome, plan.label_axes, name=name,
                                                            classes=RISK_CLASSES, levels=levels, scale=label_scale,
                                                            units=label_units))
    # last: the image metadata and the status that present the output as complete
    attrs = dict(root.attrs)
    asn = resume.complete_attrs(dict(attrs.get("asn2n", {})), listing)  # type: ignore[arg-type]
    root.attrs.update({**ome.image_attrs(options.ome, plan.axes, name="denoised", channels=chans, levels=levels,
                                         scale=scale, units=units), "asn2n": asn})


@contextlib.contextmanager
def _client_for(client: Any, scheduler: str | None, workers: int | None, threads: int | None,
                memory_limit: str | None, echo: Callable[[str], None], device: str = "auto",
                cluster: str | os.PathLike[str] | None = None, jobs: int | None = None,
                dashboard_address: str | None = None) -> Iterator[tuple[Any, int | None]]:
    """The run's client and the torch threads of each worker's network (None: unknown)."""
    if client is not None:
        yield client, None
        return
    if cluster is not None:
        if scheduler is not None:
            raise ConfigError("give either --cluster (start a batch-system cluster) or --scheduler (join a running "
                              "one), not both.")
        from .hpc import jobqueue_client, load_profile, worker_torch_threads

        threads_per_task = worker_torch_threads(load_profile(cluster))
        with jobqueue_client(cluster, jobs, echo=echo, dashboard_address=dashboard_address) as c:
            yield c, threads_per_task
        return
    from .cluster import DEFAULT_DASHBOARD, dask_client

    with dask_client(scheduler=scheduler, workers=workers, threads=threads, memory_limit=memory_limit,
                     echo=echo, gpu=device != "cpu",
                     dashboard_address=dashboard_address or DEFAULT_DASHBOARD) as (c, torch_threads):
        yield c, torch_threads


def check_output_path(input: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Refuse a chunked output that is not ``.zarr`` or that is, holds or lies in the input.

    Returns
    -------
    Path
        The output, absolute.
    """
    out = Path(output).absolute()
    if out.suffix.lower() in TIFF_SUFFIXES or out.suffix.lower() != ".zarr":
        raise OutputError(f"output {out} must be a .zarr directory for chunked processing.")
    from .io import paths_overlap

    if out.is_symlink():
        raise OutputError(f"output {out} is a symbolic link; give the real path (a link is never followed to replace "
                          "what it points at).")
    if paths_overlap(out, input):
        raise OutputError(f"output {out} is, contains or lies inside the input; choose another output path (the "
                          "input is never overwritten).")
    return out


def _already_complete(summary: RunSummary, echo: Callable[[str], None]) -> RunSummary:
    """The summary of a run that finds its output complete for its job: every chunk skipped."""
    summary.already_complete = True
    echo(f"{summary.output} is already complete for this job; nothing to do.")
    summary.skipped = summary.tasks
    return summary


def _timed_stats(plan: Plan, norm: Any, client: Any, cache: StatsCache | None, listing: str | None,
                 progress: Callable[[str, int, int], None] | None, summary: RunSummary) -> list[ChannelStats]:
    """:func:`compute_stats`, shown as the ``statistics`` step and timed into ``summary``."""
    ts = time.perf_counter()
    if progress is not None:
        progress("statistics", 0, 1)
    stats = compute_stats(plan, norm, client, cache=cache, listing=listing)
    summary.stats_seconds = time.perf_counter() - ts
    if progress is not None:
        progress("statistics", 1, 1)
    return stats


def _job(plan: Plan, options: RunOptions, msha: str) -> dict[str, Any]:
    """What the output's fingerprint covers (:func:`asn2n_dask.resume.fingerprint`),
    but the statistics: known before any data is read."""
    source = plan.source
    return {
        "input": {"path": source.path, "array": source.array_path, "shape": list(source.shape),
                  "dtype": source.dtype, "axes": source.axes},
        "selection": plan.selection.to_dict(),
        "output_axes": plan.axes,
        "labels": list(plan.labels),
        "model_sha256": msha,
        "infer": options.infer.to_dict(),
        "chunks": list(plan.chunks),
        "dtype": options.dtype,
        "ome": options.ome,
        "pyramid": options.pyramid,
        "device": resolve_device(options.infer.device).type,
        "version": __version__,
    }


def _execute_explained(spec: RunSpec, client: Any, progress: Callable[[str, int, int], None] | None,
                       out: Path) -> np.ndarray:
    """:func:`_execute`, with the failures a user can remedy (no permission, a full disk,
    a worker killed again and again) said in one sentence each."""
    try:
        return _execute(spec, client, progress)
    except PermissionError as e:
        raise OutputError(f"cannot write {out}: permission denied ({e.filename}).") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"the disk holding {out} is full ({e.strerror}); free space and run the same "
                              "command again: finished chunks are kept and verified.") from None
        raise
    except Exception as e:
        if type(e).__name__ == "KilledWorker":
            raise OutputError(f"a worker died repeatedly while computing a chunk of {out} (often: out of "
                              "memory); use smaller --chunks or a larger --memory-limit, then run the same "
                              "command to resume.") from None
        raise


def run_pipeline(source: Source, output: str | os.PathLike[str], model_dir: str | os.PathLike[str], *,
                 selection: Selection = Selection(), options: RunOptions = RunOptions(), client: Any = None,
                 scheduler: str | None = None, workers: int | None = None, threads: int | None = None,
                 memory_limit: str | None = None, progress: Callable[[str, int, int], None] | None = None,
                 echo: Callable[[str], None] = log.info, extra: dict[str, Any] | None = None,
                 torch_threads: int | None = None, cluster: str | os.PathLike[str] | None = None,
                 jobs: int | None = None, dashboard_address: str | None = None,
                 stats_cache: StatsCache | None = None) -> RunSummary:
    """Denoise ``source`` into the OME-Zarr ``output``, chunk by chunk, resumably.

    An output that is already the complete result of the same job is left as it is,
    without reading the input, when the input's listing (:func:`source_listing`: the
    size, inode and times of every file, never a pixel) equals the one taken before
    that run read it.  Otherwise the statistics pass runs first and the existing output
    is resumed only when its record, content digests included, equals this job's.

    Parameters
    ----------
    source : Source
        From :func:`asn2n_dask.source.open_source`.
    output : path
        A ``.zarr`` directory: created, or resumed when it holds an unfinished run of
        the same job.
    model_dir : path
        A model directory (:func:`asn2n_dask.save_model`).
    selection : Selection
        Channels and time points.
    options : RunOptions
    client : distributed.Client or "sync", optional
        Cluster to use; ``"sync"`` runs every task in this process (no cluster).
        Default: join ``scheduler`` if given, else start an embedded LocalCluster.
    scheduler : str, optional
        Address of a running Dask scheduler.
    workers, threads, memory_limit
        Embedded LocalCluster size (defaults from the machine).
    progress : callable, optional
        ``progress(what, done, total)``.
    echo : callable
        Where messages for the user go (dashboard link, resume notes).
    extra : dict, optional
        More provenance for the output's attributes.
    torch_threads : int, optional
        Threads of each worker's network when ``client`` is given (an embedded cluster
        divides the machine's cores between its workers).
    cluster : path, optional
        A SLURM/PBS/LSF profile (YAML, :mod:`asn2n_dask.hpc`): batch jobs are started,
        scaled between the profile's min and max jobs (``jobs`` sets the max), and
        cancelled at the end.
    dashboard_address : str, optional
        Where the dashboard of a cluster started here listens (``HOST:PORT``); default
        ``127.0.0.1:0``, a free port on this machine only (``:8787`` exposes it).
    stats_cache : StatsCache, optional
        Statistics this process measured for the same input and channels (``asn2n
        run``'s training): used instead of a second pass when still valid.

    Returns
    -------
    RunSummary
    """
    from .io import output_lock

    out = check_output_path(source.path, output)
    with output_lock(out):
        from .checkpoint import load_model

        t0 = time.perf_counter()
        model = load_model(model_dir, allow_unfinished=options.allow_unfinished)
        plan = make_plan(source, selection, options=options, patch=model.train.norm.risk.patch,
                         out_itemsize=np.dtype(source.dtype).itemsize if options.dtype == "input" else 4)
        cmap = channel_map(source, selection, model)
        from .blend import check_tile

        check_tile(options.infer, model.multiple)
        summary = RunSummary(output=str(out), tasks=plan.n_tasks, plan=plan.to_dict())
        prev = resume.existing(out)
        resume.refuse_foreign(out, prev)
        msha = model_sha(model_dir)
        parts = _job(plan, options, msha)
        if prev and not options.overwrite and isinstance(prev.get("job"), dict):
            resume.refuse_other_job(out, prev["job"], parts, check_stats=False)  # before reading any data
        listing = source_listing(source)  # before any read: what the statistics and the chunks will see
        if not options.overwrite and resume.complete_and_unchanged(prev, parts, listing):
            return _already_complete(summary, echo)
        with _client_for(client, scheduler, workers, threads, memory_limit, echo, options.infer.device, cluster,
                         jobs, dashboard_address) as (
                cl, cluster_threads):
            torch_threads = cluster_threads or torch_threads
            if cl not in (None, "sync"):
                from .cluster import AllocatorPlugin

                cl.register_plugin(AllocatorPlugin())  # before the statistics pass, on every worker
            stats = _timed_stats(plan, model.train.norm, cl, stats_cache, listing, progress, summary)
            parts["stats"] = [s.to_dict() for s in stats]
            note, gaps = missing_note(source)
            if note:
                echo(note)
            prov = {"input_missing_chunks": gaps,
                    "package": "asn2n-dask", "version": __version__, "input": source.path, "input_axes": source.axes,
                    "output_axes": plan.axes, "model": str(model_dir),
                    "model_sha256": msha, "norm": model.train.norm.to_dict(),
                    "risk_estimators": [ch.risk_estimator for ch in model.channels], "infer": options.infer.to_dict(),
                    "stats": [s.to_dict() for s in stats], "channel_map": list(cmap),
                    "stats_seconds": summary.stats_seconds, **(extra or {})}
            summary.resumed = _prepare_output(out, plan, parts, options, prov)
            if summary.resumed and (prev or {}).get("status") == "complete":
                if listing is not None and (prev or {}).get("input_listing") != listing:
                    resume.record_listing(out, listing)  # the content is unchanged: the next run need not read it
                return _already_complete(summary, echo)
            if summary.resumed:
                done = resume.records_written(out)
                echo(f"resuming the unfinished run in {out}: {done} of {plan.n_tasks} chunks recorded as done.")
            spec = RunSpec(plan=plan, output=str(out), model_dir=str(Path(model_dir).absolute()), model_sha=msha,
                           channel_map=cmap, stats=tuple(s.to_dict() for s in stats), dtype=options.dtype,
                           device=options.infer.device, torch_threads=torch_threads)
            results = _execute_explained(spec, cl, progress, out)
            summary.computed = int(np.sum(results == COMPUTED))
            summary.skipped = int(np.sum(results == SKIPPED))
            missing = plan.n_tasks - resume.records_written(out)
            if missing:
                raise OutputError(f"{missing} chunk(s) of {out} have no completion record; run the same command again "
                                  "to finish them.")
            _finalise(out, plan, options, cl, listing)
        summary.seconds = time.perf_counter() - t0
        return summary


def task_graph(spec: RunSpec) -> Any:
    """The run as one dask array: one ``map_blocks`` task per output chunk, nothing else.

    Each block of this (planes, chunks Y, chunks X) array is one task that reads its
    own halo'd region from the store and writes its own output chunk; the block holds
    the task's status (:data:`COMPUTED` or :data:`SKIPPED`).
    """
    import dask.array as da

    plan = spec.plan
    chunks = ((1,) * plan.n_planes, (1,) * plan.grid[0], (1,) * plan.grid[1])
    return da.map_blocks(_run_block, spec=spec, chunks=chunks, dtype=np.int8, name="asn2n-chunk",
                         meta=np.empty((0, 0, 0), np.int8))


def _execute(spec: RunSpec, client: Any, progress: Callable[[str, int, int], None] | None) -> np.ndarray:
    graph = task_graph(spec)
    total = spec.plan.n_tasks
    if client == "sync" or client is None:
        import dask
        from dask.callbacks import Callback

        done = [0]

        def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if isinstance(key, tuple) and key[0].startswith("asn2n-chunk"):
                done[0] += 1
                if progress is not None:
                    progress("denoising", done[0], total)

        with Callback(posttask=posttask), dask.config.set(scheduler="synchronous"):
            return np.asarray(graph.compute())
    from distributed import as_completed, futures_of

    # Each chunk's future is held only until its status arrives: the scheduler and the
    # worker then forget the task (and the copy of the spec it carried), so their memory
    # does not grow with the number of chunks.
    status = np.zeros(tuple(len(c) for c in graph.chunks), np.int8)
    pending = as_completed(futures_of(client.persist(graph)), with_results=True)
    for n, (future, value) in enumerate(pending, 1):
        _, p, iy, ix = future.key
        status[p, iy, ix] = np.asarray(value).flat[0]
        if progress is not None:
            progress("denoising", n, total)
    return status
