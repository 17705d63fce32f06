"""OME-NGFF metadata of the outputs, built in one place.

Pure functions: axis letters, pixel scale and number of levels in, the attribute dicts
of OME-Zarr 0.4 (Zarr v2) and 0.5 (Zarr v3) out, for an image, a label image and the
``labels`` group that lists label images.  Every writer of OME-Zarr takes its metadata
from here.  The package's own attributes (``asn2n``: options, model hash, statistics,
status) go beside these objects in a group's attributes, never inside them.

Levels of a pyramid halve Y and X: the mean of each 2x2 block for an image
(:func:`block_mean`), its most frequent value for a label image (:func:`block_mode`,
label values are never averaged); the label image has the same levels, shapes and
coordinate transformations as its image, less its ``C`` axis.

An image with a ``C`` axis has one label image per channel, without that axis
(:func:`channel_label_names`, :func:`drop_channel`): viewers show an image one layer
per channel over its other axes and a label image as one layer over all of its axes,
aligning layers from the last axis, so a label image with ``C`` would put the image's
time points against the labels' channels.

>>> attrs = image_attrs("0.5", "CYX", scale=(1.0, 0.2, 0.2), levels=2)
>>> [d["coordinateTransformations"][0]["scale"] for d in attrs["ome"]["multiscales"][0]["datasets"]]
[[1.0, 0.2, 0.2], [1.0, 0.4, 0.4]]
>>> image_attrs("0.4", "YX")["multiscales"][0]["version"]
'0.4'
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._version import __version__

__all__ = ["VERSIONS", "ZARR_FORMAT", "AXIS_TYPES", "MAX_LEVELS", "valid_scale", "axes_attrs", "level_scale",
           "multiscale", "image_attrs", "label_attrs", "labels_attrs", "array_kwargs", "block_mean", "block_mode",
           "channel_label_names", "drop_channel"]

#: OME-Zarr versions written, and the Zarr format each is stored in.
VERSIONS = ("0.4", "0.5")
ZARR_FORMAT = {"0.4": 2, "0.5": 3}
#: OME axis type of each axis letter.
AXIS_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
#: Most levels after level 0 (``--pyramid`` at most): a valid scale stays finite at the last.
MAX_LEVELS = 10


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"OME-Zarr version must be one of {', '.join(VERSIONS)}; got {version!r}.")
    return version


def valid_scale(scale: Any, ndim: int) -> tuple[float, ...] | None:
    """``scale`` as floats when it is one positive finite number per axis, else None.

    Numbers only: a string (even ``"0.5"``), a boolean or a missing value make the
    scale invalid, and so does a size that would not stay finite at the smallest
    pyramid level (:data:`MAX_LEVELS` halvings).

    >>> valid_scale([1, 0.5], 2)
    (1.0, 0.5)
    >>> valid_scale([1.0, float("nan")], 2), valid_scale([1.0, "0.5"], 2), valid_scale([1.0, 0.0], 2)
    (None, None, None)
    """
    if scale is None or isinstance(scale, (str, bytes)) or not isinstance(scale, Sequence):
        return None
    if len(scale) != ndim or not all(isinstance(v, Real) and not isinstance(v, bool) for v in scale):
        return None
    try:
        vals = tuple(float(v) for v in scale)
    except (OverflowError, ValueError):  # an integer beyond float's range
        return None
    if all(v > 0 and math.isfinite(v * 2**MAX_LEVELS) for v in vals):
        return vals
    return None


def axes_attrs(axes: str, units: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """The ``axes`` of a multiscale: name (the lower-case letter), type, and unit
    where ``units`` gives a non-empty string for the axis."""
    out = []
    for i, a in enumerate(axes):
        d: dict[str, Any] = {"name": a.lower(), "type": AXIS_TYPES[a]}
        unit = units[i] if units is not None and i < len(units) else None
        if isinstance(unit, str) and unit:
            d["unit"] = unit
        out.append(d)
    return out


def level_scale(scale: Sequence[float] | None, axes: str, level: int) -> list[float]:
    """Pixel size per axis at pyramid ``level``: ``scale`` (default 1 per axis) with Y
    and X doubled per level."""
    base = list(scale) if scale is not None else [1.0] * len(axes)
    return [float(v) * (2**level if a in "YX" else 1) for v, a in zip(base, axes)]


def multiscale(axes: str, *, levels: int = 1, scale: Sequence[float] | None = None,
               units: Sequence[Any] | None = None, name: str, downsampling: str = "mean") -> dict[str, Any]:
    """One entry of ``multiscales``: axes, one dataset per level (paths ``"0"``,
    ``"1"``, ...) with its scale, and the downsampling ``type`` and ``metadata``.

    ``downsampling`` is ``"mean"`` (:func:`block_mean`) or ``"mode"`` (:func:`block_mode`).

    Raises
    ------
    ValueError
        ``scale`` is not one positive finite number per axis (:func:`valid_scale`:
        readers drop such a scale with a warning before it gets here), axes outside
        ``TCZYX``, levels out of range, or an unknown ``downsampling``.
    """
    if scale is not None and valid_scale(scale, len(axes)) is None:
        raise ValueError(f"the pixel scale {list(scale)} is not one positive finite number per axis of {axes}.")
    if not 1 <= levels <= MAX_LEVELS + 1:
        raise ValueError(f"levels must be 1 to {MAX_LEVELS + 1}; got {levels}.")
    how = {"mean": "the mean of each 2x2 block of the level above",
           "mode": "the most frequent value of each 2x2 block of the level above (ties: the smallest)"}
    if downsampling not in how:
        raise ValueError(f"downsampling must be mean or mode; got {downsampling!r}.")
    return {
        "axes": axes_attrs(axes, units),
        "name": name,
        "datasets": [{"path": str(lv), "coordinateTransformations": [
            {"type": "scale", "scale": level_scale(scale, axes, lv)}]} for lv in range(levels)],
        "type": downsampling,
        "metadata": {"description": f"each level halves Y and X: {how[downsampling]}",
                     "method": f"asn2n_dask.ome.block_{downsampling}", "version": __version__},
    }


def _wrap(version: str, body: dict[str, Any]) -> dict[str, Any]:
    """0.5 puts the OME objects under ``ome`` with the version; 0.4 at the top level."""
    if _check_version(version) == "0.5":
        return {"ome": {"version": "0.5", **body}}
    for ms in body.get("multiscales", []):
        ms["version"] = "0.4"
    if "image-label" in body:
        body["image-label"]["version"] = "0.4"
    return body


def image_attrs(version: str, axes: str, *, levels: int = 1, scale: Sequence[float] | None = None,
                units: Sequence[Any] | None = None, name: str = "image",
                channels: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The OME attributes of an image group: one multiscale of ``levels`` mean-reduced
    levels, and ``omero`` channel entries (``label``, ``color``, ``window``...) when
    ``channels`` is given.

    Parameters
    ----------
    version : {"0.4", "0.5"}
    axes : str
        Axis letters from ``TCZYX``, in that order.
    levels, scale, units, name
        As :func:`multiscale`.
    channels : sequence of dict, optional
        One ``omero`` channel entry per ``C`` index.  OME-Zarr 0.4 requires a
        ``color`` and a ``window`` in each: without them there, no ``omero`` is
        written (it is transitional metadata for viewers).

    Returns
    -------
    dict
        The group's attributes (``{"ome": {...}}`` for 0.5, the objects themselves for 0.4).
    """
    body: dict[str, Any] = {"multiscales": [multiscale(axes, levels=levels, scale=scale, units=units, name=name,
                                                       downsampling="mean")]}
    if channels and (version != "0.4" or all("color" in c and "window" in c for c in channels)):
        body["omero"] = {"channels": [dict(c) for c in channels]}
    return _wrap(version, body)


