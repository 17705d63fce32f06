"""Denoise a dataset of any size chunk by chunk, on a Dask cluster, into OME-Zarr.

The data flow is one way: read (a lazy :class:`~asn2n_dask.source.Source`) -> plan
(:class:`~asn2n_dask.plan.Plan`, built before any graph: one task per output chunk, the halo'd region it
reads, the tiles anchored to the frame) -> one reduction pass for the channel
statistics -> one task per output chunk (read its own region straight from the store,
risk, normalisation, network, Gaussian blending, back to input units, write its own
chunk, then its completion record) -> finalise the metadata.  The output store is
created and finished by :mod:`asn2n_dask.store`.

Every chunk is computed by :func:`asn2n_dask.predict.denoise_window`, the same function
that denoises a whole frame in memory, from channel statistics computed once; so the
output does not depend on the chunking.  A 3-D model (:func:`is_volume_model`) is run
over Z, Y and X instead: chunks and halos along Z too, each chunk computed by
:func:`asn2n_dask.predict.denoise_window_3d`.  A run that is stopped part-way is resumed by
running the same command again: chunks whose completion record matches the data on
disk are skipped, the others recomputed.  A finished one run again reads nothing of the
input when its listing (:func:`source_listing`) shows that the input was not written
since; otherwise the statistics pass decides, as for a resume.  What may be resumed,
skipped or refused, and the records that decide it, are :mod:`asn2n_dask.resume`'s.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import connect, resume, store
from ._version import __version__
from .connect import ClusterOptions
from .errors import InputError, ModelError, OutputError
from .io import TIFF_SUFFIXES, cast_output
from .method import denoising_stats
from .plan import (  # noqa: F401  (re-exported: asn2n_dask.pipeline.make_plan, ...)
    MAX_TASKS,
    MIN_CHUNK,
    OME_ORDER,
    SPATIAL_AXES,
    VOLUME_AXES,
    Plan,
    RunOptions,
    channel_labels,
    make_plan,
    run_spatial,
)
from .predict import resolve_device
from .resume import PROGRESS_DIR, model_sha
from .risk import SPARSE_BRIGHT, WEAK_BACKGROUND
from .source import Selection, Source
from .stats import ChannelStats
from .stats_pass import (  # noqa: F401  (re-exported: asn2n_dask.pipeline.selection_stats, ...)
    STATS_BLOCK_BYTES,
    StatsCache,
    selection_array,
    selection_stats,
    source_listing,
    stats_blocks,
)
from .store import MIN_LEVEL  # noqa: F401  (re-exported)
from .store import open_outputs as _open_outputs

__all__ = ["RunOptions", "Plan", "make_plan", "run_pipeline", "check_output_path", "RunSummary", "PROGRESS_DIR",
           "run_chunk", "StatsCache", "source_listing", "is_volume_model", "volume_tile_z", "run_axes"]

log = logging.getLogger(__name__)

COMPUTED, SKIPPED = 1, 2


# ------------------------------------------------------------------ 2-D or 3-D
def is_volume_model(model: Any) -> bool:
    """Whether ``model`` holds 3-D networks (its ``dims`` is 3; models without one are 2-D):
    the switch between a run over frames (Y, X) and one over volumes (Z, Y, X)."""
    return int(getattr(model, "dims", 2)) == 3


def volume_tile_z(model: Any) -> int:
    """A 3-D model's Z tile: the Z of the sub-volumes it was trained on (``model.volume.patch``)."""
    return int(model.volume.patch[0])


# ------------------------------------------------------------------ worker side
@dataclass(frozen=True)
class RunSpec:
    """What every task needs (a few KiB: the plan holds windows, not regions)."""

    plan: Plan
    output: str
    model_dir: str
    model_sha: str
    channel_map: tuple[int, ...]
    stats: tuple[dict[str, Any], ...]  # each channel's, with the range it is normalised on
    dtype: str
    device: str
    torch_threads: int | None = None


