"""The package's verbs on arrays and files: fit, denoise, assess risk.

Stacks are processed plane by plane and channel by channel; each colour channel has its
own network.  A model of 3-D networks (``fit(..., dims=3)``) sees volumes instead: per
channel, the (Z, Y, X) volume of each time point, or an x-y-t stack's (T, Y, X) as one
volume.  These functions are what the command line calls.

Arrays come back as they were given:

* a numpy array gives a numpy array;
* an ``xarray.DataArray`` gives a DataArray with the same dims, coords, name and attrs,
  plus the run's provenance in ``attrs["asn2n"]``; its dims name the axes (``t``,
  ``c``, ``z``, ``y``, ``x``, or ``time``, ``channel``) unless ``axes=`` is given;
* a dask array (or a DataArray holding one) stays lazy: nothing is read or computed
  until the result is.  The channel statistics, a reduction over each whole channel,
  are one task of the result's graph: when the result is computed, that task streams
  over the input once (block by block, in its own thread), then one task per frame
  denoises it with them, so the numbers equal the numpy route's.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .axes import check_depth_axis, from_planes, from_volumes, parse_axes, to_planes, to_volumes
from .blend import check_tile_frame
from .checkpoint import ChannelModel, Model, TrainState, save_model
from .config import InferConfig, NormConfig, RiskThresholds, TrainConfig, VolumeSpec, VolumeTrainConfig
from .errors import ConfigError, InputError, ModelError
from .method import denoising_stats
from .predict import compiles, denoise_frame, network_fn, resolve_device
from .risk import FrameStats, RiskReport
from .risk import assess_risk as _frame_risk
from .sampling import ArrayPlanes, channel_noise
from .source import MIN_FRAME_SIDE
from .stats import ChannelStats, channel_stats
from .train import TrainResult, train_channel

if TYPE_CHECKING:
    from .stats_pass import StatsCache

__all__ = ["fit", "denoise", "denoise_to_file", "denoise_with_risk", "assess_risk", "risk_summary", "check_image",
           "MIN_FRAME_SIDE", "Progress"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""Called as ``progress(what, done, total)``."""


def check_image(data: Any, *, name: str = "image") -> None:
    """Refuse data the method cannot use: non-real dtypes, NaN/inf, frames under 4x4.

    A dask array is checked by its shape and dtype only, without reading it; its NaN
    and infinite values are refused by the statistics pass when it is computed.
    """
    dt = np.asarray(data).dtype if not hasattr(data, "dtype") else data.dtype
    if dt.kind not in "uif":
        raise InputError(f"{name} has dtype {dt}, which is not supported; convert it to an integer or "
                         "float type.")
    lazy = _is_dask_array(data)
    arr = data if lazy else np.asarray(data)
    if arr.ndim < 2 or min(arr.shape[-2:]) < MIN_FRAME_SIDE:
        raise InputError(f"{name} frames are {arr.shape[-2:] if arr.ndim >= 2 else arr.shape}; frames "
                         f"must be at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} pixels.")
    if math.prod(arr.shape) == 0:
        raise InputError(f"{name} is empty.")
    if not lazy and dt.kind == "f" and not np.isfinite(arr).all():
        raise InputError(f"{name} holds NaN or infinite values; replace them (e.g. with the background "
                         "level) before denoising.")


def _is_xarray(data: Any) -> bool:
    return type(data).__module__.startswith("xarray") and hasattr(data, "dims")


def _is_dask_array(data: Any) -> bool:
    return type(data).__module__.startswith("dask") and hasattr(data, "chunks") and hasattr(data, "dask")


def _xarray_axes(data: Any, axes: str | None) -> str:
    """Axis letters of a DataArray: ``axes`` if given, else from its dims."""
    if axes is not None:
        return parse_axes(axes, data.ndim)
    from .io import _letters

    dims = [str(d) for d in data.dims]
    try:
        return parse_axes(_letters(dims), data.ndim)
    except InputError:
        raise InputError(f"the DataArray's dims {tuple(dims)} do not name its axes (the last two must be y and x; "
                         "t, c and z name the others); rename them (data.rename(...)) or pass axes=, e.g. "
                         "axes='TCYX'.") from None


def _weights_digest(model: Model) -> str:
    """SHA-256 of every channel network's weights (names, dtypes, shapes and bytes)."""
    import torch

    h = hashlib.sha256()
    for ch in model.channels:
        for key, value in ch.net.state_dict().items():
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"{ch.name}/{key}:{t.dtype}:{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _provenance(command: str, axes: str, **fields: Any) -> dict[str, Any]:
    from ._version import __version__

    return {"package": "asn2n-dask", "version": __version__, "command": command, "axes": axes, **fields}


def _like(template: Any, data: Any, provenance: dict[str, Any]) -> Any:
    """A DataArray of ``data`` with ``template``'s dims, coords, name and attrs, and the
    provenance in ``attrs["asn2n"]``."""
    import xarray as xr

    return xr.DataArray(data, dims=template.dims, coords=template.coords, name=template.name,
                        attrs={**template.attrs, "asn2n": provenance})


