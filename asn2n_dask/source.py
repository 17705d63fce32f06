"""Lazy inputs: Zarr v2/v3, OME-Zarr (level 0) and TIFF (tifffile's Zarr view).

A :class:`Source` names an array on disk (never its pixels): path, the array inside a
Zarr group, axes, shape, dtype, chunks.  It opens as a dask-backed
``xarray.DataArray`` on the client (selection, statistics) and as a read-only
``zarr.Array`` inside each task (reading its own region).  A :class:`Selection`
picks channels and a time range by axis name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .io import (
    TIFF_SUFFIXES,
    CheckedArray,
    ImageMeta,
    _is_zarr,
    _read_zarr,
    open_tiff,
    quiet_tifffile,
    tiff_axes,
    tiff_meta,
    tiff_series,
)

__all__ = ["Source", "open_source", "check_source", "Selection", "parse_time", "open_array", "spread",
           "MAX_READ_BLOCKS", "MIN_FRAME_SIDE"]

#: Most blocks one lazy read of a source may have: a dask graph of more would take more
#: memory and scheduling time than the reading itself.
MAX_READ_BLOCKS = 1 << 22
#: Smallest frame side the method accepts, in pixels.
MIN_FRAME_SIDE = 4


@dataclass(frozen=True)
class Source:
    """An image on disk, described but not read.

    Attributes
    ----------
    path : str
        The TIFF file or Zarr store (absolute).
    kind : {"tiff", "zarr", "ome-zarr"}
    array_path : str
        The array inside a Zarr group ("" for a bare array or a TIFF).
    axes : str
        One letter per dimension, ending in ``YX``.
    shape, chunks : tuple of int
    dtype : str
    meta : ImageMeta
    series : int
        The series of a TIFF file (0 for a file of one series and for Zarr).
    """

    path: str
    kind: str
    array_path: str
    axes: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    meta: ImageMeta
    series: int = 0

    def open(self) -> Any:
        """The array, read-only (a ``zarr.Array`` whose damaged chunks raise
        :class:`InputError`); cached per process."""
        return open_array(self.path, self.kind, self.array_path, self.series)

    def to_xarray(self, chunks: tuple[int, ...] | None = None) -> Any:
        """A dask-backed ``xarray.DataArray`` with dims named by lower-case axis letters.

        ``chunks``: the dask blocks (default: the storage chunks); blocks made of whole
        storage chunks read each of them once.
        """
        import dask.array as da
        import xarray as xr

        blocks = tuple(chunks) if chunks is not None else self.chunks
        n_blocks = math.prod(-(-int(n) // max(1, int(b))) for n, b in zip(self.shape, blocks))
        if n_blocks > MAX_READ_BLOCKS:
            raise InputError(f"{self.path} ({' x '.join(str(v) for v in self.shape)} pixels) would be read in "
                             f"{n_blocks} blocks of {blocks}, more than the {MAX_READ_BLOCKS} one pass can schedule; "
                             "store it in larger chunks or process a part of it.")
        name = f"read-{self.path}-{self.array_path}" + ("" if blocks == tuple(self.chunks) else f"-{blocks}")
        arr = da.from_array(_Reader(self), chunks=blocks, asarray=True, fancy=False, name=name)
        coords: dict[str, Any] = {}
        if "C" in self.axes and self.meta.channel_names and len(self.meta.channel_names) == arr.shape[
                self.axes.index("C")]:
            coords["c"] = list(self.meta.channel_names)
        return xr.DataArray(arr, dims=[a.lower() for a in self.axes], coords=coords, name=Path(self.path).name)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[-2], self.shape[-1]

    def missing_chunks(self) -> tuple[int, int, Any] | None:
        """``(missing, total, fill_value)``: chunks of a Zarr source that are not stored
        (zarr reads them as the fill value), from one listing of the store; None for TIFF."""
        if self.kind == "tiff":
            return None
        arr = self.open()
        total = int(arr.nchunks)
        missing = total - _stored_chunks(arr)
        fill = arr.fill_value
        return missing, total, fill.item() if hasattr(fill, "item") else fill


def _stored_chunks(arr: Any) -> int:
    """Chunks of a Zarr array that are stored, from one listing of its keys: the time of
    the listing, whatever the number of chunks the array could hold (zarr's own count
    walks every possible chunk key)."""
    from zarr.core.sync import sync

    shape = tuple(int(v) for v in arr.shape)
    outer = tuple(int(v) for v in (getattr(arr, "shards", None) or arr.chunks))
    per_shard = math.prod(o // int(c) for o, c in zip(outer, arr.chunks))
    grid = tuple(-(-n // c) for n, c in zip(shape, outer))
    meta = arr.metadata
    enc = getattr(meta, "chunk_key_encoding", None)
    sep = getattr(enc, "separator", None) or getattr(meta, "dimension_separator", None) or "."
    lead = ["c"] if getattr(enc, "name", "") == "default" else []
    path = arr.store_path.path
    prefix = f"{path}/" if path else ""

    async def keys() -> list[str]:
        return [k async for k in arr.store_path.store.list_prefix(prefix)]

    stored = 0
    for key in sync(keys()):
        parts = key[len(prefix):].split(sep)
        if parts[: len(lead)] != lead:
            continue
        parts = parts[len(lead):]
        if len(parts) == len(grid) and all(p.isdigit() and int(p) < g for p, g in zip(parts, grid)):
            stored += 1
    return stored * per_shard


class _Reader:
    """Array-like over a source that opens the store where it is read (picklable)."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.shape = source.shape
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(source.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.source.open()[key])


