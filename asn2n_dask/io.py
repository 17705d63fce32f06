"""Reading and writing images: TIFF (tifffile), Zarr v2/v3 and OME-Zarr (zarr).

The only module of the core that touches files.  Reads give a numpy array and an
:class:`ImageMeta` with axis letters; writes go to a temporary path beside the target
and are renamed into place when complete, so a failed run never leaves a half-written
output under the requested name, and the input is only ever opened read-only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import ome
from .axes import merge_axes, parse_axes
from .errors import InputError, OutputError

__all__ = ["ImageMeta", "read_image", "check_output", "paths_overlap", "write_image", "cast_output", "TIFF_SUFFIXES",
           "output_lock", "lock_path", "available_memory", "CheckedArray", "usable_scale"]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
ZARR_SUFFIXES = (".zarr",)
_AXIS_WORDS = {"t": "T", "time": "T", "c": "C", "channel": "C", "ch": "C", "z": "Z", "y": "Y", "x": "X"}


@dataclass(frozen=True)
class ImageMeta:
    """What is known about an image besides its pixels.

    Attributes
    ----------
    axes : str
        One letter per dimension, ending in ``YX``.
    format : str
        ``tiff``, ``zarr`` or ``ome-zarr``.
    scale : tuple of float, optional
        Physical pixel size per axis (OME-Zarr), else None.
    units : tuple of str or None, optional
        Unit per axis (OME-Zarr).
    channel_names : tuple of str, optional
        Names of the ``C`` axis entries (OME-Zarr ``omero`` metadata).
    source : str
        The path read.
    file_axes : str, optional
        The axes as the file names them (generic letters such as ``Q`` or ``I`` for
        axes it leaves unnamed); None when it names none.  ``--axes`` may rename only
        what the file leaves unnamed (:func:`asn2n_dask.axes.merge_axes`).
    """

    axes: str
    format: str
    scale: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    channel_names: tuple[str, ...] | None = None
    source: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    file_axes: str | None = None


def _letters(names: list[str]) -> str:
    out = []
    for n in names:
        letter = _AXIS_WORDS.get(str(n).lower())
        if letter is None:
            letter = next(c for c in "QRPONMLKJIHGFEDBA" if c not in out)
        out.append(letter)
    return "".join(out)


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() in ZARR_SUFFIXES or any(
        (path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


GIB = 1024**3


def available_memory() -> int:
    """Bytes of memory this process can still allocate (the system's available memory)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # no psutil, or no reading on this system
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 1 << 62


def check_fits(path: str | os.PathLike[str], shape: tuple[int, ...], dtype: Any, *, work_per_pixel: int = 0) -> None:
    """Refuse to read ``shape`` pixels of ``dtype`` into memory when they do not fit,
    with ``work_per_pixel`` more bytes a pixel for what is computed beside them.

    Raises
    ------
    InputError
        Naming the size, the memory available and the remedy (a ``.zarr`` output).
    """
    need = math.prod(int(v) for v in shape) * (np.dtype(dtype).itemsize + work_per_pixel)
    free = available_memory()
    if need > free:
        dims = " x ".join(str(int(v)) for v in shape)
        raise InputError(f"{path} holds {need / GIB:.1f} GiB of pixels ({dims} {np.dtype(dtype)}), more than the "
                         f"{free / GIB:.1f} GiB of memory available; write a .zarr output instead (computed chunk by "
                         "chunk, in bounded memory).")


def _reason(e: BaseException) -> str:
    """An exception as a short clause for a one-sentence message."""
    text = " ".join(str(e).split()).rstrip(".")
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's own log lines about a damaged file: the error raised says it once."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def open_tiff(path: Path) -> Any:
    """Open a TIFF file (``tifffile.TiffFile``), or refuse it in one sentence."""
    import tifffile

    try:
        return tifffile.TiffFile(path)
    except Exception as e:  # tifffile raises many types on foreign or damaged files
        raise InputError(f"{path} is not a readable TIFF file ({_reason(e)}).") from None


def tiff_series(tf: Any, path: Path, series: int | None) -> Any:
    """The image series of an open TIFF file that a read uses.

    A file holding several series (a thumbnail and the stack, several positions...)
    needs ``series``; one whose header claims more uncompressed pixels than the file
    holds is refused before anything is allocated.

    Raises
    ------
    InputError
        Several series and none picked, no such series, or a truncated file.
    """
    try:
        found = list(tf.series)
    except Exception as e:
        raise InputError(f"{path} is not a readable TIFF file ({_reason(e)}).") from None
    if not found:
        raise InputError(f"{path} holds no image.")
    if series is None:
        if len(found) > 1:
            listed = "; ".join(f"series {i}: {tuple(int(v) for v in s.shape)} {s.axes}" for i, s in enumerate(found))
            raise InputError(f"{path} holds {len(found)} image series ({listed}); pass --series N to pick one.")
        series = 0
    if not 0 <= int(series) < len(found):
        raise InputError(f"--series {series} is not a series of {path}, which holds {len(found)} (0 to "
                         f"{len(found) - 1}).")
    s = found[int(series)]
    try:
        compressed = int(s.keyframe.compression) != 1
        nbytes = math.prod(int(v) for v in s.shape) * np.dtype(s.dtype).itemsize
    except Exception as e:
        raise InputError(f"{path} is not a readable TIFF file ({_reason(e)}).") from None
    size = path.stat().st_size
    if not compressed and nbytes > size:
        raise InputError(f"{path} is truncated or damaged: its header describes {nbytes} bytes of pixels but the "
                         f"file holds {size} bytes in all; restore or re-copy it.")
    return s


def tiff_axes(letters: str, path: Path, ndim: int) -> str:
    """Axis letters of a TIFF series as the package uses them (ImageJ's ``I``: time)."""
    axes = letters.replace("I", "T") if "T" not in letters else letters
    if "S" in axes:
        raise InputError(f"{path} is an RGB image; save each colour as a channel of a grey-level stack.")
    if not axes.endswith("YX"):
        raise InputError(f"{path} has axes {axes}; the last two must be the frame's Y and X.")
    return parse_axes(axes, ndim)


def _read_tiff(path: Path, series: int | None = None, axes: str | None = None) -> tuple[NDArray[Any], ImageMeta]:
    with quiet_tifffile(), open_tiff(path) as tf:
        s = tiff_series(tf, path, series)
        own = tiff_axes(s.axes, path, len(s.shape))
        axes = own if axes is None else merge_axes(s.axes, axes, len(s.shape), source=str(path))
        check_fits(path, tuple(s.shape), s.dtype)
        try:
            data = s.asarray()
        except Exception as e:  # damaged strips or tiles, a truncated compressed file
            raise InputError(f"{path} is truncated or damaged: its pixels cannot be read ({_reason(e)}); restore "
                             "or re-copy it.") from None
    return data, ImageMeta(axes=axes, format="tiff", source=str(path), file_axes=s.axes)


def _checked_store(path: Path) -> Any:
    """A read-only local Zarr store that reads only regular files that fit in memory."""
    from zarr.storage import LocalStore

    class CheckedStore(LocalStore):
        def _check(self, key: str) -> None:
            where = self.root / key
            try:
                st = os.stat(where)
            except OSError:  # missing: zarr's own rule (the fill value) applies
                return
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise InputError(f"{where} is not a regular file (a device, pipe or socket) but lies in the Zarr "
                                 f"store {path}; the store is damaged: restore or re-copy it.")
            if st.st_size > (256 << 20) and st.st_size > available_memory():
                raise InputError(f"{where} in the Zarr store {path} is {st.st_size / GIB:.1f} GiB, more than the "
                                 "memory available; the store is damaged: restore or re-copy it.")

        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            self._check(key)
            return await super().get(key, prototype, byte_range)

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
            key_ranges = list(key_ranges)
            for key, _ in key_ranges:
                self._check(key)
            return await super().get_partial_values(prototype, key_ranges)

    return CheckedStore(path, read_only=True)


class CheckedArray:
    """A read-only array whose reads fail in one sentence.

    Wraps a ``zarr.Array`` (or tifffile's Zarr view of a TIFF): attributes are the
    array's; a chunk that cannot be read or decoded (damaged, truncated, of the wrong
    size) raises :class:`InputError` naming the store, instead of a codec's exception.
    """

    def __init__(self, array: Any, where: str) -> None:
        self._array = array
        self._where = where

    def __getattr__(self, name: str) -> Any:
        return getattr(self._array, name)

    def _read(self, fn: Any) -> Any:
        try:
            return fn()
        except InputError:
            _quiet_pending_reads()
            raise
        except Exception as e:
            _quiet_pending_reads()
            raise InputError(f"{self._where}: a chunk cannot be read or decoded ({_reason(e)}); the data is damaged: "
                             "restore or re-copy it.") from None

    def __getitem__(self, key: Any) -> Any:
        return self._read(lambda: self._array[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        data = self._read(lambda: self._array[...])
        return np.asarray(data, dtype=dtype)

    @property
    def oindex(self) -> Any:
        return _CheckedIndexer(self, self._array.oindex)

    @property
    def vindex(self) -> Any:
        return _CheckedIndexer(self, self._array.vindex)


class _PendingReads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task was destroyed but it is pending")


def _quiet_pending_reads() -> None:
    """After a failed read, zarr's reads of the other chunks are left pending and asyncio
    would report each when the process ends: the error raised says what went wrong once."""
    import warnings

    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _PendingReads) for f in logger.filters):
        logger.addFilter(_PendingReads())
        warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


class _CheckedIndexer:
    def __init__(self, owner: CheckedArray, indexer: Any) -> None:
        self._owner, self._indexer = owner, indexer

    def __getitem__(self, key: Any) -> Any:
        return self._owner._read(lambda: self._indexer[key])


def _ome_multiscale(attrs: dict[str, Any]) -> dict[str, Any] | None:
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    return ms[0] if isinstance(ms, list) and ms else None


def _read_zarr(path: Path, axes: str | None = None) -> tuple[Any, ImageMeta]:
    """The array of a Zarr store (OME-Zarr: level 0), unread, and what is known about it;
    ``axes`` names what the store does not (:func:`asn2n_dask.axes.merge_axes`)."""
    import zarr

    try:
        node = zarr.open(store=_checked_store(path), mode="r")
    except InputError:
        raise
    except Exception as e:  # zarr raises several types for a missing or bad store
        raise InputError(f"{path} is not a readable Zarr store ({type(e).__name__}: {e}).") from None
    attrs: dict[str, Any] = dict(node.attrs)
    if isinstance(node, zarr.Group):
        ms = _ome_multiscale(attrs)
        if ms is not None:
            try:
                level0 = ms["datasets"][0]
                arr: Any = node[level0["path"]]
                if not isinstance(arr, zarr.Array):
                    raise TypeError(f"dataset path {level0['path']!r} is not an array")
                if not isinstance(ms["axes"], list):
                    raise TypeError("axes must be a list")
                names = [a["name"] if isinstance(a, dict) else str(a) for a in ms["axes"]]
                units = tuple(a.get("unit") if isinstance(a, dict) and isinstance(a.get("unit"), str) else None
                              for a in ms["axes"])
                raw_scale: Any = None
                transforms = level0.get("coordinateTransformations", [])
                if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
                    raise TypeError("coordinateTransformations must be a list of objects")
                for t in transforms:
                    if t.get("type") == "scale":
                        if not isinstance(t["scale"], list):
                            raise TypeError("a scale must be a list of numbers")
                        raw_scale = t["scale"]  # its values are checked by usable_scale
            except (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError) as e:
                raise InputError(f"{path} has malformed OME-Zarr multiscales metadata ({_reason(e)}).") from None
            try:  # channel names are a courtesy: unreadable ones are ignored, not fatal
                omero: dict[str, Any] = attrs.get("ome", attrs).get("omero", {})
                chans = tuple(str(c.get("label", i)) for i, c in enumerate(omero.get("channels", []))) or None
            except (AttributeError, TypeError):
                chans = None
            own = _letters(names)
            if len(own) != arr.ndim:
                raise InputError(f"{path} names {len(own)} axes for a {arr.ndim}-D array.")
            scale = usable_scale(raw_scale, arr.ndim, str(path))
            return CheckedArray(arr, str(path)), ImageMeta(
                axes=merge_axes(own, axes, arr.ndim, source=str(path)), format="ome-zarr", scale=scale, units=units,
                channel_names=chans, source=str(path), attrs=attrs, file_axes=own)
        arrays = sorted(name for name, _ in node.arrays())
        if len(arrays) != 1:
            listed = ", ".join(arrays) or "none"
            raise InputError(f"{path} is a Zarr group holding arrays: {listed}; give the path of one "
                             f"array (e.g. {path}/{arrays[0] if arrays else 'ARRAY'}).")
        node = node[arrays[0]]
        attrs = dict(node.attrs)
    array: Any = node
    dims: Any = getattr(array.metadata, "dimension_names", None) or attrs.get("_ARRAY_DIMENSIONS")
    letters = _letters(list(dims)) if dims and all(n is not None for n in dims) else None
    if letters is not None and len(letters) != array.ndim:
        raise InputError(f"{path} names {len(letters)} dimensions for a {array.ndim}-D array.")
    return CheckedArray(array, str(path)), ImageMeta(axes=merge_axes(letters, axes, array.ndim, source=str(path)),
                                                     format="zarr", source=str(path), attrs=attrs, file_axes=letters)


def usable_scale(scale: Any, ndim: int, where: str) -> tuple[float, ...] | None:
    """``scale`` as floats when it is one positive finite number per axis
    (:func:`asn2n_dask.ome.valid_scale`: NaN, infinite, zero, negative, a string, a
    missing value or the wrong count are not); else None, with a warning."""
    if scale is None:
        return None
    vals = ome.valid_scale(scale, ndim)
    if vals is None:
        shown = list(scale) if isinstance(scale, (list, tuple)) else scale
        log.warning("%s: the pixel scale %r is not one positive finite number per axis; it is not used (pixels are "
                    "given a size of 1).", where, shown)
    return vals


def read_image(path: str | os.PathLike[str], *, series: int | None = None,
               axes: str | None = None) -> tuple[NDArray[Any], ImageMeta]:
    """Read a TIFF, Zarr or OME-Zarr image (OME-Zarr: level 0) into memory.

    Parameters
    ----------
    path : path
        TIFF file, Zarr array, Zarr group holding one array, or OME-Zarr image.
    series : int, optional
        The series of a TIFF file that holds several (required then).
    axes : str, optional
        Axis letters for the axes the file does not name (a file's own axes stand:
        :func:`asn2n_dask.axes.merge_axes`).

    Returns
    -------
    data : ndarray
        Pixels with their stored dtype, axes as ``meta.axes``.
    meta : ImageMeta

    Raises
    ------
    InputError
        Missing path, unknown format, unreadable or damaged file, unusable axes, or
        more pixels than the memory available.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist.")
    if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES:
        return _read_tiff(p, series, axes)
    if p.is_dir() and _is_zarr(p):
        if series is not None:
            raise InputError(f"--series picks a series of a multi-series TIFF file; {p} is a Zarr store.")
        arr, meta = _read_zarr(p, axes)
        check_fits(p, tuple(arr.shape), arr.dtype)
        return np.asarray(arr[...]), meta
    raise InputError(f"input {p} is neither a TIFF file (.tif, .tiff) nor a Zarr store (.zarr).")


def paths_overlap(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths are the same, or one lies inside the other (links resolved)."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents


def check_output(output: str | os.PathLike[str], *, inputs: list[str | os.PathLike[str]] = (),  # type: ignore[assignment]
                 overwrite: bool = False) -> Path:
    """Refuse an output path before any work: wrong extension, equal to an input, exists.

    Returns
    -------
    Path
    """
    out = Path(output)
    if out.suffix.lower() not in TIFF_SUFFIXES + ZARR_SUFFIXES:
        raise OutputError(f"output {out} must end in .tif, .tiff or .zarr.")
    for i in inputs:
        if out.resolve() == Path(i).resolve():
            raise OutputError(f"output {out} is the input; choose another output path (the input is never written).")
        if paths_overlap(out, i):
            raise OutputError(f"output {out} contains or lies inside the input {i}; choose another output path "
                              "(the input is never written).")
    if out.is_symlink():
        raise OutputError(f"output {out} is a symbolic link; give the real path (a link is never followed to "
                          "replace what it points at).")
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} already exists; pass --overwrite to replace it or choose another path.")
    if out.exists() and out.suffix.lower() in TIFF_SUFFIXES and not out.is_file():
        raise OutputError(f"output {out} is a folder, not a TIFF file; --overwrite replaces only a file: choose "
                          "another path.")
    return out


def cast_output(data: NDArray[np.floating], dtype: np.dtype[Any] | str) -> NDArray[Any]:
    """Cast denoised intensities to ``dtype``: floats as they are, integers rounded and clipped."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        # the float64 bounds inside the dtype's range (float(2**64 - 1) is 2**64, past it)
        lo, hi = (float(v) if int(float(v)) == int(v) else float(np.nextafter(float(v), 0.0))
                  for v in (info.min, info.max))
        return np.clip(np.rint(np.asarray(data, np.float64)), lo, hi).astype(dt)
    if dt.kind == "f" and np.asarray(data).dtype.itemsize > dt.itemsize:
        fi = np.finfo(dt)
        return np.clip(data, float(fi.min), float(fi.max)).astype(dt)
    return data.astype(dt)


def _ome_order(axes: str) -> bool:
    order = "TCZYX"
    return set(axes) <= set(order) and list(axes) == sorted(axes, key=order.index)


def write_image(path: str | os.PathLike[str], data: NDArray[Any], meta: ImageMeta, *,
                overwrite: bool = False, attrs: dict[str, Any] | None = None,
                chunks: tuple[int, ...] | None = None) -> Path:
    """Write ``data`` (axes ``meta.axes``) to a TIFF or Zarr path, atomically.

    ``.zarr`` outputs are OME-Zarr 0.5 (Zarr v3) when the axes are a subset of ``TCZYX``
    in that order, else a plain Zarr v3 array with ``dimension_names``.  ``attrs``
    (provenance) go into the OME-Zarr attributes or the TIFF description.
    """
    import tifffile
    import zarr

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    extra = attrs or {}
    try:
        if out.suffix.lower() in TIFF_SUFFIXES:
            tifffile.imwrite(tmp, data, photometric="minisblack",
                             metadata={"axes": meta.axes, "asn2n": json.dumps(extra)})
        else:
            frame_chunks = chunks or tuple(1 if a not in "YX" else min(s, 1024) for a, s in zip(meta.axes, data.shape))
            if _ome_order(meta.axes):
                root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
                scale = usable_scale(meta.scale, len(meta.axes), meta.source or "the image")
                channels = [{"label": n} for n in meta.channel_names or ()]
                root.attrs.update({**ome.image_attrs("0.5", meta.axes, scale=scale, units=meta.units, name="denoised",
                                                     channels=channels), "asn2n": extra})
                arr = root.create_array("0", shape=data.shape, chunks=frame_chunks, dtype=data.dtype,
                                        **ome.array_kwargs("0.5", meta.axes))
            else:
                arr = zarr.create_array(str(tmp), shape=data.shape, chunks=frame_chunks, dtype=data.dtype,
                                        dimension_names=[a.lower() for a in meta.axes], zarr_format=3)
                arr.attrs.update({"asn2n": extra})
            arr[...] = data
        if out.exists():
            if not overwrite:
                raise OutputError(f"output {out} appeared while working; nothing was replaced.")
            trash = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash) if trash.is_dir() else trash.unlink()
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    return out


