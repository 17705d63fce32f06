"""The run's plan as data: pure geometry, decided before any pixel is read.

A run is cut into output chunks along its spatial axes; every chunk is computed from
the frame-anchored tiles overlapping it and the normalisation patches under those
tiles, so it reads a halo'd region of the input.  Each spatial axis is described by one
small frozen object, :class:`AxisPlan` (its length, chunk, tile, stride and patch: the
way zarr describes a chunk grid per dimension), and the arithmetic along an axis never
looks at another axis: a window's region is the product of its per-axis ranges.  A
:class:`Plan` holds one :class:`AxisPlan` per spatial axis (Y and X for a 2-D network;
Z, Y and X for a 3-D one, whose Z tile is its own; T, Y and X for a 3-D network with
time as its depth axis) and the non-spatial planes (time points, channels, and Z planes
for a 2-D network), wherever they sit among the output's axes.

Tiles of side ``tile`` sit at origins ``k * stride - margin`` on each axis, with
``margin = (tile - stride) // 2``: the grid depends on frame coordinates alone, never on
how the data is cut into chunks, and every pixel lies in the central ``stride`` core of
exactly one tile.  The frame is mirrored past its edges to fill the outer tiles.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import ome
from .axes import canonical_order, check_depth_axis
from .config import MAX_TILE, InferConfig
from .errors import ConfigError, InputError
from .normalize import _patch_spans, patch_span
from .source import Selection, Source, check_source

__all__ = ["TileGrid", "tile_grid", "reflect_index", "WindowTiles", "window_tiles", "check_tile_frame", "WindowPlan",
           "window_plan", "axis_window", "axis_reads", "AxisReads", "AxisPlan", "Windows", "RunOptions", "Plan",
           "make_plan", "run_spatial", "check_run_axes", "channel_labels", "MAX_TASKS", "MIN_CHUNK", "DEFAULT_CHUNK",
           "OME_ORDER", "SPATIAL_AXES", "VOLUME_AXES", "RUN_VOLUME_AXES", "check_tile_z", "axis_stride"]

#: Most chunk tasks one run schedules (a graph of more would take more memory and
#: scheduling time than the work itself).
MAX_TASKS = 1 << 22
#: Smallest output chunk side, in pixels (or the frame's side, when smaller): every
#: task reads a halo of tiles and a normalisation patch around its chunk.
MIN_CHUNK = 16
#: Default output chunk side: the input's, but at least the first and at most the second
#: (a task recomputes the tiles its halo shares with its neighbours, so small chunks
#: cost throughput).
DEFAULT_CHUNK = (1024, 2048)
#: Default output chunk depth of a run over volumes (Z, Y, X): the input's, within these
#: slices (a task holds its chunk, its halo and the network's activations for every
#: Z-Y-X tile it computes).
DEFAULT_CHUNK_Z = (64, 256)
#: The output's axis order (OME-NGFF's).
OME_ORDER = "TCZYX"
#: The axes a run cuts into chunks and tiles, in output order: the last axes of the output.
SPATIAL_AXES = "YX"
#: The spatial axes of a run with a 3-D network: Z is tiled too, with a tile of its own.
VOLUME_AXES = "ZYX"
#: The spatial axes of a run with a 3-D network, by its depth axis: Z (volumes) or T
#: (a time series seen as one volume per channel; T is then tiled like Z).
RUN_VOLUME_AXES = (VOLUME_AXES, "TYX")


# ------------------------------------------------------------------ tiles along one axis
@dataclass(frozen=True)
class TileGrid:
    """Tile geometry along every spatial axis of one frame.

    Attributes
    ----------
    tile, stride, margin : int
        Tile side, distance between origins, and the part of a tile before its core.
    counts : tuple of int
        Tiles along each axis (Y, X).
    pad_before, pad_after : tuple of int
        Mirror padding of the frame along each axis.
    """

    tile: int
    stride: int
    margin: int
    counts: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]

    def origins(self, axis: int) -> NDArray[np.int64]:
        """Tile origins along ``axis`` (0 = Y, 1 = X) in frame coordinates."""
        return np.arange(self.counts[axis]) * self.stride - self.margin


def tile_grid(shape: tuple[int, ...], tile: int, stride: int) -> TileGrid:
    """The tile grid of a frame of ``shape`` (H, W)."""
    margin = (tile - stride) // 2
    counts = tuple(max(1, -(-n // stride)) for n in shape)
    after = tuple((c - 1) * stride - margin + tile - n for c, n in zip(counts, shape))
    return TileGrid(tile, stride, margin, counts, (margin,) * len(shape), after)


def reflect_index(i: NDArray[np.integer], n: int) -> NDArray[np.int64]:
    """Map frame coordinates outside ``[0, n)`` back inside by mirroring at the edges.

    The same mapping as ``numpy.pad(mode="reflect")`` (edge pixel not repeated, applied
    again for distances beyond the frame); an axis of one pixel maps everything to 0.
    """
    i = np.asarray(i, dtype=np.int64)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    j = np.mod(i, period)
    return np.where(j < n, j, period - j)


@dataclass(frozen=True)
class WindowTiles:
    """The tiles one window of a frame needs, along one axis.

    Attributes
    ----------
    first : int
        Origin (frame coordinates, may be negative) of the first tile covering the window.
    count : int
        Number of tiles covering the window.
    span : tuple of int
        ``(first, first + (count - 1) * stride + tile)``: the tiles' extent.
    source : ndarray of int64
        For each position of ``span``, the frame pixel it holds (mirrored at the edges).
    """

    first: int
    count: int
    span: tuple[int, int]
    source: NDArray[np.int64]


def window_tiles(n: int, start: int, stop: int, tile: int, stride: int) -> WindowTiles:
    """The frame-anchored tiles covering ``[start, stop)`` of an axis of length ``n``.

    Every tile of the frame's grid (:func:`tile_grid`) that overlaps the window is
    included, so the window is blended from exactly the tiles, weights and pixels that
    blending the whole frame would use there.
    """
    grid = tile_grid((n,), tile, stride)
    m = grid.margin
    k0 = max(0, -(-(start + m - tile + 1) // stride))
    k1 = min(grid.counts[0] - 1, (stop - 1 + m) // stride)
    first = k0 * stride - m
    span = (first, k1 * stride - m + tile)
    return WindowTiles(first, k1 - k0 + 1, span, reflect_index(np.arange(*span), n))


def check_tile_frame(config: InferConfig, frame_shape: tuple[int, ...]) -> None:
    """Refuse a tile far larger than the frame: past twice the frame's longer side (and
    the default 128 pixels), a tile holds only mirror images of the frame.

    Raises
    ------
    ConfigError
    """
    limit = max(128, 2 * max(int(v) for v in frame_shape))
    if config.tile > limit:
        frame = "x".join(str(int(v)) for v in frame_shape)
        raise ConfigError(f"tile {config.tile} px is more than twice the {frame} frame; use --tile {limit} or less "
                          "(beyond the frame a tile holds only its mirror images).")


def check_tile_z(tile_z: object) -> int:
    """The Z tile of a 3-D network's run (slices), checked: a whole number from 1 to
    :data:`~asn2n_dask.config.MAX_TILE`.

    Raises
    ------
    ConfigError
    """
    if isinstance(tile_z, bool) or not isinstance(tile_z, (int, np.integer)) or not 1 <= int(tile_z) <= MAX_TILE:
        raise ConfigError(f"Z tile must be between 1 and {MAX_TILE} slices; got {tile_z!r:.40}.")
    return int(tile_z)


def axis_stride(tile: int, overlap: float) -> int:
    """Distance between tile origins along an axis: ``tile * (1 - overlap)``, rounded,
    at least 1 (:attr:`asn2n_dask.config.InferConfig.stride` for Y and X; a 3-D run's Z
    stride from its Z tile)."""
    return max(1, int(round(tile * (1.0 - overlap))))


# ------------------------------------------------------------------ the region a window reads
def axis_window(n: int, start: int, stop: int, tile: int, stride: int,
                patch: int) -> tuple[WindowTiles, tuple[int, int], tuple[int, int]]:
    """Along one axis of ``n`` pixels, what the window ``[start, stop)`` depends on: its
    tiles, the normalisation patches ``[p0, p1)`` under them and their neighbours, and
    the pixels ``[r0, r1)`` to read (the union of both)."""
    if not 0 <= start < stop <= n:
        raise ValueError(f"window [{start}, {stop}) is not inside an axis of {n} pixels")
    t = window_tiles(n, start, stop, tile, stride)
    p0, p1 = patch_span(n, int(t.source.min()), int(t.source.max()), patch)
    return t, (p0, p1), (p0 * patch, min(p1 * patch, n))


@dataclass(frozen=True)
class WindowPlan:
    """What computing one window of a frame needs.

    Attributes
    ----------
    window : tuple of int
        ``(y0, y1, x0, x1)``: the pixels computed (frame coordinates; one ``[start,
        stop)`` pair per spatial axis).
    tiles : tuple of WindowTiles
        The frame-anchored tiles covering the window, along Y and X.
    patches : tuple of (int, int)
        Risk/normalisation patches ``[p0, p1)`` along Y and X whose statistics are
        needed: those under the tiles and their neighbours (for the interpolated fields).
    read : tuple of (int, int)
        Frame rows and columns ``[start, stop)`` to read: the union of all the above.
    """

    window: tuple[int, ...]
    tiles: tuple[WindowTiles, ...]
    patches: tuple[tuple[int, int], ...]
    read: tuple[tuple[int, int], ...]


def window_plan(frame_shape: tuple[int, ...], window: tuple[int, ...], infer: InferConfig,
                patch: int) -> WindowPlan:
    """The tiles, patches and input region one window of a frame depends on.

    The result at a pixel depends only on this region and on the channel statistics,
    so any window of a frame computed from its region equals that window of the frame
    computed whole.
    """
    axes = [axis_window(n, window[2 * i], window[2 * i + 1], infer.tile, infer.stride, patch)
            for i, n in enumerate(frame_shape)]
    return WindowPlan(tuple(window), tuple(a[0] for a in axes), tuple(a[1] for a in axes),
                      tuple(a[2] for a in axes))


def _reflect_bounds(n: int, x: NDArray[np.int64], y: NDArray[np.int64]) -> tuple[NDArray[np.int64],
                                                                                NDArray[np.int64]]:
    """Smallest and largest frame pixel that positions ``x..y`` (inclusive) hold once
    mirrored at the edges (:func:`reflect_index`), without listing them: the mirror is
    a tent, so an extreme is its 0 or ``n - 1`` when the range holds one, else one of
    the range's ends."""
    if n == 1:
        return np.zeros_like(x), np.zeros_like(y)
    period = 2 * (n - 1)

    def mirror(j: NDArray[np.int64]) -> NDArray[np.int64]:
        j = np.mod(j, period)
        return np.where(j < n, j, period - j)

    a, b = mirror(x), mirror(y)
    whole = y - x + 1 >= period
    lo = np.where(whole | (np.mod(-x, period) <= y - x), 0, np.minimum(a, b))
    hi = np.where(whole | (np.mod(n - 1 - x, period) <= y - x), n - 1, np.maximum(a, b))
    return lo, hi