def label_attrs(version: str, axes: str, *, levels: int = 1, scale: Sequence[float] | None = None,
                units: Sequence[Any] | None = None, name: str,
                classes: Mapping[int, tuple[str, tuple[int, int, int, int]]], source: str = "../../") -> dict[str, Any]:
    """The OME attributes of a label image: a multiscale of ``levels`` mode-reduced
    levels (give the image's ``levels``, ``scale`` and ``units``: each level then has
    the image level's scale) and ``image-label`` with a colour and a class name per
    label value.

    Parameters
    ----------
    classes : mapping of int to (str, (r, g, b, a))
        Per label value, its class name and display colour (0 to 255 each).
    source : str
        Path from the label image to its image.
    """
    body = {"multiscales": [multiscale(axes, levels=levels, scale=scale, units=units, name=name,
                                       downsampling="mode")],
            "image-label": {
                "colors": [{"label-value": int(v), "rgba": [int(c) for c in rgba]}
                           for v, (_, rgba) in classes.items()],
                "properties": [{"label-value": int(v), "class": what} for v, (what, _) in classes.items()],
                "source": {"image": source},
            }}
    return _wrap(version, body)


def labels_attrs(version: str, names: Sequence[str]) -> dict[str, Any]:
    """The OME attributes of the ``labels`` group: the paths of its label images."""
    return _wrap(version, {"labels": list(names)})