_MODELS: dict[tuple[str, str, str, str, bool], Any] = {}
_LOCK = threading.Lock()


def _model(spec: RunSpec) -> Any:
    """The model, loaded once per process and device."""
    infer = spec.plan.infer
    key = (spec.model_dir, spec.model_sha, spec.device, infer.precision, infer.compile)
    with _LOCK:
        if key not in _MODELS:
            from .checkpoint import load_model
            from .predict import compiles, network_fn, resolve_device

            if spec.torch_threads:
                import torch

                torch.set_num_threads(spec.torch_threads)
            model = load_model(spec.model_dir, allow_unfinished=True)  # the client has decided
            if model_sha(spec.model_dir) != spec.model_sha:
                raise ModelError(f"the model in {spec.model_dir} changed during the run; start again.")
            dev = resolve_device(spec.device)
            compiled = compiles(infer, dev)
            fns = [network_fn(ch.net, dev, infer.precision, compiled) for ch in model.channels]
            if compiled:  # compile here, once, under the lock: not in every thread (kernels from the cache)
                import torch

                views = 2 if infer.infer_on == "twins" else 1
                tz = spec.plan.tile_z
                shape = (views * infer.batch, 1, infer.tile, infer.tile) if tz is None else \
                    (infer.batch, 1, tz, infer.tile, infer.tile)
                for fn in fns:
                    fn(torch.zeros(shape, device=dev))
            _MODELS[key] = (model, fns, dev)
        return _MODELS[key]


def run_chunk(spec: RunSpec, p: int, *position: int) -> int:
    """Compute and write one output chunk, unless a verified record says it is done.

    The chunk's record holds the digest of what was written and the seconds spent
    reading its region, denoising it (risk, normalisation, network, blend; a worker's
    first chunk also loads, and may compile, the network) and writing it.

    ``position``: the chunk's place in the grid of each spatial axis (``iy, ix``; ``iz,
    iy, ix`` for a 3-D model's run, ``it, iy, ix`` for one with time as its depth axis).
    Returns :data:`COMPUTED` or :data:`SKIPPED`.
    """
    from .predict import denoise_window, denoise_window_3d

    plan = spec.plan
    k = plan.windows.number(position)
    wp = plan.window_plan(k)
    out_idx, src_idx, c = plan.plane_index(p)
    spatial = plan.window_slices(k)
    where = plan.output_index(out_idx, spatial)
    label_where = plan.label_index(out_idx, spatial)
    rec = resume.record_path(spec.output, p, *position)
    out_arr, risk_arr = _open_outputs(spec.output, plan.labels[c])
    if resume.chunk_done(rec, lambda: (out_arr[where], risk_arr[label_where]), (p, *position), spec.output):
        return SKIPPED
    t0 = time.perf_counter()
    region = np.asarray(plan.source.open()[plan.source_index(src_idx, [slice(a, b) for a, b in wp.read])])
    t_read = time.perf_counter()
    if region.dtype.kind == "f" and not np.isfinite(region).all():
        raise InputError(f"{plan.source.path} holds NaN or infinite values in plane {src_idx}; replace them "
                         "before denoising.")
    model, fns, dev = _model(spec)
    mc = spec.channel_map[c]
    stats = ChannelStats.from_dict(spec.stats[c])
    if is_volume_model(model):
        tz = volume_tile_z(model)
        if plan.tile_z != tz:
            raise ModelError(f"the run was planned for depth tiles of {plan.tile_z} slices but the model in "
                             f"{spec.model_dir} takes {tz}; start again.")
        z, h, w = plan.frame_shape
        out, risk = denoise_window_3d(region, wp, (z, h, w), fns[mc], stats=stats, infer=plan.infer, tile_z=tz,
                                      device=dev, multiple=model.channels[mc].net.multiple,
                                      risk=model.method(mc).norm(model.train.norm).risk)
    else:
        method = model.method(mc)
        h, w = plan.frame_shape
        out, risk = denoise_window(region, wp, (h, w), fns[mc], stats=stats, norm=method.norm(model.train.norm),
                                   infer=plan.infer, device=dev, multiple=model.multiple,
                                   dataset_mode=method.dataset_mode)
    t_denoise = time.perf_counter()
    data = cast_output(out, plan.source.dtype) if spec.dtype == "input" else out
    labels = risk.astype(np.uint8)
    out_arr[where] = data
    risk_arr[label_where] = labels
    seconds = {"read": t_read - t0, "denoise": t_denoise - t_read, "write": time.perf_counter() - t_denoise}
    resume.write_record(rec, resume.digest(data.astype(out_arr.dtype), labels), seconds)
    return COMPUTED


