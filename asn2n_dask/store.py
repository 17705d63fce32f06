"""OME-Zarr outputs on disk: creating their groups and arrays, the risk label images,
the pyramid levels, and the metadata that finishes them.

The metadata itself (dicts of OME-NGFF 0.4/0.5) is :mod:`asn2n_dask.ome`'s; what a
run may resume or replace, and the completion records, are :mod:`asn2n_dask.resume`'s.
This module only writes, from plain values (axes, shapes, chunks, names), so that any
writer of an OME-Zarr image, a chunked run or an image in memory, writes it alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import ome, resume

__all__ = ["MIN_LEVEL", "COLOURS", "create_output", "open_outputs", "pyramid_levels", "write_pyramid",
           "channel_display", "finalise", "write_image_zarr"]

log = logging.getLogger(__name__)

#: The smallest level of a ``--pyramid``, in pixels along Y and X.
MIN_LEVEL = 16
#: Display colours of an output's channels, in turn.
COLOURS = ("00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF")


def _zarr_format(version: str) -> Literal[2, 3]:
    return 2 if version == "0.4" else 3


def create_output(output: Path, *, version: str, axes: str, shape: tuple[int, ...], chunks: tuple[int, ...],
                  dtype: Any, labels: Sequence[str], attrs: Mapping[str, Any]) -> None:
    """Create an empty OME-Zarr output: the group (its ``asn2n`` attributes ``attrs``),
    level 0 of the image, level 0 of each risk label image (``labels/<name>``, over
    ``axes`` without ``C``, uint8) and the folder of completion records.

    Parameters
    ----------
    version : {"0.5", "0.4"}
        OME-Zarr version (Zarr v3 or v2).
    axes : str
        The image's axes, in T, C, Z, Y, X order.
    """
    import zarr

    root: Any = zarr.open_group(str(output), mode="w", zarr_format=_zarr_format(version),
                                attributes={"asn2n": dict(attrs)})
    root.create_array("0", shape=shape, chunks=chunks, dtype=dtype, **ome.array_kwargs(version, axes))
    group = root.create_group("labels")
    label_axes, label_shape, label_chunks = ome.drop_channel(axes, shape, chunks)
    for name in labels:  # one per channel, without C: viewers align it with its channel's image layer
        group.create_group(name).create_array("0", shape=label_shape, chunks=label_chunks, dtype="uint8",
                                              **ome.array_kwargs(version, str(label_axes)))
    (output / resume.PROGRESS_DIR).mkdir(exist_ok=True)


def open_outputs(path: str, label: str) -> tuple[Any, Any]:
    """Level 0 of the output image and of the risk label image ``label``."""
    import zarr

    root = zarr.open_group(path, mode="r+")
    return root["0"], root[f"labels/{label}/0"]


def pyramid_levels(frame_shape: Sequence[int], extra: int) -> int:
    """Levels written for ``--pyramid extra``: level 0, then halvings while both frame
    sides stay at least :data:`MIN_LEVEL` pixels (a warning says when that stops it)."""
    h, w = frame_shape
    levels = 1
    while levels <= extra and min(h >> levels, w >> levels) >= MIN_LEVEL:
        levels += 1
    if levels <= extra:
        log.warning("--pyramid %d: %d extra level(s) written; a further halving of the %dx%d frames would be smaller "
                    "than %d pixels", extra, levels - 1, h, w, MIN_LEVEL)
    return levels


def write_pyramid(images: Sequence[tuple[Any, str, tuple[int, ...], Any]], levels: int, version: str,
                  client: Any) -> None:
    """Levels ``1 .. levels - 1`` of each image, each the 2x2 reduction of the one
    before along Y and X, computed level by level on ``client`` (None: dask's default
    scheduler; ``"sync"``: this thread).

    ``images``: per image, its group, axes, chunks and 2x2 reduction
    (:func:`asn2n_dask.ome.block_mean`, :func:`asn2n_dask.ome.block_mode`).
    """
    import dask.array as da

    for lv in range(1, levels):
        sources, targets = [], []
        for group, axes, chunks, reduce in images:
            prev = group[str(lv - 1)]
            src = da.from_zarr(prev)
            factors = {i: (2 if a in "YX" and src.shape[i] >= 2 else 1) for i, a in enumerate(axes)}
            small = da.coarsen(reduce, src, factors, trim_excess=True).astype(prev.dtype)
            arr = group.create_array(str(lv), shape=small.shape, dtype=prev.dtype, overwrite=True,
                                     chunks=tuple(min(c, n) for c, n in zip(chunks, small.shape)),
                                     **ome.array_kwargs(version, axes))
            sources.append(small.rechunk(arr.chunks))
            targets.append(arr)
        if client is not None and not isinstance(client, str):
            da.store(sources, targets, lock=False, scheduler=client)
        else:
            da.store(sources, targets, lock=False, scheduler="synchronous" if client == "sync" else None)


def channel_display(names: Sequence[str], stats: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OME ``omero`` channels for viewers (napari-ome-zarr): per channel its name, a
    colour and, where its statistics (:meth:`asn2n_dask.stats.ChannelStats.to_dict`) are
    known, a display window over its normalisation range."""
    chans: list[dict[str, Any]] = []
    for k, name in enumerate(names):
        ch: dict[str, Any] = {"label": name, "active": True, "color": COLOURS[k % len(COLOURS)]}
        if k < len(stats):
            st = stats[k]
            ch["window"] = {"start": st["norm"]["lo"], "end": st["norm"]["hi"], "min": st["minimum"],
                            "max": st["maximum"]}
        chans.append(ch)
    return chans


