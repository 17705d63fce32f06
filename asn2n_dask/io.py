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
import re
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
from .axes import NAMED_AXES, merge_axes, parse_axes
from .errors import InputError, OutputError

__all__ = ["ImageMeta", "read_image", "check_output", "paths_overlap", "write_image", "cast_output", "TIFF_SUFFIXES",
           "output_lock", "lock_path", "available_memory", "CheckedArray", "usable_scale", "risk_labels",
           "input_listing"]

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
        Physical size per axis: pixel size in Y, X and Z, time between frames in T
        (1 where the file says nothing); None when the file says nothing at all.
    units : tuple of str or None, optional
        Unit per axis in OME-NGFF words (``micrometer``, ``second``), None where unknown.
    channel_names : tuple of str, optional
        Names of the ``C`` axis entries (OME-Zarr ``omero`` labels, OME-TIFF channel
        names, ImageJ slice labels that name the channels).
    source : str
        The path read.
    file_axes : str, optional
        The axes as the file names them (generic letters such as ``Q`` or ``I`` for
        axes it leaves unnamed); None when it names none.  ``--axes`` may rename only
        what the file leaves unnamed (:func:`asn2n_dask.axes.merge_axes`).
    tiff_flavour : {"plain", "imagej", "ome"}, optional
        The kind of TIFF file read (None for Zarr); a ``.tif`` output is written in the
        same kind, with the same metadata (:func:`write_image`).
    """

    axes: str
    format: str
    scale: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    channel_names: tuple[str, ...] | None = None
    source: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)
    file_axes: str | None = None
    tiff_flavour: str | None = None


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
    if np.dtype(s.dtype) == np.bool_:  # stored one bit a pixel: a mask, and no measure of brightness
        raise InputError(f"{path} is a 1-bit (black and white) image, a mask rather than fluorescence intensities; "
                         "give the grey-level image it was made from.")
    size = path.stat().st_size
    if not compressed and nbytes > size:
        raise InputError(f"{path} is truncated or damaged: its header describes {nbytes} bytes of pixels but the "
                         f"file holds {size} bytes in all; restore or re-copy it.")
    return s


def tiff_axes(letters: str, path: Path, ndim: int, given: str | None = None) -> str:
    """Axis letters of a TIFF series as the package uses them (ImageJ's ``I``: time),
    with ``given`` (``--axes``) naming what the file leaves unnamed
    (:func:`asn2n_dask.axes.merge_axes`)."""
    axes = letters.replace("I", "T") if "T" not in letters else letters
    if "S" in axes:
        raise InputError(f"{path} is an RGB image; save each colour as a channel of a grey-level stack.")
    if not axes.endswith("YX"):
        raise InputError(f"{path} has axes {axes}; the last two must be the frame's Y and X.")
    if given is not None:
        return merge_axes(letters, given, ndim, source=str(path))
    unnamed = [a for a in axes[:-2] if a not in NAMED_AXES]
    if len(unnamed) > 1 and len(set(axes)) != len(axes):
        example = "TC" if ndim == 4 else "TZC" + "Q" * (ndim - 5)  # Q: an axis of no meaning here
        raise InputError(f"{path} leaves {len(unnamed)} of its axes unnamed ({axes}); name them with --axes, "
                         f"e.g. --axes {example}YX (T time, C channel, Z depth, in the file's order).")
    return parse_axes(axes, ndim)


# ------------------------------------------------------------------ TIFF metadata
#: OME-NGFF words for the length units ImageJ and OME-TIFF files write (keys in lower case).
LENGTH_UNITS: dict[str, str] = {
    **dict.fromkeys(("å", "angstrom", "angstroms"), "angstrom"),
    **dict.fromkeys(("pm", "picometer", "picometers", "picometre", "picometres"), "picometer"),
    **dict.fromkeys(("nm", "nanometer", "nanometers", "nanometre", "nanometres"), "nanometer"),
    **dict.fromkeys(("µm", "μm", "um", "micron", "microns", "micrometer", "micrometers", "micrometre",
                     "micrometres"), "micrometer"),
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), "millimeter"),
    **dict.fromkeys(("cm", "centimeter", "centimeters", "centimetre", "centimetres"), "centimeter"),
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), "meter"),
    **dict.fromkeys(("in", "inch", "inches"), "inch"),
}
#: OME-NGFF words for the time units ImageJ (``tunit``) and OME-TIFF files write.
TIME_UNITS: dict[str, str] = {
    **dict.fromkeys(("ns", "nsec", "nanosecond", "nanoseconds"), "nanosecond"),
    **dict.fromkeys(("µs", "μs", "us", "usec", "microsecond", "microseconds"), "microsecond"),
    **dict.fromkeys(("ms", "msec", "millisecond", "milliseconds"), "millisecond"),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), "second"),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), "minute"),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), "hour"),
    **dict.fromkeys(("d", "day", "days"), "day"),
}
#: The OME-XML symbol of each unit (``PhysicalSizeXUnit``, ``TimeIncrementUnit``).
OME_SYMBOLS: dict[str, str] = {
    "angstrom": "Å", "picometer": "pm", "nanometer": "nm", "micrometer": "µm", "millimeter": "mm",
    "centimeter": "cm", "meter": "m", "inch": "in", "nanosecond": "ns", "microsecond": "µs", "millisecond": "ms",
    "second": "s", "minute": "min", "hour": "h", "day": "d",
}
#: Largest pixel data written as a classic TIFF; larger data are written as BigTIFF
#: (tifffile's own rule: 4 GiB less 32 MiB for the metadata).
BIGTIFF_BYTES = 2**32 - 2**25

_Physical = dict[str, tuple[float, str | None]]  # axis letter -> (size, unit or None)


def _unescape(text: str) -> str:
    r"""ImageJ writes characters beyond ASCII as ``\uXXXX`` (``\u00B5m`` for µm)."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


def _unit(text: Any, table: dict[str, str], what: str, where: str) -> str | None:
    """The OME-NGFF word for a unit a file writes; None for none (or ImageJ's ``pixel``),
    and for one not in ``table``, with a warning."""
    if text is None:
        return None
    word = _unescape(str(text)).strip()
    if word.lower() in ("", "pixel", "pixels", "px"):
        return None
    unit = table.get(word.lower())
    if unit is None:
        log.warning("%s: the unit %r of its %s is not one asn2n-dask knows; the unit is not used (the sizes are "
                    "kept without one).", where, word, what)
    return unit


def _size(value: Any, what: str, where: str) -> float | None:
    """A size or time step a file writes, when it is a positive finite number; else None,
    with a warning."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        v = float(value)
        if math.isfinite(v) and v > 0:
            return v
    log.warning("%s: its %s (%r) is not a positive finite number; it is not used.", where, what, value)
    return None


def _channel_names(found: list[str], n: int, where: str) -> tuple[str, ...] | None:
    """``found`` when they are ``n`` distinct, non-empty names; else None, with a warning."""
    names = [str(v).strip() for v in found]
    if len(names) != n:
        log.warning("%s: it holds %d channel names for %d channels; the names are not used.", where, len(names), n)
        return None
    if not all(names):
        log.warning("%s: some of its channels have no name; the channel names are not used.", where)
        return None
    twice = sorted({v for v in names if names.count(v) > 1})
    if twice:
        log.warning("%s: several of its channels are named %r; the channel names are not used (each channel needs "
                    "its own name).", where, twice[0])
        return None
    return tuple(names)


def _imagej_labels(labels: Any, shape: tuple[int, ...], axes: str, where: str) -> tuple[str, ...] | None:
    """Channel names from ImageJ slice labels: one label per channel, or one per plane
    with every plane of a channel labelled alike."""
    if labels is None or "C" not in axes:
        return None
    found = [labels] if isinstance(labels, str) else list(labels)
    found = [str(v).split("\n")[0].strip() for v in found]  # ImageJ shows a label's first line
    c_ax = axes.index("C")
    n = int(shape[c_ax])
    stack = tuple(int(v) for v in shape[:-2])
    if len(found) == math.prod(stack) and len(found) != n:
        of_plane = [int(c) for c in np.unravel_index(np.arange(len(found)), stack)[c_ax]]
        first: dict[int, str] = {}
        for label, c in zip(found, of_plane):
            first.setdefault(c, label)
        if any(label != first[c] for label, c in zip(found, of_plane)):
            log.warning("%s: its ImageJ slice labels differ between planes of one channel; they are not used as "
                        "channel names.", where)
            return None
        found = [first[c] for c in range(n)]
    return _channel_names(found, n, where)


def _imagej_physical(tf: Any, s: Any, axes: str, where: str) -> tuple[_Physical, tuple[str, ...] | None]:
    """Pixel sizes (resolution tags, ``spacing``, ``unit``/``yunit``/``zunit``), frame
    interval (``finterval``, ``tunit``) and channel names (slice ``Labels``) of an ImageJ
    hyperstack, as ImageJ reads them: a calibrated file's pixels are 1 unit unless it
    says otherwise."""
    md: dict[str, Any] = tf.imagej_metadata or {}
    page = s.keyframe
    phys: _Physical = {}
    unit = _unit(md.get("unit"), LENGTH_UNITS, "pixel size", where)
    own = {"X": unit, **{a: (_unit(md[key], LENGTH_UNITS, f"{a} pixel size", where) if key in md else unit)
                         for a, key in (("Y", "yunit"), ("Z", "zunit"))}}
    for i, (a, tag) in enumerate((("X", 282), ("Y", 283))):
        if a not in axes:
            continue
        if page.tags.get(tag) is None:
            if own[a]:
                phys[a] = (1.0, own[a])
            continue
        res = float(page.resolution[i])
        size = _size(1.0 / res if res > 0 else math.inf, f"pixel {'width' if a == 'X' else 'height'} "
                     f"(1/{a}Resolution)", where)
        if size is not None:
            phys[a] = (size, own[a])
    if "Z" in axes:
        if "spacing" in md:
            size = _size(md["spacing"], "Z spacing", where)
            if size is not None:
                phys["Z"] = (size, own["Z"])
        elif own["Z"]:
            phys["Z"] = (1.0, own["Z"])
    if "T" in axes and "finterval" in md:
        size = _size(md["finterval"], "frame interval (finterval)", where)
        if size is not None:
            phys["T"] = (size, _unit(md.get("tunit", "sec"), TIME_UNITS, "frame interval", where))
    return phys, _imagej_labels(md.get("Labels"), tuple(s.shape), axes, where)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def _ome_image(tf: Any, s: Any, index: int) -> dict[str, Any] | None:
    """The OME ``Image`` element (as :func:`tifffile.xml2dict` gives it) of a series."""
    import tifffile

    xml = tf.ome_metadata
    if not xml:
        return None
    ome = tifffile.xml2dict(xml, sep="").get("OME") or {}
    images = [im for im in _as_list(ome.get("Image")) if isinstance(im, dict)]
    if len(images) == len(tf.series):
        return images[index]
    named = [im for im in images if s.name is not None and str(im.get("Name")) == str(s.name)]
    return named[0] if len(named) == 1 else None


def _ome_text(value: Any) -> str:
    """An attribute as its text (:func:`tifffile.xml2dict` reads ``488`` as a number)."""
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _ome_physical(tf: Any, s: Any, index: int, axes: str, where: str) -> tuple[_Physical, tuple[str, ...] | None]:
    """``PhysicalSizeX/Y/Z`` (default unit µm), ``TimeIncrement`` (default unit s) and
    channel ``Name``s of the OME ``Pixels`` of a series."""
    image = _ome_image(tf, s, index)
    if image is None:
        log.warning("%s: its OME metadata does not say which image is series %d; pixel sizes, time step and channel "
                    "names are not used.", where, index)
        return {}, None
    px = image.get("Pixels")
    px = (_as_list(px) or [{}])[0]
    if not isinstance(px, dict):
        return {}, None
    phys: _Physical = {}
    for a, key, default, table in (("X", "PhysicalSizeX", "µm", LENGTH_UNITS),
                                   ("Y", "PhysicalSizeY", "µm", LENGTH_UNITS),
                                   ("Z", "PhysicalSizeZ", "µm", LENGTH_UNITS),
                                   ("T", "TimeIncrement", "s", TIME_UNITS)):
        if a in axes and key in px:
            size = _size(px[key], key, where)
            if size is not None:
                phys[a] = (size, _unit(_ome_text(px.get(key + "Unit", default)), table, key, where))
    names = None
    if "C" in axes:
        given = [c.get("Name") if isinstance(c, dict) else None for c in _as_list(px.get("Channel"))]
        if any(v is not None for v in given):
            names = _channel_names([_ome_text(v) for v in given], int(s.shape[axes.index("C")]), where)
    return phys, names


def tiff_meta(tf: Any, s: Any, index: int, axes: str, path: Path) -> ImageMeta:
    """What a TIFF series says besides its pixels: its kind (plain, ImageJ hyperstack or
    OME-TIFF), and for the last two the physical size of each axis with its unit
    (OME-NGFF words) and the channel names, from tifffile's parsed metadata
    (``TiffFile.imagej_metadata`` and resolution tags; ``TiffFile.ome_metadata`` through
    :func:`tifffile.xml2dict`).  Sizes are mapped onto ``axes`` (the axes as used, after
    ``--axes``).  What is odd (not a positive finite size, an unknown unit, channel
    names that do not fit the channels) is left out with a warning.
    """
    kind = str(getattr(s, "kind", "")).lower()
    flavour = kind if kind in ("imagej", "ome") else "plain"
    where = str(path)
    phys: _Physical = {}
    names: tuple[str, ...] | None = None
    try:
        if flavour == "imagej":
            phys, names = _imagej_physical(tf, s, axes, where)
        elif flavour == "ome":
            phys, names = _ome_physical(tf, s, index, axes, where)
    except Exception as e:  # tifffile raises many types on damaged metadata; the pixels are still good
        log.warning("%s: its %s metadata cannot be read (%s); pixel sizes, time step and channel names are not "
                    "used.", where, "ImageJ" if flavour == "imagej" else "OME", _reason(e))
        phys, names = {}, None
    phys = {a: (v, u) for a, (v, u) in phys.items() if v != 1.0 or u}  # 1 pixel without a unit says nothing
    scale = tuple(phys[a][0] if a in phys else 1.0 for a in axes) if phys else None
    units = tuple(phys[a][1] if a in phys else None for a in axes) if phys else None
    return ImageMeta(axes=axes, format="tiff", scale=scale, units=units, channel_names=names, source=where,
                     file_axes=s.axes, tiff_flavour=flavour)


def _read_tiff(path: Path, series: int | None = None, axes: str | None = None) -> tuple[NDArray[Any], ImageMeta]:
    with quiet_tifffile(), open_tiff(path) as tf:
        s = tiff_series(tf, path, series)
        axes = tiff_axes(s.axes, path, len(s.shape), axes)
        check_fits(path, tuple(s.shape), s.dtype)
        try:
            data = s.asarray()
        except Exception as e:  # damaged strips or tiles, a truncated compressed file
            raise InputError(f"{path} is truncated or damaged: its pixels cannot be read ({_reason(e)}); restore "
                             "or re-copy it.") from None
        meta = tiff_meta(tf, s, series or 0, axes, path)
    return data, meta


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
    record = attrs.get("asn2n")
    if isinstance(record, dict) and record.get("status") not in (None, "complete"):
        raise InputError(f"{path} is an unfinished asn2n-dask output (its run was interrupted, or is still "
                         "going): run the command that writes it again to finish it, then use it.")
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


def risk_labels(path: str | os.PathLike[str], axes: str, shape: tuple[int, ...]) -> list[Any] | None:
    """Level 0 of the risk labels of each channel of an asn2n OME-Zarr output, lazily.

    Parameters
    ----------
    path : path
        The output.
    axes, shape
        The output image's axes and shape.

    Returns
    -------
    list of dask arrays, or None
        In the image's channel order, each over ``axes`` without ``C``: the label
        images the run's record names (``labels/risk-<channel>``, or ``labels/risk``
        for an image without ``C``).  An output written when the risk labels were one
        image with ``C`` is split by channel.  None when the output has no risk labels
        of the image's shape (not an output of ``asn2n denoise``).
    """
    import dask.array as da
    import zarr

    try:
        root = zarr.open_group(str(path), mode="r")
        asn = dict(root.attrs).get("asn2n")
        job = asn.get("job") if isinstance(asn, dict) else None
        names = job.get("labels") if isinstance(job, dict) else None
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            names = ["risk"]
        arrays = [da.from_zarr(root[f"labels/{n}/0"]) for n in names]
    except Exception:  # not a Zarr group, or no such label image
        return None
    c = axes.find("C")
    if c >= 0 and len(arrays) == 1 and tuple(arrays[0].shape) == tuple(shape):  # one label image with C
        arrays = [arrays[0][(slice(None),) * c + (k,)] for k in range(shape[c])]
    per_channel = tuple(n for a, n in zip(axes, shape) if a != "C")
    if len(arrays) != (shape[c] if c >= 0 else 1) or any(tuple(a.shape) != per_channel for a in arrays):
        return None
    return arrays


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


#: A listing does not vouch for files modified less than this long before it was taken:
#: a file system's clock ticks coarsely (milliseconds on local disks, up to seconds on
#: some network mounts), so a later write within the same tick could keep the
#: modification time the listing saw.
LISTING_SETTLE_NS = 2_000_000_000


def input_listing(path: str | os.PathLike[str], *, array_path: str = "", series: int = 0) -> str | None:
    """A fingerprint of an input as stored, from its directory listing: no pixel is read.

    A Zarr store gives the name, size, inode, modification and status-change times
    (``st_mtime_ns``, ``st_ctime_ns``) of every file of the array ``array_path`` (its
    metadata and every chunk or shard) and of the metadata files of the groups above it;
    a TIFF file gives its own.  Any write to the data changes the fingerprint: a file
    rewritten in place changes its modification time, a file replaced by another its
    inode, a chunk added or removed the list of names.  So two equal fingerprints show
    that the input has not been written between them, without reading it.

    Parameters
    ----------
    path : path
        A TIFF file or a Zarr store (a local or mounted file system).
    array_path : str
        The array inside a Zarr group (``""``: the store is the array).
    series : int
        The series of a TIFF file.

    Returns
    -------
    str or None
        SHA-256 of the listing; None where it cannot vouch for the content: a path
        that is not a local file or directory, a symbolic link or special file in the
        store, a TIFF series whose pages lie in several files, a file modified less than
        :data:`LISTING_SETTLE_NS` before the listing, or a listing that fails.
    """
    import hashlib
    import time

    p = Path(path)
    h = hashlib.sha256()
    newest = [0]

    def add(entry: os.DirEntry[str] | Path, rel: str) -> bool:
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return False
        newest[0] = max(newest[0], st.st_mtime_ns)
        h.update(f"{rel}\0{st.st_size}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
        return True

    def walk(folder: Path, rel: str, deep: bool) -> bool:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            name = f"{rel}{e.name}"
            if e.is_symlink():
                return False
            if e.is_dir(follow_symlinks=False):
                if deep and not walk(Path(e.path), f"{name}/", True):
                    return False
            elif not add(e, name):
                return False
        return True

    taken = time.time_ns()
    try:
        if p.is_symlink():
            return None
        if p.is_file():
            if p.suffix.lower() not in TIFF_SUFFIXES:
                return None
            with quiet_tifffile(), open_tiff(p) as tf:
                if tf.series[series].is_multifile:
                    return None
            h.update(b"tiff\n")
            if not add(p, p.name):
                return None
        elif p.is_dir():
            h.update(f"zarr {array_path}\n".encode())
            parts = [s for s in array_path.split("/") if s]
            folder, rel = p, ""
            for part in parts:  # the groups above the array: their own metadata files
                if not walk(folder, rel, False):
                    return None
                folder, rel = folder / part, f"{rel}{part}/"
            if not folder.is_dir() or folder.is_symlink() or not walk(folder, rel, True):
                return None
        else:
            return None
    except Exception:  # a listing that fails vouches for nothing: the caller reads the data
        return None
    if newest[0] > taken - LISTING_SETTLE_NS:
        return None
    return h.hexdigest()


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


def _in_order(axes: str, order: str) -> bool:
    return set(axes) <= set(order) and list(axes) == sorted(axes, key=order.index)


def _ome_order(axes: str) -> bool:
    return _in_order(axes, "TCZYX")


def _known_sizes(meta: ImageMeta) -> _Physical:
    """The sizes of ``meta`` worth writing: T, Z, Y and X axes whose size is not 1 or
    has a unit."""
    usable = usable_scale(meta.scale, len(meta.axes), meta.source or "the image") if meta.scale else None
    if usable is None:
        return {}
    units = tuple(meta.units or ())
    units = units + (None,) * (len(meta.axes) - len(units))
    return {a: (v, u) for a, v, u in zip(meta.axes, usable, units) if a in "TZYX" and (v != 1.0 or u)}


def _imagej_word(unit: str) -> str:
    r"""How an ImageJ description writes a unit: its own words for µm and s, else the OME
    symbol, beyond ASCII as ``\uXXXX`` (as ImageJ escapes)."""
    word = {"micrometer": "micron", "second": "sec"}.get(unit) or OME_SYMBOLS.get(unit, unit)
    return "".join(c if ord(c) < 128 else f"\\u{ord(c):04X}" for c in word)


def _imagej_options(meta: ImageMeta, shape: tuple[int, ...], names: list[str] | None,
                    provenance: str) -> dict[str, Any]:
    """``tifffile.imwrite`` options for an ImageJ hyperstack: resolution tags (pixels
    per unit), ``unit``/``yunit``/``zunit``, ``spacing``, ``finterval``/``tunit`` and one
    slice label per plane (its channel's name)."""
    sizes = _known_sizes(meta)
    md: dict[str, Any] = {"axes": meta.axes}
    options: dict[str, Any] = {"imagej": True, "photometric": "minisblack", "metadata": md}
    if "X" in sizes or "Y" in sizes:
        options["resolution"] = tuple(1.0 / sizes[a][0] if a in sizes else 1.0 for a in "XY")
    unit = next((u for a in "XYZ" if a in sizes and (u := sizes[a][1])), None)
    if unit:
        md["unit"] = _imagej_word(unit)
    for a, key in (("Y", "yunit"), ("Z", "zunit")):
        own = sizes[a][1] if a in sizes else None
        if own and own != unit:
            md[key] = _imagej_word(own)
    if "Z" in sizes:
        md["spacing"] = sizes["Z"][0]
    if "T" in sizes:
        md["finterval"] = sizes["T"][0]
        if sizes["T"][1] and sizes["T"][1] != "second":
            md["tunit"] = _imagej_word(sizes["T"][1])
    if names:
        stack = shape[:-2]
        of_plane = np.unravel_index(np.arange(math.prod(stack)), stack)[meta.axes.index("C")]
        md["Labels"] = [names[int(c)] for c in of_plane]
    md["asn2n"] = provenance
    return options


def _ome_options(meta: ImageMeta, names: list[str] | None, provenance: str) -> dict[str, Any]:
    """``tifffile.imwrite`` options for an OME-TIFF: ``PhysicalSizeX/Y/Z`` and
    ``TimeIncrement`` with their units, channel names, and the provenance as a map
    annotation.  A size without a unit is left out (OME would read it as µm or s)."""
    sizes = _known_sizes(meta)
    md: dict[str, Any] = {"axes": meta.axes}
    for a, key in (("X", "PhysicalSizeX"), ("Y", "PhysicalSizeY"), ("Z", "PhysicalSizeZ"), ("T", "TimeIncrement")):
        if a in sizes and sizes[a][1] in OME_SYMBOLS:
            md[key] = sizes[a][0]
            md[key + "Unit"] = OME_SYMBOLS[str(sizes[a][1])]
    if names:
        md["Channel"] = {"Name": names}
    md["MapAnnotation"] = {"Namespace": "asn2n-dask", "asn2n": provenance}
    return {"ome": True, "photometric": "minisblack", "metadata": md}


def _write_tiff(tmp: Path, out: Path, data: NDArray[Any], meta: ImageMeta, extra: dict[str, Any]) -> None:
    """Write a TIFF in the kind of the input (``meta.tiff_flavour``): an ImageJ hyperstack,
    an OME-TIFF, or a plain TIFF with the axes and provenance as JSON.  Plain and
    OME-TIFF files of more than :data:`BIGTIFF_BYTES` are BigTIFF; an ImageJ hyperstack
    that large is written as ImageJ writes it (one IFD, the pixels after it)."""
    import tifffile

    flavour = meta.tiff_flavour or "plain"
    why = ""
    if flavour == "imagej" and not _in_order(meta.axes, "TZCYX"):
        why = f"its axes {meta.axes} are not in ImageJ's order TZCYX"
    elif flavour == "imagej" and data.dtype.char not in "BHhf":
        why = f"ImageJ cannot hold {data.dtype} pixels"
    elif flavour == "ome" and not set(meta.axes) <= set("TZCYX"):
        why = f"OME-TIFF names only the axes T, Z, C, Y and X, not all of {meta.axes}"
    if why:
        log.warning("%s is written as a plain TIFF, without pixel sizes, time step or channel names: %s.", out, why)
        flavour = "plain"
    provenance = json.dumps(extra)
    c = meta.axes.find("C")
    names = list(meta.channel_names) if meta.channel_names and c >= 0 and len(
        meta.channel_names) == data.shape[c] else None
    bigtiff = data.nbytes > BIGTIFF_BYTES
    if flavour == "imagej":  # ImageJ reads no BigTIFF: one IFD, all pixels after it, as ImageJ writes large stacks
        tifffile.imwrite(tmp, data, truncate=bigtiff, **_imagej_options(meta, data.shape, names, provenance))
    elif flavour == "ome":
        tifffile.imwrite(tmp, data, bigtiff=bigtiff, **_ome_options(meta, names, provenance))
    else:
        tifffile.imwrite(tmp, data, bigtiff=bigtiff, photometric="minisblack",
                         metadata={"axes": meta.axes, "asn2n": provenance})


def write_image(path: str | os.PathLike[str], data: NDArray[Any], meta: ImageMeta, *,
                overwrite: bool = False, attrs: dict[str, Any] | None = None,
                chunks: tuple[int, ...] | None = None) -> Path:
    """Write ``data`` (axes ``meta.axes``) to a TIFF or Zarr path, atomically.

    ``.zarr`` outputs are OME-Zarr 0.5 (Zarr v3) when the axes are a subset of ``TCZYX``
    in that order, else a plain Zarr v3 array with ``dimension_names``.  TIFF outputs
    are of the input's kind (``meta.tiff_flavour``): an ImageJ hyperstack or an OME-TIFF
    with the pixel sizes, time step and channel names of ``meta``, else a plain TIFF;
    BigTIFF when the pixels need it (:func:`asn2n_dask.store.write_image_zarr` writes
    the ``.zarr`` ones).  ``attrs`` (provenance) go into the OME-Zarr
    attributes, the TIFF description (plain: JSON; ImageJ: an ``asn2n`` entry) or an
    OME map annotation.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    extra = attrs or {}
    try:
        if out.suffix.lower() in TIFF_SUFFIXES:
            try:
                _write_tiff(tmp, out, data, meta, extra)
            except OSError as e:
                if e.errno is None and "written" in str(e):  # tifffile's short write: no room left
                    raise OutputError(f"the disk holding {out} is full ({e}); free space and run the same command "
                                      "again.") from None
                raise
        else:
            from .store import write_image_zarr

            scale = usable_scale(meta.scale, len(meta.axes), meta.source or "the image") if _ome_order(meta.axes) \
                else None
            write_image_zarr(tmp, data, meta.axes, attrs=extra, scale=scale, units=meta.units,
                             channel_names=meta.channel_names or (), chunks=chunks)
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
