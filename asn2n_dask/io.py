"""Reading and writing images: TIFF (tifffile), Zarr v2/v3 and OME-Zarr (zarr).

The only module of the core that touches files.  Reads give a numpy array and an
:class:`ImageMeta` with axis letters; writes go to a temporary path beside the target
and are renamed into place when complete, so a failed run never leaves a half-written
output under the requested name, and the input is only ever opened read-only.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .axes import parse_axes
from .errors import InputError, OutputError

__all__ = ["ImageMeta", "read_image", "check_output", "paths_overlap", "write_image", "cast_output", "TIFF_SUFFIXES"]

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
    """

    axes: str
    format: str
    scale: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    channel_names: tuple[str, ...] | None = None
    source: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


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


def _read_tiff(path: Path) -> tuple[NDArray[Any], ImageMeta]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            data = series.asarray()
            axes = series.axes
    except (tifffile.TiffFileError, ValueError, OSError) as e:
        raise InputError(f"{path} is not a readable TIFF file ({e}).") from None
    axes = axes.replace("I", "T") if "T" not in axes else axes
    if "S" in axes:
        raise InputError(f"{path} is an RGB image; save each colour as a channel of a grey-level stack.")
    if not axes.endswith("YX"):
        raise InputError(f"{path} has axes {axes}; the last two must be the frame's Y and X.")
    return data, ImageMeta(axes=parse_axes(axes, data.ndim), format="tiff", source=str(path))


def _ome_multiscale(attrs: dict[str, Any]) -> dict[str, Any] | None:
    ome = attrs.get("ome", attrs)
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    return ms[0] if isinstance(ms, list) and ms else None


def _read_zarr(path: Path) -> tuple[Any, ImageMeta]:
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as e:  # zarr raises several types for a missing or bad store
        raise InputError(f"{path} is not a readable Zarr store ({type(e).__name__}: {e}).") from None
    attrs: dict[str, Any] = dict(node.attrs)
    if isinstance(node, zarr.Group):
        ms = _ome_multiscale(attrs)
        if ms is not None:
            try:
                level0 = ms["datasets"][0]
                arr: Any = node[level0["path"]]
                if not isinstance(ms["axes"], list):
                    raise TypeError("axes must be a list")
                names = [a["name"] if isinstance(a, dict) else str(a) for a in ms["axes"]]
                units = tuple(a.get("unit") if isinstance(a, dict) else None for a in ms["axes"])
                scale = None
                for t in level0.get("coordinateTransformations", []):
                    if t.get("type") == "scale":
                        scale = tuple(float(s) for s in t["scale"])
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise InputError(f"{path} has malformed OME-Zarr multiscales metadata ({e!r}).") from None
            try:  # channel names are a courtesy: unreadable ones are ignored, not fatal
                omero: dict[str, Any] = attrs.get("ome", attrs).get("omero", {})
                chans = tuple(str(c.get("label", i)) for i, c in enumerate(omero.get("channels", []))) or None
            except (AttributeError, TypeError):
                chans = None
            axes = _letters(names)
            if len(axes) != arr.ndim:
                raise InputError(f"{path} names {len(axes)} axes for a {arr.ndim}-D array.")
            return arr, ImageMeta(axes=parse_axes(axes, arr.ndim), format="ome-zarr", scale=scale, units=units,
                                  channel_names=chans, source=str(path), attrs=attrs)
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
    return array, ImageMeta(axes=parse_axes(letters, array.ndim), format="zarr", source=str(path), attrs=attrs)


def read_image(path: str | os.PathLike[str]) -> tuple[NDArray[Any], ImageMeta]:
    """Read a TIFF, Zarr or OME-Zarr image (OME-Zarr: level 0) into memory.

    Returns
    -------
    data : ndarray
        Pixels with their stored dtype, axes as ``meta.axes``.
    meta : ImageMeta

    Raises
    ------
    InputError
        Missing path, unknown format, unreadable file or unusable axes.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist.")
    if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES:
        return _read_tiff(p)
    if p.is_dir() and _is_zarr(p):
        arr, meta = _read_zarr(p)
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
            raise OutputError(f"output {out} is the input; choose another output path (the input is never "
                              "overwritten).")
    if out.exists() and not overwrite:
        raise OutputError(f"output {out} already exists; pass --overwrite to replace it or choose another path.")
    return out


def cast_output(data: NDArray[np.floating], dtype: np.dtype[Any] | str) -> NDArray[Any]:
    """Cast denoised intensities to ``dtype``: floats as they are, integers rounded and clipped."""
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        return np.clip(np.rint(np.asarray(data, np.float64)), info.min, info.max).astype(dt)
    return data.astype(dt)


def _ome_attrs(meta: ImageMeta, version: str, extra: dict[str, Any]) -> dict[str, Any]:
    types = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
    axes = []
    for i, a in enumerate(meta.axes):
        ax: dict[str, Any] = {"name": a.lower(), "type": types[a]}
        if meta.units and i < len(meta.units) and meta.units[i]:
            ax["unit"] = meta.units[i]
        axes.append(ax)
    scale = list(meta.scale) if meta.scale and len(meta.scale) == len(meta.axes) else [1.0] * len(meta.axes)
    ms: dict[str, Any] = {"axes": axes, "name": "denoised",
                          "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}
    body: dict[str, Any] = {"multiscales": [ms]}
    if meta.channel_names:
        body["omero"] = {"channels": [{"label": n} for n in meta.channel_names]}
    if version == "0.4":
        ms["version"] = "0.4"
        return {**body, "asn2n": extra}
    return {"ome": {"version": version, **body}, "asn2n": extra}


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
                root.attrs.update(_ome_attrs(meta, "0.5", extra))
                arr = root.create_array("0", shape=data.shape, chunks=frame_chunks, dtype=data.dtype,
                                        dimension_names=[a.lower() for a in meta.axes])
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