def fit(data: Any, *, axes: str | None = None, config: TrainConfig = TrainConfig(),
        channel_names: Sequence[str] | None = None, device: str = "auto",
        progress: Progress | None = None, model_dir: str | os.PathLike[str] | None = None,
        channels: Sequence[str] | None = None, time: str | None = None, resume: bool = False,
        workers: int = 0, client: Any = None, series: int | None = None,
        stats_cache: StatsCache | None = None, dims: int = 2, depth_axis: str | None = None,
        volume: VolumeTrainConfig | None = None, anisotropy: float | None = None) -> Model:
    """Train one Adaptive-SN2N network per colour channel on noisy data itself.

    Patches are cut lazily (:mod:`asn2n_dask.sampling`), so a file of any size trains
    in bounded memory: only the chunks under the sampled regions are read.

    With ``dims=3`` each channel gets a 3-D network (:func:`asn2n_dask.train3d.fit_volume`)
    trained on sub-volumes of its volumes: the (Z, Y, X) volume of every time point
    (``depth_axis="Z"``), or, for data without a Z axis, the (T, Y, X) stack as one
    volume (``depth_axis="T"``).  Files and dask arrays are read a sub-volume at a time
    (:class:`asn2n_dask.train3d.SourceVolumes`: only the storage chunks under it), so
    memory is bounded by the batch, the sub-volume and those chunks, not by the data;
    a numpy array trains from its own memory, to the same network.  Each channel is normalised on
    its percentile range over all its data (:func:`asn2n_dask.stats.channel_stats`, the
    statistics 2-D training takes; for files, one lazy pass); there are no risk
    classes, checkpoints or validation regions, and ``model_dir`` receives the model
    and its training curves.

    Parameters
    ----------
    data : ndarray, xarray.DataArray, dask array, path, or sequence of paths
        Noisy image(s) in input units: an array (a frame (Y, X) or a stack named by
        ``axes``; a dask array is read into memory once, or with ``dims=3`` a
        sub-volume at a time), or TIFF / Zarr / OME-Zarr files (read lazily; several
        files must have the same channels and frame size).
    axes : str, optional
        One letter per dimension ending in ``YX``, ``C`` for colour channels
        (default ``YX`` for 2-D, ``TYX`` for 3-D; files and DataArrays name their own).
    config : TrainConfig
        Training options.
    channel_names : sequence of str, optional
        Arrays: names kept in the model (default: a DataArray's channel coordinate, else
        ``"0"``, ``"1"``...).  Files keep their own channel names.
    device : {"auto", "cpu", "cuda"}
        Where to train.
    progress : callable, optional
        ``progress(what, step, total)`` after every step.
    model_dir : path, optional
        Where to write checkpoints while training, the final model, and per channel
        its training curves (CSV and PNG) and a before/after montage of validation
        patches.
    channels, time : optional
        Files: channel names or indices to train (default all) and a time range
        ``"A:B"`` to draw patches from.  The normalisation statistics always cover every
        time point, as denoising does.
    resume : bool
        Continue from the last checkpoint in ``model_dir`` (same options and data):
        the result equals an uninterrupted run.
    workers : int
        DataLoader worker processes cutting patches (0: in this process).
    client : distributed.Client or "sync", optional
        Files: where the statistics pass runs (default: in this process).
    series : int, optional
        TIFF files holding several image series: the one to read.
    stats_cache : asn2n_dask.stats_pass.StatsCache, optional
        Files: where the statistics pass leaves its result, so that denoising the
        same input next in this process need not read it again for them (``asn2n
        run``); statistics it holds for these inputs, still valid, are used instead of
        a pass.
    dims : {2, 3}
        Networks that see frames (2) or volumes (3).
    depth_axis : {"Z", "T"}, optional
        ``dims=3``: the axis the networks see as depth (default ``Z``).
    volume : VolumeTrainConfig, optional
        ``dims=3``: the training options (default ``VolumeTrainConfig()``); ``config``
        is for 2-D networks and must be left at its default.
    anisotropy : float, optional
        ``dims=3``: voxel size along the depth axis over voxel size in Y-X.  Default:
        for depth ``Z``, Z spacing over Y spacing from the input's physical scale (a
        file's OME or ImageJ metadata, a DataArray's ``z`` and ``y`` coordinates) when
        it records both; otherwise ``volume.anisotropy``.

    Returns
    -------
    Model

    Raises
    ------
    InputError
        ``dims=3`` on data whose axes do not hold the depth axis (no Z for depth Z; a Z
        axis with depth T), or volumes too small in Y-X for the preset.
    ConfigError
        Options of one kind of network given for the other.

    Examples
    --------
    >>> import numpy as np
    >>> from asn2n_dask import fit, denoise
    >>> noisy = np.random.default_rng(0).poisson(5.0, (64, 64)).astype(np.uint16)
    >>> model = fit(noisy, config=TrainConfig(preset="tiny", steps=2, patch=32, batch=2))
    >>> denoise(noisy, model, config=InferConfig(tile=32)).shape
    (64, 64)
    >>> vol = np.random.default_rng(0).poisson(5.0, (8, 32, 32)).astype(np.uint16)
    >>> from asn2n_dask import VolumeTrainConfig
    >>> m3 = fit(vol, axes="ZYX", dims=3, volume=VolumeTrainConfig(preset="tiny3d", steps=2, patch=(8, 16, 16)))
    >>> m3.dims, m3.volume.tile_z, denoise(vol, m3, axes="ZYX", config=InferConfig(tile=16)).shape
    (3, 8, (8, 32, 32))
    """
    if dims not in (2, 3) or isinstance(dims, bool):
        raise ConfigError(f"dims must be 2 (frames) or 3 (volumes); got {dims!r:.40}.")
    if dims == 3:
        if config != TrainConfig():
            raise ConfigError("config holds the options of 2-D networks; with dims=3 pass "
                              "volume=VolumeTrainConfig(...) instead.")
        if resume or workers:
            raise ConfigError("resume and loader workers apply to 2-D training only; leave them out with dims=3.")
        return _fit_volumes(data, axes=axes, config=volume if volume is not None else VolumeTrainConfig(),
                            depth_axis="Z" if depth_axis is None else depth_axis, anisotropy=anisotropy,
                            channel_names=channel_names, device=device, progress=progress, model_dir=model_dir,
                            channels=channels, time=time, client=client, series=series, stats_cache=stats_cache)
    if volume is not None or depth_axis is not None or anisotropy is not None:
        raise ConfigError("volume, depth_axis and anisotropy apply to 3-D networks only; pass dims=3 with them.")
    if isinstance(data, (str, os.PathLike)) or (isinstance(data, (list, tuple)) and data
                                                 and isinstance(data[0], (str, os.PathLike))):
        items, info = _file_channels(data, axes, config, channels, time, client, series, stats_cache)
    else:
        items, info = _array_channels(data, axes, config, channel_names)
    dev = resolve_device(device)
    rank = _rank()
    done: list[ChannelModel] = []
    state: TrainState | None = None
    first_channel = 0
    # the data's histogram and content digests: a resumed training never mixes in changed or reordered data
    job = {"config": config.to_dict(), "data": [[st.digest, st.content] for _, _, st in items],
           "channels": [n for n, _, _ in items]}
    if resume and model_dir is not None:
        from .checkpoint import load_model, load_train_state

        saved = load_train_state(model_dir)
        if saved is None:
            log.warning("no training checkpoint in %s; starting from the beginning", model_dir)
        else:
            if saved[0] != job:
                raise InputError(f"the checkpoint in {model_dir} was made with other data or options; start "
                                 "again with --overwrite, or resume with the same command.")
            first_channel, state = saved[1], saved[2]
            done = load_model(model_dir, allow_unfinished=True).channels[:first_channel]
    t_start = _time.perf_counter()

    def provenance() -> dict[str, Any]:
        return {**info, "statistics": {n: st.to_dict() for n, _, st in items}, "device": str(dev),
                "workers": workers, "processes": _world(), "wall_seconds": _time.perf_counter() - t_start}

    for c in range(first_channel, len(items)):
        name, readers, st = items[c]
        what = f"training channel {name}" if len(items) > 1 else "training"

        def step_cb(step: int, total: int, loss: float, what: str = what) -> None:
            if progress is not None:
                progress(what, step, total)

        def ckpt(r: TrainResult, ts: TrainState, name: str = name, c: int = c) -> None:
            if model_dir is not None and rank == 0:
                from .checkpoint import save_train_state

                save_model(Model(train=config, channels=done + [_channel_model(name, r)], info=provenance()), model_dir,
                           complete=False)
                save_train_state(model_dir, job, c, ts)
                _write_curves(model_dir, c, name, r.history)

        result = train_channel(readers, config, stats=st, device=dev, progress=step_cb, checkpoint=ckpt,
                               resume=state if c == first_channel else None, workers=workers)
        state = None
        ch = _channel_model(name, result)
        done.append(ch)
        if model_dir is not None and rank == 0:
            _write_curves(model_dir, c, name, result.history)
            _write_montage(model_dir, c, name, result, dev)
        log.info("channel %s: %d steps in %.1f s, dataset decision %s, high-risk ratio %.3f",
                 name, result.steps, result.seconds, result.method.dataset_mode, result.method.high_risk_ratio)
    model = Model(train=config, channels=done, info=provenance())
    if model_dir is not None and rank == 0:
        from .checkpoint import clear_train_state

        save_model(model, model_dir)
        clear_train_state(model_dir)
    return model


def _channel_model(name: str, r: TrainResult) -> ChannelModel:
    """A trained channel as the model keeps it: its network, method, training record."""
    extra = {"risk_share_seen": r.risk_share, "data_wait_fraction": r.data_wait, "stopped_early": r.stopped_early}
    m = r.method
    if m.noise_sd is not None:  # measured: the estimator was "auto"
        extra["risk_noise_sd"] = m.noise_sd
    return ChannelModel(name=name, net=r.net, stats=m.stats, dataset_mode=m.dataset_mode,
                        high_risk_ratio=m.high_risk_ratio, risk_estimator=m.risk_estimator, steps=r.steps,
                        best_step=r.best_step, seconds=r.seconds, history=r.history, extra=extra)


def _open_inputs(data: Any, axes: str | None, channels: Sequence[str] | None, time: str | None,
                 series: int | None) -> tuple[list[Any], list[Any]]:
    """The sources of ``data`` (one path or several) and each one's selection of
    ``channels`` and ``time``."""
    from .source import Selection, open_source

    paths = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    sources = [open_source(p, axes, series=series) for p in paths]
    return sources, [Selection.parse(s, list(channels) if channels else None, time) for s in sources]


def _selected_channels(source: Any, selection: Any) -> int:
    """How many channels ``selection`` keeps of ``source``."""
    return len(selection.indices(source)[source.axes.index("C")]) if "C" in source.axes else 1


