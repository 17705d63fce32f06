"""Lazy inputs: Zarr v2/v3, OME-Zarr (level 0) and TIFF (tifffile's Zarr view).

A :class:`Source` names an array on disk (never its pixels): path, the array inside a
Zarr group, axes, shape, dtype, chunks.  It opens as a dask-backed
``xarray.DataArray`` on the client (selection, statistics) and as a read-only
``zarr.Array`` inside each task (reading its own region).  A :class:`Selection`
picks channels and a time range by axis name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .axes import parse_axes
from .errors import InputError
from .io import TIFF_SUFFIXES, ImageMeta, _is_zarr, _read_zarr

__all__ = ["Source", "open_source", "Selection", "parse_time", "open_array", "spread"]


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
    """

    path: str
    kind: str
    array_path: str
    axes: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    meta: ImageMeta

    def open(self) -> Any:
        """The array, read-only (``zarr.Array``); cached per process."""
        return open_array(self.path, self.kind, self.array_path)

    def to_xarray(self, chunks: tuple[int, ...] | None = None) -> Any:
        """A dask-backed ``xarray.DataArray`` with dims named by lower-case axis letters.

        ``chunks``: the dask blocks (default: the storage chunks); blocks made of whole
        storage chunks read each of them once.
        """
        import dask.array as da
        import xarray as xr

        blocks = tuple(chunks) if chunks is not None else self.chunks
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
        missing = total - int(arr.nchunks_initialized)
        fill = arr.fill_value
        return missing, total, fill.item() if hasattr(fill, "item") else fill


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
def open_array(path: str, kind: str, array_path: str) -> Any:
    """Open a source array read-only, once per process."""
    import zarr

    node: Any
    if kind == "tiff":
        import tifffile

        store = tifffile.imread(path, aszarr=True)
        node = zarr.open(store, mode="r")
    else:
        node = zarr.open(store=path, mode="r")
    if array_path:
        node = node[array_path]
    if isinstance(node, zarr.Group):  # multi-level TIFF: level 0
        node = node["0"]
    return node


def open_source(path: str | os.PathLike[str], axes: str | None = None) -> Source:
    """Describe a TIFF or Zarr image without reading its pixels.

    Parameters
    ----------
    path : path
        TIFF file, Zarr array, Zarr group holding one array, or OME-Zarr image.
    axes : str, optional
        Axis letters when the file does not name them.

    Raises
    ------
    InputError
        Missing path, unknown format, unreadable store, or unusable axes.
    """
    p = Path(path).absolute()
    if not p.exists():
        raise InputError(f"input {p} does not exist.")
    if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(p) as tf:
                s = tf.series[0]
                letters = s.axes
                shape = tuple(int(v) for v in s.shape)
        except (tifffile.TiffFileError, ValueError, OSError) as e:
            raise InputError(f"{p} is not a readable TIFF file ({e}).") from None
        letters = letters.replace("I", "T") if "T" not in letters else letters
        if "S" in letters:
            raise InputError(f"{p} is an RGB image; save each colour as a channel of a grey-level stack.")
        try:
            arr = open_array(str(p), "tiff", "")
        except Exception as e:  # tifffile/zarr raise several types for odd files
            raise InputError(f"{p} cannot be read in pieces ({type(e).__name__}: {e}).") from None
        ax = parse_axes(axes or letters, len(shape))
        meta = ImageMeta(axes=ax, format="tiff", source=str(p))
        return Source(str(p), "tiff", "", ax, shape, tuple(arr.chunks), str(arr.dtype), meta)
    if p.is_dir() and _is_zarr(p):
        arr, meta = _read_zarr(p)
        from dataclasses import replace

        ax = parse_axes(axes, arr.ndim) if axes else meta.axes
        root_path = str(getattr(arr, "path", "") or "")
        kind = "ome-zarr" if meta.format == "ome-zarr" else "zarr"
        if ax != meta.axes:
            meta = replace(meta, axes=ax)
        if meta.channel_names and ("C" not in ax or len(meta.channel_names) != arr.shape[ax.index("C")]):
            meta = replace(meta, channel_names=None)  # names that do not match the channels are not used
        return Source(str(p), kind, root_path, ax, tuple(int(v) for v in arr.shape),
                      tuple(int(v) for v in arr.chunks), str(arr.dtype), meta)
    raise InputError(f"input {p} is neither a TIFF file (.tif, .tiff) nor a Zarr store (.zarr).")


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

    def indices(self, source: Source) -> list[np.ndarray]:
        """Per source axis, the source indices kept, in output order."""
        out = []
        for a, n in zip(source.axes, source.shape):
            if a == "C" and self.channels is not None:
                out.append(np.array(self.channels))
            elif a == "T" and self.time is not None:
                out.append(np.arange(*self.time))
            else:
                out.append(np.arange(n))
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
                key[ax] = int(idx[ax][pos[j]])
            if c_ax >= 0:
                key[c_ax] = int(c)
            out[ci, pi] = arr[tuple(key)]
    names = list(source.meta.channel_names or [])
    labels = [names[int(c)] if len(names) > int(c) else str(int(c)) for c in chans]
    return out, labels