def _run_block(spec: RunSpec, block_info: Any = None) -> np.ndarray:
    p, *position = block_info[None]["chunk-location"]
    return np.full((1,) * (1 + len(position)), run_chunk(spec, p, *position), np.int8)


# ------------------------------------------------------------------ client side
def channel_map(source: Source, selection: Selection, model: Any) -> tuple[int, ...]:
    """Model channel for each selected channel: by name, else by source index, else by
    position.  The one rule for every route (``.zarr`` and ``.tif`` outputs alike).

    Raises
    ------
    ModelError
        The model names two networks alike, or does not fit the selection.
    InputError
        The selected channels of the input share a name (they would share a network).
    """
    c_ax = source.axes.find("C")
    out_src = [int(i) for i in selection.indices(source)[c_ax]] if c_ax >= 0 else [0]
    names = [ch.name for ch in model.channels]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelError(f"the model holds {names.count(twice[0])} networks named {twice[0]!r}; each channel needs "
                         "its own name: train the model again.")
    src_names = list(source.meta.channel_names or [])
    picked = [src_names[i] for i in out_src] if src_names else []
    twice = sorted({n for n in picked if picked.count(n) > 1})
    if twice:
        raise InputError(f"{source.path} has {picked.count(twice[0])} selected channels named {twice[0]!r}; they "
                         "would share one network: rename them in the file or select one with --channel.")
    if picked and all(n in names for n in picked):
        return tuple(names.index(n) for n in picked)
    n_src = source.shape[c_ax] if c_ax >= 0 else 1
    if model.n_channels == n_src:
        mapping = tuple(out_src)
    elif model.n_channels == len(out_src):
        mapping = tuple(range(len(out_src)))
    else:
        mapping = ()
    if mapping:
        labels = [src_names[i] if src_names else str(i) for i in out_src]
        other = [(lab, names[m]) for lab, m in zip(labels, mapping) if names[m] != lab]
        if other:  # by position: said, since the names do not confirm it
            log.warning("the model has no network named %s; channel %s goes to network %s by position",
                        " or ".join(repr(lab) for lab, _ in other), ", ".join(lab for lab, _ in other),
                        ", ".join(repr(m) for _, m in other))
        return mapping
    raise ModelError(f"the model was trained for {model.n_channels} channel(s) but {len(out_src)} are selected "
                     f"from {source.path} ({n_src} in all); train a model on the same channels or select them with "
                     "--channel.")


def missing_note(source: Source) -> tuple[str | None, list[Any] | None]:
    """A note for the user when a Zarr input has chunks that are not stored, and the
    ``(missing, total, fill)`` record for the output's attributes."""
    gaps = source.missing_chunks()
    if not gaps or not gaps[0]:
        return None, list(gaps) if gaps else None
    return (f"note: {gaps[0]} of {gaps[1]} chunks of {source.path} are not stored; they are read as the fill value "
            f"{gaps[2]} (zarr's rule for unwritten chunks). If the input was copied, check the copy is complete.",
            list(gaps))