@lru_cache(maxsize=16)
def open_array(path: str, kind: str, array_path: str, series: int = 0) -> Any:
    """Open a source array read-only, once per process (:class:`asn2n_dask.io.CheckedArray`)."""
    import zarr

    from .io import _checked_store

    node: Any
    if kind == "tiff":
        import tifffile

        store = tifffile.imread(path, aszarr=True, series=series)
        node = zarr.open(store, mode="r")
    else:
        node = zarr.open(store=_checked_store(Path(path)), mode="r")
    if array_path:
        node = node[array_path]
    if isinstance(node, zarr.Group):  # multi-level TIFF: level 0
        node = node["0"]
    return CheckedArray(node, path)


def open_source(path: str | os.PathLike[str], axes: str | None = None, *, series: int | None = None) -> Source:
    """Describe a TIFF or Zarr image without reading its pixels.

    Parameters
    ----------
    path : path
        TIFF file, Zarr array, Zarr group holding one array, or OME-Zarr image.
    axes : str, optional
        Axis letters for the axes the file does not name (a file's own axes stand:
        :func:`asn2n_dask.axes.merge_axes`).
    series : int, optional
        The series of a TIFF file that holds several (required then).

    Raises
    ------
    InputError
        Missing path, unknown format, unreadable store, several TIFF series and none
        picked, axes that contradict the file's, or unusable axes.
    """
    p = Path(path).absolute()
    if not p.exists():
        raise InputError(f"input {p} does not exist.")
    if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES:
        number = 0 if series is None else int(series)
        with quiet_tifffile(), open_tiff(p) as tf:
            s = tiff_series(tf, p, series)
            letters = s.axes
            shape = tuple(int(v) for v in s.shape)
            ax = tiff_axes(letters, p, len(shape), axes)
            meta = tiff_meta(tf, s, number, ax, p)
        try:
            arr = open_array(str(p), "tiff", "", number)
        except Exception as e:  # tifffile/zarr raise several types for odd files
            raise InputError(f"{p} cannot be read in pieces ({type(e).__name__}: {e}).") from None
        return Source(str(p), "tiff", "", ax, shape, tuple(arr.chunks), str(arr.dtype), meta, number)
    if p.is_dir() and _is_zarr(p):
        if series is not None:
            raise InputError(f"--series picks a series of a multi-series TIFF file; {p} is a Zarr store.")
        arr, meta = _read_zarr(p, axes)
        from dataclasses import replace

        ax = meta.axes
        root_path = str(getattr(arr, "path", "") or "")
        kind = "ome-zarr" if meta.format == "ome-zarr" else "zarr"
        if ax != meta.axes:
            meta = replace(meta, axes=ax)
        if meta.channel_names and ("C" not in ax or len(meta.channel_names) != arr.shape[ax.index("C")]):
            meta = replace(meta, channel_names=None)  # names that do not match the channels are not used
        return Source(str(p), kind, root_path, ax, tuple(int(v) for v in arr.shape),
                      tuple(int(v) for v in arr.chunks), str(arr.dtype), meta)
    raise InputError(f"input {p} is neither a TIFF file (.tif, .tiff) nor a Zarr store (.zarr).")


def check_source(source: Source) -> None:
    """Refuse, before reading any pixel, a source the method cannot denoise: a dtype that
    is not integer or float, frames under 4x4 pixels.

    Raises
    ------
    InputError
    """
    if np.dtype(source.dtype).kind not in "uif":
        raise InputError(f"{source.path} has dtype {source.dtype}, which is not supported; convert it to an "
                         "integer or float type.")
    h, w = source.frame_shape
    if min(h, w) < MIN_FRAME_SIDE:
        raise InputError(f"{source.path} has frames of {h}x{w}; frames must be at least "
                         f"{MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} pixels.")


def parse_time(text: str | None, n: int) -> tuple[int, int]:
    """``"A:B"`` (Python slice bounds, either may be empty) -> ``(start, stop)`` in ``[0, n]``."""
    if text is None or text.strip() in ("", ":"):
        return 0, n
    parts = text.split(":")
    try:
        if len(parts) == 1:
            a = int(parts[0])
            a = a + n if a < 0 else a
            bounds = (a, a + 1)
        elif len(parts) == 2:
            sl = slice(int(parts[0]) if parts[0].strip() else None, int(parts[1]) if parts[1].strip() else None)
            start, stop, _ = sl.indices(n)
            bounds = (start, stop)
        else:
            raise ValueError
    except ValueError:
        raise InputError(f"--time {text!r} is not a range like 0:100, 5: or 7.") from None
    if not 0 <= bounds[0] < bounds[1] <= n:
        raise InputError(f"--time {text!r} selects no time points of the {n} in the input.")
    return bounds


