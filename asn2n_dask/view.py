"""What ``asn2n view`` shows in napari: the layers of a denoised OME-Zarr output.

:func:`napari_layers` builds them without napari (lazy dask arrays, names, scales,
contrast limits, label colours), so the viewer code that remains is a loop of
``viewer.add_image`` / ``viewer.add_labels``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .source import Source, open_source

__all__ = ["Layer", "napari_layers"]


@dataclass(frozen=True)
class Layer:
    """One napari layer: ``viewer.add_<kind>(data, **kwargs)``."""

    kind: str  # "image" or "labels"
    data: Any
    kwargs: dict[str, Any]


def _scale(src: Source, drop: str = "C") -> tuple[float, ...]:
    """Pixel sizes per axis (OME scale, else 1), without the channel axis."""
    sc = src.meta.scale if src.meta.scale and len(src.meta.scale) == len(src.axes) else (1.0,) * len(src.axes)
    return tuple(float(v) for a, v in zip(src.axes, sc) if a not in drop)


def _image(src: Source, name: str, names: list[str], limits: list[tuple[float, float]] | None,
           selection: dict[str, Any] | None = None) -> Layer:
    import dask.array as da

    data = da.from_zarr(src.open()) if src.kind != "tiff" else da.from_array(src.open())
    sel = selection or {}
    if sel.get("channels") is not None and "C" in src.axes:
        data = da.take(data, list(sel["channels"]), axis=src.axes.index("C"))
    if sel.get("time") is not None and "T" in src.axes:
        data = da.take(data, list(range(*sel["time"])), axis=src.axes.index("T"))
    kw: dict[str, Any] = {"scale": _scale(src), "blending": "additive"}
    if "C" in src.axes:
        kw["channel_axis"] = src.axes.index("C")
        kw["name"] = [f"{name} {n}" for n in names]
        if limits:
            kw["contrast_limits"] = limits
        kw["colormap"] = ["green", "magenta", "cyan", "yellow", "red", "blue"][: len(names)]
    else:
        kw["name"] = name
        kw["colormap"] = "gray"
        if limits:
            kw["contrast_limits"] = limits[0]
    return Layer("image", data, kw)


def napari_layers(output: str | os.PathLike[str], input: str | os.PathLike[str] | None = None) -> list[Layer]:
    """Layers of a denoised output: the input (if found), the denoised image per
    channel, and the risk labels per channel, with the output's axes scale and channel
    names, contrast limits from the run's channel statistics.

    Raises
    ------
    InputError
        The output is not a readable asn2n OME-Zarr output.
    """
    import zarr

    out = Path(output)
    den = open_source(out)
    try:
        root = zarr.open_group(str(out), mode="r")
        asn: dict[str, Any] = dict(root.attrs).get("asn2n") or {}  # type: ignore[assignment]
        labels: Any = root["labels/risk/0"]
    except Exception:
        raise InputError(f"{out} is not an OME-Zarr output of 'asn2n denoise' (no labels/risk image).") from None
    names = list(den.meta.channel_names or []) or [str(c) for c in range(den.shape[den.axes.index("C")])] \
        if "C" in den.axes else ["0"]
    job: dict[str, Any] = asn.get("job") or {}
    stats = job.get("stats") or []
    limits = [(float(s["norm"]["lo"]), float(s["norm"]["hi"])) for s in stats] if len(stats) == len(names) else None
    layers = []
    raw_path = Path(input) if input is not None else Path(str((job.get("input") or {}).get("path", "")))
    if input is not None or (str(raw_path) not in ("", ".") and raw_path.exists()):
        raw = open_source(raw_path)
        try:
            layer = _image(raw, "input", names, limits, None if raw.shape == den.shape else job.get("selection"))
        except IndexError:  # the selection does not fit this input
            layer = Layer("image", np.empty((0,)), {})
        if tuple(layer.data.shape) != den.shape:
            raise InputError(f"the input {raw_path} (shape {raw.shape}) is not the one {out} was made from "
                             f"(shape {den.shape}).")
        layers.append(layer)
    layers.append(_image(den, "denoised", names, limits))
    import dask.array as da

    lab = da.from_zarr(labels)
    c = den.axes.index("C") if "C" in den.axes else None
    for i, n in enumerate(names):
        data = lab if c is None else da.take(lab, i, axis=c)
        layers.append(Layer("labels", data, {"name": f"risk {n}", "scale": _scale(den),
                                             "opacity": 0.4, "visible": False}))
    return layers