def finalise(output: Path, *, version: str, axes: str, chunks: tuple[int, ...], labels: Sequence[str],
             levels: int, channel_names: Sequence[str] | None, classes: Mapping[int, Any],
             scale: Sequence[float] | None, units: Sequence[str | None] | None, listing: str | None,
             client: Any = None) -> None:
    """Finish an output whose every chunk is written: the pyramid levels of the image
    and of its risk label images (the same levels, shapes and scales, less ``C``), then
    the OME metadata, and last the status that presents the output as complete, with
    the input's ``listing`` taken before the run read it.  Each step may be redone: an
    output stopped here is finished by doing it again.

    Parameters
    ----------
    channel_names : sequence of str, optional
        Names of the output's channels (None: the output has no ``C``).
    classes : mapping
        Classes of the risk label images: per label value, its name and RGBA colour.
    scale, units : sequence, optional
        Pixel scale and units per axis of ``axes``.
    """
    import zarr

    root: Any = zarr.open_group(str(output), mode="r+")
    label_axes, label_chunks = ome.drop_channel(axes, chunks)
    # (group, axes, chunks, 2x2 reduction) of the image and of each label image
    images = [(root, axes, chunks, ome.block_mean)]
    images += [(root[f"labels/{name}"], str(label_axes), label_chunks, ome.block_mode) for name in labels]
    if version == "0.4":  # level 0 of a run begun before its arrays' dimensions were named
        for group, ax, _, _ in images:
            group["0"].attrs.update(ome.array_kwargs(version, ax)["attributes"])
    if levels > 1:
        write_pyramid(images, levels, version, client)
    chans: list[dict[str, Any]] = []
    if channel_names is not None:  # channel names, colours and display windows for viewers
        chans = channel_display(channel_names, (dict(root.attrs).get("asn2n") or {}).get("stats") or [])
    _, label_scale, label_units = ome.drop_channel(axes, scale, units)
    root["labels"].attrs.update(ome.labels_attrs(version, list(labels)))
    for name in labels:
        root[f"labels/{name}"].attrs.update(ome.label_attrs(version, str(label_axes), name=name, classes=classes,
                                                            levels=levels, scale=label_scale, units=label_units))
    # last: the image metadata and the status that present the output as complete
    asn = resume.complete_attrs(dict(dict(root.attrs).get("asn2n", {})), listing)
    root.attrs.update({**ome.image_attrs(version, axes, name="denoised", channels=chans, levels=levels,
                                         scale=scale, units=units), "asn2n": asn})


def write_image_zarr(path: Path, data: np.ndarray, axes: str, *, attrs: Mapping[str, Any],
                     scale: Sequence[float] | None = None, units: Sequence[str | None] | None = None,
                     channel_names: Sequence[str] = (), chunks: tuple[int, ...] | None = None) -> None:
    """Write an image in memory to a new Zarr v3 store ``path``: OME-Zarr 0.5 when
    ``axes`` are a subset of ``TCZYX`` in that order, else a plain array with
    ``dimension_names``; ``attrs`` (provenance) as its ``asn2n`` attributes.  Default
    chunks: whole frames, at most 1024 pixels along Y and X."""
    import zarr

    frame_chunks = chunks or tuple(1 if a not in "YX" else min(s, 1024) for a, s in zip(axes, data.shape))
    arr: Any
    if set(axes) <= set("TCZYX") and list(axes) == sorted(axes, key="TCZYX".index):
        root = zarr.open_group(str(path), mode="w", zarr_format=3)
        root.attrs.update({**ome.image_attrs("0.5", axes, scale=scale, units=units, name="denoised",
                                             channels=[{"label": n} for n in channel_names]), "asn2n": dict(attrs)})
        arr = root.create_array("0", shape=data.shape, chunks=frame_chunks, dtype=data.dtype,
                                **ome.array_kwargs("0.5", axes))
    else:
        arr = zarr.create_array(str(path), shape=data.shape, chunks=frame_chunks, dtype=data.dtype,
                                dimension_names=[a.lower() for a in axes], zarr_format=3)
        arr.attrs.update({"asn2n": dict(attrs)})
    arr[...] = data