def _file_channels(data: Any, axes: str | None, config: TrainConfig, channels: Sequence[str] | None,
                   time: str | None, client: Any, series: int | None, stats_cache: StatsCache | None
                   ) -> tuple[list[tuple[str, list[Any], ChannelStats]], dict[str, Any]]:
    """:func:`fit`'s channels of one or more files: per channel its name, lazy readers
    over every file and statistics (one pass), and the data's description."""
    from .sampling import SourcePlanes
    from .source import check_source
    from .stats_pass import selection_stats

    items: list[tuple[str, list[Any], ChannelStats]] = []
    sources, sels = _open_inputs(data, axes, channels, time, series)
    first = sources[0]
    n_ch = _selected_channels

    for s, sel in zip(sources, sels):
        check_source(s)
        if n_ch(s, sel) != n_ch(first, sels[0]):
            raise InputError(f"{s.path} has different channels than {first.path}; train on inputs with the "
                             "same channels.")
        if s.frame_shape != first.frame_shape:
            raise InputError("training inputs have frames of different sizes; pass one size at a time.")
        if s.axes != first.axes or any(a != b for ax, a, b in zip(s.axes, s.shape, first.shape)
                                       if ax not in "TCYX"):
            raise InputError(f"{s.path} has axes {s.axes} {s.shape}, unlike {first.path} ({first.axes} "
                             f"{first.shape}); train on inputs with the same axes.")
    c_idx = sels[0].indices(first)[first.axes.find("C")] if "C" in first.axes else np.array([0])
    names = list(first.meta.channel_names or [])
    order = [_channel_order(first, sels[0], s, sel) for s, sel in zip(sources, sels)]
    if any(o != list(range(len(o))) for o in order):  # every file's channels in the first file's order
        sels = [replace(sel, channels=tuple(int(sel.indices(s)[s.axes.index("C")][k]) for k in o))
                for s, sel, o in zip(sources, sels, order)]
    stats_all = selection_stats(sources, sels, config.norm, client, cache=stats_cache)
    for j, c in enumerate(c_idx):
        name = names[int(c)] if len(names) > int(c) else str(int(c))
        # the channel of the same name in every file (by position where files name none)
        readers = [SourcePlanes.of(s, sel, int(sel.indices(s)[s.axes.index("C")][j]) if "C" in s.axes else 0)
                   for s, sel in zip(sources, sels)]
        items.append((name, readers, stats_all[j]))
    info = {"inputs": [s.path for s in sources], "shape": [list(s.shape) for s in sources],
            "dtype": first.dtype, "axes": first.axes, "time": time}
    return items, info


def _array_channels(data: Any, axes: str | None, config: TrainConfig, channel_names: Sequence[str] | None
                    ) -> tuple[list[tuple[str, list[Any], ChannelStats]], dict[str, Any]]:
    """:func:`fit`'s channels of an array: per channel its name, readers and statistics,
    and the data's description."""
    from .train import readers_of

    items: list[tuple[str, list[Any], ChannelStats]] = []
    if _is_xarray(data):  # its dims name the axes; the coordinate of its channel dim, the channels
        axes = _xarray_axes(data, axes)
        c_dim = data.dims[axes.find("C")] if "C" in axes else None
        if channel_names is None and c_dim is not None and c_dim in data.coords:
            channel_names = [str(v) for v in data.coords[c_dim].values]
        data = data.data
    check_image(data, name="training data")
    ax = parse_axes(axes, np.ndim(data))
    planes = to_planes(np.asarray(data), ax)
    names = list(channel_names) if channel_names is not None else [str(i) for i in range(planes.shape[0])]
    if len(names) != planes.shape[0]:
        raise InputError(f"{len(names)} channel names given for {planes.shape[0]} channels.")
    stats_all = channel_stats(planes, config.norm)
    for c, name in enumerate(names):
        items.append((name, readers_of(list(planes[c])), stats_all[c]))
    info = {"inputs": ["<array>"], "shape": [list(np.shape(data))], "dtype": str(np.asarray(data).dtype),
            "axes": ax}
    return items, info


def _channel_order(first: Any, first_sel: Any, other: Any, sel: Any) -> list[int]:
    """For each selected channel of the first training file, the position of the channel
    of the same name among ``other``'s selected channels; by position where either file
    names no channels."""
    def selected_names(s: Any, se: Any) -> list[str]:
        names = list(s.meta.channel_names or [])
        if "C" not in s.axes or not names:
            return []
        return [names[int(i)] for i in se.indices(s)[s.axes.index("C")]]

    a, b = selected_names(first, first_sel), selected_names(other, sel)
    n = len(first_sel.indices(first)[first.axes.index("C")]) if "C" in first.axes else 1
    if not a or not b:
        return list(range(n))
    missing = [x for x in a if x not in b]
    if missing or len(set(b)) != len(b):
        raise InputError(f"{other.path} has channels {', '.join(b)} but {first.path} has {', '.join(a)}; train on "
                         "files with the same channel names (or select them with --channels).")
    return [b.index(x) for x in a]


def _rank() -> int:
    import torch

    return torch.distributed.get_rank() if torch.distributed.is_available() and \
        torch.distributed.is_initialized() else 0


def _world() -> int:
    import torch

    return torch.distributed.get_world_size() if torch.distributed.is_available() and \
        torch.distributed.is_initialized() else 1