def compute_stats(plan: Plan, norm: Any, client: Any = None, *, cache: StatsCache | None = None,
                  listing: str | None = None) -> list[ChannelStats]:
    """The reduction pass: statistics of every selected channel over all its planes.

    All time points count, whatever ``--time`` selects, so that a dataset denoised in
    time batches gives the same result as in one run.  A plan of more tasks than one
    run schedules is refused first (:meth:`Plan.check_size`).  ``cache``: as for
    :func:`selection_stats`; ``listing``: the source's :func:`source_listing`, just
    taken (None: there is none, and ``cache`` cannot vouch for its statistics).
    """
    plan.check_size()
    return selection_stats([plan.source], [plan.selection], norm, client, cache=cache, listings=[listing])


def _in_output_order(plan: Plan, values: Sequence[Any] | None) -> tuple[Any, ...] | None:
    """Per-axis ``values`` of the input (a scale, units) in the output's axis order."""
    if values is None or not plan.order:
        return None if values is None else tuple(values)
    return tuple(values[i] for i in plan.order)


def _scale(plan: Plan) -> tuple[float, ...] | None:
    """The input's pixel scale when usable (:func:`asn2n_dask.io.usable_scale`), else
    None; in the output's axis order."""
    from .io import usable_scale

    return _in_output_order(plan, usable_scale(plan.source.meta.scale, len(plan.source.axes), plan.source.path))


def _units(plan: Plan) -> tuple[str | None, ...] | None:
    """The input's units per axis, in the output's axis order (None where unknown)."""
    units = plan.source.meta.units
    if units is None or len(units) != len(plan.source.axes):
        return None
    return _in_output_order(plan, units)


@dataclass
class RunSummary:
    """What a run did."""

    output: str
    tasks: int
    computed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    stats_seconds: float = 0.0
    resumed: bool = False
    already_complete: bool = False
    plan: dict[str, Any] = field(default_factory=dict)


def _prepare_output(output: Path, plan: Plan, parts: dict[str, Any], options: RunOptions,
                    provenance: dict[str, Any]) -> bool:
    """Create the output store, or decide to resume the existing one (:func:`asn2n_dask.resume.resumable`).
    Returns True when resuming."""
    if resume.resumable(output, parts, overwrite=options.overwrite):
        return True
    try:
        resume.remove_output(output)
        return _create_output(output, plan, parts, options, provenance)
    except PermissionError as e:
        raise OutputError(f"cannot write {output}: permission denied ({e.filename}); choose a folder you can "
                          "write to.") from None


#: Classes of the risk label images: name and display colour per label value.
RISK_CLASSES = {WEAK_BACKGROUND: ("weak background", (0, 120, 255, 160)),
                SPARSE_BRIGHT: ("sparse bright", (255, 150, 0, 160))}


def _create_output(output: Path, plan: Plan, parts: dict[str, Any], options: RunOptions,
                   provenance: dict[str, Any]) -> bool:
    dtype = plan.source.dtype if options.dtype == "input" else "float32"
    store.create_output(output, version=options.ome, axes=plan.axes, shape=plan.shape, chunks=plan.chunks,
                        dtype=dtype, labels=plan.labels, attrs=resume.running_attrs(provenance, parts))
    return False


def _finalise(output: Path, plan: Plan, options: RunOptions, client: Any, listing: str | None = None) -> None:
    """After every chunk is recorded: the pyramid, the OME metadata and last the status
    that presents the output as complete (:func:`asn2n_dask.store.finalise`), with the
    input's ``listing`` taken before the run read it (:func:`source_listing`)."""
    names = None
    if plan.channel_axis is not None:
        names = channel_labels(plan.source, plan.plane_sources[plan.channel_axis])
    store.finalise(output, version=options.ome, axes=plan.axes, chunks=plan.chunks, labels=plan.labels,
                   levels=pyramid_levels(plan, options.pyramid), channel_names=names, classes=RISK_CLASSES,
                   scale=_scale(plan), units=_units(plan), listing=listing, client=client)