@dataclass(frozen=True)
class Selection:
    """Which channels and time points to process.

    Attributes
    ----------
    channels : tuple of int, optional
        Source channel indices, in output order (None: all).
    time : (int, int), optional
        Source time range ``[start, stop)`` (None: all).
    """

    channels: tuple[int, ...] | None = None
    time: tuple[int, int] | None = None

    @classmethod
    def parse(cls, source: Source, channels: list[str] | None = None, time: str | None = None) -> Selection:
        """Build a selection from command-line words: channel names or indices, ``A:B``."""
        chans: tuple[int, ...] | None = None
        if channels:
            if "C" not in source.axes:
                raise InputError(f"--channel was given but {source.path} has no channel axis (axes {source.axes}).")
            n = source.shape[source.axes.index("C")]
            names = list(source.meta.channel_names or [])
            picked = []
            for word in channels:
                if word in names:
                    picked.append(names.index(word))
                elif word.lstrip("-").isdigit() and -n <= int(word) < n:
                    picked.append(int(word) % n)
                else:
                    known = f"names {', '.join(names)} or " if names else ""
                    raise InputError(f"--channel {word!r} is not a channel of {source.path} ({known}indices 0 to "
                                     f"{n - 1}).")
            chans = tuple(picked)
        t = None
        if time is not None:
            if "T" not in source.axes:
                raise InputError(f"--time was given but {source.path} has no time axis (axes {source.axes}).")
            t = parse_time(time, source.shape[source.axes.index("T")])
        return cls(chans, t)

    def indices(self, source: Source) -> list[Sequence[int]]:
        """Per source axis, the source indices kept, in output order (a ``range`` for
        an axis kept whole or a time range: nothing is allocated per index)."""
        out: list[Sequence[int]] = []
        for a, n in zip(source.axes, source.shape):
            if a == "C" and self.channels is not None:
                out.append(np.array(self.channels))  # type: ignore[arg-type]
            elif a == "T" and self.time is not None:
                out.append(range(*self.time))
            else:
                out.append(range(n))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"channels": list(self.channels) if self.channels is not None else None,
                "time": list(self.time) if self.time is not None else None}


def spread(n: int, k: int) -> list[int]:
    """Up to ``k`` distinct indices of ``range(n)``, evenly spread from the first to the last."""
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(k, n))}) if n > 0 else []


def sample_planes(source: Source, selection: Selection, k: int) -> tuple[np.ndarray, list[str]]:
    """Read up to ``k`` evenly spaced frames of every selected channel (only those frames).

    Returns
    -------
    planes : ndarray, shape (C, P, H, W)
        Frames in the source dtype.
    names : list of str
        Channel names (source names, else the source indices).
    """
    idx = selection.indices(source)
    non_yx = source.axes[:-2]
    c_ax = non_yx.find("C")
    chans = idx[c_ax] if c_ax >= 0 else np.array([0])
    others = [i for i, _ in enumerate(non_yx) if i != c_ax]
    sizes = [len(idx[i]) for i in others]
    total = int(np.prod(sizes)) if sizes else 1
    pick = spread(total, k)
    arr = source.open()
    out = np.empty((len(chans), len(pick)) + source.frame_shape, dtype=np.dtype(source.dtype))
    for pi, flat in enumerate(pick):
        pos = np.unravel_index(flat, sizes) if sizes else ()
        for ci, c in enumerate(chans):
            key: list[int] = [0] * len(non_yx)
            for j, ax in enumerate(others):
                key[ax] = int(idx[ax][int(pos[j])])
            if c_ax >= 0:
                key[c_ax] = int(c)
            out[ci, pi] = arr[tuple(key)]
    names = list(source.meta.channel_names or [])
    labels = [names[int(c)] if len(names) > int(c) else str(int(c)) for c in chans]
    return out, labels


def read_selection(source: Source, selection: Selection) -> np.ndarray:
    """Read the selected channels and time points of a source into memory (only the
    storage chunks under them), after checking that they fit in the memory available.

    Raises
    ------
    InputError
        The selection would not fit in memory (the remedy, a ``.zarr`` output, is named).
    """
    from .io import check_fits

    idx = selection.indices(source)
    # beside the input: the float32 output and the int8 risk labels
    check_fits(source.path, tuple(len(i) for i in idx), source.dtype, work_per_pixel=5)
    key = tuple(slice(i.start, i.stop, i.step) if isinstance(i, range) else np.asarray(i) for i in idx)
    return np.asarray(source.open().oindex[key])