def _write_curves(model_dir: str | os.PathLike[str], c: int, name: str, history: list[dict[str, Any]]) -> None:
    """``curves-<c>.csv`` and ``curves-<c>.png``: train and validation loss against steps."""
    import csv
    from pathlib import Path

    from .plots import curves_png

    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    cols = ["step", "train_loss", "val_loss", "seconds", "lr", "risk_share"]
    with open(d / f"curves-{c}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for row in history:
            w.writerow(["" if row.get(k) is None else row.get(k) for k in cols])
    if history:
        curves_png(history, d / f"curves-{c}.png", title=f"channel {name}")


def _write_montage(model_dir: str | os.PathLike[str], c: int, name: str, r: TrainResult, dev: Any) -> None:
    """``montage-<c>.png``: validation patches before and after, in input units."""
    from pathlib import Path

    import torch

    from .plots import montage_png
    from .predict import network_fn, tile_fn

    if r.val_patches is None:
        return
    crops = r.val_patches[:8]
    fn = tile_fn(network_fn(r.net, dev), "twins")
    with torch.no_grad():
        pred = fn(torch.from_numpy(crops).to(dev)).double().cpu().numpy()[:, 0]
    denoised = pred * crops[:, 2] + crops[:, 1]
    montage_png(crops[:, 0], denoised, Path(model_dir) / f"montage-{c}.png",
                title=f"channel {name}: validation patches (never trained on)")


# ---------------------------------------------------------------- 3-D networks
def _volume_size_check(shape: tuple[int, ...], config: VolumeTrainConfig) -> None:
    """Refuse volumes too small for the preset before any statistics are computed."""
    from .train3d import volume_patch

    volume_patch((int(shape[-3]), int(shape[-2]), int(shape[-1])), config)


def _recorded_anisotropy(scale: Sequence[float] | None, units: Sequence[str | None] | None, axes: str,
                         stated: bool) -> float | None:
    """Z spacing over Y spacing from a physical scale, when it records both in one unit
    (``stated``: a unit is needed to tell a size the file states from a default 1)."""
    if scale is None or "Z" not in axes or len(scale) != len(axes):
        return None
    z, y = axes.index("Z"), axes.index("Y")
    u = tuple(units) if units is not None and len(units) == len(axes) else (None,) * len(axes)
    if u[z] != u[y] or (stated and u[z] is None):
        return None  # a size the file does not state, or sizes in different units
    ratio = float(scale[z]) / float(scale[y])
    return ratio if math.isfinite(ratio) and ratio > 0 else None


def _coords_anisotropy(data: Any, axes: str) -> float | None:
    """Z spacing over Y spacing from a DataArray's evenly spaced numeric coordinates."""
    steps = []
    for letter in "ZY":
        dim = data.dims[axes.index(letter)]
        if dim not in data.coords or data.sizes[dim] < 2 or not np.issubdtype(data.coords[dim].dtype, np.number):
            return None
        values = np.asarray(data.coords[dim].values, np.float64)
        steps.append((values[-1] - values[0]) / (values.size - 1))
    ratio = abs(steps[0] / steps[1]) if steps[1] else math.nan
    return ratio if math.isfinite(ratio) and ratio > 0 else None


def _array_volumes(data: Any, axes: str | None, config: VolumeTrainConfig, depth: str,
                   channel_names: Sequence[str] | None
                   ) -> tuple[list[tuple[str, Any, ChannelStats]], dict[str, Any], float | None]:
    """:func:`fit`'s channels of an array for 3-D networks: per channel its name,
    volumes and statistics; the data's description; the anisotropy its coordinates
    record.  A numpy array's volumes are views of it; a dask array's are read a
    sub-volume at a time (:class:`asn2n_dask.train3d.SourceVolumes`), after one
    statistics pass over it, as a file's are."""
    recorded = None
    if _is_xarray(data):
        axes = _xarray_axes(data, axes)
        c_dim = data.dims[axes.find("C")] if "C" in axes else None
        if channel_names is None and c_dim is not None and c_dim in data.coords:
            channel_names = [str(v) for v in data.coords[c_dim].values]
        if depth == "Z" and "Z" in axes:
            recorded = _coords_anisotropy(data, axes)
        data = data.data
    check_image(data, name="training data")
    ax = parse_axes(axes, np.ndim(data))
    check_depth_axis(ax, depth, "the training data")
    if _is_dask_array(data):
        return _dask_volumes(data, ax, config, depth, channel_names), {
            "inputs": ["<array>"], "shape": [list(data.shape)], "dtype": str(data.dtype), "axes": ax}, recorded
    vols = to_volumes(np.asarray(data), ax, depth)
    _volume_size_check(vols.shape, config)
    names = list(channel_names) if channel_names is not None else [str(i) for i in range(vols.shape[0])]
    if len(names) != vols.shape[0]:
        raise InputError(f"{len(names)} channel names given for {vols.shape[0]} channels.")
    stats_all = channel_stats(vols, config.norm)
    items = [(name, list(vols[c]), stats_all[c]) for c, name in enumerate(names)]
    info = {"inputs": ["<array>"], "shape": [list(np.shape(data))], "dtype": str(np.asarray(data).dtype),
            "axes": ax}
    return items, info, recorded


def _dask_volumes(data: Any, axes: str, config: VolumeTrainConfig, depth: str,
                  channel_names: Sequence[str] | None) -> list[tuple[str, Any, ChannelStats]]:
    """:func:`_array_volumes`'s channels of a dask array: statistics from one pass over
    it (:func:`asn2n_dask.stats.channel_stats`, the numpy route's numbers), the volumes
    read a sub-volume at a time."""
    from .train3d import SourceVolumes

    _volume_size_check(tuple(data.shape[axes.index(a)] for a in (depth, "Y", "X")), config)
    c = axes.find("C")
    n_c = int(data.shape[c]) if c >= 0 else 1
    names = list(channel_names) if channel_names is not None else [str(i) for i in range(n_c)]
    if len(names) != n_c:
        raise InputError(f"{len(names)} channel names given for {n_c} channels.")
    planes = data[None] if c < 0 else data.transpose([c, *(i for i in range(data.ndim) if i != c)])
    stats_all = channel_stats(planes, config.norm)
    whole = [range(int(n)) for n in data.shape]
    return [(name, SourceVolumes.of([data], axes, depth, [_one_channel(whole, axes, k)]), stats_all[k])
            for k, name in enumerate(names)]


def _file_volumes(data: Any, axes: str | None, config: VolumeTrainConfig, depth: str,
                  channels: Sequence[str] | None, time: str | None, client: Any, series: int | None,
                  stats_cache: StatsCache | None
                  ) -> tuple[list[tuple[str, Any, ChannelStats]], dict[str, Any], float | None]:
    """:func:`fit`'s channels of files for 3-D networks, as :func:`_array_volumes`: the
    statistics from one pass over every time point; the selected volumes read lazily,
    a sub-volume at a time (:class:`asn2n_dask.train3d.SourceVolumes`), never whole."""
    from .source import check_source
    from .stats_pass import selection_stats
    from .train3d import SourceVolumes

    sources, sels = _open_inputs(data, axes, channels, time, series)
    first = sources[0]
    n_ch = _selected_channels

    for s, sel in zip(sources, sels):
        check_source(s)
        check_depth_axis(s.axes, depth, s.path)
        if s.axes != first.axes:
            raise InputError(f"{s.path} has axes {s.axes}, unlike {first.path} ({first.axes}); train on inputs "
                             "with the same axes.")
        if n_ch(s, sel) != n_ch(first, sels[0]):
            raise InputError(f"{s.path} has different channels than {first.path}; train on inputs with the "
                             "same channels.")
        kept = [len(i) for i in sel.indices(s)]
        _volume_size_check((kept[s.axes.index(depth)], *s.frame_shape), config)
    order = [_channel_order(first, sels[0], s, sel) for s, sel in zip(sources, sels)]
    if any(o != list(range(len(o))) for o in order):  # every file's channels in the first file's order
        sels = [replace(sel, channels=tuple(int(sel.indices(s)[s.axes.index("C")][k]) for k in o))
                for s, sel, o in zip(sources, sels, order)]
    stats_all = selection_stats(sources, sels, config.norm, client, cache=stats_cache)
    c_idx = sels[0].indices(first)[first.axes.find("C")] if "C" in first.axes else np.array([0])
    names = list(first.meta.channel_names or [])
    indices = [sel.indices(s) for s, sel in zip(sources, sels)]
    items: list[tuple[str, Any, ChannelStats]] = []
    for j, c in enumerate(c_idx):  # channel j: the one each input's selection holds at position j
        per = [_one_channel(ind, first.axes, j) for ind in indices]
        items.append((names[int(c)] if len(names) > int(c) else str(int(c)),
                      SourceVolumes.of(sources, first.axes, depth, per), stats_all[j]))
    info = {"inputs": [s.path for s in sources], "shape": [list(s.shape) for s in sources],
            "dtype": first.dtype, "axes": first.axes, "time": time}
    recorded = None
    if depth == "Z":
        recorded = _recorded_anisotropy(first.meta.scale, first.meta.units, first.axes,
                                        stated=first.meta.format == "tiff")
    return items, info, recorded


def _one_channel(indices: Sequence[Sequence[int]], axes: str, j: int) -> list[Sequence[int]]:
    """Per-axis indices with the channel axis narrowed to its ``j``-th index."""
    return [(int(ind[j]),) if a == "C" else ind for a, ind in zip(axes, indices)]


def _loss_history(losses: Sequence[float], rows: int = 100) -> list[dict[str, Any]]:
    """Training losses as at most about ``rows`` history rows: the mean loss of each
    run of steps, at the run's last step."""
    n = len(losses)
    every = max(1, n // rows)
    ends = list(range(every, n + 1, every))
    if n and ends[-1] != n:
        ends.append(n)
    out, start = [], 0
    for end in ends:
        out.append({"step": end, "train_loss": float(np.mean(losses[start:end]))})
        start = end
    return out


def _fit_volumes(data: Any, *, axes: str | None, config: VolumeTrainConfig, depth_axis: str,
                 anisotropy: float | None, channel_names: Sequence[str] | None, device: str,
                 progress: Progress | None, model_dir: str | os.PathLike[str] | None,
                 channels: Sequence[str] | None, time: str | None, client: Any, series: int | None,
                 stats_cache: StatsCache | None) -> Model:
    """:func:`fit` with ``dims=3``: one 3-D network per channel."""
    from .train3d import VolumeSampler, fit_volume, volume_method

    depth = str(depth_axis).upper()
    if depth not in ("Z", "T"):
        raise ConfigError(f"depth axis must be Z or T; got {depth_axis!r:.40}.")
    t_start = _time.perf_counter()
    if isinstance(data, (str, os.PathLike)) or (isinstance(data, (list, tuple)) and data
                                                 and isinstance(data[0], (str, os.PathLike))):
        items, info, recorded = _file_volumes(data, axes, config, depth, channels, time, client, series, stats_cache)
    else:
        if channels or time is not None:
            raise InputError("channel and time selections apply to file inputs only; index the array instead.")
        items, info, recorded = _array_volumes(data, axes, config, depth, channel_names)
    if anisotropy is not None:
        aniso, where = anisotropy, "given"
    elif recorded is not None:
        aniso, where = recorded, "the input's pixel sizes"
    else:
        aniso, where = config.anisotropy, "the training options"
    cfg = replace(config, anisotropy=aniso)
    log.info("anisotropy %.4g (from %s)", cfg.anisotropy, where)
    dev = resolve_device(device)
    rank = _rank()
    done: list[ChannelModel] = []
    spec: VolumeSpec | None = None
    for c, (name, vols, st) in enumerate(items):
        what = f"training channel {name}" if len(items) > 1 else "training"

        def step_cb(step: int, total: int, loss: float, what: str = what) -> None:
            if progress is not None:
                progress(what, step, total)

        method = volume_method(vols, st, cfg.norm)  # the risk estimator and share at risk, from its slices
        fitted = fit_volume(vols, cfg, stats=st.norm, device=dev, progress=step_cb)
        this = VolumeSpec(cfg.preset, fitted.patch, cfg.anisotropy, fitted.net.kernels, depth)  # type: ignore[arg-type]
        if spec is not None and this != spec:  # every channel's volumes have the same shape
            raise RuntimeError(f"channel {name} was trained as {this}, unlike the others ({spec})")
        spec = this
        history = _loss_history(fitted.losses)
        done.append(ChannelModel(name=name, net=fitted.net, stats=st.norm, dataset_mode=method.dataset_mode,
                                 high_risk_ratio=method.high_risk_ratio, risk_estimator=method.risk_estimator,
                                 steps=cfg.steps, seconds=fitted.seconds, history=history,
                                 extra={} if method.noise_sd is None else {"risk_noise_sd": method.noise_sd}))
        if model_dir is not None and rank == 0:
            _write_curves(model_dir, c, name, history)
        n_vols = len(vols.shapes) if isinstance(vols, VolumeSampler) else len(vols)
        log.info("channel %s: %d steps on %d volume(s) in %.1f s, sub-volume %s", name, cfg.steps, n_vols,
                 fitted.seconds, "x".join(map(str, fitted.patch)))
    info = {**info, "statistics": {n: st.to_dict() for n, _, st in items}, "device": str(dev),
            "depth_axis": depth, "anisotropy": {"value": cfg.anisotropy, "from": where}, "processes": _world(),
            "wall_seconds": _time.perf_counter() - t_start}
    model = Model(train=cfg, channels=done, info=info, volume=spec)
    if model_dir is not None and rank == 0:
        from .checkpoint import clear_train_state

        save_model(model, model_dir)
        clear_train_state(model_dir)
    return model


def _networks_of(model: Model, n: int, channel_map: Sequence[int] | None,
                 stats: Sequence[ChannelStats] | None) -> Sequence[int]:
    """The model network for each of ``n`` channels to denoise: ``channel_map``, else one
    each by position.

    Raises
    ------
    ModelError
        By position, a model of another number of channels; else a map or ``stats``
        that do not give one per channel.
    """
    if channel_map is None:
        if n != model.n_channels:
            raise ModelError(f"the model was trained for {model.n_channels} channel(s) but the input has {n}; "
                             "train a model on data with the same channels.")
        channel_map = range(model.n_channels)
    if len(channel_map) != n or (stats is not None and len(stats) != n):
        raise ModelError(f"{n} channel(s) to denoise but {len(channel_map)} networks and "
                         f"{len(stats) if stats is not None else n} statistics were given.")
    return channel_map


def _denoising_stats(model: Model, channel_map: Sequence[int], stats: Sequence[ChannelStats], rule: str, *,
                     warn: bool = True) -> list[ChannelStats]:
    """The statistics of the data's channels with the range each is normalised on
    (:func:`asn2n_dask.method.denoising_stats`: the training range of the network
    ``channel_map`` names for it, or the data's own)."""
    return denoising_stats([model.method(mc) for mc in channel_map], stats, rule,  # type: ignore[arg-type]
                           names=[model.channels[mc].name for mc in channel_map], warn=warn)


def _denoise_volumes(data: Any, model: Model, axes: str | None, config: InferConfig, progress: Progress | None,
                     tile_z: int | None, *, stats: Sequence[ChannelStats] | None = None,
                     channel_map: Sequence[int] | None = None) -> Any:
    """:func:`denoise` of an array with a model of 3-D networks: one volume at a time,
    each channel normalised on its statistics over all the array's volumes (or on
    ``stats``, one per channel of ``data``: a file's whole channels), with the network
    ``channel_map`` names for it (default: by position)."""
    from .predict import network_fn
    from .predict3d import denoise_volume

    spec = model.volume
    assert spec is not None
    tz = spec.tile_z if tile_z is None else tile_z
    if _is_dask_array(data):
        return _denoise_volumes_lazy(data, model, axes, config, tz)
    check_image(data)
    arr = np.asarray(data)
    ax = parse_axes(axes, arr.ndim)
    check_depth_axis(ax, spec.depth_axis, "the input", model=True)
    vols = to_volumes(arr, ax, spec.depth_axis)
    check_tile_frame(config, vols.shape[-2:])
    channel_map = _networks_of(model, vols.shape[0], channel_map, stats)
    dev = resolve_device(config.device)
    all_stats = _denoising_stats(model, channel_map, stats if stats is not None else
                                 channel_stats(vols, model.train.norm), config.norm_range)
    out = np.empty(vols.shape, np.float32)
    total, done = vols.shape[0] * vols.shape[1], 0
    for c, mc in enumerate(channel_map):
        fn = network_fn(model.channels[mc].net, dev, config.precision)
        for n in range(vols.shape[1]):
            out[c, n] = denoise_volume(vols[c, n], fn, stats=all_stats[c], infer=config, tile_z=tz, device=dev,
                                       multiple=spec.multiple)
            done += 1
            if progress is not None:
                progress("denoising", done, total)
    return from_volumes(out, ax, spec.depth_axis, arr.shape)


def _denoise_volume_block(block: NDArray[Any], stats: Sequence[ChannelStats], *, c_axis: int,
                          fns: Sequence[Callable[..., Any]], infer: InferConfig, device: Any, tile_z: int,
                          multiple: tuple[int, int, int], block_id: tuple[int, ...] | None = None
                          ) -> NDArray[np.float32]:
    """One volume (a block whose only axes longer than 1 are the depth axis, Y and X),
    denoised with its channel's network."""
    from .predict3d import denoise_volume

    c = block_id[c_axis] if c_axis >= 0 and block_id is not None else 0
    out = denoise_volume(block.reshape(-1, *block.shape[-2:]), fns[c], stats=stats[c], infer=infer, tile_z=tile_z,
                         device=device, multiple=multiple)
    return out.reshape(block.shape)


def _denoise_volumes_lazy(data: Any, model: Model, axes: str | None, config: InferConfig, tile_z: int) -> Any:
    """:func:`_denoise_volumes` of a dask array, as a dask array: one task per volume,
    after one task of channel statistics."""
    import dask
    import dask.array as da
    from dask.base import tokenize

    from .predict import network_fn

    spec = model.volume
    assert spec is not None
    check_image(data)
    ax = parse_axes(axes, data.ndim)
    check_depth_axis(ax, spec.depth_axis, "the input", model=True)
    check_tile_frame(config, tuple(data.shape[-2:]))
    c_axis = ax.find("C")
    _networks_of(model, data.shape[c_axis] if c_axis >= 0 else 1, None, None)  # one per channel, by position
    dev = resolve_device(config.device)
    token = tokenize(data.name, _weights_digest(model), config.to_dict(), model.train.norm.to_dict(),
                     spec.to_dict(), tile_z)
    stats = dask.delayed(_lazy_stats, pure=True)(_Deferred(data), c_axis, model.train.norm,
                                                 [model.method(i) for i in range(model.n_channels)],
                                                 [ch.name for ch in model.channels], config.norm_range,
                                                 dask_key_name=f"asn2n-stats-{token}")
    whole = {ax.index(spec.depth_axis), data.ndim - 2, data.ndim - 1}
    vols = data.rechunk({i: -1 if i in whole else 1 for i in range(data.ndim)})
    return da.map_blocks(
        _denoise_volume_block, vols, stats, name=f"asn2n-denoise3d-{token}", dtype=np.float32,
        meta=np.empty((0,) * data.ndim, np.float32), c_axis=c_axis,
        fns=[network_fn(ch.net, dev, config.precision) for ch in model.channels], infer=config, device=dev,
        tile_z=tile_z, multiple=spec.multiple)


def denoise(data: Any, model_or_output: Any = None, /, *, model: Model | str | os.PathLike[str] | None = None,
            output: str | os.PathLike[str] | None = None, axes: str | None = None,
            config: InferConfig = InferConfig(), progress: Progress | None = None, client: Any = None,
            channels: Sequence[str] | None = None, time: str | None = None, tile_z: int | None = None,
            **run: Any) -> Any:
    """Denoise an image with a trained model, in the input's own units.

    Two forms, one method (every chunk of a file goes through the same
    :func:`asn2n_dask.predict.denoise_window` as an in-memory frame):

    * ``denoise(array, model)``: a numpy array, an xarray ``DataArray`` or a dask
      array; returns the denoised array of the same kind (see the module docstring):
      a DataArray keeps its dims, coords and attrs (plus ``attrs["asn2n"]``, the
      provenance), a dask array stays lazy.
    * ``denoise("in.zarr", "out.zarr", model="model_dir", client=None)``: a Zarr,
      OME-Zarr or TIFF file of any size, chunk by chunk on a Dask cluster (embedded
      LocalCluster by default), into OME-Zarr; resumable.  Returns a
      :class:`asn2n_dask.pipeline.RunSummary`.

    A model of 3-D networks (``model.dims == 3``) denoises arrays only, one volume at a
    time (:func:`asn2n_dask.predict3d.denoise_volume`): per time point and channel its
    (Z, Y, X) volume, or per channel the (T, Y, X) stack for a model trained with depth
    axis T; each channel normalised on its percentile range over the whole array.

    Each channel is normalised on the range ``config.norm_range`` chooses (default: the
    model's training range, unless the data's own range disagrees with it; then the
    data's, with a warning): :func:`asn2n_dask.method.normalisation_range`.

    Parameters
    ----------
    data : ndarray, xarray.DataArray, dask array or path
        Noisy frame (Y, X) or stack named by ``axes``; or an input path.
    model_or_output : Model or path
        The model (array form) or the output ``.zarr`` path (path form).
    model : Model or path
        The model (path form: a model directory, or a Model that is saved beside the
        output for the workers).
    output : path
        Output ``.zarr`` (path form).
    axes : str, optional
        As for :func:`fit`; a DataArray's dims name its axes unless ``axes`` is given.
    config : InferConfig
        Tile, overlap, blend, inference domain, device.
    progress : callable, optional
        ``progress(what, done, total)`` (not for a dask array: its result is computed
        by dask, e.g. under ``dask.diagnostics.ProgressBar``).
    client : distributed.Client or "sync", optional
        Path form: the cluster to run on (default: an embedded LocalCluster).
    channels, time : optional
        Path form: channel names/indices and a time range ``"A:B"`` to process.
    tile_z : int, optional
        A model of 3-D networks: the tile size along the depth axis, a multiple of
        ``model.volume.multiple[0]`` (default: the training sub-volume's,
        ``model.volume.tile_z``).
    **run
        Path form: :class:`asn2n_dask.pipeline.RunOptions` fields (``chunks``,
        ``dtype``, ``ome``, ``pyramid``, ``overwrite``) and the cluster (``scheduler``,
        ``workers``, ``threads``, ``memory_limit``; or ``cluster="slurm.yaml"``, ``jobs=8``
        for batch jobs), and ``series`` (the series of a multi-series TIFF file).

    Returns
    -------
    ndarray, xarray.DataArray or dask array (float32, the shape of ``data``), or RunSummary
        Array form: the kind of ``data``; a dask array's result is chunked one frame
        per block.
    """
    if isinstance(data, (str, os.PathLike)):
        if tile_z is not None:
            raise ConfigError("tile_z applies to models of 3-D networks, which denoise arrays only.")
        return _denoise_path(data, output if output is not None else model_or_output, model=model,
                             config=config, progress=progress, client=client, channels=channels, time=time,
                             axes=axes, **run)
    m = model if model is not None else model_or_output
    if not isinstance(m, Model):
        from .checkpoint import load_model

        if m is None:
            raise ModelError("denoise needs a model: denoise(array, model).")
        m = load_model(m)
    if run or client is not None or channels or time:
        raise InputError("cluster, selection and output options apply to file inputs only; index the array "
                         "instead.")
    if tile_z is not None and m.volume is None:
        raise ConfigError("tile_z applies to models of 3-D networks; this model's networks see 2-D frames.")
    if _is_xarray(data):
        ax = _xarray_axes(data, axes)
        out = _denoise_array(data.data, m, ax, config, progress, tile_z)
        volume = {} if m.volume is None else {"volume": m.volume.to_dict(),
                                              "tile_z": m.volume.tile_z if tile_z is None else tile_z}
        return _like(data, out, _provenance(
            "denoise", ax, units="input", infer=config.to_dict(), norm=m.train.norm.to_dict(),
            risk_estimators=[ch.risk_estimator for ch in m.channels], channels=[ch.name for ch in m.channels],
            weights_sha256=_weights_digest(m), **volume))
    return _denoise_array(data, m, axes, config, progress, tile_z)


def _denoise_array(data: Any, model: Model, axes: str | None, config: InferConfig,
                   progress: Progress | None, tile_z: int | None = None) -> Any:
    if model.volume is not None:
        return _denoise_volumes(data, model, axes, config, progress, tile_z)
    if _is_dask_array(data):
        return _denoise_lazy(data, model, axes, config)
    return denoise_with_risk(np.asarray(data), model, axes=axes, config=config, progress=progress)[0]


class _Deferred:
    """A dask array handed to a task as it is: a dask collection among a task's arguments
    would be computed into memory first."""

    def __init__(self, array: Any) -> None:
        self.array = array

    def __dask_tokenize__(self) -> object:
        return ("asn2n-deferred", self.array.name)


def _lazy_stats(deferred: _Deferred, c_axis: int, norm: NormConfig, methods: Sequence[Any], names: Sequence[str],
                rule: str) -> list[ChannelStats]:
    """The channel statistics of a dask array, with the ranges its channels are
    normalised on (:func:`asn2n_dask.method.denoising_stats`), as a task: its passes
    stream over the blocks in this thread (the same functions, so the same numbers, as
    for numpy)."""
    arr = deferred.array
    planes = arr[None] if c_axis < 0 else arr.transpose([c_axis, *(i for i in range(arr.ndim) if i != c_axis)])
    return denoising_stats(methods, channel_stats(planes, norm, scheduler="sync"), rule,  # type: ignore[arg-type]
                           names=names)


def _denoise_block(block: NDArray[Any], stats: Sequence[ChannelStats], *, c_axis: int,
                   fns: Sequence[Callable[..., Any]], norms: Sequence[Any], modes: Sequence[str], infer: InferConfig,
                   device: Any, multiple: int, block_id: tuple[int, ...] | None = None) -> NDArray[np.float32]:
    """One frame (a block of shape (1, ..., 1, H, W)), denoised with its channel's network."""
    c = block_id[c_axis] if c_axis >= 0 and block_id is not None else 0
    out, _ = denoise_frame(block.reshape(block.shape[-2:]), fns[c], stats=stats[c], norm=norms[c], infer=infer,
                           device=device, multiple=multiple, dataset_mode=modes[c])
    return out.reshape(block.shape)


def _denoise_lazy(data: Any, model: Model, axes: str | None, config: InferConfig) -> Any:
    """:func:`denoise` of a dask array, as a dask array: one task per frame, after one task
    of channel statistics; nothing runs until the result is computed."""
    import dask
    import dask.array as da
    from dask.base import tokenize

    check_image(data)
    ax = parse_axes(axes, data.ndim)
    check_tile_frame(config, tuple(data.shape[-2:]))
    c_axis = ax.find("C")
    _networks_of(model, data.shape[c_axis] if c_axis >= 0 else 1, None, None)  # one per channel, by position
    dev = resolve_device(config.device)
    methods = [model.method(i) for i in range(model.n_channels)]
    token = tokenize(data.name, _weights_digest(model), config.to_dict(), model.train.norm.to_dict(),
                     [ch.risk_estimator for ch in model.channels], [ch.dataset_mode for ch in model.channels])
    stats = dask.delayed(_lazy_stats, pure=True)(_Deferred(data), c_axis, model.train.norm,
                                                 [model.method(i) for i in range(model.n_channels)],
                                                 [ch.name for ch in model.channels], config.norm_range,
                                                 dask_key_name=f"asn2n-stats-{token}")
    frames = data.rechunk({**{i: 1 for i in range(data.ndim - 2)}, data.ndim - 2: -1, data.ndim - 1: -1})
    return da.map_blocks(
        _denoise_block, frames, stats, name=f"asn2n-denoise-{token}", dtype=np.float32,
        meta=np.empty((0,) * data.ndim, np.float32), c_axis=c_axis,
        fns=[network_fn(ch.net, dev, config.precision, compiles(config, dev)) for ch in model.channels],
        norms=[m.norm(model.train.norm) for m in methods], modes=[m.dataset_mode for m in methods],
        infer=config, device=dev, multiple=model.multiple)


def _denoise_path(data: str | os.PathLike[str], output: Any, *, model: Any, config: InferConfig,
                  progress: Progress | None, client: Any, channels: Sequence[str] | None, time: str | None,
                  axes: str | None, scheduler: str | None = None, workers: int | None = None,
                  threads: int | None = None, memory_limit: str | None = None, cluster: Any = None,
                  jobs: int | None = None, series: int | None = None, **opts: Any) -> Any:
    from .pipeline import RunOptions, run_pipeline
    from .source import Selection, open_source

    if output is None:
        raise InputError("denoise(path, output, model=...) needs an output .zarr path.")
    if model is None:
        raise ModelError("denoise(path, output, model=...) needs a model directory.")
    if isinstance(model, Model):
        model_dir = str(output).rstrip("/") + ".model"
        save_model(model, model_dir)
        model = model_dir
    src = open_source(data, axes, series=series)
    sel = Selection.parse(src, list(channels) if channels else None, time)
    return run_pipeline(src, output, model, selection=sel, options=RunOptions(infer=config, **opts), client=client,
                        scheduler=scheduler, workers=workers, threads=threads, memory_limit=memory_limit,
                        progress=progress, cluster=cluster, jobs=jobs)


def denoise_to_file(source: Any, selection: Any, output: str | os.PathLike[str], model: Model, *,
                    infer: InferConfig = InferConfig(), dtype: str = "float32", overwrite: bool = False,
                    provenance: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    progress: Progress | None = None,
                    stats_cache: Any = None, echo: Callable[[str], None] = log.info) -> None:
    """Denoise a selection of a file in memory into a ``.tif`` (or whole-image ``.zarr``)
    ``output``, with the chunked route's rules.

    The network of each channel (:func:`asn2n_dask.pipeline.channel_map`) and the
    channel statistics (over all time points, :func:`asn2n_dask.stats_pass.selection_stats`)
    are decided as the chunked pipeline decides them, so both routes give the same numbers.

    Parameters
    ----------
    source : Source
        From :func:`asn2n_dask.source.open_source`.
    selection : Selection
        Channels and time points.
    dtype : {"float32", "input"}
    provenance, extra : dict, optional
        The output's provenance: ``provenance``, then the options, selection, channel
        map and statistics of this run, then ``extra``.
    stats_cache : StatsCache, optional
        Statistics of this process's training, taken when still valid instead of a pass
        over the time points not read.
    echo : callable
        Where notes for the user go (chunks of a Zarr input that are not stored).
    """
    from .io import cast_output, output_lock, write_image
    from .pipeline import channel_map, missing_note
    from .source import read_selection
    from .stats_pass import selection_stats

    if dtype not in ("input", "float32"):
        raise InputError(f"--dtype must be float32 or input; got {dtype!r}.")
    cmap = channel_map(source, selection, model)  # before reading any pixel
    with output_lock(output):
        note, gaps = missing_note(source)
        if note:
            echo(note)
        data = read_selection(source, selection)
        if progress is not None:
            progress("statistics", 0, 1)
        if selection.time is None:  # the selection holds every time point: its statistics are the channels'
            stats = channel_stats(to_planes(data, source.axes), model.train.norm)
        else:  # the other time points count too, read lazily as the .zarr route reads them
            stats = selection_stats([source], [selection], model.train.norm, cache=stats_cache)
        if progress is not None:
            progress("statistics", 1, 1)
        if model.volume is not None:  # one volume at a time, in memory
            out = _denoise_volumes(data, model, source.axes, infer, progress, None, stats=stats, channel_map=cmap)
        else:
            out = denoise_with_risk(data, model, axes=source.axes, config=infer, progress=progress, stats=stats,
                                    channel_map=cmap)[0]
        if dtype == "input":
            out = cast_output(out, data.dtype)
        names = source.meta.channel_names
        meta = source.meta
        if names and selection.channels is not None:
            meta = replace(meta, channel_names=tuple(names[i] for i in selection.channels))
        prov = {**(provenance or {}), "infer": infer.to_dict(), "selection": selection.to_dict(),
                "channel_map": list(cmap), "stats": [s.to_dict() for s in stats],
                "norm_ranges": [s.norm.to_dict() for s in _denoising_stats(model, cmap, stats, infer.norm_range,
                                                                           warn=False)],
                "input_missing_chunks": gaps,
                **(extra or {})}
        write_image(output, out, meta, overwrite=overwrite, attrs=prov)


def denoise_with_risk(data: NDArray[np.number], model: Model, *, axes: str | None = None,
                      config: InferConfig = InferConfig(), progress: Progress | None = None,
                      stats: Sequence[ChannelStats] | None = None, channel_map: Sequence[int] | None = None
                      ) -> tuple[NDArray[np.float32], NDArray[np.int8]]:
    """As :func:`denoise`, also returning the per-pixel risk classes (int8, same shape).

    Every frame of a channel is normalised with the statistics of the whole channel
    (:func:`asn2n_dask.stats.channel_stats`), as the chunked pipeline does, on the range
    ``config.norm_range`` chooses: by default the model's training range, unless the
    channel's own disagrees with it (:func:`asn2n_dask.method.normalisation_range`).

    Parameters
    ----------
    stats : sequence of ChannelStats, optional
        One per channel of ``data``: statistics of more data than ``data`` holds (a file's
        whole channel when ``data`` is a selection of its time points; see
        :func:`asn2n_dask.stats_pass.selection_stats`).  Default: ``data``'s own.
    channel_map : sequence of int, optional
        The model network for each channel of ``data``
        (:func:`asn2n_dask.pipeline.channel_map`).  Default: by position, and the model
        must have as many networks as ``data`` channels.
    """
    if model.volume is not None:
        raise ModelError("a model of 3-D networks gives no risk classes; denoise volumes with denoise(array, "
                         "model).")
    check_image(data)
    arr = np.asarray(data)
    ax = parse_axes(axes, arr.ndim)
    planes = to_planes(arr, ax)
    check_tile_frame(config, planes.shape[-2:])
    channel_map = _networks_of(model, planes.shape[0], channel_map, stats)
    dev = resolve_device(config.device)
    out = np.empty(planes.shape, np.float32)
    risk = np.empty(planes.shape, np.int8)
    total, done = planes.shape[0] * planes.shape[1], 0
    all_stats = _denoising_stats(model, channel_map, stats if stats is not None else
                                 channel_stats(planes, model.train.norm), config.norm_range)
    for c, mc in enumerate(channel_map):
        fn = network_fn(model.channels[mc].net, dev, config.precision, compiles(config, dev))
        method = model.method(mc)
        for p in range(planes.shape[1]):
            out[c, p], risk[c, p] = denoise_frame(planes[c, p], fn, stats=all_stats[c],
                                                  norm=method.norm(model.train.norm), infer=config, device=dev,
                                                  multiple=model.multiple, dataset_mode=method.dataset_mode)
            done += 1
            if progress is not None:
                progress("denoising", done, total)
    return from_planes(out, ax, arr.shape), from_planes(risk, ax, arr.shape)  # type: ignore[return-value]


def assess_risk(image: Any, *, thresholds: RiskThresholds = RiskThresholds(),
                stats: FrameStats | None = None) -> Any:
    """Classify every patch of one 2-D frame by the harm local normalisation would do.

    :func:`asn2n_dask.risk.assess_risk` for the input types of the package's verbs.

    Parameters
    ----------
    image : ndarray, xarray.DataArray or dask array, shape (H, W)
        One frame in input units (``stack[0, 0]``, ``data.isel(t=0, c=0)``).
    thresholds, stats
        As for :func:`asn2n_dask.risk.assess_risk`.

    Returns
    -------
    RiskReport, or a dask ``Delayed`` of it
        ``risk_map`` has one class per ``thresholds.patch`` square (0 safe, 1 weak
        background, 2 sparse bright).  A DataArray gives a report whose ``risk_map`` is
        a DataArray on the patch grid: the frame's dims, coords at the patch centres (the
        mean of the frame's coords over each patch; scalar coords kept), its name
        ``"risk"``, the frame's attrs plus the provenance in ``attrs["asn2n"]``.  A dask
        array (or a DataArray holding one) gives ``Delayed``: nothing is read until its
        ``compute()``, which returns the report (``.risk_map`` of a Delayed is a Delayed
        too).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> frame = xr.DataArray(np.random.default_rng(0).normal(100, 1, (128, 192)), dims=("y", "x"),
    ...                      coords={"y": np.arange(128) * 0.5, "x": np.arange(192) * 0.5})
    >>> r = assess_risk(frame)
    >>> r.risk_map.dims, r.risk_map.shape, float(r.risk_map.x[0])
    (('y', 'x'), (2, 3), 15.75)
    """
    if _is_xarray(image):
        if image.ndim != 2:
            raise InputError(f"assess_risk takes one 2-D frame; got dims {tuple(image.dims)}; select one, e.g. "
                             "data.isel(t=0).")
        report = assess_risk(image.data, thresholds=thresholds, stats=stats)
        grid = _patch_grid(image, thresholds, stats)
        if _is_dask_array(image.data):
            import dask

            return dask.delayed(_on_grid, pure=True)(report, grid)
        return _on_grid(report, grid)
    if np.ndim(image) != 2:
        raise InputError(f"assess_risk takes one 2-D frame; got shape {np.shape(image)}; select one, e.g. "
                         "stack[0, 0].")
    if _is_dask_array(image):
        import dask

        return dask.delayed(_frame_risk, pure=True)(image, thresholds=thresholds, stats=stats)
    return _frame_risk(np.asarray(image), thresholds=thresholds, stats=stats)


def _patch_grid(frame: Any, thresholds: RiskThresholds, stats: FrameStats | None) -> dict[str, Any]:
    """Dims, coords, name and attrs of a frame's patch grid (no data is read)."""
    p = thresholds.patch
    coords: dict[str, Any] = {}
    for name, coord in frame.coords.items():
        if coord.ndim == 0:
            coords[str(name)] = coord.variable
        elif coord.dims in ((frame.dims[0],), (frame.dims[1],)) and np.issubdtype(coord.dtype, np.number):
            values = np.asarray(coord.values, np.float64)
            means = [values[i:i + p].mean() for i in range(0, values.size, p)]
            coords[str(name)] = (coord.dims, np.asarray(means), dict(coord.attrs))
    prov = _provenance("assess_risk", "YX", patch=p, classes={"0": "safe", "1": "weak background",
                                                             "2": "sparse bright"},
                       thresholds=thresholds.to_dict(), stats=None if stats is None else stats.to_dict())
    return {"dims": frame.dims, "coords": coords, "name": "risk", "attrs": {**frame.attrs, "asn2n": prov}}


def _on_grid(report: RiskReport, grid: dict[str, Any]) -> RiskReport:
    """The report with its risk map as a DataArray on the frame's patch grid."""
    import xarray as xr

    return replace(report, risk_map=xr.DataArray(np.asarray(report.risk_map), **grid))  # type: ignore[arg-type]


def risk_summary(data: Any, *, axes: str | None = None, config: TrainConfig = TrainConfig(),
                 channels: Sequence[str] | None = None, time: str | None = None, frames: int = 16,
                 client: Any = None, series: int | None = None) -> dict[str, object]:
    """Risk classes of sampled frames, per channel, as training and denoising classify
    them, and the decision ``dataset`` mode takes.

    Each channel's frames are classified on the channel's risk scale, from its
    statistics over all its frames (the reduction pass denoising makes:
    :func:`asn2n_dask.stats_pass.selection_stats` for files), with the risk estimator
    resolved once for the channel (:func:`asn2n_dask.sampling.channel_noise`), as
    :func:`asn2n_dask.predict.denoise_window` does.  A file is read lazily: the
    statistics pass streams over it, and only ``frames`` frames per channel are read
    whole.

    Parameters
    ----------
    data : ndarray or path
        A frame or a stack named by ``axes`` in memory, or a TIFF / Zarr / OME-Zarr file.
    axes : str, optional
        As for :func:`fit` (files name their own unless given).
    config : TrainConfig
        Its ``norm`` (patch side, thresholds, estimator, percentiles) is used.
    channels, time : optional
        Files: channel names or indices (default all) and a time range ``"A:B"`` to
        sample from; the statistics cover every time point, as denoising's do.
    frames : int
        Frames classified per channel, evenly spaced over its time points and planes.
    client : distributed.Client or "sync", optional
        Files: where the statistics pass runs (default: in this process).
    series : int, optional
        A TIFF file holding several image series: the one to read.

    Returns
    -------
    dict
        ``{"axes", "patch", "dataset_ratio", "channels": [{"channel", "name", "frames",
        "frames_total", "patches", "weak_background", "sparse_bright", "high_risk",
        "dataset_decision", "risk_estimator", "noise_sd", "risk_scale"}...]}`` with
        ratios in [0, 1] over the classified frames' patches; ``noise_sd`` is the pixel
        noise on the reference risk scale that resolves the ``"auto"`` estimator
        (:func:`asn2n_dask.risk.resolve_estimator`), ``risk_scale`` the channel's
        ``[lo, hi]`` in input units mapped to [0, 1].
    """
    from functools import partial

    from .method import decide_method
    from .sampling import PlaneReader, SourcePlanes
    from .source import spread

    if frames < 1:
        raise InputError(f"frames must be at least 1; got {frames}.")
    thr0 = config.norm.risk
    # per channel: index, name, statistics, its frames as readers, the frames to classify
    items: list[tuple[int, str, ChannelStats, list[PlaneReader], NDArray[Any]]] = []
    if isinstance(data, (str, os.PathLike)):
        from .source import Selection, check_source, open_source, sample_planes
        from .stats_pass import selection_stats

        src = open_source(data, axes, series=series)
        check_source(src)
        sel = Selection.parse(src, list(channels) if channels else None, time)
        stats = selection_stats([src], [sel], config.norm, client)
        ax = src.axes
        picked = [int(c) for c in sel.indices(src)[ax.index("C")]] if "C" in ax else [0]
        for j, c in enumerate(picked):
            one = Selection(channels=(c,), time=sel.time) if "C" in ax else sel
            sampled, names = sample_planes(src, one, frames)  # only these frames are read whole
            items.append((c, names[0], stats[j], [SourcePlanes.of(src, sel, c)], sampled[0]))
    else:
        if channels or time is not None:
            raise InputError("channel and time selections apply to file inputs only; index the array instead.")
        check_image(data)
        ax = parse_axes(axes, np.ndim(data))
        planes = to_planes(np.asarray(data), ax)
        stats = channel_stats(planes, config.norm)
        for c in range(planes.shape[0]):
            items.append((c, str(c), stats[c], [ArrayPlanes(planes[c])],
                          planes[c][spread(planes.shape[1], frames)]))
    out = []
    for c, name, st, readers, sampled in items:
        # one estimator per channel and the channel's risk scale, as training decides them; the dataset
        # decision from the sampled frames' patches
        noise = channel_noise(readers, st, thr0)
        reports: list[RiskReport] = []  # the sampled frames, classified as the channel's method is decided

        def high_risk(norm: NormConfig, st: ChannelStats = st, sampled: NDArray[Any] = sampled,
                      reports: list[RiskReport] = reports) -> float:
            reports[:] = [_frame_risk(f, thresholds=norm.risk, stats=st.risk_scale(norm.risk)) for f in sampled]
            return float(np.mean(np.concatenate([r.risk_map.ravel() for r in reports]) != 0))

        method = decide_method(config.norm, st.norm, noise_sd=partial(float, noise), high_risk_ratio=high_risk)
        scale = st.risk_scale(method.norm(config.norm).risk)
        maps = np.concatenate([r.risk_map.ravel() for r in reports])
        out.append({
            "channel": c,
            "name": name,
            "risk_estimator": method.risk_estimator,
            "noise_sd": noise,
            "risk_scale": [scale.lo, scale.hi],
            "frames": len(reports),
            "frames_total": sum(r.n_planes for r in readers),
            "patches": int(maps.size),
            "weak_background": float(np.mean(maps == 1)),
            "sparse_bright": float(np.mean(maps == 2)),
            "high_risk": method.high_risk_ratio,
            "dataset_decision": method.dataset_mode,
        })
    return {"axes": ax, "patch": thr0.patch, "dataset_ratio": thr0.dataset_ratio, "channels": out}
