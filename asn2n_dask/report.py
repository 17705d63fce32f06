"""``asn2n report``: see whether a denoised result can be trusted.

read (input, denoised, ground truth, model) -> choose frames -> checks per frame
(:mod:`asn2n_dask.checks`) and per time point -> figures -> one self-contained HTML
page, its PNGs and a JSON summary.

Only the chosen frames are read (and, for the time series, up to ``curve_points``
frames, each through a window of at most :data:`MAX_SIDE` pixels a side), so a
time-lapse of any size is reported in seconds.

The report is written into a temporary folder beside the one asked for and renamed
into place when complete: a failed or interrupted report leaves nothing under the
requested name, and an earlier report there is replaced only by a finished one.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import errno
import html
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._version import __version__
from .checks import STRUCTURE_THRESHOLD, foreground_objects, otsu_mask, residual_checks, score_pair, skeleton_stats
from .errors import InputError, OutputError
from .plots import pyplot, save_figure
from .source import Source, open_source, spread

__all__ = ["MAX_SIDE", "REPORT_MARKER", "FrameRef", "make_report", "choose_frames"]

#: Frames larger than this (pixels a side) are checked on their central window of this side.
MAX_SIDE = 2048
#: The file that marks a folder as a report written by :func:`make_report`: ``overwrite``
#: replaces no other folder.
REPORT_MARKER = ".asn2n-report"
_CLASS_NAMES = {1: "weak background", 2: "sparse bright"}
_CLASS_RGBA = {1: (0.0, 0.47, 1.0, 0.45), 2: (1.0, 0.59, 0.0, 0.55)}  # as in the output's label metadata

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FrameRef:
    """One 2-D frame: where it is in the denoised output, the input and the truth."""

    label: str
    out_index: tuple[int, ...]
    in_index: tuple[int, ...]
    channel: int  # output channel (0 without a C axis)
    time: int | None  # output time point


@dataclass
class _Pair:
    """How the denoised output's frames map onto the input's."""

    raw: Source
    den: Source
    channels: list[int]  # output channel -> input channel
    t0: int  # output time 0 -> input time t0
    names: list[str]
    stats: list[dict[str, Any]] = field(default_factory=list)
    labels: list[Any] | None = None  # the output's risk labels per channel (axes without C), when it has them
    attrs: dict[str, Any] = field(default_factory=dict)
    thresholds: Any = None  # RiskThresholds for recomputed risk labels
    estimators: list[str] | None = None  # the model's risk estimator per channel

    def in_index(self, out_index: tuple[int, ...]) -> tuple[int, ...]:
        """The input's index (its axes, in its order) of an output index."""
        idx = {a: (self.channels[i] if a == "C" else (self.t0 + i if a == "T" else i))
               for a, i in zip(self.den.axes[:-2], out_index)}
        return tuple(idx[a] for a in self.raw.axes[:-2])


def _pair(raw: Source, den: Source) -> _Pair:
    if sorted(raw.axes) != sorted(den.axes) or raw.axes[-2:] != den.axes[-2:]:
        raise InputError(f"the denoised image has axes {den.axes} but the input has {raw.axes}; give the input "
                         "the output was made from.")
    if raw.frame_shape != den.frame_shape:
        raise InputError(f"the denoised frames are {den.frame_shape[0]}x{den.frame_shape[1]} but the input's are "
                         f"{raw.frame_shape[0]}x{raw.frame_shape[1]}; give the input the output was made from.")
    found = den.meta.attrs.get("asn2n") if isinstance(den.meta.attrs, dict) else None
    asn: dict[str, Any] = found if isinstance(found, dict) else {}
    job: dict[str, Any] = asn["job"] if isinstance(asn.get("job"), dict) else {}
    sel = job.get("selection") or {}
    nc_in = raw.shape[raw.axes.index("C")] if "C" in raw.axes else 1
    nc_out = den.shape[den.axes.index("C")] if "C" in den.axes else 1
    channels = [int(c) for c in sel.get("channels") or range(nc_in)]
    t0 = int((sel.get("time") or [0])[0])
    expected = list(raw.shape)
    if "C" in raw.axes:
        expected[raw.axes.index("C")] = len(channels)
    if "T" in raw.axes and sel.get("time"):
        expected[raw.axes.index("T")] = int(sel["time"][1]) - t0
    expected = [expected[raw.axes.index(a)] for a in den.axes]  # a .zarr output holds the axes in TCZYX order
    if tuple(expected) != den.shape or len(channels) != nc_out:
        raise InputError(f"the denoised image has shape {den.shape} but the input gives {tuple(expected)}; give "
                         "the input the output was made from.")
    raw_names = list(raw.meta.channel_names or [])
    names = list(den.meta.channel_names or []) or [raw_names[c] if c < len(raw_names) else str(c) for c in channels]
    labels = None  # none (not an asn2n output): risk is recomputed from the input
    if den.kind in ("zarr", "ome-zarr"):
        from .io import risk_labels

        labels = risk_labels(den.path, den.axes, den.shape)
    stats = [s for s in job.get("stats") or [] if isinstance(s, dict)]
    from .config import RiskThresholds

    return _Pair(raw, den, channels, t0, names, stats if len(stats) == nc_out else [], labels, asn, RiskThresholds())