# ------------------------------------------------------------------ output locks
_HELD: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth): re-entrant within a process
_HELD_LOCK = threading.Lock()


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file of an output: a hidden file beside it (it outlives ``--overwrite``)."""
    out = Path(output).absolute()
    return out.with_name(f".{out.name}.asn2n-lock")


def _holder(path: Path) -> str:
    try:
        who = json.loads(path.read_text())
        return f"process {who['pid']} on {who['host']}, since {who['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the output's lock while writing it: a second run on the same output is refused.

    The lock is an advisory ``flock`` on :func:`lock_path`, which also records the
    holder's host and pid for the message.  The kernel releases it when its process
    ends, however it ends (a crash, ``kill -9``): a lock left by a dead run is never
    in the way.  Re-entrant within one process.

    Raises
    ------
    OutputError
        Another run holds the lock, or the folder cannot be written.
    """
    import datetime
    import fcntl
    import socket

    path = lock_path(output)
    key = str(path)
    with _HELD_LOCK:
        if key in _HELD:
            fd, depth = _HELD[key]
            _HELD[key] = (fd, depth + 1)
            fresh = False
        else:
            fresh = True
    if fresh:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise OutputError(f"{Path(output)} is being written by another run ({_holder(path)}); wait for "
                                      "it to finish or stop it, then run again.") from None
                except OSError as e:  # a file system without locks (some network mounts)
                    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                        raise
                    import logging

                    logging.getLogger(__name__).warning(
                        "the file system of %s cannot lock files; make sure no other run writes this output",
                        path.parent)
                    break
                try:  # the file may have been removed and re-created by its last holder meanwhile
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            since = datetime.datetime.now().isoformat(timespec="seconds")
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}).encode())
        except PermissionError as e:
            raise OutputError(f"cannot write in {path.parent}: permission denied ({e.filename}); choose a folder "
                              "you can write to.") from None
        with _HELD_LOCK:
            _HELD[key] = (fd, 1)
    try:
        yield path
    finally:
        with _HELD_LOCK:
            fd, depth = _HELD[key]
            if depth > 1:
                _HELD[key] = (fd, depth - 1)
            else:
                del _HELD[key]
                try:
                    path.unlink()  # while still holding it: a waiting opener re-checks the inode
                except OSError:
                    pass
                os.close(fd)