def pyramid_levels(plan: Plan, extra: int) -> int:
    """Levels written for ``--pyramid extra`` (:func:`asn2n_dask.store.pyramid_levels`)."""
    return store.pyramid_levels(plan.frame_shape[-2:], extra)


def check_output_path(input: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Refuse a chunked output that is not ``.zarr`` or that is, holds or lies in the input.

    Returns
    -------
    Path
        The output, absolute.
    """
    out = Path(output).absolute()
    if out.suffix.lower() in TIFF_SUFFIXES or out.suffix.lower() != ".zarr":
        raise OutputError(f"output {out} must be a .zarr directory for chunked processing.")
    from .io import paths_overlap

    if out.is_symlink():
        raise OutputError(f"output {out} is a symbolic link; give the real path (a link is never followed to replace "
                          "what it points at).")
    if paths_overlap(out, input):
        raise OutputError(f"output {out} is, contains or lies inside the input; choose another output path (the "
                          "input is never overwritten).")
    return out


def _already_complete(summary: RunSummary, echo: Callable[[str], None]) -> RunSummary:
    """The summary of a run that finds its output complete for its job: every chunk skipped."""
    summary.already_complete = True
    echo(f"{summary.output} is already complete for this job; nothing to do.")
    summary.skipped = summary.tasks
    return summary


def _timed_stats(plan: Plan, norm: Any, client: Any, cache: StatsCache | None, listing: str | None,
                 progress: Callable[[str, int, int], None] | None, summary: RunSummary) -> list[ChannelStats]:
    """:func:`compute_stats`, shown as the ``statistics`` step and timed into ``summary``."""
    ts = time.perf_counter()
    if progress is not None:
        progress("statistics", 0, 1)
    stats = compute_stats(plan, norm, client, cache=cache, listing=listing)
    summary.stats_seconds = time.perf_counter() - ts
    if progress is not None:
        progress("statistics", 1, 1)
    return stats


def _job(plan: Plan, options: RunOptions, msha: str) -> dict[str, Any]:
    """What the output's fingerprint covers (:func:`asn2n_dask.resume.fingerprint`),
    but the statistics: known before any data is read."""
    source = plan.source
    # a 3-D run's label images hold each slice's risk classes over patches of this side; outputs
    # begun before they did (0 throughout) lack it, and are not resumed into a mixed label image
    risk = {"risk_patch": plan.patch} if plan.tile_z is not None else {}
    return {
        **risk,
        "input": {"path": source.path, "array": source.array_path, "shape": list(source.shape),
                  "dtype": source.dtype, "axes": source.axes},
        "selection": plan.selection.to_dict(),
        "output_axes": plan.axes,
        "labels": list(plan.labels),
        "model_sha256": msha,
        "infer": options.infer.to_dict(),
        "chunks": list(plan.chunks),
        "dtype": options.dtype,
        "ome": options.ome,
        "pyramid": options.pyramid,
        "device": resolve_device(options.infer.device).type,
        "version": __version__,
    }


def _execute_explained(spec: RunSpec, client: Any, progress: Callable[[str, int, int], None] | None,
                       out: Path) -> np.ndarray:
    """:func:`_execute`, with the failures a user can remedy (no permission, a full disk,
    a worker killed again and again) said in one sentence each."""
    try:
        return _execute(spec, client, progress)
    except PermissionError as e:
        raise OutputError(f"cannot write {out}: permission denied ({e.filename}).") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"the disk holding {out} is full ({e.strerror}); free space and run the same "
                              "command again: finished chunks are kept and verified.") from None
        raise
    except Exception as e:
        if type(e).__name__ == "KilledWorker":
            raise OutputError(f"a worker died repeatedly while computing a chunk of {out} (often: out of "
                              "memory); use smaller --chunks or a larger --memory-limit, then run the same "
                              "command to resume.") from None
        raise


def run_pipeline(source: Source, output: str | os.PathLike[str], model_dir: str | os.PathLike[str], *,
                 selection: Selection = Selection(), options: RunOptions = RunOptions(), client: Any = None,
                 scheduler: str | None = None, workers: int | None = None, threads: int | None = None,
                 memory_limit: str | None = None, progress: Callable[[str, int, int], None] | None = None,
                 echo: Callable[[str], None] = log.info, extra: dict[str, Any] | None = None,
                 torch_threads: int | None = None, cluster: str | os.PathLike[str] | None = None,
                 jobs: int | None = None, dashboard_address: str | None = None,
                 stats_cache: StatsCache | None = None, spatial: str | None = None) -> RunSummary:
    """Denoise ``source`` into the OME-Zarr ``output``, chunk by chunk, resumably.

    An output that is already the complete result of the same job is left as it is,
    without reading the input, when the input's listing (:func:`source_listing`: the
    size, inode and times of every file, never a pixel) equals the one taken before
    that run read it.  Otherwise the statistics pass runs first and the existing output
    is resumed only when its record, content digests included, equals this job's.

    Parameters
    ----------
    source : Source
        From :func:`asn2n_dask.source.open_source`.
    output : path
        A ``.zarr`` directory: created, or resumed when it holds an unfinished run of
        the same job.
    model_dir : path
        A model directory (:func:`asn2n_dask.save_model`).
    selection : Selection
        Channels and time points.
    options : RunOptions
    client : distributed.Client or "sync", optional
        Cluster to use; ``"sync"`` runs every task in this process (no cluster).
        Default: join ``scheduler`` if given, else start an embedded LocalCluster
        (this and the cluster options below: :func:`asn2n_dask.connect.open_client`).
    scheduler : str, optional
        Address of a running Dask scheduler.
    workers, threads, memory_limit
        Embedded LocalCluster size (defaults from the machine).
    progress : callable, optional
        ``progress(what, done, total)``.
    echo : callable
        Where messages for the user go (dashboard link, resume notes).
    extra : dict, optional
        More provenance for the output's attributes.
    torch_threads : int, optional
        Threads of each worker's network when ``client`` is given (an embedded cluster
        divides the machine's cores between its workers).
    cluster : path, optional
        A SLURM/PBS/LSF profile (YAML, :mod:`asn2n_dask.hpc`): batch jobs are started,
        scaled between the profile's min and max jobs (``jobs`` sets the max), and
        cancelled at the end.
    dashboard_address : str, optional
        Where the dashboard of a cluster started here listens (``HOST:PORT``); default
        ``127.0.0.1:0``, a free port on this machine only (``:8787`` exposes it).
    stats_cache : StatsCache, optional
        Statistics this process measured for the same input and channels (``asn2n
        run``'s training): used instead of a second pass when still valid.
    spatial : {"YX", "ZYX", "TYX"}, optional
        The axes cut into chunks and tiles: ``"YX"`` for a 2-D model (its frames), ``"ZYX"``
        for a 3-D one (:func:`is_volume_model`: volumes, tiled along Z with the Z of its
        training sub-volumes, :func:`volume_tile_z`; ``options.chunks`` then gives Z, Y
        and X), ``"TYX"`` for a 3-D one with time as its depth axis (tiled along T as
        along Z).  Default: the model's (:func:`run_axes`).

    Returns
    -------
    RunSummary
    """
    from .io import output_lock

    out = check_output_path(source.path, output)
    with output_lock(out):
        from .checkpoint import load_model

        t0 = time.perf_counter()
        model = load_model(model_dir, allow_unfinished=options.allow_unfinished)
        plan = model_plan(source, selection, options, model, model_dir, spatial)
        cmap = channel_map(source, selection, model)
        summary = RunSummary(output=str(out), tasks=plan.n_tasks, plan=plan.to_dict())
        prev = resume.existing(out)
        resume.refuse_foreign(out, prev)
        msha = model_sha(model_dir)
        parts = _job(plan, options, msha)
        if prev and not options.overwrite and isinstance(prev.get("job"), dict):
            resume.refuse_other_job(out, prev["job"], parts, check_stats=False)  # before reading any data
        listing = source_listing(source)  # before any read: what the statistics and the chunks will see
        if not options.overwrite and resume.complete_and_unchanged(prev, parts, listing):
            return _already_complete(summary, echo)
        where = ClusterOptions(client=client, scheduler=scheduler, cluster=cluster, jobs=jobs, workers=workers,
                               threads=threads, memory_limit=memory_limit, dashboard_address=dashboard_address)
        with connect.open_client(where, echo=echo, device=options.infer.device) as (cl, cluster_threads):
            torch_threads = cluster_threads or torch_threads
            if cl not in (None, "sync"):
                from .cluster import AllocatorPlugin

                cl.register_plugin(AllocatorPlugin())  # before the statistics pass, on every worker
            stats = _timed_stats(plan, model.train.norm, cl, stats_cache, listing, progress, summary)
            parts["stats"] = [s.to_dict() for s in stats]
            used = denoising_stats([model.method(mc) for mc in cmap], stats, options.infer.norm_range,
                                   names=[model.channels[mc].name for mc in cmap])
            note, gaps = missing_note(source)
            if note:
                echo(note)
            prov = {"input_missing_chunks": gaps,
                    "package": "asn2n-dask", "version": __version__, "input": source.path, "input_axes": source.axes,
                    "output_axes": plan.axes, "model": str(model_dir),
                    "model_sha256": msha, "norm": model.train.norm.to_dict(),
                    "risk_estimators": [getattr(ch, "risk_estimator", None) for ch in model.channels],
                    "infer": options.infer.to_dict(),
                    "stats": [s.to_dict() for s in stats], "channel_map": list(cmap),
                    "norm_ranges": [s.norm.to_dict() for s in used],
                    "stats_seconds": summary.stats_seconds, **(extra or {})}
            summary.resumed = _prepare_output(out, plan, parts, options, prov)
            if summary.resumed and (prev or {}).get("status") == "complete":
                if listing is not None and (prev or {}).get("input_listing") != listing:
                    resume.record_listing(out, listing)  # the content is unchanged: the next run need not read it
                return _already_complete(summary, echo)
            if summary.resumed:
                done = resume.records_written(out)
                echo(f"resuming the unfinished run in {out}: {done} of {plan.n_tasks} chunks recorded as done.")
            spec = RunSpec(plan=plan, output=str(out), model_dir=str(Path(model_dir).absolute()), model_sha=msha,
                           channel_map=cmap, stats=tuple(s.to_dict() for s in used), dtype=options.dtype,
                           device=options.infer.device, torch_threads=torch_threads)
            results = _execute_explained(spec, cl, progress, out)
            summary.computed = int(np.sum(results == COMPUTED))
            summary.skipped = int(np.sum(results == SKIPPED))
            missing = plan.n_tasks - resume.records_written(out)
            if missing:
                raise OutputError(f"{missing} chunk(s) of {out} have no completion record; run the same command again "
                                  "to finish them.")
            _finalise(out, plan, options, cl, listing)
        summary.seconds = time.perf_counter() - t0
        return summary


def model_plan(source: Source, selection: Selection, options: RunOptions, model: Any,
               model_dir: str | os.PathLike[str], spatial: str | None = None) -> Plan:
    """The plan of running ``model`` over a selection: over Y-X frames for a 2-D model,
    over Z-Y-X volumes (its training Z as the Z tile) for a 3-D one, or over T-Y-X for a
    3-D one with time as its depth axis (each channel's time series one volume), with the
    tiles checked against its networks.

    Raises
    ------
    ModelError
        ``spatial`` the model cannot denoise.
    InputError, ConfigError
        As :func:`make_plan`, an input without the model's depth axis (or with a Z axis
        that time as depth would leave out), and tiles the networks cannot take.
    """
    from .blend import check_tile, check_volume_tile

    volume = is_volume_model(model)
    spatial = parse_spatial(spatial, model, model_dir)
    plan = make_plan(source, selection, options=options, patch=model.train.norm.risk.patch,
                     out_itemsize=np.dtype(source.dtype).itemsize if options.dtype == "input" else 4,
                     spatial=spatial, tile_z=volume_tile_z(model) if volume else None)
    if volume:
        for ch in model.channels:
            net: Any = ch.net  # a UNet3d: one factor per axis (depth, Y, X)
            check_volume_tile(options.infer, plan.tile_z, net.multiple)
    else:
        check_tile(options.infer, model.multiple)
    return plan


def run_axes(model: Any) -> str:
    """The axes a run with ``model`` tiles: :data:`~asn2n_dask.plan.SPATIAL_AXES` for a
    2-D model; for a 3-D one its depth axis (Z, or T), Y and X."""
    volume = is_volume_model(model)
    return run_spatial(3 if volume else 2, getattr(model.volume, "depth_axis", None) if volume else None)


def parse_spatial(spatial: str | None, model: Any, model_dir: str | os.PathLike[str]) -> str:
    """The axes a run tiles: ``spatial``, or the model's (:func:`run_axes`).

    Raises
    ------
    ModelError
        ``spatial`` that the model cannot denoise.
    """
    own = run_axes(model)
    if spatial is not None and spatial != own:
        kind = "2-D (frames)" if own == SPATIAL_AXES else f"3-D (depth axis {own[0]})"
        raise ModelError(f"the model in {model_dir} is {kind} and denoises over {own}, not {spatial}; use a "
                         f"{'3-D' if own == SPATIAL_AXES else '2-D'} model for that.")
    return own


def task_graph(spec: RunSpec) -> Any:
    """The run as one dask array: one ``map_blocks`` task per output chunk, nothing else.

    Each block of this (planes, chunks Y, chunks X) array (one axis per spatial axis) is one task that reads its
    own halo'd region from the store and writes its own output chunk; the block holds
    the task's status (:data:`COMPUTED` or :data:`SKIPPED`).
    """
    import dask.array as da

    plan = spec.plan
    chunks = ((1,) * plan.n_planes, *((1,) * g for g in plan.grid))
    return da.map_blocks(_run_block, spec=spec, chunks=chunks, dtype=np.int8, name="asn2n-chunk",
                         meta=np.empty((0,) * len(chunks), np.int8))


def _execute(spec: RunSpec, client: Any, progress: Callable[[str, int, int], None] | None) -> np.ndarray:
    graph = task_graph(spec)
    total = spec.plan.n_tasks
    if client == "sync" or client is None:
        import dask
        from dask.callbacks import Callback

        done = [0]

        def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            if isinstance(key, tuple) and key[0].startswith("asn2n-chunk"):
                done[0] += 1
                if progress is not None:
                    progress("denoising", done[0], total)

        with Callback(posttask=posttask), dask.config.set(scheduler="synchronous"):
            return np.asarray(graph.compute())
    from distributed import as_completed, futures_of

    # Each chunk's future is held only until its status arrives: the scheduler and the
    # worker then forget the task (and the copy of the spec it carried), so their memory
    # does not grow with the number of chunks.
    status = np.zeros(tuple(len(c) for c in graph.chunks), np.int8)
    pending = as_completed(futures_of(client.persist(graph)), with_results=True)
    for n, (future, value) in enumerate(pending, 1):
        status[future.key[1:]] = np.asarray(value).flat[0]
        if progress is not None:
            progress("denoising", n, total)
    return status