def choose_frames(pair: _Pair, *, channels: Sequence[str] | None = None, times: Sequence[int] | None = None,
                  frames: int = 3) -> list[FrameRef]:
    """The frames to show: ``frames`` evenly spaced time points (or ``times``, output
    indices) of every channel (or ``channels``, names or indices), middle Z."""
    den = pair.den
    ax = den.axes[:-2]
    nt = den.shape[ax.index("T")] if "T" in ax else 1
    nc = den.shape[ax.index("C")] if "C" in ax else 1
    if times is None:
        ts = spread(nt, max(frames, 1))
    else:
        ts = []
        for t in times:
            if not -nt <= t < nt:
                raise InputError(f"time point {t} is outside the denoised image's {nt} time points.")
            ts.append(t % nt)
    if channels:
        cs = []
        for word in channels:
            if word in pair.names:
                cs.append(pair.names.index(word))
            elif word.lstrip("-").isdigit() and -nc <= int(word) < nc:
                cs.append(int(word) % nc)
            else:
                raise InputError(f"--channel {word!r} is not a channel of {den.path} (names {', '.join(pair.names)} "
                                 f"or indices 0 to {nc - 1}).")
    else:
        cs = list(range(nc))
    out = []
    for c in cs:
        for t in ts:
            idx = _out_index(den, t, c)
            shift = f" (input t={t + pair.t0})" if pair.t0 else ""
            words = ([f"t={t}{shift}"] if "T" in ax else []) + ([f"channel {pair.names[c]}"] if "C" in ax else []) + \
                [f"{a.lower()}={i}" for a, i in zip(ax, idx) if a not in "TC"]
            out.append(FrameRef(", ".join(words) or "frame", idx, pair.in_index(idx), c, t if "T" in ax else None))
    return out