#: A channel name used as it is in the path of its label image: a letter or digit, then
#: letters, digits, ``_``, ``-`` or ``.`` (a name any file system and Zarr store keep).
_PATH_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def channel_label_names(base: str, channels: Sequence[str] | None) -> list[str]:
    """Names of the label images of an image (paths in its ``labels`` group), in
    channel order: ``[base]`` for an image without a ``C`` axis (``channels`` None),
    else ``base-<channel>`` per channel, by the channels' names (``omero`` labels)
    where each is a plain path word (:data:`_PATH_WORD`) and they differ even in
    case, else by position (``base-0``, ``base-1``...).

    >>> channel_label_names("risk", None)
    ['risk']
    >>> channel_label_names("risk", ["mito", "er"])
    ['risk-mito', 'risk-er']
    >>> channel_label_names("risk", ["GFP 488", "er"]), channel_label_names("risk", ["ER", "er"])
    (['risk-0', 'risk-1'], ['risk-0', 'risk-1'])
    """
    if channels is None:
        return [base]
    words = [str(c) for c in channels]
    by_name = all(_PATH_WORD.fullmatch(w) for w in words) and len({w.lower() for w in words}) == len(words)
    return [f"{base}-{w if by_name else k}" for k, w in enumerate(words)]


def drop_channel(axes: str, *per_axis: Sequence[Any] | None) -> tuple[Any, ...]:
    """``axes`` without ``C``, and each ``per_axis`` sequence (a scale, units, a shape;
    None stays None) without the entry of ``C``: the geometry of a channel's label image.

    >>> drop_channel("TCYX", (2.0, 1.0, 0.1, 0.1), None)
    ('TYX', (2.0, 0.1, 0.1), None)
    """
    keep = [i for i, a in enumerate(axes) if a != "C"]
    return ("".join(axes[i] for i in keep),
            *(None if v is None else tuple(v[i] for i in keep if i < len(v)) for v in per_axis))


def array_kwargs(version: str, axes: str) -> dict[str, Any]:
    """Keyword arguments of ``zarr.Group.create_array`` for a level of an image or
    label image: its dimensions named by the lower-case axis letters (as the
    multiscale's axes: ``dimension_names`` on Zarr v3, xarray's ``_ARRAY_DIMENSIONS``
    attribute on Zarr v2), and the fill value and chunk keys of the version.

    Zarr v2 arrays get no fill value (``null``): xarray reads a v2 fill value as its
    missing-value marker and would turn pixels equal to it (the label value 0, a
    denoised 0) into NaN.

    >>> array_kwargs("0.4", "TYX")["attributes"]
    {'_ARRAY_DIMENSIONS': ['t', 'y', 'x']}
    >>> array_kwargs("0.5", "TYX")
    {'dimension_names': ['t', 'y', 'x'], 'fill_value': 0}
    """
    names = [a.lower() for a in axes]
    if _check_version(version) == "0.5":
        return {"dimension_names": names, "fill_value": 0}
    return {"attributes": {"_ARRAY_DIMENSIONS": names}, "fill_value": None,
            "chunk_key_encoding": {"name": "v2", "separator": "/"}}


def _axes(axis: int | Sequence[int]) -> tuple[int, ...]:
    return (int(axis),) if isinstance(axis, (int, np.integer)) else tuple(int(a) for a in axis)


def _blocks_last(x: NDArray[Any], axis: int | Sequence[int] | None) -> NDArray[Any]:
    """``x`` with the ``axis`` dimensions (None: all) moved last and flattened into one."""
    ax = tuple(range(x.ndim)) if axis is None else _axes(axis)
    moved = np.moveaxis(x, ax, tuple(range(-len(ax), 0)))
    return moved.reshape(moved.shape[: moved.ndim - len(ax)] + (-1,))


def block_mean(x: NDArray[Any], axis: int | Sequence[int] | None = None) -> NDArray[np.float64]:
    """Mean over the ``axis`` dimensions (None: all), in float64 (a reduction for
    ``dask.array.coarsen``: the blocks of an image level)."""
    return np.asarray(np.mean(np.asarray(x, np.float64), axis=None if axis is None else _axes(axis)))


def block_mode(x: NDArray[Any], axis: int | Sequence[int] | None = None) -> NDArray[Any]:
    """Most frequent value over the ``axis`` dimensions (None: all), ties going to the smallest
    value, with ``x``'s dtype (a reduction for ``dask.array.coarsen``: the blocks of a
    label level).  A value that is not in a block never comes out of it.

    >>> block_mode(np.array([[1, 2], [2, 0]], np.uint8), axis=(0, 1))
    array(2, dtype=uint8)
    >>> block_mode(np.array([[[1, 2], [2, 1]], [[0, 0], [0, 3]]]), axis=(1, 2)).tolist()
    [1, 0]
    """
    flat = np.sort(_blocks_last(np.asarray(x), axis), axis=-1)
    counts = (flat[..., :, None] == flat[..., None, :]).sum(axis=-1)
    first = np.argmax(counts, axis=-1)[..., None]  # first of the most frequent: the smallest, values being sorted
    return np.take_along_axis(flat, first, axis=-1)[..., 0]
