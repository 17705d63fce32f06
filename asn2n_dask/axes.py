"""Axis names: letters, one per dimension, ending in ``YX``.

``T`` time, ``C`` colour channel, ``Z`` depth, ``Y`` and ``X`` the frame; any other
letter (``Q``, ``I``, ...) is one more stack axis.  Frames are processed one by one,
channel by channel.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .errors import InputError

__all__ = ["parse_axes", "default_axes", "merge_axes", "NAMED_AXES", "to_planes", "from_planes", "canonical_order",
           "check_depth_axis", "to_volumes", "from_volumes"]

#: Axes the package acts on; where a file names one of them, that name stands.
NAMED_AXES = "TCZYX"


def default_axes(ndim: int) -> str:
    """Axes assumed for a bare array: ``YX`` (2-D) or ``TYX`` (3-D)."""
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "TYX"
    raise InputError(f"a {ndim}-D array needs its axes named (e.g. axes='TCYX'); only 2-D and 3-D "
                     "arrays have a default.")


def parse_axes(axes: str | None, ndim: int) -> str:
    """Validate axis letters against an array's number of dimensions.

    Returns
    -------
    str
        Upper-case letters, one per dimension, ending in ``YX``, each at most once.
    """
    if axes is None:
        return default_axes(ndim)
    a = "".join(str(axes).split()).upper()
    if len(a) != ndim:
        raise InputError(f"axes {axes!r} name {len(a)} dimensions but the image has {ndim}.")
    if not a.endswith("YX") or not a.isalpha():
        raise InputError(f"axes {axes!r} must be letters ending in YX (the frame's rows and columns).")
    if len(set(a)) != len(a):
        raise InputError(f"axes {axes!r} repeat a letter.")
    if "S" in a:
        raise InputError("RGB (sample) images are not supported: save each colour as a channel (C axis).")
    return a


def merge_axes(file_axes: str | None, given: str | None, ndim: int, *, source: str = "the file") -> str:
    """The axes of a file: its own, with ``given`` (``--axes``) naming what it leaves unnamed.

    A file's own ``T``, ``C``, ``Z``, ``Y`` and ``X`` stand; ``given`` may rename only
    axes the file names with a generic letter (tifffile's ``Q``, ImageJ's ``I``, a
    dimension name the package does not know), or all of them when the file names none
    (``file_axes`` None).

    Raises
    ------
    InputError
        ``given`` contradicts an axis the file names, or does not fit the array.
    """
    if given is None:
        return parse_axes(file_axes, ndim)
    ax = parse_axes(given, ndim)
    if file_axes is None:
        return ax
    own = str(file_axes).upper()
    clash = [f"{b} for its {a}" for a, b in zip(own, ax) if a in NAMED_AXES and a != b]
    if clash and len(own) == len(ax):
        raise InputError(f"--axes {given} names {', '.join(clash)}, but {source} names its axes {own}; leave --axes "
                         "out (a file's own axes are used) or rename only the axes it leaves unnamed.")
    return ax


def canonical_order(axes: str, order: str = NAMED_AXES) -> tuple[int, ...]:
    """Positions of ``axes``'s letters taken in ``order``: the transpose that puts an
    array of ``axes`` in that order (``"".join(axes[i] for i in result)``).

    >>> canonical_order("TZCYX")
    (0, 2, 1, 3, 4)
    >>> "".join("ZCYX"[i] for i in canonical_order("ZCYX"))
    'CZYX'

    Raises
    ------
    InputError
        ``axes`` holds a letter that is not in ``order``.
    """
    other = sorted(set(axes) - set(order))
    if other:
        raise InputError(f"axes {axes} hold {', '.join(other)}, which {', '.join(order)} does not name; name every "
                         f"axis with one of {order} (--axes).")
    return tuple(sorted(range(len(axes)), key=lambda i: order.index(axes[i])))


def to_planes(data: NDArray[np.generic], axes: str) -> NDArray[np.generic]:
    """Reshape to (C, P, H, W): channels first, every other stack axis flattened to P."""
    c = axes.find("C")
    arr = np.moveaxis(data, c, 0) if c >= 0 else data[None]
    h, w = arr.shape[-2:]
    return arr.reshape(arr.shape[0], -1, h, w)


def from_planes(planes: NDArray[np.generic], axes: str, shape: tuple[int, ...]) -> NDArray[np.generic]:
    """Inverse of :func:`to_planes` for an array of the original ``shape``."""
    c = axes.find("C")
    if c >= 0:
        moved = (shape[c],) + tuple(s for i, s in enumerate(shape) if i != c)
        return np.moveaxis(planes.reshape(moved), 0, c)
    return planes.reshape(shape)


def check_depth_axis(axes: str, depth: str, where: str = "the data", *, model: bool = False) -> None:
    """Refuse axes a 3-D network cannot take with ``depth`` (``"Z"`` or ``"T"``) as its
    depth: depth ``Z`` needs a Z axis; depth ``T`` (an x-y-t stack seen as one volume)
    needs a T axis and no Z axis.  ``model``: the depth is a trained model's, so the
    remedy is another model rather than another depth axis.

    Raises
    ------
    InputError
        Naming the axes and the remedy.
    """
    other = "Z" if depth == "T" else "T"
    remedy = f"denoise it with a model trained with depth axis {other}" if model else None
    if depth == "Z" and "Z" not in axes:
        raise InputError(f"{where} has axes {axes}, without the Z axis that volumes (depth axis Z) need; name the "
                         "axes of a volume (e.g. ZYX), or " + (remedy or "take the time axis as depth (depth axis T)")
                         + ".")
    if depth == "T" and "Z" in axes:
        raise InputError(f"{where} has axes {axes}: with depth axis T its Z axis would be left out; "
                         + (remedy or "use depth axis Z") + " (one volume per time point).")
    if depth == "T" and "T" not in axes:
        raise InputError(f"{where} has axes {axes}, without the T axis that depth axis T takes as depth; name it "
                         "(e.g. TYX), or " + (remedy or "use depth axis Z for volumes") + ".")


def _volume_order(axes: str, depth: str) -> tuple[int, ...]:
    """The transpose to (C, other stack axes..., depth, Y, X), C where there is one."""
    n = len(axes)
    c = (axes.index("C"),) if "C" in axes else ()
    others = tuple(i for i, a in enumerate(axes[:-2]) if a not in ("C", depth))
    return (*c, *others, axes.index(depth), n - 2, n - 1)


def to_volumes(data: NDArray[np.generic], axes: str, depth: str) -> NDArray[np.generic]:
    """Reshape to (C, N, D, Y, X): channels first, the ``depth`` axis (``Z`` or ``T``)
    as D, every other stack axis flattened to N (one volume each).

    >>> to_volumes(np.zeros((3, 2, 5, 8, 8)), "TCZYX", "Z").shape
    (2, 3, 5, 8, 8)
    >>> to_volumes(np.zeros((6, 8, 8)), "TYX", "T").shape
    (1, 1, 6, 8, 8)
    """
    arr = np.transpose(data, _volume_order(axes, depth))
    if "C" not in axes:
        arr = arr[None]
    return arr.reshape(arr.shape[0], -1, *arr.shape[-3:])


def from_volumes(volumes: NDArray[np.generic], axes: str, depth: str, shape: tuple[int, ...]) -> NDArray[np.generic]:
    """Inverse of :func:`to_volumes` for an array of the original ``shape``."""
    order = _volume_order(axes, depth)
    return np.transpose(volumes.reshape(tuple(shape[i] for i in order)), tuple(np.argsort(order)))