def _out_index(den: Source, t: int, c: int) -> tuple[int, ...]:
    """Index over the output's non-YX axes of time point ``t``, channel ``c``, middle Z."""
    return tuple(t if a == "T" else (c if a == "C" else n // 2) for a, n in zip(den.axes[:-2], den.shape[:-2]))


def _window(shape: tuple[int, int], side: int = MAX_SIDE) -> tuple[slice, slice]:
    """The central window of at most ``side`` pixels a side."""
    return tuple(slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + min(n, side)) for n in shape)  # type: ignore[return-value]


def _plane(src: Source, index: tuple[int, ...], window: tuple[slice, slice]) -> NDArray[np.float64]:
    return np.asarray(src.open()[index + window], dtype=np.float64)


def _risk_labels(pair: _Pair, ref: FrameRef, raw: NDArray[np.float64], window: tuple[slice, slice]) -> NDArray[Any]:
    """Risk class per pixel: the output's label image, or computed from the input (with
    the model's risk options when the model is given)."""
    if pair.labels is not None:
        c = pair.den.axes.find("C")
        index = tuple(i for a, i in enumerate(ref.out_index) if a != c)  # a label image has no C axis
        return np.asarray(pair.labels[ref.channel][index + window])
    from dataclasses import replace

    from .risk import assess_risk
    from .stats import ChannelStats

    thr = pair.thresholds
    if thr.estimator == "auto" and pair.estimators:  # the estimator the model resolved for this channel
        thr = replace(thr, estimator=pair.estimators[min(ref.channel, len(pair.estimators) - 1)])
    st = ChannelStats.from_dict(pair.stats[ref.channel]).risk_scale(thr) if pair.stats else None
    rmap = assess_risk(raw, thresholds=thr, stats=st).risk_map
    p = thr.patch
    return rmap[np.arange(raw.shape[0])[:, None] // p, np.arange(raw.shape[1])[None, :] // p]


def _zoom_box(den: NDArray[np.float64], zoom: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """(y0, x0, side) of the zoom crop: given, or where the denoised frame varies most."""
    from scipy import ndimage as ndi

    h, w = den.shape
    if zoom is not None:
        y, x, s = zoom
        s = max(8, min(s, h, w))
        return min(max(0, y - s // 2), h - s), min(max(0, x - s // 2), w - s), s
    s = max(8, min(256, h // 3 or h, w // 3 or w))
    m = ndi.uniform_filter(den, s)
    var = ndi.uniform_filter(den * den, s) - m * m
    half = s // 2
    inner = var[half : h - (s - half) + 1, half : w - (s - half) + 1] if h > s and w > s else var
    yy, xx = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return (int(yy), int(xx), s) if h > s and w > s else (0, 0, min(h, w))


# ---------------------------------------------------------------- figures
def _shown(img: NDArray[np.float64], side: int = 1024) -> NDArray[np.float64]:
    """A frame reduced by block means to at most ``side`` pixels a side, for display."""
    k = max(1, int(np.ceil(max(img.shape) / side)))
    if k == 1:
        return img
    h, w = img.shape[0] // k * k, img.shape[1] // k * k
    return img[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def _fig_montage(raw: NDArray[Any], den: NDArray[Any], gt: NDArray[Any] | None, box: tuple[int, int, int],
                 title: str, path: Path) -> Path:
    from matplotlib.patches import Rectangle

    plt = pyplot()
    panels = [("input", raw), ("denoised", den)] + ([("ground truth", gt)] if gt is not None else [])
    lo, hi = np.percentile(den, [0.5, 99.8])
    hi = hi if hi > lo else lo + 1
    y0, x0, s = box
    fig = plt.figure(figsize=(4.2 * len(panels), 12), constrained_layout=True)
    grid = fig.add_gridspec(3, len(panels), height_ratios=[4, 4, 2.4])
    k = max(1, int(np.ceil(max(raw.shape) / 1024)))
    for j, (name, img) in enumerate(panels):
        a = fig.add_subplot(grid[0, j])
        a.imshow(_shown(img), cmap="gray", vmin=lo, vmax=hi)
        a.add_patch(Rectangle((x0 / k - 0.5, y0 / k - 0.5), s / k, s / k, fill=False, ec="yellow", lw=1.5))
        a.set_title(name)
        a.set_axis_off()
        z = fig.add_subplot(grid[1, j])
        im = z.imshow(img[y0 : y0 + s, x0 : x0 + s], cmap="gray", vmin=lo, vmax=hi)
        z.axhline(s // 2, color="cyan", lw=0.8, alpha=0.7)
        z.set_title(f"{name}: zoom ({s} px at y={y0}, x={x0})", fontsize=9)
        z.set_axis_off()
    fig.colorbar(im, ax=fig.axes, shrink=0.5, label="intensity (input units)")
    p = fig.add_subplot(grid[2, :])
    row = y0 + s // 2
    xs = np.arange(x0, x0 + s)
    for (name, img), style in zip(panels, ("-", "-", "--")):
        p.plot(xs, img[row, x0 : x0 + s], style, lw=1.0 if name == "input" else 1.6, label=name,
               alpha=0.6 if name == "input" else 1.0)
    p.set_xlabel(f"x (pixels), along the cyan line y={row}")
    p.set_ylabel("intensity (input units)")
    p.legend(loc="upper right")
    p.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=90)


def _fig_risk(raw: NDArray[Any], labels: NDArray[Any], shares: dict[str, float], title: str, path: Path) -> Path:
    from matplotlib.patches import Patch

    plt = pyplot()
    lo, hi = np.percentile(raw, [0.5, 99.8])
    k = max(1, int(np.ceil(max(raw.shape) / 1024)))
    lab = labels[::k, ::k]
    overlay = np.zeros((*lab.shape, 4))
    for v, rgba in _CLASS_RGBA.items():
        overlay[lab == v] = rgba
    fig, ax = plt.subplots(figsize=(7, 7.4), constrained_layout=True)
    ax.imshow(_shown(raw), cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    ax.imshow(overlay[: _shown(raw).shape[0], : _shown(raw).shape[1]], interpolation="nearest")
    ax.legend(handles=[Patch(color=_CLASS_RGBA[v], label=f"{n}: {100 * shares[n]:.1f}% of the frame")
                       for v, n in _CLASS_NAMES.items()], loc="lower right", fontsize=9)
    ax.set_title(title)
    ax.set_axis_off()
    return save_figure(fig, path, dpi=90)


def _fig_residual(res: NDArray[Any], structure: NDArray[Any], summary: dict[str, float], title: str,
                  path: Path) -> Path:
    plt = pyplot()
    sd = summary["std"] or 1.0
    fig, axes = plt.subplots(1, 3, figsize=(15, 5), constrained_layout=True)
    im = axes[0].imshow(_shown(res), cmap="RdBu_r", vmin=-3 * sd, vmax=3 * sd)
    fig.colorbar(im, ax=axes[0], shrink=0.8, label="input - denoised (input units)")
    axes[0].set_title("residual: should look like noise")
    axes[0].set_axis_off()
    v = res.ravel()
    axes[1].hist(v, bins=200, range=(-5 * sd, 5 * sd), density=True, color="grey", label="residual")
    x = np.linspace(-5 * sd, 5 * sd, 300)
    axes[1].plot(x, np.exp(-0.5 * ((x - summary["mean"]) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), "k--",
                 label="Gaussian, same mean and std")
    axes[1].set_title(f"histogram: skewness {summary['skewness']:.2f}, neighbour correlation {summary['lag1']:.2f}",
                      fontsize=9)
    axes[1].legend(fontsize=8)
    im = axes[2].imshow(_shown(structure), cmap="magma", vmin=0, vmax=1)
    fig.colorbar(im, ax=axes[2], shrink=0.8, label="local correlation with the denoised image")
    axes[2].set_title(f"structure in the residual: {100 * summary['structure_fraction']:.2f}% of pixels above "
                      f"{STRUCTURE_THRESHOLD}", fontsize=9)
    axes[2].set_axis_off()
    fig.suptitle(title)
    return save_figure(fig, path, dpi=90)


def _fig_downstream(masks: dict[str, NDArray[np.bool_]], skeletons: dict[str, NDArray[np.bool_]],
                    background: NDArray[np.bool_] | None, rows: dict[str, Any], title: str, path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(masks), figsize=(5 * len(masks), 5.6), constrained_layout=True, squeeze=False)
    for ax, (name, mask) in zip(axes[0], masks.items()):
        k = max(1, int(np.ceil(max(mask.shape) / 1024)))
        rgb = np.zeros((*mask[::k, ::k].shape, 3))
        if background is not None:
            rgb[..., :] = 0.25 * background[::k, ::k, None]
        rgb[mask[::k, ::k]] = (0.85, 0.85, 0.85)
        rgb[skeletons[name][::k, ::k]] = (0.1, 0.8, 0.2)
        ax.imshow(rgb, interpolation="nearest")
        r = rows[name]
        extra = f", {r['background_objects']} in background" if "background_objects" in r else ""
        ax.set_title(f"{name}: {r['objects']} objects{extra}\n{r['fragments']} skeleton fragments, mean branch "
                     f"{r['mean_branch_px']:.1f} px", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{title}\nOtsu foreground (white), skeleton (green), background used for counting (dark grey)")
    return save_figure(fig, path, dpi=90)


def _fig_time(series: dict[str, Any], names: list[str], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    for name in names:
        s = series[name]
        line = axes[0].plot(s["time"], s["raw_mean"], "-", alpha=0.6, label=f"{name}: input")[0]
        axes[0].plot(s["time"], s["denoised_mean"], "--", color=line.get_color(), lw=2, label=f"{name}: denoised")
        for cls, style in (("weak background", "-"), ("sparse bright", ":")):
            axes[1].plot(s["time"], [100 * v for v in s["risk_share"][cls]], style, color=line.get_color(),
                         label=f"{name}: {cls}")
    axes[0].set_xlabel("time point")
    axes[0].set_ylabel("mean intensity (input units)")
    axes[0].set_title("mean intensity per frame (photobleaching): the two should agree")
    axes[1].set_xlabel("time point")
    axes[1].set_ylabel("% of frame")
    axes[1].set_title("risk classes over time")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    return save_figure(fig, path, dpi=90)


# ---------------------------------------------------------------- the report
def _is_report(folder: Path) -> bool:
    """Whether ``folder`` is a report of ours: it carries :data:`REPORT_MARKER`, or (a
    report from before the marker) our page and a summary that names this package."""
    if (folder / REPORT_MARKER).is_file():
        return True
    try:
        doc = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "asn2n_version" in doc and (folder / "report.html").is_file()


def _check_out_dir(out: Path, inputs: Sequence[Path], overwrite: bool) -> None:
    """Refuse a report folder that overlaps an input, is a file, holds files without
    ``overwrite``, holds anything but a report of ours, or cannot be written."""
    from .io import paths_overlap

    out = out.absolute()
    for p in inputs:
        if paths_overlap(out, p):
            raise OutputError(f"the report directory {out} would be inside or around {p}; choose another place.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory; choose another report directory.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"{out} already holds files; pass --overwrite to replace the report there or choose "
                              "another directory.")
        if not _is_report(out):
            raise OutputError(f"{out} holds files that are not an asn2n report, so --overwrite does not replace "
                              "it; choose another directory.")
    parent = next(p for p in out.parents if p.exists())  # the report is made beside ``out``, then renamed
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the report to {out}: {parent} is not a writable folder; choose another "
                          "place.")


def _write_error(final: Path, e: OSError) -> OutputError:
    return OutputError(f"cannot write the report to {final}: {e.strerror or e}; choose a writable place with "
                       "free space.")


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A new temporary folder beside ``final`` to write the report into.

    When the block ends without error the folder gets :data:`REPORT_MARKER` and is
    renamed to ``final`` (an earlier report there, checked by :func:`_check_out_dir`,
    is removed only then); otherwise it is removed, with any parent folders made for
    it, and nothing is left under ``final``.  Failures to write become one
    :class:`~asn2n_dask.errors.OutputError`.
    """
    made = [p for p in [final.parent, *final.parent.parents] if not p.exists()]
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    except OSError as e:
        _remove_empty(made)
        raise _write_error(final, e) from None
    try:
        yield tmp
        (tmp / REPORT_MARKER).write_text(json.dumps({"package": "asn2n-dask", "version": __version__,
                                                     "kind": "report"}) + "\n")
        _rename_into_place(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(made)
        if isinstance(e, OSError) and (e.filename is None and e.errno in _WRITE_ERRNOS
                                       or e.filename is not None and Path(os.fsdecode(e.filename)).is_relative_to(tmp)):
            raise _write_error(final, e) from None
        raise


_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders made for a report that failed, innermost first, if empty."""
    for d in folders:
        with contextlib.suppress(OSError):
            d.rmdir()


def _rename_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished report ``tmp`` to ``final``, replacing what is there (an empty
    folder or an earlier report) only once the new one is in place."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = tmp.with_suffix(".old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)  # the earlier report stays
        raise
    shutil.rmtree(old, ignore_errors=True)


def make_report(input: str | os.PathLike[str], denoised: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                gt: str | os.PathLike[str] | None = None, model_dir: str | os.PathLike[str] | None = None,
                channels: Sequence[str] | None = None, times: Sequence[int] | None = None, frames: int = 3,
                curve_points: int = 60, zoom: tuple[int, int, int] | None = None, axes: str | None = None,
                overwrite: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Write ``report.html`` (self-contained), its PNGs and ``summary.json`` to ``out_dir``.

    Parameters
    ----------
    input, denoised : path
        The noisy input and the denoised output made from it (TIFF, Zarr or OME-Zarr;
        an asn2n OME-Zarr output brings its risk labels and channel selection).
    out_dir : path
        The report folder: new, empty, or (``overwrite``) an earlier report; never inside
        or around an input, the denoised image, the ground truth or the model.  The
        report is made in a temporary folder beside it and renamed when complete.
    gt : path, optional
        Ground truth with the input's (or the output's) shape: adds the scores.
    model_dir : path, optional
        The model used: adds its training curves and options.
    channels, times, frames
        Frames shown: channels by name or index (default all), output time points
        (default ``frames`` evenly spaced ones).
    curve_points : int
        Time points sampled for the intensity and risk time series.
    zoom : (y, x, side), optional
        Centre and side of the zoom crop (default: where the denoised frame varies most).
    axes : str, optional
        Axis letters for files that do not name them (both images).
    overwrite : bool
        Replace an earlier report in ``out_dir``: only a folder that a report of ours
        made (:data:`REPORT_MARKER`), and only once the new report is complete.
    progress : callable, optional
        ``progress(what, done, total)``.

    Returns
    -------
    dict
        The summary also written to ``summary.json``.
    """
    final = Path(out_dir).absolute()
    paths = [Path(p) for p in (input, denoised, gt, model_dir) if p is not None]
    raw_src, den_src = open_source(input, axes), open_source(denoised, axes)
    pair = _pair(raw_src, den_src)
    gt_src, gt_by_output = _truth_source(gt, axes, raw_src, den_src)
    doc = _model_doc(model_dir, pair) if model_dir is not None else None
    refs = choose_frames(pair, channels=channels, times=times, frames=frames)
    _check_out_dir(final, paths, overwrite)
    with _staged(final) as out:  # renamed to ``final`` when complete
        window = _window(den_src.frame_shape)
        ax = den_src.axes[:-2]
        nt = den_src.shape[ax.index("T")] if "T" in ax else 1
        curve_ts = spread(nt, curve_points)
        n_chan = den_src.shape[ax.index("C")] if "C" in ax else 1
        total, done = len(refs) + len(curve_ts) * n_chan, 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress("report", done, total)

        frames_out: list[dict[str, Any]] = []
        for i, ref in enumerate(refs):
            truth = None
            if gt_src is not None:
                truth = _plane(gt_src, ref.out_index if gt_by_output else ref.in_index, window)
            frames_out.append(_frame_row(f"f{i}", ref, pair, _plane(raw_src, ref.in_index, window),
                                         _plane(den_src, ref.out_index, window), truth, window, zoom, out))
            tick()
        series = _time_series(pair, raw_src, den_src, curve_ts, n_chan, window, tick)
        time_fig = _fig_time(series, pair.names, out / "time-series.png")
        training, curve_files = _training_record(model_dir, doc, out)

        summary = {
            "asn2n_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "input": {"path": raw_src.path, "axes": raw_src.axes, "shape": list(raw_src.shape),
                      "dtype": raw_src.dtype},
            "denoised": {"path": den_src.path, "axes": den_src.axes, "shape": list(den_src.shape),
                         "dtype": den_src.dtype, "risk_labels": "from the output" if pair.labels is not None
                         else "computed from the input"},
            "ground_truth": gt_src.path if gt_src is not None else None,
            "channels": pair.names,
            "frames": frames_out,
            "time_series": series,
            "time_series_figure": time_fig.name,
            "training": training,
            "training_figures": curve_files,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
        (out / "report.html").write_text(_html(summary, out))
    return summary


def _truth_source(gt: str | os.PathLike[str] | None, axes: str | None, raw_src: Source,
                  den_src: Source) -> tuple[Source | None, bool]:
    """The ground truth, described, and whether it has the output's shape (else the input's)."""
    if gt is None:
        return None, False
    gt_src = open_source(gt, axes)
    if gt_src.shape == raw_src.shape:
        return gt_src, False
    if gt_src.shape == den_src.shape:
        return gt_src, True
    raise InputError(f"the ground truth has shape {gt_src.shape}; it must match the input {raw_src.shape} "
                     f"or the denoised image {den_src.shape}.")


def _model_doc(model_dir: str | os.PathLike[str], pair: _Pair) -> dict[str, Any]:
    """The model's ``model.json``; its risk thresholds and estimators set on ``pair``
    (an older or foreign one keeps the default thresholds)."""
    if not (Path(model_dir) / "model.json").is_file():
        raise InputError(f"{model_dir} is not a model directory (no model.json).")
    doc: dict[str, Any] = json.loads((Path(model_dir) / "model.json").read_text())
    from .config import TrainConfig

    try:
        pair.thresholds = TrainConfig.from_dict(doc["train"]).norm.risk
        pair.estimators = [str(ch.get("risk_estimator", "reference")) for ch in doc["channels"]]
    except Exception:  # an older or foreign model.json: keep the default thresholds
        pass
    return doc


def _background(truth: np.ndarray | None, masks: dict[str, np.ndarray],
                labels: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Where objects count as false ones, and its description: far from the truth's
    foreground, else the weak-background risk patches, else nowhere."""
    if truth is not None:
        from scipy import ndimage as ndi

        return (~ndi.binary_dilation(masks["ground truth"], iterations=3),
                "true background (farther than 3 px from the truth's Otsu foreground)")
    if (labels == 1).any():
        return labels == 1, "weak-background risk patches"
    return None, "none: no weak-background patches in this frame, so objects in background are not counted"


def _frame_row(tag: str, ref: FrameRef, pair: _Pair, raw: np.ndarray, den: np.ndarray, truth: np.ndarray | None,
               window: tuple[slice, slice], zoom: tuple[int, int, int] | None, out: Path) -> dict[str, Any]:
    """One shown frame: its risk shares, residual checks, downstream (segmentation)
    measures and scores, and its four figures written to ``out`` (named ``tag-*.png``)."""
    from skimage.morphology import skeletonize

    labels = _risk_labels(pair, ref, raw, window)
    shares = {n: float(np.mean(labels == v)) for v, n in _CLASS_NAMES.items()}
    res_summary, structure = residual_checks(raw, den)
    masks = {"input": otsu_mask(raw), "denoised": otsu_mask(den)}
    if truth is not None:
        masks["ground truth"] = otsu_mask(truth)
    skeletons = {name: skeletonize(m) for name, m in masks.items()}
    background, bg_name = _background(truth, masks, labels)
    down = {name: {**foreground_objects(m, background), **skeleton_stats(m, skeletons[name])}
            for name, m in masks.items()}
    box = _zoom_box(den, zoom)
    figs = {
        "montage": _fig_montage(raw, den, truth, box, f"{ref.label}: input, denoised"
                                + (", ground truth" if truth is not None else "") + " (one intensity scale)",
                                out / f"{tag}-montage.png"),
        "risk": _fig_risk(raw, labels, shares, f"{ref.label}: risk classes on the input",
                          out / f"{tag}-risk.png"),
        "residual": _fig_residual(raw - den, structure, res_summary, f"{ref.label}: what was removed",
                                  out / f"{tag}-residual.png"),
        "downstream": _fig_downstream(masks, skeletons, background, down, ref.label,
                                      out / f"{tag}-downstream.png"),
    }
    row: dict[str, Any] = {"frame": ref.label, "output_index": list(ref.out_index),
                           "input_index": list(ref.in_index),
                           "window": [[w.start, w.stop] for w in window], "risk_share": shares,
                           "residual": res_summary, "downstream": down, "background": bg_name,
                           "zoom": {"y": box[0], "x": box[1], "side": box[2]},
                           "figures": {k: p.name for k, p in figs.items()}}
    if truth is not None:
        row["scores"] = {"input": score_pair(raw, truth), "denoised": score_pair(den, truth)}
    return row


def _time_series(pair: _Pair, raw_src: Source, den_src: Source, curve_ts: Sequence[int], n_chan: int,
                 window: tuple[slice, slice], tick: Callable[[], None]) -> dict[str, Any]:
    """Per channel, over the time points ``curve_ts``: mean intensity of the input and
    of the output, and the share of each risk class."""
    series: dict[str, Any] = {}
    for c in range(n_chan):
        name = pair.names[c]
        s: dict[str, Any] = {"time": [], "raw_mean": [], "denoised_mean": [],
                             "risk_share": {n: [] for n in _CLASS_NAMES.values()}}
        for t in curve_ts:
            idx = _out_index(den_src, t, c)
            ref = FrameRef("", idx, pair.in_index(idx), c, t)
            raw = _plane(raw_src, ref.in_index, window)
            s["time"].append(t)
            s["raw_mean"].append(float(raw.mean()))
            s["denoised_mean"].append(float(_plane(den_src, idx, window).mean()))
            labels = _risk_labels(pair, ref, raw, window)
            for v, n in _CLASS_NAMES.items():
                s["risk_share"][n].append(float(np.mean(labels == v)))
            tick()
        series[name] = s
    return series


def _training_record(model_dir: str | os.PathLike[str] | None, doc: dict[str, Any] | None,
                     out: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The model's training options and per-channel record, and its curves and montages
    copied into the report (``model-*.png``)."""
    if model_dir is None or doc is None:
        return None, []
    training = {"train": doc.get("train"), "channels": [
        {k: ch.get(k) for k in ("name", "dataset_mode", "training") if k in ch}
        for ch in doc.get("channels", [])]}
    curve_files: list[str] = []
    mdir = Path(model_dir)
    for f in sorted(mdir.glob("curves-*.png")) + sorted(mdir.glob("montage-*.png")):
        shutil.copyfile(f, out / f"model-{f.name}")
        curve_files.append(f"model-{f.name}")
    return training, curve_files


# ---------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}.note{color:#555;font-size:.92em}
.warn{color:#a40}code{background:#f4f4f4;padding:0 .2em}
"""


def _img(out: Path, name: str, alt: str) -> str:
    data = base64.b64encode((out / name).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" title="{html.escape(name)}">'


def _num(v: Any, fmt: str = ".3g") -> str:
    if isinstance(v, float):
        return format(v, fmt)
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _html(s: dict[str, Any], out: Path) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>asn2n report: "
             f"{e(Path(s['denoised']['path']).name)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Denoising report: {e(Path(s['denoised']['path']).name)}</h1>",
             f"<p>Input <code>{e(s['input']['path'])}</code> ({e(s['input']['axes'])} {tuple(s['input']['shape'])}, "
             f"{e(s['input']['dtype'])}); denoised <code>{e(s['denoised']['path'])}</code>; risk labels "
             f"{e(s['denoised']['risk_labels'])}. asn2n-dask {e(s['asn2n_version'])}, {e(s['created'])}.</p>",
             "<h2>How to read this report</h2><ul>"
             "<li><b>Before and after</b>: input and denoised share one intensity scale (input units), so "
             "brightness compares directly; the zoom and the line profile show the same pixels in every panel.</li>"
             "<li><b>Risk</b>: weak-background patches (blue) and sparse bright ones (orange) are where a denoiser is "
             "most tempted to invent structure; Adaptive-SN2N normalises them on the image's global scale.</li>"
             "<li><b>Residual</b> (input - denoised) should look like noise: no visible shapes, a symmetric "
             "histogram, neighbour correlation near 0, and a structure map that stays dark. Bright areas in the "
             "structure map mark where signal may have been removed.</li>"
             "<li><b>Downstream</b>: Otsu segmentation of the denoised frame should find fewer objects in the "
             "background than the input does (noise specks) and never more; longer skeleton branches and fewer "
             "fragments mean filaments kept their continuity.</li>"
             "<li><b>Time series</b>: mean intensity per frame must follow the input's (the denoiser keeps the "
             "photobleaching trend: output is quantitative).</li></ul>"]
    header = ["frame", "weak bg %", "sparse bright %", "residual std", "neighbour corr", "structure %",
              "objects in bg: input", "denoised", "fragments: input", "denoised", "mean branch px: input", "denoised"]
    rows = []
    for f in s["frames"]:
        d = f["downstream"]
        rows.append([f["frame"], 100 * f["risk_share"]["weak background"], 100 * f["risk_share"]["sparse bright"],
                     f["residual"]["std"], f["residual"]["lag1"], 100 * f["residual"]["structure_fraction"],
                     d["input"].get("background_objects", ""), d["denoised"].get("background_objects", ""),
                     d["input"]["fragments"], d["denoised"]["fragments"], d["input"]["mean_branch_px"],
                     d["denoised"]["mean_branch_px"]])
    parts += ["<h2>Summary</h2>", _table(header, rows)]
    scored = [f for f in s["frames"] if "scores" in f]
    if scored:
        keys = ["psnr", "psnr_raw", "ssim", "false_fg", "false_obj", "fg_dice"]
        srows = [[f"{f['frame']}: {who}", *[f["scores"][who][k] for k in keys]] for f in scored
                 for who in ("input", "denoised")]
        parts += ["<h3>Against the ground truth</h3>", _table(["frame"] + keys, srows),
                  "<p class='note'>psnr after an affine fit, psnr_raw in input units, ssim; false_fg and false_obj "
                  "(per megapixel) count background artefacts after Otsu thresholding; fg_dice: foreground overlap. "
                  "Defined as in the project's scorer.</p>"]
    for f in s["frames"]:
        w = f["window"]
        parts += [f"<h2>{e(f['frame'])}</h2>",
                  f"<p class='note'>Rows {w[0][0]}:{w[0][1]}, columns {w[1][0]}:{w[1][1]} of the frame. "
                  f"Background for counting objects: {e(f['background'])}.</p>",
                  _img(out, f["figures"]["montage"], f"{f['frame']}: before and after"),
                  _img(out, f["figures"]["risk"], f"{f['frame']}: risk map"),
                  _img(out, f["figures"]["residual"], f"{f['frame']}: residual"),
                  _img(out, f["figures"]["downstream"], f"{f['frame']}: segmentation and skeletons")]
        if f["residual"]["structure_fraction"] > 0.01:
            parts.append(f"<p class='warn'>{100 * f['residual']['structure_fraction']:.1f}% of this frame's "
                         "residual follows the image: look at the bright areas of the structure map.</p>")
    parts += ["<h2>Over time</h2>", _img(out, s["time_series_figure"], "mean intensity and risk over time")]
    if s["training"] is not None:
        parts += ["<h2>Training</h2>"]
        parts += [_img(out, name, name) for name in s["training_figures"]]
        parts += [f"<pre>{e(json.dumps(s['training'], indent=1, default=str))}</pre>"]
    parts += ["<p class='note'>All numbers: <code>summary.json</code> beside this page.</p></body></html>"]
    return "\n".join(parts)
