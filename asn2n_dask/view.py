"""What napari shows of a denoised OME-Zarr output: for ``asn2n view`` and the napari plugin.

:func:`output_layers` builds the output's layers without napari (lazy dask arrays,
names, scales, contrast limits) as napari's layer data tuples ``(data, kwargs,
layer_type)``; :func:`napari_layers` adds the input beside them for ``asn2n view``, and
:func:`napari_get_reader` is the plugin's reader (``File > Open`` on an output), which
claims only outputs of asn2n and leaves other OME-Zarr to napari-ome-zarr.  The viewer
code that remains is a loop of ``viewer.add_image`` / ``viewer.add_labels``.
:func:`require_napari` makes sure napari can open a window here before one is asked
for: without napari, a Qt binding or a display, Qt would end the process or napari
raise deep in its start-up.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import ConfigError, InputError
from .source import Source, open_source

__all__ = ["Layer", "output_layers", "napari_layers", "napari_get_reader", "read_output", "require_napari", "show"]

log = logging.getLogger(__name__)

#: Run in a child process: Qt aborts the process it cannot start a window in.
_QT_PROBE = "from qtpy.QtWidgets import QApplication; QApplication([])"


class Layer(NamedTuple):
    """One napari layer as napari's layer data tuple: ``viewer.add_<layer_type>(data, **kwargs)``.

    A reader returns a list of them as they are; ``kwargs["channel_axis"]`` makes napari
    split an image into one layer per channel.
    """

    data: Any
    kwargs: dict[str, Any]
    layer_type: str  # "image" or "labels"


def _scale(src: Source, axes: str | None = None, drop: str = "C") -> tuple[float, ...]:
    """Pixel sizes per axis (OME scale, else 1) in the order of ``axes`` (default:
    the source's), without the channel axis."""
    sc = src.meta.scale if src.meta.scale and len(src.meta.scale) == len(src.axes) else (1.0,) * len(src.axes)
    size = dict(zip(src.axes, sc))
    return tuple(float(size[a]) for a in (axes or src.axes) if a not in drop)


def _image(src: Source, name: str, names: list[str], limits: list[tuple[float, float]] | None,
           selection: dict[str, Any] | None = None, axes: str | None = None) -> Layer:
    """The layer of an image, its ``selection`` (channels, time range) taken and its
    axes put in the order of ``axes`` (the output's: an input stored as TZCYX shows as
    TCZYX), lazily."""
    xa = src.to_xarray()  # lazy, in storage chunks, whatever array type the source opens as
    sel = selection or {}
    if sel.get("channels") is not None and "C" in src.axes:
        xa = xa.isel(c=list(sel["channels"]))
    if sel.get("time") is not None and "T" in src.axes:
        xa = xa.isel(t=list(range(*sel["time"])))
    order = axes or src.axes
    data = xa.transpose(*[a.lower() for a in order]).data
    kw: dict[str, Any] = {"scale": _scale(src, order), "blending": "additive"}
    if "C" in order:
        kw["channel_axis"] = order.index("C")
        kw["name"] = [f"{name} {n}" for n in names]
        if limits:
            kw["contrast_limits"] = limits
        kw["colormap"] = ["green", "magenta", "cyan", "yellow", "red", "blue"][: len(names)]
    else:
        kw["name"] = name
        kw["colormap"] = "gray"
        if limits:
            kw["contrast_limits"] = limits[0]
    return Layer(data, kw, "image")


def _output(output: str | os.PathLike[str]) -> tuple[Source, list[Any], list[str], dict[str, Any],
                                                   list[tuple[float, float]] | None]:
    """An output's image, its risk label images, channel names, run record and contrast
    limits (the run's channel statistics), or InputError."""
    import zarr

    from .io import risk_labels

    out = Path(output)
    den = open_source(out)
    labels = risk_labels(out, den.axes, den.shape)
    if labels is None:
        raise InputError(f"{out} is not an OME-Zarr output of 'asn2n denoise' (no risk label images).")
    asn: dict[str, Any] = dict(zarr.open_group(str(out), mode="r").attrs).get("asn2n") or {}  # type: ignore[assignment]
    names = list(den.meta.channel_names or []) or [str(c) for c in range(den.shape[den.axes.index("C")])] \
        if "C" in den.axes else ["0"]
    job: dict[str, Any] = asn.get("job") or {}
    stats = job.get("stats") or []
    limits = [(float(s["norm"]["lo"]), float(s["norm"]["hi"])) for s in stats] if len(stats) == len(names) else None
    return den, labels, names, job, limits


def output_layers(output: str | os.PathLike[str]) -> list[Layer]:
    """The layers of a denoised output: the denoised image, split by napari into one
    layer per channel (``channel_axis``), and one risk label layer per channel, with the
    output's scale and channel names as layer names, contrast limits from the run's
    channel statistics, lazily (nothing is read until napari shows it).

    Parameters
    ----------
    output : path
        An OME-Zarr output of ``asn2n denoise``.

    Returns
    -------
    list of Layer
        ``(data, kwargs, "image")`` with ``kwargs["name"]`` ``"denoised <channel>"`` for
        each channel (``"denoised"`` for an image without ``C``), then
        ``(data, kwargs, "labels")`` named ``"risk <channel>"``, each over the image's
        axes without ``C`` (0 safe, 1 weak background, 2 sparse bright).

    Raises
    ------
    InputError
        The output is not a readable asn2n OME-Zarr output.
    """
    den, labels, names, _, limits = _output(output)
    return _output_layers(den, labels, names, limits)


def _output_layers(den: Source, labels: list[Any], names: list[str],
                   limits: list[tuple[float, float]] | None) -> list[Layer]:
    layers = [_image(den, "denoised", names, limits)]
    for n, data in zip(names, labels):
        layers.append(Layer(data, {"name": f"risk {n}", "scale": _scale(den), "opacity": 0.4, "visible": False},
                            "labels"))
    return layers


def napari_layers(output: str | os.PathLike[str], input: str | os.PathLike[str] | None = None) -> list[Layer]:
    """What ``asn2n view`` shows: the input (if found, in the output's axis order), then
    :func:`output_layers` (the denoised image per channel and its risk labels).

    Parameters
    ----------
    output : path
        An OME-Zarr output of ``asn2n denoise``.
    input : path, optional
        The noisy input (default: the one recorded in the output, if it still exists).

    Raises
    ------
    InputError
        The output is not a readable asn2n OME-Zarr output, or ``input`` is not the one
        it was made from.
    """
    out = Path(output)
    den, labels, names, job, limits = _output(out)
    layers = []
    raw_path = Path(input) if input is not None else Path(str((job.get("input") or {}).get("path", "")))
    if input is not None or (str(raw_path) not in ("", ".") and raw_path.exists()):
        raw = open_source(raw_path)
        layer = Layer(np.empty((0,)), {}, "image")
        if sorted(raw.axes) == sorted(den.axes):
            whole = tuple(raw.shape[raw.axes.index(a)] for a in den.axes) == den.shape  # the selection itself
            try:
                layer = _image(raw, "input", names, limits, None if whole else job.get("selection"), axes=den.axes)
            except IndexError:  # the selection does not fit this input
                pass
        if tuple(layer.data.shape) != den.shape:
            raise InputError(f"the input {raw_path} (axes {raw.axes}, shape {raw.shape}) is not the one {out} was "
                             f"made from (axes {den.axes}, shape {den.shape}).")
        layers.append(layer)
    return layers + _output_layers(den, labels, names, limits)


def _is_output(path: Any) -> bool:
    """Whether ``path`` is a local Zarr group with an ``asn2n`` record at its root and
    risk label images: an output of ``asn2n denoise`` (nothing but metadata is read)."""
    import zarr

    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_dir():
        return False
    try:
        root = zarr.open_group(str(path), mode="r")
        return isinstance(root.attrs.get("asn2n"), dict) and "labels" in root
    except Exception:  # not a Zarr group, or one zarr cannot read
        return False


def read_output(path: str | os.PathLike[str] | list[str]) -> list[Layer]:
    """The plugin's reader: :func:`output_layers` of one output (napari may pass a list of
    one path).

    Raises
    ------
    InputError
        As :func:`output_layers`.
    """
    return output_layers(path[0] if isinstance(path, list) else path)


def napari_get_reader(path: str | os.PathLike[str] | list[str]) -> Callable[[Any], list[Layer]] | None:
    """napari's reader hook (``File > Open``): :func:`read_output` for an output of
    ``asn2n denoise``, None for any other path (another OME-Zarr is left to
    napari-ome-zarr).

    Examples
    --------
    >>> napari_get_reader("not-an-output.zarr") is None
    True
    """
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return read_output if _is_output(path) else None


def require_napari(output: str | os.PathLike[str], timeout: float = 60.0) -> Any:
    """The ``napari`` module, once it is known to be able to open a window here.

    Checks that napari and a Qt binding import, then starts a Qt application in a
    child process (Qt ends a process whose display or platform plugin fails, which no
    exception handler can catch).

    Parameters
    ----------
    output : path
        The image to view, named in the advice.
    timeout : float
        Seconds the child process may take.

    Raises
    ------
    ConfigError
        napari or a Qt binding is missing, or Qt cannot open a window (no display, a
        bad ``QT_QPA_PLATFORM``, a missing system library).
    """
    try:
        import napari  # type: ignore[import-not-found]
        import qtpy  # noqa: F401  napari's windows: PyQt5/6 or PySide2/6
    except ImportError:
        raise _no_napari(output) from None
    try:
        probe = subprocess.run([sys.executable, "-c", _QT_PROBE], capture_output=True, text=True, timeout=timeout)
        ok, said = probe.returncode == 0, probe.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, said = False, str(e)
    if not ok:
        log.info("Qt could not start: %s", said or "no message")
        platform = os.environ.get("QT_QPA_PLATFORM")
        if platform:
            why = f"QT_QPA_PLATFORM is {platform!r}"
        elif sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            why = "no display: DISPLAY is not set"
        else:
            why = "its platform plugin did not start"
        raise ConfigError(f"Qt cannot open a window here ({why}); run asn2n view in a desktop session or over "
                          f"ssh -X, or open {output} in any OME-Zarr viewer (-v shows Qt's message).")
    return napari


def _no_napari(output: str | os.PathLike[str]) -> ConfigError:
    return ConfigError("napari and a Qt binding are needed to view an output; install them with 'pip install "
                       f"asn2n-dask[view]', or open {output} in any OME-Zarr viewer.")


def show(output: str | os.PathLike[str], layers: list[Layer]) -> None:
    """Open ``layers`` (:func:`napari_layers` of ``output``) in a napari window and
    return when it is closed.

    Raises
    ------
    ConfigError
        As :func:`require_napari`.
    """
    napari = require_napari(output)
    try:
        viewer = napari.Viewer(title=f"asn2n: {Path(output).name}")
        for data, kwargs, layer_type in layers:
            getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        napari.run()
    except ImportError:  # a part of napari's Qt layer the checks did not reach
        raise _no_napari(output) from None