def axis_reads(n: int, start: NDArray[np.int64], stop: NDArray[np.int64], tile: int, stride: int,
               patch: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """What windows ``[start, stop)`` of an axis of ``n`` pixels read, by arithmetic
    alone (the same numbers as :func:`window_plan`, for any number of windows and any
    axis length, without listing pixels).

    Returns
    -------
    read0, read1 : ndarray of int64
        The rows (or columns) ``[read0, read1)`` each window reads.
    tiles : ndarray of int64
        Tiles covering each window.
    span : ndarray of int64
        Extent of those tiles, in pixels.
    """
    start, stop = np.asarray(start, np.int64), np.asarray(stop, np.int64)
    margin = (tile - stride) // 2
    count = max(1, -(-n // stride))
    k0 = np.maximum(0, -((-(start + margin - tile + 1)) // stride))
    k1 = np.minimum(count - 1, (stop - 1 + margin) // stride)
    first = k0 * stride - margin
    end = k1 * stride - margin + tile
    lo, hi = _reflect_bounds(n, first, end - 1)
    p0, p1 = _patch_spans(n, lo, hi, patch)
    return p0 * patch, np.minimum(p1 * patch, n), k1 - k0 + 1, end - first


@dataclass(frozen=True)
class AxisReads:
    """What the windows of one axis read (:meth:`AxisPlan.reads`).

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


# ------------------------------------------------------------------ one spatial axis of a run
@dataclass(frozen=True)
class AxisPlan:
    """One spatial axis of a run: its length, output chunk, tiles and normalisation patches.

    Attributes
    ----------
    name : str
        The axis's letter (``"Y"``, ``"X"``).
    size : int
        Pixels along the axis.
    chunk : int
        Output chunk side along the axis (at most ``size``).
    tile, stride : int
        Tile side and distance between tile origins (:func:`tile_grid`).
    patch : int
        Risk/normalisation patch side.
    """

    name: str
    size: int
    chunk: int
    tile: int
    stride: int
    patch: int

    def __post_init__(self) -> None:
        if min(self.size, self.chunk, self.tile, self.stride, self.patch) < 1 or self.chunk > self.size:
            raise ValueError(f"axis {self.name}: size {self.size}, chunk {self.chunk}, tile {self.tile}, stride "
                             f"{self.stride} and patch {self.patch} must be positive, the chunk at most the size")

    @property
    def grid(self) -> int:
        """Chunks along the axis."""
        return -(-self.size // self.chunk)

    @property
    def margin(self) -> int:
        """The part of a tile before its core."""
        return (self.tile - self.stride) // 2

    def window(self, i: int) -> tuple[int, int]:
        """The pixels ``[start, stop)`` chunk ``i`` writes."""
        return i * self.chunk, min(self.size, (i + 1) * self.chunk)

    def region(self, start: int, stop: int) -> tuple[WindowTiles, tuple[int, int], tuple[int, int]]:
        """Tiles, patches and pixels read of the window ``[start, stop)`` (:func:`axis_window`)."""
        return axis_window(self.size, start, stop, self.tile, self.stride, self.patch)

    def reads(self) -> AxisReads:
        """What the axis's chunks read, summed (and the largest), in time independent of its length."""
        return _axis_reads(self.size, self.chunk, self.tile, self.stride, self.patch)

    @property
    def halo(self) -> int:
        """Most pixels a chunk reads beyond its own, on either side."""
        return self.reads().halo


@dataclass(frozen=True)
class Windows(Sequence[tuple[int, ...]]):
    """The windows ``(y0, y1, x0, x1)`` of a frame cut into chunks, in row-major order of
    the chunk grid, computed on demand (a frame of any size is a few numbers)."""

    frame: tuple[int, ...]
    chunk: tuple[int, ...]

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-n // c) for n, c in zip(self.frame, self.chunk))

    def __len__(self) -> int:
        return math.prod(self.grid)

    def position(self, k: int) -> tuple[int, ...]:
        """The chunk grid position of window ``k``."""
        pos = []
        for g in reversed(self.grid):
            k, i = divmod(k, g)
            pos.append(i)
        return tuple(reversed(pos))

    def number(self, position: Sequence[int]) -> int:
        """The window number of a chunk grid position."""
        k = 0
        for g, i in zip(self.grid, position):
            k = k * g + int(i)
        return k

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        n = len(self)
        k = int(k) + n if int(k) < 0 else int(k)
        if not 0 <= k < n:
            raise IndexError(f"window {k} of {n}")
        out: list[int] = []
        for i, size, c in zip(self.position(k), self.frame, self.chunk):
            out += [i * c, min(size, (i + 1) * c)]
        return tuple(out)


# ------------------------------------------------------------------ the run
@dataclass(frozen=True)
class RunOptions:
    """Options of a pipeline run besides the model.

    Attributes
    ----------
    infer : InferConfig
        Tiles, overlap, blending, inference domain, device.
    chunks : (int, int) or (int, int, int), optional
        Output chunk side along Y and X, or along Z, Y and X for a run with a 3-D
        network: one size per axis the run tiles (default: the input's, at least 1024 and
        at most 2048 along each: a task recomputes the tiles its halo shares with its
        neighbours, about (1 + tile / chunk)^2 of the work, so small chunks cost
        throughput).  One task per output chunk.
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
    chunks: tuple[int, ...] | None = None
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
        if self.chunks is not None and (len(self.chunks) not in (2, 3) or min(self.chunks) < 1):
            raise ConfigError(f"--chunks must be two positive sizes (Y X), or three (Z Y X) for a 3-D model; got "
                              f"{self.chunks}.")
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
    spatial : tuple of AxisPlan
        The axes cut into chunks and tiles (Y, X; or Z, Y, X for a 3-D network, the
        Z tile its own: :attr:`tile_z`; or T, Y, X for one with time as its depth
        axis), in output order: per axis its length, chunk, tiles and patches.
    plane_shape : tuple of int
        Output sizes of the other axes, the planes (planes = their product).
    plane_sources : tuple of sequences of int
        Per plane axis, the source index of each output index (a ``range`` where the
        selection is evenly spaced, so the plan every task carries stays a few hundred
        bytes for any number of time points).
    channel_axis : int or None
        Position of ``C`` among the plane axes.
    infer : InferConfig
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

    The output's ``shape`` and ``chunks`` (1 along every plane axis), the chunk
    ``grid`` and the ``windows`` each chunk position writes (the same for every plane;
    :meth:`window_plan` gives the region it reads) follow from these.
    """

    source: Source
    selection: Selection
    axes: str
    spatial: tuple[AxisPlan, ...]
    plane_shape: tuple[int, ...]
    plane_sources: tuple[Sequence[int], ...]
    channel_axis: int | None
    infer: InferConfig
    itemsize: int
    out_itemsize: int = 4
    order: tuple[int, ...] = ()
    labels: tuple[str, ...] = ("risk",)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(i) for i in _interleave(self.axes, self.spatial_axes, self.plane_shape, self.frame_shape))

    @property
    def chunks(self) -> tuple[int, ...]:
        ones = (1,) * len(self.plane_shape)
        return tuple(int(i) for i in _interleave(self.axes, self.spatial_axes, ones, [a.chunk for a in self.spatial]))

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(a.size for a in self.spatial)

    @property
    def grid(self) -> tuple[int, ...]:
        """Chunks along each spatial axis."""
        return tuple(a.grid for a in self.spatial)

    @property
    def windows(self) -> Windows:
        """Per chunk position (row-major over :attr:`grid`), the window ``(y0, y1, x0,
        x1)`` it writes: a sequence computed on demand."""
        return Windows(self.frame_shape, tuple(a.chunk for a in self.spatial))

    @property
    def patch(self) -> int:
        """Risk/normalisation patch side (in Y and X)."""
        return self.spatial[-1].patch

    @property
    def tile_z(self) -> int | None:
        """The depth tile (slices) of a run over Z (or T), Y and X (a 3-D network's); None for a 2-D run."""
        return self.spatial[0].tile if len(self.spatial) == 3 else None

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.plane_shape, dtype=np.int64)) if self.plane_shape else 1

    @property
    def n_tasks(self) -> int:
        return self.n_planes * len(self.windows)

    def window_plan(self, k: int) -> WindowPlan:
        """Tiles, patches and region read of chunk position ``k``."""
        w = self.windows[k]
        axes = [a.region(w[2 * i], w[2 * i + 1]) for i, a in enumerate(self.spatial)]
        return WindowPlan(w, tuple(r[0] for r in axes), tuple(r[1] for r in axes), tuple(r[2] for r in axes))

    def window_slices(self, k: int) -> tuple[slice, ...]:
        """The spatial part of the output index of chunk position ``k``."""
        w = self.windows[k]
        return tuple(slice(w[2 * i], w[2 * i + 1]) for i in range(len(self.spatial)))

    @property
    def halo(self) -> tuple[int, ...]:
        """Largest number of pixels a task reads beyond its window, along each spatial axis."""
        return tuple(a.halo for a in self.spatial)

    def _grid_text(self) -> str:
        return " x ".join(str(g) for g in self.grid)

    def check_size(self) -> None:
        """Refuse a run of more chunk tasks than :data:`MAX_TASKS`, before any data is read.

        Raises
        ------
        InputError
        """
        if self.n_tasks > MAX_TASKS:
            raise InputError(f"{self.source.path}: the run would be {self.n_tasks} chunk tasks ({self.n_planes} "
                             f"planes x {self._grid_text()} chunks), more than the {MAX_TASKS} one run "
                             "schedules; select fewer time points or channels (--time, --channel), or use larger "
                             "--chunks.")

    @property
    def spatial_axes(self) -> str:
        """The tiled axes' letters, in output order (``"YX"``, ``"ZYX"`` or ``"TYX"``)."""
        return "".join(a.name for a in self.spatial)

    def plane_index(self, p: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        """Output index (plane axes), source index (plane axes of the input, in the
        input's order) and output channel of plane ``p``."""
        out = tuple(int(i) for i in np.unravel_index(p, self.plane_shape)) if self.plane_shape else ()
        at = [i for i, a in enumerate(self.axes) if a not in self.spatial_axes]  # the planes' output positions
        read_from = [self.order[i] if self.order else i for i in at]  # ... and their input positions
        src = [int(self.plane_sources[a][i]) for a, i in enumerate(out)]
        c = out[self.channel_axis] if self.channel_axis is not None else 0
        return out, tuple(v for _, v in sorted(zip(read_from, src))), c

    def output_index(self, out: tuple[int, ...], spatial: Sequence[slice]) -> tuple[int | slice, ...]:
        """The index into the output of plane ``out`` (:meth:`plane_index`) and the
        ``spatial`` slices (:meth:`window_slices`), wherever the spatial axes sit."""
        return _interleave(self.axes, self.spatial_axes, out, spatial)

    def source_index(self, src: tuple[int, ...], spatial: Sequence[slice]) -> tuple[int | slice, ...]:
        """The index into the input, in its own axis order, of the plane ``src``
        (:meth:`plane_index`) and the ``spatial`` slices (a region read)."""
        return _interleave(self.source.axes, self.spatial_axes, src, spatial)

    @property
    def label_axes(self) -> str:
        """Axes of a risk label image: the output's without ``C``."""
        return str(ome.drop_channel(self.axes)[0])

    def label_index(self, out: tuple[int, ...], spatial: Sequence[slice]) -> tuple[int | slice, ...]:
        """The index into a label image of plane ``out`` (``C``'s entry dropped) and the
        ``spatial`` slices."""
        planes = tuple(i for a, i in enumerate(out) if a != self.channel_axis)
        return _interleave(self.label_axes, self.spatial_axes, planes, spatial)

    def bytes_read(self) -> int:
        return math.prod(a.reads().total for a in self.spatial) * self.n_planes * self.itemsize

    def bytes_written(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * (self.out_itemsize + 1)

    def peak_task_bytes(self, widths: tuple[int, ...] = (32, 64, 128)) -> int:
        """Estimated peak memory of one task: region, tile block, tiles, network activations."""
        reads = [a.reads() for a in self.spatial]  # per axis, the window reading the largest region
        region = math.prod(r.largest for r in reads)
        span = math.prod(r.span for r in reads)
        n_tiles = math.prod(r.tiles for r in reads)
        t2 = math.prod(a.tile for a in self.spatial)
        views = 2 if self.infer.infer_on == "twins" and self.tile_z is None else 1
        acts = self.infer.batch * views * t2 * 4 * 3 * sum(c / 4**i for i, c in enumerate(widths))
        return int(region * 8 * 3 + span * 4 * 3 * 2 + n_tiles * t2 * 4 * 5 + acts + span * 8 * 4)

    def describe(self, preset: str = "small") -> str:
        """The plan as text (``--dry-run``), memory estimated for the network ``preset``."""
        from .config import PRESETS, PRESETS_3D

        gib = 1024**3
        reordered = "" if self.axes == self.source.axes else f" (the input's {self.source.axes} in OME order)"
        halo = ", ".join(f"{a.halo} px ({a.name})" for a in self.spatial)
        tiles = (f"{self.infer.tile} px at {self.infer.overlap:.0%} overlap (stride {self.infer.stride})"
                 if self.tile_z is None else
                 f"{self.tile_z} x {self.infer.tile} x {self.infer.tile} voxels ({' '.join(self.spatial_axes)}) at "
                 f"{self.infer.overlap:.0%} "
                 f"overlap (strides {self.spatial[0].stride}, {self.infer.stride})")
        reach = f"tiles overlapping a chunk plus one {self.patch}-px normalisation patch"
        if self.tile_z is not None:
            reach = (f"tiles overlapping a chunk plus one {self.patch}-px risk patch in Y and X" if self.patch > 1 else
                     "tiles overlapping a chunk (one global intensity scale: no normalisation patches)")
        lines = [
            f"input      {self.source.path} ({self.source.kind}, axes {self.source.axes}, shape "
            f"{self.source.shape}, chunks {self.source.chunks}, {self.source.dtype})",
            f"selection  {json.dumps(self.selection.to_dict())}",
            f"output     axes {self.axes}{reordered}, shape {self.shape}, chunks {self.chunks}",
            f"labels     {', '.join('labels/' + n for n in self.labels)} (axes {self.label_axes})",
            f"tiles      {tiles}, {self.infer.blend} blending, anchored to the frame origin",
            f"halo       {halo}: {reach}",
            f"tasks      {self.n_tasks} = {self.n_planes} planes x {self._grid_text()} chunks",
            f"read       {self.bytes_read() / gib:.3f} GiB ({self.bytes_read() / max(1, self._input_bytes()):.2f}x "
            "the selected input)",
            f"written    {self.bytes_written() / gib:.3f} GiB (denoised + risk labels)",
            f"memory     about {self.peak_task_bytes({**PRESETS, **PRESETS_3D}[preset]) / 1024**2:.0f} MiB per "
            "running task "
            f"(preset {preset})",
        ]
        return "\n".join(lines)

    def _input_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.source.path, "input_axes": self.source.axes, "axes": self.axes,
                "labels": list(self.labels), "shape": list(self.shape), "chunks": list(self.chunks),
                "halo": list(self.halo), "tasks": self.n_tasks, "bytes_read": self.bytes_read(),
                "bytes_written": self.bytes_written(), "peak_task_bytes": self.peak_task_bytes(),
                "selection": self.selection.to_dict()}


def _interleave(axes: str, spatial: str, planes: Sequence[Any], cuts: Sequence[Any]) -> tuple[Any, ...]:
    """One entry per letter of ``axes``: the next of ``cuts`` for a letter of ``spatial``,
    the next of ``planes`` for any other.

    >>> _interleave("TCYX", "TYX", [1], ["t", "y", "x"])
    ('t', 1, 'y', 'x')
    """
    p, c = iter(planes), iter(cuts)
    return tuple(next(c) if a in spatial else next(p) for a in axes)


def _compact(index: Any) -> Sequence[int]:
    """Source indices as a ``range`` when evenly spaced (a time range, one channel), else a tuple."""
    if isinstance(index, range):
        return index
    v = [int(i) for i in np.asarray(index).ravel()]
    step = v[1] - v[0] if len(v) > 1 else 1
    if v and step and all(b - a == step for a, b in zip(v, v[1:])):
        return range(v[0], v[-1] + step, step)
    return tuple(v)


def _default_chunk(src_chunk: int, n: int, bounds: tuple[int, int] = DEFAULT_CHUNK) -> int:
    lo, hi = bounds
    return int(min(n, max(lo, min(hi, src_chunk))))


def output_chunks(source: Source, chunks: Sequence[int] | None, spatial: str = SPATIAL_AXES) -> tuple[int, ...]:
    """The output chunk along each axis of ``spatial`` (the run's tiled axes): ``chunks``
    (``--chunks``; over Z, Y and X also Y and X alone, Z then by default), else the
    input's within :data:`DEFAULT_CHUNK` (:data:`DEFAULT_CHUNK_Z` along Z of a run over
    volumes).  Decided from the input's metadata alone, so that a bad value is said
    before any training or reading.

    Raises
    ------
    InputError
        The input lacks one of the ``spatial`` axes.
    ConfigError
        ``chunks`` with a size for each of other axes, or smaller than :data:`MIN_CHUNK`.
    """
    if any(a not in source.axes for a in spatial):
        raise InputError(f"{source.path} has axes {source.axes}; a run over {spatial} needs each of them.")
    at = [source.axes.index(a) for a in spatial]  # their positions in the input
    sizes = tuple(int(source.shape[i]) for i in at)

    def default(i: int, n: int, bounds: tuple[int, int] = DEFAULT_CHUNK) -> int:
        return _default_chunk(source.chunks[i], n, bounds)

    if chunks is None:
        return tuple(default(i, n, DEFAULT_CHUNK_Z if len(spatial) == 3 and k == 0 else DEFAULT_CHUNK)
                     for k, (i, n) in enumerate(zip(at, sizes)))
    if len(spatial) == 3 and len(chunks) == 2:  # Y-X given: Z as by default
        chunks = (default(at[0], sizes[0], DEFAULT_CHUNK_Z), *chunks)
    if len(chunks) != len(spatial):
        raise ConfigError(f"--chunks must give one size per axis of {spatial}; got {tuple(chunks)}.")
    if any(c < min(MIN_CHUNK, n) for c, n in zip(chunks, sizes)):
        raise ConfigError(f"--chunks {'x'.join(map(str, chunks))} is too small: chunks must be at least "
                          f"{MIN_CHUNK} pixels (or the image's {'x'.join(map(str, sizes))}) along "
                          f"{' and '.join(spatial)}, each task reading the tiles around its chunk; use 1024 or more "
                          "along Y and X.")
    return tuple(int(c) for c in chunks)


def run_spatial(dims: int, depth_axis: str | None = None) -> str:
    """The axes a run tiles: :data:`SPATIAL_AXES` for 2-D networks; for 3-D ones the
    depth axis (``Z`` when None, or ``T``), Y and X."""
    return SPATIAL_AXES if dims == 2 else f"{(depth_axis or 'Z').upper()}{SPATIAL_AXES}"


def check_run_axes(source: Source, selection: Selection, spatial: str, *, model: bool = True) -> None:
    """Refuse a run over ``spatial`` that the input's axes or the selection do not allow,
    from the metadata alone (before any training or reading): a missing axis, a Z axis
    that a run over T (time as depth) would leave out, or time points selected for one.
    ``model``: the depth axis is a trained model's (the remedy a message gives is another
    model); False before a run trains one (the remedy is another depth axis).

    Raises
    ------
    InputError, ConfigError
    """
    if spatial not in (SPATIAL_AXES, *RUN_VOLUME_AXES):
        raise ValueError(f"a run tiles {SPATIAL_AXES} or one of {RUN_VOLUME_AXES}; got {spatial!r}")
    if len(spatial) == 3:
        check_depth_axis(source.axes, spatial[0], str(source.path), model=model)
    if any(a not in source.axes for a in spatial):
        raise InputError(f"{source.path} has axes {source.axes}; a run over {spatial} needs each of them.")
    if "T" in spatial and selection.time is not None:
        raise ConfigError("--time selects time points, but a model with time as its depth axis denoises the whole "
                          "time series as one volume; leave --time out.")


def make_plan(source: Source, selection: Selection = Selection(), *, options: RunOptions = RunOptions(),
              patch: int = 64, out_itemsize: int = 4, spatial: str = SPATIAL_AXES,
              tile_z: int | None = None) -> Plan:
    """Plan a run: output chunks and, for each, the region it reads.

    The output holds the input's axes in T, C, Z, Y, X order (an ImageJ hyperstack's
    TZCYX gives TCZYX): each task reads its own region of the input as stored, the
    plan only reorders the index.

    Parameters
    ----------
    source : Source
    selection : Selection
    options : RunOptions
        ``options.chunks`` gives one side per axis of ``spatial`` (over Z, Y and X also
        Y and X alone, Z then as by default: :data:`DEFAULT_CHUNK_Z`); ``options.infer``
        the Y-X tile and the overlap of every axis.
    patch : int
        Risk/normalisation patch side along Y and X (a 3-D network's run classifies
        each slice's patches as a frame's, though it normalises on one global range).
    out_itemsize : int
        Bytes per output pixel.
    spatial : str
        The axes cut into chunks and tiles: ``"YX"`` (:data:`SPATIAL_AXES`, a 2-D
        network), or ``"ZYX"`` or ``"TYX"`` (:data:`RUN_VOLUME_AXES`, a 3-D network with
        Z or time as its depth axis, with ``tile_z``).  Time as depth takes the whole time
        series (a ``selection`` of time points is refused).
    tile_z : int, optional
        A 3-D network's depth tile, in slices (its training sub-volume's depth): tiles of
        ``tile_z`` slices at :func:`axis_stride` of it along the first of three spatial
        axes.  Required with three spatial axes, refused with two.  The depth axis has no
        patches (patch side 1): the risk patch is a Y-X square of one slice.

    Raises
    ------
    InputError
        Frames smaller than 4x4 pixels, an axis that is not T, C, Z, Y or X, or one
        of ``spatial`` missing.
    ConfigError
        Chunks that do not match ``spatial``, a ``tile_z`` missing, out of range or
        given to a 2-D run, or time points selected for a run over T.
    """
    check_source(source)
    if not set(source.axes) <= set(OME_ORDER):
        raise InputError(f"{source.path} has axes {source.axes}; OME-Zarr output needs every axis named T, C, Z, Y "
                         "or X (name the others with --axes).")
    order = canonical_order(source.axes, OME_ORDER)
    axes = "".join(source.axes[i] for i in order)
    check_run_axes(source, selection, spatial)
    if (len(spatial) == 3) != (tile_z is not None):
        raise ConfigError(f"a run over {spatial} needs a Z tile exactly when it tiles three axes (a 3-D network's); "
                          f"got Z tile {tile_z}.")
    at = [source.axes.index(a) for a in spatial]  # their positions in the input
    sizes = tuple(int(source.shape[i]) for i in at)
    check_tile_frame(options.infer, sizes[-2:])
    chunk = output_chunks(source, options.chunks, spatial)
    kept = selection.indices(source)  # per input axis
    idx = [kept[i] for i in order]
    tile, stride = options.infer.tile, options.infer.stride
    tiles = [(tile, stride, patch)] * 2
    if tile_z is not None:
        tz = check_tile_z(tile_z)
        tiles.insert(0, (tz, axis_stride(tz, options.infer.overlap), 1))
    axis_plans = tuple(AxisPlan(a, n, min(c, n), *t) for a, n, c, t in zip(spatial, sizes, chunk, tiles))
    planes = [i for i, a in enumerate(axes) if a not in spatial]  # output positions of the other axes
    c_ax = [axes[i] for i in planes].index("C") if "C" in axes else None
    labels = ome.channel_label_names("risk", None if c_ax is None else channel_labels(source, idx[planes[c_ax]]))
    return Plan(source=source, selection=selection, axes=axes, spatial=axis_plans,
                plane_shape=tuple(len(idx[i]) for i in planes),
                plane_sources=tuple(_compact(idx[i]) for i in planes), channel_axis=c_ax,
                infer=options.infer, itemsize=np.dtype(source.dtype).itemsize, out_itemsize=out_itemsize,
                order=order if order != tuple(range(len(order))) else (), labels=tuple(labels))


def channel_labels(source: Source, channels: Sequence[int]) -> list[str]:
    """The output's name of each selected channel (source indices): the input's channel
    name, else the source index."""
    names = source.meta.channel_names
    return [names[int(i)] if names else str(int(i)) for i in channels]
