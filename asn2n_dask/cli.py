"""The ``asn2n`` command line: a thin shell over the package's verbs.

Every error the package raises on purpose is printed as one sentence on stderr with
exit status 2; nothing is written and the input is never touched.  A usage error (an
unknown option, a value outside an option's choices, a missing option) is one sentence
too, with the same status.

The defaults and choices of the options are those of the configuration classes
(:mod:`asn2n_dask.config`, :class:`asn2n_dask.pipeline.RunOptions`): the command line
restates none of them.  ``fit``, ``denoise`` and ``run`` take ``--config FILE``, a YAML
file of options (:func:`options_from_file`); options on the command line override it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import json
import logging
import os
import re
import shutil
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import numpy as np
import typer
from typer.core import TyperGroup

from ._version import __version__
from .config import (
    MAX_BATCH,
    MAX_OVERLAP,
    MAX_PATCH,
    MAX_TILE,
    MIN_MEMORY_LIMIT,
    MIN_STRIDE,
    MIN_TILE,
    PRESETS,
    PRESETS_3D,
    AnyPreset,
    BlendMode,
    DepthAxis,
    InferConfig,
    InferOn,
    LossKind,
    NormMode,
    NormRange,
    OmeVersion,
    OutputDtype,
    Precision,
    Preset,
    RiskEstimator,
    TrainConfig,
    TtaCopies,
    VolumeTrainConfig,
)
from .errors import Asn2nError, ConfigError, InputError, OutputError
from .ome import MAX_LEVELS
from .pipeline import RunOptions
from .plan import DEFAULT_CHUNK, MIN_CHUNK
from .progress import progress_bar
from .stats_pass import StatsCache
from .store import MIN_LEVEL

log = logging.getLogger("asn2n_dask")
F = TypeVar("F", bound=Callable[..., Any])

#: The defaults of the options: those of the configuration classes, stated there once.
TRAIN = TrainConfig()
VOLUME = VolumeTrainConfig()
INFER = InferConfig()
RUN = RunOptions()

#: Old spellings of renamed options, per command: still accepted, with one warning line.
RENAMED: dict[str, dict[str, str]] = {
    "fit": {"-o": "--model", "--output": "--model"},
    "run": {"--model-dir": "--model"},
    "demo": {"--out": "--output"},
}

#: Base classes of click's errors (typer's own copy of click, or click itself).
_CLICK_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_USAGE_ERROR: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def renamed_options(command: str, args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` of ``command`` with the old spellings of renamed options (:data:`RENAMED`)
    replaced by the new ones, and the old spellings that were found.

    ``--old VALUE``, ``--old=VALUE`` and ``-oVALUE`` are recognised; nothing after
    ``--`` is touched.
    """
    old = RENAMED.get(command, {})
    out: list[str] = []
    found: list[str] = []
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        name, eq, value = arg.partition("=")
        if name.startswith("--") and name in old:
            out.append(old[name] + eq + value)
            found.append(name)
        elif arg[:2] in old and not arg.startswith("--") and len(arg) > 2:  # -oVALUE
            out.extend([old[arg[:2]], arg[2:]])
            found.append(arg[:2])
        elif arg in old:
            out.append(old[arg])
            found.append(arg)
        else:
            out.append(arg)
    return out, found


class Asn2nGroup(TyperGroup):
    """The ``asn2n`` command group.

    - A usage error is one sentence on stderr (exit status 2), as the package's errors are.
    - The old spellings of renamed options (:data:`RENAMED`) still work, with one
      warning line each (none with -q).
    - Flags show no value placeholder in ``--help`` (they take none).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for command in [self, *self.commands.values()]:
            for param in command.params:
                if getattr(param, "is_flag", False) or getattr(param, "count", False):
                    param.metavar = ""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            option = command.get_help_option(ctx)
            if option is not None:
                option.metavar = ""  # --help is a flag too
        name = name or ""
        rest, found = renamed_options(name, rest)
        for old in dict.fromkeys(found):
            if not ctx.params.get("quiet"):
                typer.echo(f"warning: {old} of 'asn2n {name}' is deprecated; use {RENAMED[name][old]}.", err=True)
        return name, command, rest

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        call = functools.partial(super().main, args, prog_name, complete_var, standalone_mode=False,
                                 windows_expand_args=windows_expand_args, **extra)
        if not standalone_mode:
            return call()
        try:
            rv = call()
        except _USAGE_ERROR as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # 'asn2n' alone: the help
                e.show()  # type: ignore[attr-defined]
            else:
                ctx = getattr(e, "ctx", None)
                hint = f" ('{ctx.command_path} --help' lists the options)" if ctx is not None else ""
                typer.echo(f"error: {e.format_message()}{hint}", err=True)  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        except _CLICK_ERROR as e:
            e.show()  # type: ignore[attr-defined]
            sys.exit(e.exit_code)  # type: ignore[attr-defined]
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="asn2n",
    cls=Asn2nGroup,
    help="Adaptive-SN2N: self-supervised denoising of fluorescence microscopy that does not invent "
    "structure in dark background. Intensities stay in the input's units.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def friendly(fn: F) -> F:
    """Turn the package's errors into one sentence and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, _CLICK_ERROR):
            raise
        except Asn2nError as e:
            _fail(str(e))
        except KeyboardInterrupt as e:
            what = "terminated" if isinstance(e, Terminated) else "interrupted"
            if fn.__name__ == "fit":
                typer.echo(f"{what}. Training checkpoints (every --checkpoint-every steps) stay in the model "
                           "directory: run the same command with --resume to go on from the last one.", err=True)
            else:
                typer.echo(f"{what}. A .tif output was not written; a .zarr run keeps its finished chunks: run the "
                           "same command again to resume.", err=True)
            raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
        except PermissionError as e:
            _fail(f"permission denied on {e.filename or e}; choose a path you can write to (the input is never "
                  "written).")
        except MemoryError:
            _fail("out of memory; write a .zarr output (computed chunk by chunk), or use smaller --chunks or "
                  "--tile-batch.")
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                _fail(f"the disk is full ({e.filename or e.strerror}); free space and run the same command again.")
            if e.errno == errno.EROFS:
                _fail(f"{e.filename or 'a path'} is on a read-only file system; choose a path you can write to (the "
                      "input is never written).")
            if e.filename and e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG,
                                          errno.ELOOP):
                _fail(f"{e.filename}: {(e.strerror or '').lower()}; check the path (outputs go where you can "
                      "write; the input is never written).")
            _unexpected(e)
        except Exception as e:  # not one of ours: one sentence, the traceback in a file
            _unexpected(e)

    return wrapper  # type: ignore[return-value]


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch system's time limit) received: stop as for Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def _unexpected(e: BaseException) -> None:
    """An error the package did not raise on purpose: one sentence on stderr (exit status
    1), the traceback in a log file for the bug report; ``-vv`` shows it instead."""
    import tempfile
    import traceback

    if state.get("verbose", 0) >= 2:
        raise e
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        fd, name = tempfile.mkstemp(prefix="asn2n-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(f"asn2n-dask {__version__}\n{' '.join(sys.argv)}\n\n{text}")
        where = f"the details are in {name}"
    except OSError:
        where = "run again with -vv for the details"
    first = str(e).splitlines()[0][:300] if str(e) else ""
    typer.echo(f"error: unexpected {type(e).__name__}{': ' + first if first else ''}; {where}. This is a bug or an "
               "input this version cannot handle: please report it with that file.", err=True)
    raise typer.Exit(1)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and what a command is asked "
                                        "for (asn2n risk's table or JSON, a --dry-run plan): no progress bars, "
                                        "warnings, notes, hints or result lines; the exit status tells success "
                                        "(0) from failure.")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Adaptive-SN2N denoising. Run 'asn2n COMMAND --help' for a command's options and examples.

    Progress: bars on a terminal, a plain line every 30 s or 10% otherwise (a batch
    job's log, a pipe).
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    pkg = logging.getLogger("asn2n_dask")
    pkg.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in pkg.handlers):
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        pkg.addHandler(h)
    # the event loop's own reports (a connection closed while a stopped run shuts its cluster
    # down) are tracebacks, not messages for the user; -vv shows them.  distributed sets these
    # loggers' levels from its configuration when it is first imported (later, by a command),
    # so the levels go into that configuration as well as onto the loggers
    quiet_loop = "critical" if verbose < 2 else "info"
    # a task's failure is the command's error, said once in a sentence: not also a worker's traceback
    levels = {"distributed": "error" if verbose < 2 else "info", "distributed.worker": quiet_loop,
              "tornado": quiet_loop, "tornado.application": quiet_loop, "asyncio": quiet_loop}
    import dask

    site = dask.config.get("distributed.logging", {})
    if "version" not in site:  # a site's full logging.config dictionary is left as it is
        dask.config.set({"distributed.logging": {**site, **levels}})
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl.upper())
    state["quiet"] = quiet
    if quiet:
        import warnings

        warnings.simplefilter("ignore")  # libraries' warnings are not errors
    state["verbose"] = verbose
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():  # a clean stop on SIGTERM, as on Ctrl-C
        signal.signal(signal.SIGTERM, _on_sigterm)


state: dict[str, Any] = {"quiet": False}


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the message."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

# ---------------------------------------------------------------- shared options
# Choices are the Literals of asn2n_dask.config (shown by --help); defaults are the
# configuration classes' (TRAIN, INFER, RUN), given where each command lists its options.
PresetOpt = Annotated[Preset, typer.Option("--preset", case_sensitive=False, help="Network size: tiny (tests), "
                                           "small (the default, on CPU and GPU), paper (the SN2N paper's width; "
                                           "on real widefield frames it scored below small on a GPU).")]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Training steps.")]
NormOpt = Annotated[NormMode, typer.Option("--norm", case_sensitive=False, help="Normalisation: global "
                                           "(frame-wise; best or tied on every scene measured but one), adaptive "
                                           "(risky patches on the frame's scale, safe ones towards their own), local "
                                           "(patch-wise), dataset (global where many patches are at risk, else "
                                           "local).")]
RiskOpt = Annotated[RiskEstimator, typer.Option("--risk-estimator", case_sensitive=False, help="Risk classes: auto "
                                                "(per channel: reference unless pixel noise alone exceeds the "
                                                "weak-background std threshold, then noise-aware), reference (the "
                                                "published rule) or noise-aware (for raw low-photon camera "
                                                "frames).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (initialisation, sampling, augmentation).")]
PatchOpt = Annotated[int, typer.Option("--patch", help=f"Training patch side in pixels, at most {MAX_PATCH} (and "
                                       "the frame).")]
BatchOpt = Annotated[int, typer.Option("--batch", help=f"Training patches per step, 1 to {MAX_BATCH}.")]
LossOpt = Annotated[LossKind, typer.Option("--loss", case_sensitive=False, help="Twin-to-twin loss.")]
LambdaOpt = Annotated[float, typer.Option("--consistency", help="Weight of the consistency term |f(A)-f(B)| (0: off; "
                                          "a weight smooths the result: fewer false objects, less detail).")]
JitterOpt = Annotated[float, typer.Option("--offset-jitter", min=0.0, max=0.5, help="Shift each training patch and "
                                          "its twin by one random offset up to this fraction of the range, so the "
                                          "network does not depend on the camera offset (0: off).")]
TileOpt = Annotated[int, typer.Option("--tile", help=f"Inference tile side in pixels, {MIN_TILE} to {MAX_TILE} (and "
                                     "at most twice the frame's longer side).")]
TileBatchOpt = Annotated[int, typer.Option("--tile-batch", min=1, help="Tiles per network call when denoising, up "
                                           f"to {MAX_BATCH} (larger is faster on a GPU, up to its memory).")]
CompileNetOpt = Annotated[bool, typer.Option("--compile", help="On a GPU, compile the network (torch.compile): "
                                             "about twice as fast; its kernels are compiled once per machine "
                                             "and kept in a cache ($ASN2N_COMPILE_CACHE, 'off' for none), "
                                             "so later runs skip the compilation. Ignored on a CPU.")]
InferPrecisionOpt = Annotated[Precision, typer.Option("--infer-precision", case_sensitive=False,
                                                      help="Network arithmetic when denoising on a GPU (the CPU "
                                                      "always uses fp32).")]
OverlapOpt = Annotated[float, typer.Option("--overlap", help=f"Tile overlap fraction in [0, {MAX_OVERLAP}], tiles at "
                                           f"least {MIN_STRIDE} pixels apart.")]
BlendOpt = Annotated[BlendMode, typer.Option("--blend", case_sensitive=False, help="Tile blending: Gaussian "
                                             "weights, a plain average, or none (each pixel from one tile).")]
InferOnOpt = Annotated[InferOn, typer.Option("--infer-on", case_sensitive=False, help="Apply the network to the "
                                             "frame's twins (averaged; the domain it was trained on) or to the raw "
                                             "frame. raw scores far lower (W2S real frames: 22.4 dB against 32.8 "
                                             "with twins); it is there to time the network alone.")]
NormRangeOpt = Annotated[NormRange, typer.Option("--norm-range", case_sensitive=False, help="The intensity range "
                                                 "each channel is normalised on: the model's training data's "
                                                 "(model), the input's own (data), or auto: the model's unless the "
                                                 "two ranges barely overlap (another camera offset or units), then "
                                                 "the input's, with a warning.")]
TtaOpt = Annotated[TtaCopies, typer.Option("--tta", help="Test-time augmentation: average the network over this "
                                           "many flipped/rotated copies of each tile.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[OutputDtype, typer.Option("--dtype", case_sensitive=False, help="Output dtype: float32 in "
                                               "input units, or the input's dtype (rounded and clipped).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
AxesOpt = Annotated[str | None, typer.Option("--axes", help="Axis letters when the file does not name them, "
                                             "e.g. TCYX (a file's own T, C, Z, Y and X stand: --axes may name only "
                                             "what it leaves unnamed).")]
SeriesOpt = Annotated[int | None, typer.Option("--series", help="A TIFF file holding several image series (e.g. a "
                                               "thumbnail and the stack): the one to use, from 0 (required then).")]
ChannelOpt = Annotated[list[str] | None, typer.Option("--channel", "-c", help="Channel to process, by name or "
                                                    "index (repeat for several; default all).")]
TimeOpt = Annotated[str | None, typer.Option("--time", help="Time points to process, as start:stop (e.g. 0:100).")]
ChunksOpt = Annotated[str | None, typer.Option("--chunks", help="Zarr output: chunk side in Y and X, e.g. 1024 "
                                              f"or 512x1024, at least {MIN_CHUNK} (default: the input's, "
                                              f"{DEFAULT_CHUNK[0]} to {DEFAULT_CHUNK[1]}); with a 3-D model ZxYxX, "
                                              "TxYxX with time as its depth (Y-X alone: the depth as the input's). "
                                              "One task per chunk.")]
OmeOpt = Annotated[OmeVersion, typer.Option("--ome", help="Zarr output: OME-Zarr 0.5 (Zarr v3) or 0.4 (Zarr "
                                            "v2).")]
PyramidOpt = Annotated[int, typer.Option("--pyramid", min=0, max=MAX_LEVELS, help="Zarr output: extra downsampled "
                                         "levels for viewing, of the image (2x2 mean) and of the risk labels "
                                         f"(2x2 most frequent value), none smaller than {MIN_LEVEL} pixels.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan (chunks, halo, tasks, bytes, memory) "
                                         "and exit.")]
#: Networks that see 2-D frames or 3-D volumes.
Dims = Literal[2, 3]
DimsOpt = Annotated[Dims, typer.Option("--dims", help="Networks that see 2-D frames (2) or 3-D volumes (3): with 3, "
                                       "one volume per time point and channel, trained on a sub-volume at a time.")]
DepthAxisOpt = Annotated[DepthAxis | None, typer.Option(
    "--depth-axis", case_sensitive=False, help="With --dims 3: the axis seen as depth, Z (volumes; the default), or "
    "T for data without Z (each channel's time series as one volume).")]
AnisotropyOpt = Annotated[float | None, typer.Option(
    "--anisotropy", help="With --dims 3: voxel size along the depth axis over voxel size in Y-X (default: Z spacing "
    f"over Y spacing from the file's pixel sizes, else {VOLUME.anisotropy:g}).")]
AnyPresetOpt = Annotated[AnyPreset, typer.Option("--preset", case_sensitive=False, help="Network size: tiny (tests), "
                                                 "small (the default), paper (wider; on real widefield frames it "
                                                 "scored below small on a GPU); with --dims 3: tiny3d (tests), small3d "
                                                 f"(CPU), large3d (GPU), default {VOLUME.preset}.")]
AnyStepsOpt = Annotated[int, typer.Option("--steps", min=1, help=f"Training steps (with --dims 3 default "
                                          f"{VOLUME.steps}).")]
AnyPatchOpt = Annotated[str, typer.Option("--patch", help=f"Training patch side in pixels, at most {MAX_PATCH} (and "
                                          "the frame). With --dims 3: the sub-volume as Z,Y,X (default "
                                          f"{','.join(map(str, VOLUME.patch))}), or one Y-X side with Z "
                                          f"{VOLUME.patch[0]}; Z is cut to the data's depth.")]
AnyBatchOpt = Annotated[int, typer.Option("--batch", help=f"Training patches per step, 1 to {MAX_BATCH} (with --dims "
                                          f"3 sub-volumes, default {VOLUME.batch}).")]


def _checked(check: str) -> Callable[[Any], Any]:
    """An option callback that runs ``asn2n_dask.<module>.<function>`` (``check``) on a
    given value, so that a bad cluster option is refused in one sentence before any work
    (training included) starts."""

    def callback(value: Any) -> Any:
        if value is not None:
            import importlib

            module, function = check.rsplit(".", 1)
            try:
                getattr(importlib.import_module(f"asn2n_dask.{module}"), function)(value)
            except Asn2nError as e:
                _fail(str(e))
        return value

    return callback


SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", callback=_checked("cluster.check_scheduler"),
                                                  help="Zarr output: address (tcp://host:8786) or scheduler file "
                                                  "(written by 'dask scheduler --scheduler-file FILE.json') of a "
                                                  "running Dask cluster (default: start a local one).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=1, help="Local cluster: worker processes.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, help="Local cluster: threads per worker.")]
ClusterOpt = Annotated[Path | None, typer.Option("--cluster", callback=_checked("hpc.load_profile"),
                                                  help="Zarr output: run on SLURM/PBS/LSF batch jobs, from a "
                                                  "built-in profile by name (slurm, slurm-gpu, pbs, pbs-gpu, lsf; "
                                                  "'asn2n cluster-profiles' lists them) or a profile YAML file.")]
JobsOpt = Annotated[int | None, typer.Option("--jobs", min=1, help="With --cluster: at most this many batch jobs.")]
MemoryOpt = Annotated[str | None, typer.Option("--memory-limit", callback=_checked("cluster.check_memory_limit"),
                                               help="Local cluster: memory per worker, e.g. 4GiB (at least "
                                               f"{MIN_MEMORY_LIMIT // 2**20}MiB).")]
DashboardOpt = Annotated[str | None, typer.Option("--dashboard-address",
                                                  callback=_checked("cluster.check_dashboard_address"),
                                                  help="Local cluster or --cluster: where the Dask dashboard "
                                                  "listens, HOST:PORT (default: a --cluster profile's, else "
                                                  "127.0.0.1:0, a free port on this machine only, reached through "
                                                  "an SSH tunnel; :8787 exposes it to the network). The scheduler "
                                                  "of a local cluster always listens on this machine only.")]


# ---------------------------------------------------------------- options from a file
def _options_loader() -> Any:
    """PyYAML's safe loader without YAML 1.1's base-60 integers, so that ``time: 10:20``
    stays the text ``10:20`` (the plain loader reads it as 620)."""
    import yaml

    int_tag = "tag:yaml.org,2002:int"

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag != int_tag]
                                      for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(int_tag, re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
                                                     r"|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))
    return Loader


def _read_options(path: Path) -> dict[Any, Any]:
    """The ``option: value`` mapping of a YAML file (empty for an empty file)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"options file {path} does not exist; give a YAML file of 'option: value' lines.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the options file {path} ({getattr(e, 'strerror', None) or e}); give a "
                         "readable YAML text file.") from None
    try:
        doc = yaml.load(text, Loader=_options_loader())  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"options file {path} is not valid YAML{where} ({getattr(e, 'problem', None) or e}); "
                          "write one 'option: value' per line.") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"options file {path} must hold 'option: value' lines (a YAML mapping); got a "
                          f"{type(doc).__name__}.")
    return doc


def _file_value(value: Any, hint: Any, what: str) -> Any:
    """``value`` read from an options file, checked against the option's annotation
    ``hint``; ``what`` names it in the message."""
    kind = get_args(hint)[0] if hasattr(hint, "__metadata__") else hint  # Annotated[kind, typer.Option(...)]
    optional = get_origin(kind) in (Union, types.UnionType) and type(None) in get_args(kind)
    if optional:
        kind = next(a for a in get_args(kind) if a is not type(None))
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{what} needs a value; the file gives none.")
    if get_origin(kind) is list:
        return [_file_scalar(v, get_args(kind)[0], what) for v in (value if isinstance(value, list) else [value])]
    return _file_scalar(value, kind, what)


def _file_scalar(value: Any, kind: Any, what: str) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        for choice in choices:
            if (number or isinstance(value, str)) and str(value).lower() == str(choice).lower():
                return choice
        raise ConfigError(f"{what} must be one of {', '.join(map(str, choices))}; got {value!r}.")
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{what} must be true or false; got {value!r}.")
    if kind is int:
        if number and isinstance(value, int):
            return value
        raise ConfigError(f"{what} must be a whole number; got {value!r}.")
    if kind is float:
        try:
            if number or isinstance(value, str):  # YAML reads 1e-3 (no dot) as text
                return float(value)
        except ValueError:
            pass
        raise ConfigError(f"{what} must be a number; got {value!r}.")
    if isinstance(value, str) or (number and isinstance(value, int)):
        return str(value)
    raise ConfigError(f"{what} must be text (quote it); got {value!r}.")


def options_from_file(path: Path, command: Any) -> dict[str, Any]:
    """The options of ``command`` (a click command of this app) in the YAML file ``path``,
    by parameter name, checked: each key is a long option of the command without its
    dashes (``-`` or ``_`` inside), each value of the option's type or one of its choices.

    Raises
    ------
    ConfigError
        An unknown key (naming the keys the command takes), a key given twice, or a
        value of the wrong type or outside the choices (naming the key and what it takes).
    InputError
        The file is missing or unreadable.
    """
    keys: dict[str, Any] = {}
    for param in command.params:
        if param.param_type_name == "option" and param.name != "config":
            for opt in param.opts:
                if opt.startswith("--"):
                    keys[opt[2:]] = param
    hints = get_type_hints(inspect.unwrap(command.callback), include_extras=True)
    where = f"'asn2n {command.name}'"
    options: dict[str, Any] = {}
    for key, value in _read_options(path).items():
        param = keys.get(str(key).replace("_", "-"))
        if param is None or not isinstance(key, str):
            raise ConfigError(f"{path}: unknown option {key!r}; {where} takes {', '.join(sorted(keys))} (the long "
                              "options of its --help, without the dashes).")
        if param.name in options:
            raise ConfigError(f"{path}: the option {key!r} is given twice; give it once.")
        options[param.name] = _file_value(value, hints[param.name], f"{path}: {key}")
    return options


def _config_callback(ctx: typer.Context, value: Path | None) -> Path | None:
    """``--config FILE``: the file's options become the command's defaults
    (``ctx.default_map``), so that the command line overrides them and every value goes
    through the same checks as an option typed on the command line."""
    if value is not None and not ctx.resilient_parsing:
        try:
            ctx.default_map = {**(ctx.default_map or {}), **options_from_file(value, ctx.command)}
        except Asn2nError as e:
            _fail(str(e))
    return value


ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", is_eager=True, callback=_config_callback, help="YAML file of options, one 'option: value' per "
    "line, each a long option of this command without its dashes (e.g. 'risk-estimator: noise-aware', "
    "'time: 0:100', 'overwrite: true'); options on the command line override the file.")]


def _file_record(config: Path | None) -> dict[str, Any]:
    """What the output records of an options file: its path (the values are recorded
    where every option's are)."""
    return {} if config is None else {"options_file": str(config.absolute())}


def _train_config(preset: str, steps: int, norm: str, seed: int, patch: int, batch: int, loss: str,
                  consistency: float, risk: str) -> Any:
    from .config import NormConfig, RiskThresholds

    thresholds = RiskThresholds(estimator=risk)  # type: ignore[arg-type]
    return TrainConfig(preset=preset, steps=steps, seed=seed, patch=patch, batch=batch,  # type: ignore[arg-type]
                       loss=loss, consistency=consistency,  # type: ignore[arg-type]
                       norm=NormConfig(mode=norm, risk=thresholds))  # type: ignore[arg-type]


def _infer_config(tile: int, overlap: float, blend: str, infer_on: str, device: str, tta: int, batch: int,
                  precision: str, compile_net: bool, norm_range: str = INFER.norm_range) -> Any:
    return InferConfig(tile=tile, overlap=overlap, blend=blend, infer_on=infer_on,  # type: ignore[arg-type]
                       device=device, tta=tta, batch=batch, precision=precision,  # type: ignore[arg-type]
                       compile=compile_net, norm_range=norm_range)  # type: ignore[arg-type]


def _read(path: Path, axes: str | None, series: int | None = None) -> tuple[np.ndarray, Any]:
    from .io import read_image

    return read_image(path, series=series, axes=axes)


def _check_model_dir(path: Path, overwrite: bool) -> None:
    if (path / "model.json").exists() and not overwrite:
        raise OutputError(f"a model already exists in {path}; pass --overwrite to replace it or choose "
                          "another directory.")
    if path.exists() and not path.is_dir():
        raise OutputError(f"model directory {path} is a file; choose a directory path.")
    if path.is_dir() and not (path / "model.json").exists():
        other = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))  # .name: our own locks
        if other:
            shown = ", ".join(other[:3]) + (", ..." if len(other) > 3 else "")
            raise OutputError(f"model directory {path} holds other files ({shown}) and no model; choose a new or "
                              "empty directory.")


def _provenance(kind: str, **fields: Any) -> dict[str, Any]:
    return {"package": "asn2n-dask", "version": __version__, "command": kind, **fields}


# ---------------------------------------------------------------- commands
@app.command()
@friendly
def risk(
    input: Annotated[Path, typer.Argument(help="TIFF or Zarr image (read lazily).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    patch: Annotated[int, typer.Option("--patch", help="Risk patch side in pixels.")] = TRAIN.norm.risk.patch,
    risk_estimator: RiskOpt = TRAIN.norm.risk.estimator,
    frames: Annotated[int, typer.Option("--frames", help="Frames classified per channel, evenly spaced over its "
                                        "time points and planes (only these are read whole).")] = 16,
    channel: ChannelOpt = None,
    time: TimeOpt = None,
    axes: AxesOpt = None,
    series: SeriesOpt = None,
) -> None:
    """Summarise the risk classes of an image's patches, per channel.

    Classifies up to --frames evenly spaced frames per channel as training and
    denoising do: on the channel's risk scale, from its statistics over all its frames
    (the pass denoising makes), with one risk estimator per channel.  Prints the share
    of weak-background and sparse-bright patches, the normalisation the 'dataset' mode
    would choose, how many frames were classified, and the risk estimator with the
    pixel noise that decided it ('auto').

    Example: asn2n risk movie.zarr --channel mito --time 0:100 --frames 32 --json
    """
    from .api import risk_summary
    from .config import NormConfig, RiskThresholds

    if frames < 1:
        raise ConfigError(f"--frames must be at least 1; got {frames}.")
    if not input.exists():
        raise InputError(f"input {input} does not exist.")
    summary = risk_summary(input, axes=axes, channels=channel, time=time, frames=frames, series=series,
                           config=TrainConfig(norm=NormConfig(risk=RiskThresholds(
                               patch=patch, estimator=risk_estimator))))  # type: ignore[arg-type]
    if as_json:
        typer.echo(json.dumps({"input": str(input), **summary}, indent=2))
        return
    typer.echo(f"{input}: axes {summary['axes']}, {patch}x{patch} patches, classified on each channel's statistics "
               "(frames: classified / in the channel)")
    typer.echo(f"{'channel':>8} {'frames':>11} {'patches':>8} {'weak bg':>8} {'sparse':>8} {'high-risk':>10}  "
               f"{'dataset mode':<13} {'estimator':<12} noise sd")
    channels: list[dict[str, Any]] = summary["channels"]  # type: ignore[assignment]
    for c in channels:
        seen = f"{c['frames']}/{c['frames_total']}"
        typer.echo(f"{c['name']:>8} {seen:>11} {c['patches']:>8} {c['weak_background']:>8.1%} "
                   f"{c['sparse_bright']:>8.1%} {c['high_risk']:>10.1%}  {c['dataset_decision']:<13} "
                   f"{c['risk_estimator']:<12} {c['noise_sd']:.4f}")


@app.command()
@friendly
def fit(
    ctx: typer.Context,
    inputs: Annotated[list[Path], typer.Argument(help="Noisy TIFF or Zarr images to learn from (read lazily).",
                                                 show_default=False)],
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="Model directory to write.",
                                            show_default=False)],
    config: ConfigOpt = None,
    dims: DimsOpt = 2,
    depth_axis: DepthAxisOpt = None,
    anisotropy: AnisotropyOpt = None,
    preset: AnyPresetOpt = TRAIN.preset,
    steps: AnyStepsOpt = TRAIN.steps,
    norm: NormOpt = TRAIN.norm.mode,
    risk_estimator: RiskOpt = TRAIN.norm.risk.estimator,
    seed: SeedOpt = TRAIN.seed,
    patch: AnyPatchOpt = str(TRAIN.patch),
    batch: AnyBatchOpt = TRAIN.batch,
    loss: LossOpt = TRAIN.loss,
    consistency: LambdaOpt = TRAIN.consistency,
    offset_jitter: JitterOpt = TRAIN.offset_jitter,
    channels: Annotated[list[str] | None, typer.Option(
        "--channels", help="Channels to train, by name or index (repeat, or comma-separated; default all): one "
        "network each, picked by name when denoising.")] = None,
    time: TimeOpt = None,
    risk_share: Annotated[float | None, typer.Option(
        "--risk-share", min=0.0, max=1.0, help="Share of training patches centred on high-risk (weak background "
        "or sparse bright) areas (default: as they occur).")] = TRAIN.risk_share,
    val_every: Annotated[int, typer.Option("--val-every", min=1, help="Validation (held-out regions) every N "
                                           "steps; the best weights are kept.")] = TRAIN.val_every,
    patience: Annotated[int, typer.Option("--patience", min=0, help="Stop after N validations without "
                                          "improvement (0: never).")] = TRAIN.patience,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", min=1, help="Checkpoint every N steps "
                                                  "(for --resume).")] = TRAIN.checkpoint_every,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in the model "
                                         "directory (same command): the same result as an uninterrupted run.")] = False,
    loader_workers: Annotated[int, typer.Option("--loader-workers", min=0, help="Processes cutting training "
                                                "patches beside the network (0: none).")] = 0,
    precision: Annotated[Precision, typer.Option("--precision", case_sensitive=False, help="Training arithmetic: "
                                                 "bf16 autocasts the network (for GPUs).")] = TRAIN.precision,
    compile_net: Annotated[bool, typer.Option("--compile", help="torch.compile the network (GPU; the first "
                                              "step compiles, from the cache of $ASN2N_COMPILE_CACHE when "
                                              "an earlier run compiled the same).")] = TRAIN.compile,
    device: DeviceOpt = INFER.device,
    axes: AxesOpt = None,
    series: SeriesOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train one network per colour channel on the noisy data itself (no clean images needed).

    Files of any size are read lazily: patches are cut from regions drawn over time
    points, planes and positions, reading only the chunks under them.  Beside the
    model: training curves (curves-N.csv/.png) and a before/after montage of held-out
    patches (montage-N.png) per channel.  Data-parallel on several GPUs (or CPU
    processes) when launched with torchrun.

    With --dims 3, one 3-D network per channel learns from sub-volumes (Z, Y, X) of
    the channel's volumes, each read on its own from the file (training memory
    bounded by --batch, --patch and the file's chunks, whatever the volumes' size)
    and normalised on the channel's global range.  The options --risk-estimator, --risk-share, --val-every,
    --patience, --checkpoint-every, --resume, --loader-workers, --precision and
    --compile are for 2-D networks, and --norm can only be global then.  'asn2n
    denoise' and 'asn2n run' apply such a model to volumes.

    Examples:

      asn2n fit cells.tif --model cells.model --preset small --steps 3000

      asn2n fit stack.tif --model stack.model --dims 3 --preset small3d --patch 16,64,64

      asn2n fit movie.zarr --model models/ --channels all --risk-share 0.3 --loader-workers 2

      asn2n fit movie.zarr --model models/ --config fit.yaml    (options from a YAML file)

      asn2n fit movie.zarr --model models/ --resume      (after a crash: same command plus --resume)

      torchrun --nproc-per-node 4 -m asn2n_dask fit movie.zarr --model models/ --preset paper --precision bf16
    """
    import os
    from dataclasses import replace

    from .checkpoint import model_is_complete

    options = _kind_options(ctx, dims, preset=preset, steps=steps, norm=norm, seed=seed, patch=patch, batch=batch,
                            loss=loss, consistency=consistency, risk_estimator=risk_estimator, depth_axis=depth_axis,
                            anisotropy=anisotropy)
    if dims == 2:
        cfg = replace(options["config"], risk_share=risk_share, val_every=val_every, patience=patience,
                      checkpoint_every=checkpoint_every, precision=precision, compile=compile_net,
                      offset_jitter=offset_jitter)
        options = {"config": cfg, "resume": resume, "workers": loader_workers}
    words = [w.strip() for c in channels or [] for w in c.split(",") if w.strip()]
    picked = None if not words or words == ["all"] else words
    has_state = (model_dir / "train-state.json").is_file()
    if not resume:
        if has_state and not overwrite:
            raise OutputError(f"an unfinished training checkpoint is in {model_dir}; pass --resume to continue it "
                              "or --overwrite to start again.")
        _check_model_dir(model_dir, overwrite)
    elif model_dir.exists() and not model_dir.is_dir():
        raise OutputError(f"model directory {model_dir} is a file; choose a directory path.")
    elif not has_state and model_is_complete(model_dir) and not overwrite:
        raise OutputError(f"the model in {model_dir} is finished: there is nothing to resume; pass --overwrite to "
                          "train again.")
    for p in inputs:
        if not p.exists():
            raise InputError(f"input {p} does not exist.")
    _check_model_out(model_dir, inputs)
    with contextlib.ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:  # one lock for a data-parallel run: rank 0 writes the model
            from .io import output_lock

            stack.enter_context(output_lock(model_dir))
        _fit_locked(inputs, model_dir, options, picked, time=time, resume=resume, overwrite=overwrite,
                    device=device, axes=axes, series=series)


#: Options of 'asn2n fit' for 2-D networks only.
FIT_2D_ONLY = ("risk_estimator", "risk_share", "val_every", "patience", "checkpoint_every", "resume",
               "loader_workers", "precision", "compile_net", "offset_jitter")


def _given(ctx: typer.Context, names: tuple[str, ...]) -> list[str]:
    """The flags of the parameters ``names`` given on the command line or in --config
    (not left at their defaults)."""
    flags = {p.name: p.opts[0] for p in ctx.command.params}
    names = tuple(n for n in names if n in flags)  # a command without the option cannot have been given it
    names_of = {n: getattr(ctx.get_parameter_source(n), "name", "DEFAULT") for n in names}
    return [flags[n] for n in names if names_of[n] != "DEFAULT"]


def _refuse_given(ctx: typer.Context, names: tuple[str, ...], where: str, remedy: str) -> None:
    """Refuse the options ``names`` that were given: they apply ``where``; ``remedy``
    with ``{}`` for "it" or "them"."""
    given = _given(ctx, names)
    if given:
        one = len(given) == 1
        flags = given[0] if one else f"{', '.join(given[:-1])} and {given[-1]}"
        raise ConfigError(f"{flags} {'applies' if one else 'apply'} {where}; "
                          f"{remedy.format('it' if one else 'them')}.")


def _patch_2d(text: str) -> int:
    """--patch of 2-D training: one side in pixels."""
    if not text.strip().isdigit():
        raise ConfigError(f"--patch takes one side in pixels for 2-D training (Z,Y,X with --dims 3); got {text!r}.")
    return int(text)


def _patch_3d(text: str) -> tuple[int, int, int]:
    """--patch of 3-D training: Z,Y,X, or one Y-X side with the default Z."""
    parts = [p.strip() for p in text.lower().replace("x", ",").split(",")]
    if not all(p.isdigit() for p in parts) or len(parts) not in (1, 3):
        raise ConfigError(f"--patch with --dims 3 takes Z,Y,X (e.g. {','.join(map(str, VOLUME.patch))}) or one Y-X "
                          f"side; got {text!r}.")
    vals = [int(p) for p in parts]
    return (VOLUME.patch[0], vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1], vals[2])


def _kind_options(ctx: typer.Context, dims: int, *, preset: str, steps: int, norm: str, seed: int, patch: str,
                  batch: int, loss: str, consistency: float, risk_estimator: str, depth_axis: str | None,
                  anisotropy: float | None) -> dict[str, Any]:
    """The library's training options of 'asn2n fit' and 'run' for networks of ``dims``:
    ``{"config": TrainConfig}`` for 2-D ones, :func:`_volume_options` for 3-D ones; the
    options of the other kind refused when given."""
    if dims == 3:
        return _volume_options(ctx, preset=preset, steps=steps, norm=norm, seed=seed, patch=patch, batch=batch,
                               loss=loss, consistency=consistency, depth_axis=depth_axis, anisotropy=anisotropy)
    _refuse_given(ctx, ("depth_axis", "anisotropy"), "to 3-D training only", "add --dims 3 or leave {} out")
    if preset in PRESETS_3D:
        raise ConfigError(f"preset {preset} is a 3-D network; use {', '.join(PRESETS)} for 2-D training, or add "
                          "--dims 3.")
    return {"config": _train_config(preset, steps, norm, seed, _patch_2d(patch), batch, loss, consistency,
                                    risk_estimator)}


def _train_record(options: dict[str, Any]) -> dict[str, Any]:
    """The training options of :func:`_kind_options` as the provenance records them."""
    if "volume" in options:
        return {"dims": 3, "depth_axis": options["depth_axis"], "anisotropy": options["anisotropy"],
                **options["volume"].to_dict()}
    return dict(options["config"].to_dict())


def _volume_options(ctx: typer.Context, *, preset: str, steps: int, norm: str, seed: int, patch: str, batch: int,
                    loss: str, consistency: float, depth_axis: str | None, anisotropy: float | None
                    ) -> dict[str, Any]:
    """The library options of 'asn2n fit --dims 3': the 3-D training options (each one
    not given is :class:`VolumeTrainConfig`'s default), the depth axis, the anisotropy."""
    _refuse_given(ctx, FIT_2D_ONLY, "to 2-D training only", "leave {} out with --dims 3")
    if norm != "global" and _given(ctx, ("norm",)):
        raise ConfigError(f"volumes are normalised on one global scale; leave --norm out with --dims 3 (got {norm}).")
    if preset not in PRESETS_3D and _given(ctx, ("preset",)):
        raise ConfigError(f"preset {preset} is a 2-D network; with --dims 3 use {', '.join(PRESETS_3D)}.")
    given = set(_given(ctx, ("preset", "steps", "patch", "batch")))
    volume = VolumeTrainConfig(
        preset=preset if "--preset" in given else VOLUME.preset,  # type: ignore[arg-type]
        steps=steps if "--steps" in given else VOLUME.steps,
        patch=_patch_3d(patch) if "--patch" in given else VOLUME.patch,
        batch=batch if "--batch" in given else VOLUME.batch,
        loss=loss, consistency=consistency, seed=seed)  # type: ignore[arg-type]
    return {"dims": 3, "depth_axis": depth_axis, "volume": volume, "anisotropy": anisotropy}


def _fit_locked(inputs: list[Path], model_dir: Path, options: dict[str, Any], picked: list[str] | None, *,
                time: str | None, resume: bool, overwrite: bool, device: str, axes: str | None,
                series: int | None = None) -> None:
    """'asn2n fit' once the model directory is locked; ``options``: the library's
    training options (``config``, ``resume``, ``workers`` for 2-D networks; ``dims``,
    ``depth_axis``, ``volume``, ``anisotropy`` for 3-D ones)."""
    import os

    from .api import fit as fit_fn

    if overwrite and not resume and model_dir.is_dir() and int(os.environ.get("RANK", "0")) == 0:
        from .checkpoint import clear_train_state

        clear_train_state(model_dir)  # a fresh start: no stale checkpoint, curves or montages
        for old in [*model_dir.glob("curves-*"), *model_dir.glob("montage-*")]:
            old.unlink()
    with _distributed(device) as (dev, rank):
        with progress_bar(not state["quiet"] and rank == 0) as bar:
            model = fit_fn([str(p) for p in inputs], axes=axes, device=dev, progress=bar, model_dir=model_dir,
                           channels=picked, time=time, series=series, **options)
    if rank == 0:
        for c in range(model.n_channels):
            _info(_channel_line(model, c))
        beside = "training curves" if model.dims == 3 else "training curves and montages"
        _info(f"model written to {model_dir} ({beside} beside it)")


def _channel_line(model: Any, c: int) -> str:
    """What training decided for one channel, in one line."""
    m = model.method(c)
    why = f" (pixel noise {m.noise_sd:.3f} of the range)" if m.noise_sd is not None else ""
    if model.volume is not None:
        v = model.volume
        return (f"channel {model.channels[c].name}: 3-D network on {'x'.join(map(str, v.patch))} sub-volumes "
                f"(depth axis {v.depth_axis}, anisotropy {v.anisotropy:g}), range {model.channels[c].stats.lo:g} to "
                f"{model.channels[c].stats.hi:g}; risk labels by slice with estimator {m.risk_estimator}{why}, "
                f"{m.high_risk_ratio:.0%} of patches high-risk")
    return (f"channel {model.channels[c].name}: risk estimator {m.risk_estimator}{why}, {m.high_risk_ratio:.0%} of "
            f"patches high-risk, dataset decision {m.dataset_mode}")


@contextlib.contextmanager
def _distributed(device: str) -> Iterator[tuple[str, int]]:
    """Under torchrun (WORLD_SIZE > 1): one process group (nccl on GPUs, gloo on CPU),
    one device per process; otherwise nothing."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield device, 0
        return
    import torch

    from .predict import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch.distributed.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    try:
        yield device, torch.distributed.get_rank()
    finally:
        torch.distributed.destroy_process_group()


def _parse_chunks(text: str | None) -> tuple[int, ...] | None:
    """--chunks: one Y-X side, YxX, or ZxYxX (a run of a 3-D model)."""
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = [int(v) for v in parts]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2, 3) or min(vals) < 1:
        raise InputError(f"--chunks {text!r} must be one size, YxX or (with a 3-D model) ZxYxX, e.g. 1024, 512x1024 "
                         "or 32x1024x1024.")
    return (vals[0], vals[0]) if len(vals) == 1 else tuple(vals)


def _is_zarr_out(output: Path) -> bool:
    from .io import TIFF_SUFFIXES

    if output.suffix.lower() in TIFF_SUFFIXES:
        return False
    if output.suffix.lower() != ".zarr":
        raise OutputError(f"output {output} must end in .tif, .tiff or .zarr.")
    return True


def _open_selection(input: Path, axes: str | None, channel: list[str] | None, time: str | None,
                    series: int | None = None) -> tuple[Any, Any]:
    """The input described (not read) and the --channel/--time selection, as every route takes them."""
    from .source import Selection, check_source, open_source

    src = open_source(input, axes, series=series)
    check_source(src)
    return src, Selection.parse(src, channel, time)


def _denoise_to(input: Path, output: Path, model: Any, src: Any, sel: Any, infer: Any, dtype: str,
                overwrite: bool, extra: dict[str, Any], stats_cache: StatsCache | None = None) -> None:
    """The ``.tif`` output route (:func:`asn2n_dask.api.denoise_to_file`), with a progress bar."""
    from .api import denoise_to_file

    with progress_bar(not state["quiet"]) as bar:
        denoise_to_file(src, sel, output, model, infer=infer, dtype=dtype, overwrite=overwrite,
                        provenance=_provenance("denoise", input=str(input)), extra=extra, progress=bar,
                        stats_cache=stats_cache, echo=lambda m: _info(m, err=True))
    _info(f"denoised {input} -> {output}")
    _report_hint(input, output)


def _check_model_out(model_dir: Path, inputs: list[Path]) -> None:
    """Refuse a model directory that is, holds or lies inside an input."""
    from .io import paths_overlap

    for p in inputs:
        if paths_overlap(model_dir, p):
            raise OutputError(f"model directory {model_dir} is, contains or lies inside the input {p}; choose "
                              "another directory (the input is never written).")


def _info(message: str, *, err: bool = False) -> None:
    """Print an informational line (a result, a note, a hint) on stdout (``err``: stderr),
    unless -q was given.

    What a command is asked to print (``asn2n risk``'s table or JSON, a ``--dry-run``
    plan, ``--version``) goes through ``typer.echo`` directly, and errors through
    :func:`friendly`: -q silences neither.
    """
    if not state["quiet"]:
        typer.echo(message, err=err)


def _report_hint(input: Path, output: Path) -> None:
    report_dir = output.with_name(output.stem + "-report")
    _info(f"to check the result: asn2n report {input} {output} -o {report_dir}", err=True)


def _pipeline(input: Path, output: Path, model_dir: Path, *, axes: str | None, channel: list[str] | None,
              time: str | None, infer: Any, chunks: str | None, dtype: str, ome: str, pyramid: int,
              overwrite: bool, dry_run: bool, scheduler: str | None, workers: int | None, threads: int | None,
              memory_limit: str | None, extra: dict[str, Any], cluster: Path | None = None,
              jobs: int | None = None, dashboard_address: str | None = None, allow_unfinished: bool = False,
              series: int | None = None, stats_cache: StatsCache | None = None) -> None:
    """Chunked, resumable denoising into OME-Zarr on a Dask cluster (``stats_cache``:
    :class:`asn2n_dask.stats_pass.StatsCache` of this command's training)."""
    from .checkpoint import load_model
    from .pipeline import RunOptions, model_plan, run_pipeline
    from .source import Selection, open_source

    src = open_source(input, axes, series=series)
    sel = Selection.parse(src, channel, time)
    opts = RunOptions(infer=infer, chunks=_parse_chunks(chunks), dtype=dtype, ome=ome, pyramid=pyramid,
                      overwrite=overwrite, allow_unfinished=allow_unfinished)
    if dry_run:
        model = load_model(model_dir, allow_unfinished=allow_unfinished)
        typer.echo(model_plan(src, sel, opts, model, model_dir).describe(model.train.preset))
        return
    with progress_bar(not state["quiet"]) as bar:
        summary = run_pipeline(src, output, model_dir, selection=sel, options=opts, scheduler=scheduler,
                               workers=workers, threads=threads, memory_limit=memory_limit, progress=bar,
                               echo=lambda m: _info(m, err=True), extra=extra, cluster=cluster, jobs=jobs,
                               dashboard_address=dashboard_address, stats_cache=stats_cache)
    if summary.already_complete:
        _info(f"{output} was already complete; nothing was recomputed.")
        return
    note = f" ({summary.skipped} chunks were already done)" if summary.skipped else ""
    _info(f"denoised {input} -> {output}: {summary.computed} chunks in {summary.seconds:.1f} s{note}")
    _report_hint(input, output)


@app.command()
@friendly
def denoise(
    input: Annotated[Path, typer.Argument(help="Noisy TIFF or Zarr image.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .tif/.tiff/.zarr.", show_default=False)],
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="Model directory from 'asn2n fit'.",
                                            show_default=False)],
    config: ConfigOpt = None,
    tile: TileOpt = INFER.tile,
    overlap: OverlapOpt = INFER.overlap,
    blend: BlendOpt = INFER.blend,
    infer_on: InferOnOpt = INFER.infer_on,
    tta: TtaOpt = cast(TtaCopies, INFER.tta),
    tile_batch: TileBatchOpt = INFER.batch,
    infer_precision: InferPrecisionOpt = INFER.precision,
    compile_net: CompileNetOpt = INFER.compile,
    device: DeviceOpt = INFER.device,
    norm_range: NormRangeOpt = INFER.norm_range,
    dtype: DtypeOpt = cast(OutputDtype, RUN.dtype),
    axes: AxesOpt = None,
    series: SeriesOpt = None,
    channel: ChannelOpt = None,
    time: TimeOpt = None,
    chunks: ChunksOpt = None,
    ome: OmeOpt = cast(OmeVersion, RUN.ome),
    pyramid: PyramidOpt = RUN.pyramid,
    dry_run: DryRunOpt = False,
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
    jobs: JobsOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    memory_limit: MemoryOpt = None,
    dashboard_address: DashboardOpt = None,
    allow_unfinished: Annotated[bool, typer.Option("--allow-unfinished", help="Use a model whose training did not "
                                                   "finish (a checkpoint) instead of refusing it.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Denoise an image with a trained model; the output keeps the input's shape, axes and units.

    A .zarr output is written chunk by chunk on a Dask cluster (an embedded one unless
    --scheduler is given) as OME-Zarr, its axes in T, C, Z, Y, X order, with a risk label
    image per channel (labels/risk-<channel>); a run that stopped is
    resumed by running the same command again, and a finished one run again says it is
    complete without reading the input, unless the input's files changed since (then
    its statistics are compared as for a resume).  A .tif output is computed in memory, as a
    TIFF of the input's kind (ImageJ hyperstack, OME-TIFF or plain) with its pixel sizes,
    time step and channel names.

    Examples:

      asn2n denoise cells.tif -o cells-denoised.tif --model cells.model

      asn2n denoise movie.zarr -o movie-denoised.zarr --model movie.model --channel er --time 0:100

      asn2n denoise movie.zarr -o out.zarr --model movie.model --dry-run

      asn2n denoise movie.zarr -o out.zarr --model movie.model --cluster slurm-gpu --jobs 8

      asn2n denoise movie.zarr -o out.zarr --model movie.model --config denoise.yaml --tile 256
    """
    from .checkpoint import load_model

    infer = _infer_config(tile, overlap, blend, infer_on, device, tta, tile_batch, infer_precision, compile_net,
                          norm_range)
    if not input.exists():
        raise InputError(f"input {input} does not exist.")
    if _is_zarr_out(output):
        _pipeline(input, output, model_dir, axes=axes, channel=channel, time=time, infer=infer, chunks=chunks,
                  dtype=dtype, ome=ome, pyramid=pyramid, overwrite=overwrite, dry_run=dry_run, scheduler=scheduler,
                  workers=workers, threads=threads, memory_limit=memory_limit,
                  extra={"command": "denoise", "model": str(model_dir), **_file_record(config)}, cluster=cluster,
                  jobs=jobs,
                  dashboard_address=dashboard_address, allow_unfinished=allow_unfinished, series=series)
        return
    check_out(output, input, overwrite)
    model = load_model(model_dir, allow_unfinished=allow_unfinished)
    src, sel = _open_selection(input, axes, channel, time, series)
    if dry_run:
        shape = tuple(len(i) for i in sel.indices(src))
        typer.echo(f"would denoise {input} ({src.axes}, {shape} of {src.shape}) in memory into {output}")
        return
    _denoise_to(input, output, model, src, sel, infer, dtype, overwrite,
                {"model": str(model_dir), "train": model.train.to_dict(), **_file_record(config)})


def check_out(output: Path, input: Path, overwrite: bool) -> None:
    from .io import check_output

    if not input.exists():
        raise InputError(f"input {input} does not exist.")
    check_output(output, inputs=[input], overwrite=overwrite)


@app.command()
@friendly
def run(
    ctx: typer.Context,
    input: Annotated[Path, typer.Argument(help="Noisy TIFF or Zarr image.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .tif/.tiff/.zarr.", show_default=False)],
    model_dir: Annotated[Path | None, typer.Option("--model", "-m", help="Where to keep the trained model "
                                                   "(default: OUTPUT name + '.model').")] = None,
    config: ConfigOpt = None,
    dims: DimsOpt = 2,
    depth_axis: DepthAxisOpt = None,
    anisotropy: AnisotropyOpt = None,
    preset: AnyPresetOpt = TRAIN.preset,
    steps: AnyStepsOpt = TRAIN.steps,
    norm: NormOpt = TRAIN.norm.mode,
    risk_estimator: RiskOpt = TRAIN.norm.risk.estimator,
    seed: SeedOpt = TRAIN.seed,
    patch: AnyPatchOpt = str(TRAIN.patch),
    batch: AnyBatchOpt = TRAIN.batch,
    loss: LossOpt = TRAIN.loss,
    consistency: LambdaOpt = TRAIN.consistency,
    offset_jitter: JitterOpt = TRAIN.offset_jitter,
    tile: TileOpt = INFER.tile,
    overlap: OverlapOpt = INFER.overlap,
    blend: BlendOpt = INFER.blend,
    infer_on: InferOnOpt = INFER.infer_on,
    tta: TtaOpt = cast(TtaCopies, INFER.tta),
    tile_batch: TileBatchOpt = INFER.batch,
    infer_precision: InferPrecisionOpt = INFER.precision,
    compile_net: CompileNetOpt = INFER.compile,
    device: DeviceOpt = INFER.device,
    dtype: DtypeOpt = cast(OutputDtype, RUN.dtype),
    axes: AxesOpt = None,
    series: SeriesOpt = None,
    channel: ChannelOpt = None,
    time: TimeOpt = None,
    chunks: ChunksOpt = None,
    ome: OmeOpt = cast(OmeVersion, RUN.ome),
    pyramid: PyramidOpt = RUN.pyramid,
    scheduler: SchedulerOpt = None,
    cluster: ClusterOpt = None,
    jobs: JobsOpt = None,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    memory_limit: MemoryOpt = None,
    dashboard_address: DashboardOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fit a model on the input itself, then denoise it: the one command to try first.

    For a .zarr output the model is trained on patches read lazily from the input
    (as 'asn2n fit' does), then the input is denoised chunk by chunk as 'asn2n denoise'
    does.  The input is read once for its channel statistics: training hands them to
    the denoising while the input's files are unchanged.  Running the same command
    again after a crash reuses the finished model and resumes the denoising; once
    finished, it says so without reading the input.

    Examples:

      asn2n run noisy.tif -o denoised.tif --preset small

      asn2n run movie.zarr -o movie-denoised.zarr --channel 1 --time 0:50

      asn2n run movie.zarr -o movie-denoised.zarr --config run.yaml --steps 500   (the file, then the flags)

      asn2n run stack.zarr -o stack-denoised.zarr --dims 3   (a 3-D network on Z-Y-X volumes)
    """
    options = _kind_options(ctx, dims, preset=preset, steps=steps, norm=norm, seed=seed, patch=patch, batch=batch,
                            loss=loss, consistency=consistency, risk_estimator=risk_estimator, depth_axis=depth_axis,
                            anisotropy=anisotropy)
    if dims == 2:
        from dataclasses import replace

        options["config"] = replace(options["config"], offset_jitter=offset_jitter)
    infer = _infer_config(tile, overlap, blend, infer_on, device, tta, tile_batch, infer_precision, compile_net)
    if not input.exists():
        raise InputError(f"input {input} does not exist.")
    zarr_out = _is_zarr_out(output)
    if not zarr_out:
        check_out(output, input, overwrite)
    else:
        from .pipeline import check_output_path

        check_output_path(input, output)  # before training, not after
    from .io import output_lock

    mdir = model_dir or output.with_name(output.name + ".model")
    _check_model_out(mdir, [input])
    from .io import paths_overlap

    if paths_overlap(mdir, output):
        raise OutputError(f"the model directory {mdir} is, contains or lies inside the output {output}; choose "
                          "another --model.")
    if zarr_out and (output.exists() or output.is_symlink()):  # before training, not after
        from .resume import existing, refuse_foreign

        refuse_foreign(output, existing(output))
    src, sel = _open_selection(input, axes, channel, time, series)  # a bad selection is said before training
    if zarr_out:  # and bad chunks
        from .plan import check_run_axes, output_chunks, run_spatial

        spatial = run_spatial(dims, options.get("depth_axis"))
        check_run_axes(src, sel, spatial, model=False)  # before training: the remedy is another --depth-axis
        output_chunks(src, _parse_chunks(chunks), spatial)
    with output_lock(output), output_lock(mdir):
        _run_locked(input, output, mdir, src, sel, options, infer, zarr_out, overwrite, axes=axes, channel=channel,
                    time=time, device=device, chunks=chunks, dtype=dtype, ome=ome, pyramid=pyramid,
                    scheduler=scheduler, workers=workers, threads=threads, memory_limit=memory_limit, cluster=cluster,
                    jobs=jobs, dashboard_address=dashboard_address, series=series, record=_file_record(config))
    _info(f"model kept in {mdir}")


def _run_locked(input: Path, output: Path, mdir: Path, src: Any, sel: Any, options: dict[str, Any], infer: Any,
                zarr_out: bool,
                overwrite: bool, *, axes: str | None, channel: list[str] | None, time: str | None, device: str,
                chunks: str | None, dtype: str, ome: str, pyramid: int, scheduler: str | None, workers: int | None,
                threads: int | None, memory_limit: str | None, cluster: Path | None, jobs: int | None,
                dashboard_address: str | None = None, series: int | None = None,
                record: dict[str, Any] | None = None) -> None:
    """'asn2n run' once the output and the model directory are locked: fit (or reuse), then denoise;
    ``options``: the library's training options (:func:`_kind_options`); ``record``: more
    provenance for the output."""
    from .api import fit as fit_fn
    from .checkpoint import load_model

    cache = StatsCache()  # the training's statistics pass, handed to the denoising when the input is unchanged
    model = None
    train = _train_record(options)
    job = {"input": str(input.absolute()), "axes": axes, "channel": channel, "time": time, "train": train,
           **({"series": series} if series is not None else {})}
    if zarr_out and (mdir / "model.json").is_file() and not overwrite:
        from .checkpoint import model_is_complete

        try:
            previous = json.loads((mdir / "run.json").read_text())
        except (OSError, ValueError):
            previous = None
        if previous != job or not model_is_complete(mdir):
            raise OutputError(f"a model already exists in {mdir} that is unfinished or was trained on other data "
                              "or options; pass --overwrite to train again or choose another --model.")
        model = load_model(mdir)
        _info(f"reusing the model in {mdir} (trained by the same command)", err=True)
    else:
        _check_model_dir(mdir, overwrite)
    if zarr_out:
        if model is None:
            with progress_bar(not state["quiet"]) as bar:
                model = fit_fn(str(input), axes=axes, channels=channel, time=time, device=device, progress=bar,
                               model_dir=mdir, series=series, stats_cache=cache, **options)
            for c in range(model.n_channels):
                _info(_channel_line(model, c))
            (mdir / "run.json").write_text(json.dumps(job, indent=2))
        _pipeline(input, output, mdir, axes=axes, channel=channel, time=time, infer=infer, chunks=chunks,
                  dtype=dtype, ome=ome, pyramid=pyramid, overwrite=overwrite, dry_run=False, scheduler=scheduler,
                  workers=workers, threads=threads, memory_limit=memory_limit,
                  extra={"command": "run", "model": str(mdir), "train": train, **(record or {})},
                  cluster=cluster, jobs=jobs,
                  dashboard_address=dashboard_address, series=series, stats_cache=cache)
        return
    with progress_bar(not state["quiet"]) as bar:  # trained as 'asn2n fit' does: the same file route
        model = fit_fn(str(input), axes=axes, channels=channel, time=time, device=device, progress=bar,
                       model_dir=mdir, series=series, stats_cache=cache, **options)
    for c in range(model.n_channels):
        _info(_channel_line(model, c))
    _denoise_to(input, output, model, src, sel, infer, dtype, overwrite,
                {"model": str(mdir), "train": train, **(record or {})}, stats_cache=cache)


@app.command()
@friendly
def report(
    input: Annotated[Path, typer.Argument(help="The noisy input (TIFF or Zarr).", show_default=False)],
    denoised: Annotated[Path, typer.Argument(help="The denoised output made from it.", show_default=False)],
    out: Annotated[Path, typer.Option("--output", "-o", help="Report directory to write.", show_default=False)],
    gt: Annotated[Path | None, typer.Option("--gt", help="Ground truth (same shape): adds the scores.")] = None,
    model_dir: Annotated[Path | None, typer.Option("--model", "-m", help="The model used: adds its training "
                                                   "curves and options.")] = None,
    channel: ChannelOpt = None,
    time_points: Annotated[str | None, typer.Option("--time-points", help="Output time points to show, e.g. "
                                                    "0,50,99 (default: --frames evenly spaced).")] = None,
    frames: Annotated[int, typer.Option("--frames", help="Time points shown per channel.")] = 3,
    curve_points: Annotated[int, typer.Option("--curve-points", help="Time points sampled for the time "
                                              "series (at least 2).")] = 60,
    zoom: Annotated[str | None, typer.Option("--zoom", help="Zoom crop as Y,X,SIDE (centre and side, pixels; "
                                             "default: where the denoised frame varies most).")] = None,
    axes: AxesOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier report there (only a folder "
                                            "that 'asn2n report' made, once the new report is complete).")] = False,
) -> None:
    """Write an HTML report on a denoised result: can it be trusted?

    Before/after montages with zoom and line profiles, risk maps, the residual and where
    it holds structure, Otsu objects in the background and skeleton continuity, the
    intensity time series and (with --gt) the scores; report.html is self-contained,
    with its PNGs and summary.json beside it.  Only the frames shown are read.  The
    report is made in a temporary folder beside OUTPUT and renamed when complete.

    Examples:

      asn2n report movie.zarr movie-dn.zarr -o movie-report/ --model movie.model

      asn2n report noisy.tif denoised.tif -o report/ --gt truth.tif --zoom 300,400,128
    """
    from .report import make_report

    def ints(text: str, what: str) -> list[int]:
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"{what} must be integers separated by commas; got {text!r}.") from None

    if frames < 1 or curve_points < 2:
        raise ConfigError(f"--frames must be at least 1 and --curve-points at least 2; got {frames} and "
                          f"{curve_points}.")
    box = None
    if zoom is not None:
        vals = ints(zoom, "--zoom")
        if len(vals) != 3 or vals[2] < 8:
            raise ConfigError(f"--zoom takes Y,X,SIDE with SIDE >= 8; got {zoom!r}.")
        box = (vals[0], vals[1], vals[2])
    times = ints(time_points, "--time-points") if time_points else None
    for p in (input, denoised, gt, model_dir):
        if p is not None and not p.exists():
            raise InputError(f"{p} does not exist.")
    with progress_bar(not state["quiet"]) as bar:
        make_report(input, denoised, out, gt=gt, model_dir=model_dir, channels=channel, times=times, frames=frames,
                    curve_points=curve_points, zoom=box, axes=axes, overwrite=overwrite, progress=bar)
    _info(f"report: {out / 'report.html'}")


@app.command()
@friendly
def view(
    output: Annotated[Path, typer.Argument(help="An OME-Zarr output of 'asn2n denoise'.", show_default=False)],
    input: Annotated[Path | None, typer.Option("--input", help="The noisy input to show beside it (default: "
                                               "the one recorded in the output, if it still exists).")] = None,
) -> None:
    """Open a denoised OME-Zarr in napari: input, denoised and risk labels as layers.

    Needs napari with a Qt binding ('pip install asn2n-dask[view]') and a display;
    without them, open the output with napari-ome-zarr or any OME-Zarr viewer.

    Example: asn2n view movie-dn.zarr
    """
    from .view import napari_layers, show

    show(output, napari_layers(output, input))


@app.command("cluster-profiles")
@friendly
def cluster_profiles(
    show: Annotated[str | None, typer.Option("--show", metavar="NAME", help="Print this profile's YAML, to copy "
                                             "and edit for a site.", show_default=False)] = None,
) -> None:
    """List the built-in SLURM/PBS/LSF profiles that --cluster takes by name, or print one.

    Each line: name, batch system, what its workers are.  A site copies one, edits the
    queue, account and environment lines, and passes the file to --cluster.

    Examples:

      asn2n cluster-profiles

      asn2n cluster-profiles --show slurm-gpu > site-gpu.yaml
    """
    from .hpc import builtin_profile, builtin_profiles, profiles_location

    if show is not None:
        typer.echo(builtin_profile(show).text, nl=False)
        return
    rows = builtin_profiles()
    width = max(len(p.name) for p in rows)
    for p in rows:
        typer.echo(f"{p.name:<{width}}  {p.kind:<5}  {p.description}")
    _info(f"\n--cluster NAME uses one; --show NAME prints it to copy and edit (the files: {profiles_location()}).")


#: The file that marks a folder as the demo's: a later demo replaces the demo's files there.
DEMO_MARKER = ".asn2n-demo"
_DEMO_FILES = ("noisy.tif", "ground_truth.tif", "denoised.tif", "before_after.png", "model", "report")


def _demo_folder(out: Path) -> None:
    """Make ``out`` ready for the demo: a new or empty folder gets :data:`DEMO_MARKER`;
    a folder that carries it has the files of the earlier demo removed (nothing else);
    any other folder with files in it is refused."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--output {out} is a file; choose a new or empty folder for the demo's files.")
    try:
        if out.is_dir() and any(out.iterdir()):
            if not (out / DEMO_MARKER).is_file():
                raise OutputError(f"--output {out} already holds files that 'asn2n demo' did not write; choose a new "
                                  "or empty folder.")
            for name in _DEMO_FILES:  # the earlier demo's files: a half-replaced demo must not mix with this one
                old = out / name
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                elif old.exists() or old.is_symlink():
                    old.unlink()
        out.mkdir(parents=True, exist_ok=True)
        (out / DEMO_MARKER).write_text(json.dumps(_provenance("demo")) + "\n")
    except OSError as e:
        raise OutputError(f"cannot write the demo's files to {out}: {e.strerror or e}; choose a writable "
                          "folder.") from None


@app.command()
@friendly
def demo(
    out: Annotated[Path, typer.Option("--output", "-o", help="Folder for the demo's files: new, empty, or an "
                                      "earlier demo's (whose files are replaced).")] = Path("demo-output"),
    size: Annotated[int, typer.Option("--size", help="Side of the synthetic frame, 32 to 4096 pixels.")] = 256,
    steps: Annotated[int, typer.Option("--steps", help="Training steps of the tiny model, 1 to 100000.")] = 300,
    photons: Annotated[float, typer.Option("--photons", help="Peak photons of the synthetic signal, above 0 and "
                                           "at most 30000.")] = 8.0,
) -> None:
    """Make a synthetic noisy frame, fit a tiny model on it, denoise it, save a before/after PNG.

    Writes only into a new or empty folder, or one an earlier demo made (it carries a
    .asn2n-demo file): the earlier demo's files are replaced, nothing else is touched.

    Example: asn2n demo -o demo-output
    """
    import math

    import tifffile

    from .api import denoise as denoise_fn
    from .api import fit as fit_fn
    from .config import InferConfig, TrainConfig
    from .plots import before_after_png
    from .report import make_report
    from .synthetic import noisy_frame

    if not 32 <= size <= 4096:
        raise ConfigError(f"--size must be between 32 and 4096 pixels; got {size}.")
    if not 1 <= steps <= 100_000:
        raise ConfigError(f"--steps must be between 1 and 100000; got {steps}.")
    if not (math.isfinite(photons) and 0 < photons <= 30_000):
        raise ConfigError(f"--photons must be above 0 and at most 30000 (the 16-bit camera's range); got {photons}.")
    _demo_folder(out)
    noisy, truth = noisy_frame((size, size), photons=photons, seed=0)
    tifffile.imwrite(out / "noisy.tif", noisy)
    tifffile.imwrite(out / "ground_truth.tif", truth)
    cfg = TrainConfig(preset="tiny", steps=steps, patch=64, batch=8, val_every=max(1, steps // 10),
                      checkpoint_every=steps)
    with progress_bar(not state["quiet"]) as bar:
        model = fit_fn(noisy, config=cfg, progress=bar, model_dir=out / "model")
        den = denoise_fn(noisy, model, config=InferConfig(tile=64), progress=bar)
    tifffile.imwrite(out / "denoised.tif", den)
    png = before_after_png(noisy, den, out / "before_after.png", truth=truth)
    rmse_in = float(np.sqrt(np.mean((noisy.astype(float) - truth) ** 2)))
    rmse_out = float(np.sqrt(np.mean((den.astype(float) - truth) ** 2)))
    _info(f"noisy input:  {out / 'noisy.tif'} (RMSE to ground truth {rmse_in:.2f} ADU)")
    _info(f"denoised:     {out / 'denoised.tif'} (RMSE to ground truth {rmse_out:.2f} ADU)")
    _info(f"model:        {out / 'model'}")
    _info(f"before/after: {png}")
    with progress_bar(not state["quiet"]) as bar:
        make_report(out / "noisy.tif", out / "denoised.tif", out / "report", gt=out / "ground_truth.tif",
                    model_dir=out / "model", progress=bar)
    _info(f"report:       {out / 'report' / 'report.html'}")


@app.command("export")
@friendly
def export_model(
    model_dir: Annotated[Path, typer.Argument(help="Model directory from 'asn2n fit'.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Package to write (.zip).", show_default=False)],
    author: Annotated[list[str], typer.Option("--author", help="An author of the package (repeat for several).",
                                              show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="Package format: bioimageio (a bioimage.io model, "
                                     "format 0.5).")] = "bioimageio",
    channel: Annotated[list[str] | None, typer.Option("--channel", "-c", help="Channel network to export, by "
                                                      "name or index (repeat for several; default all).")] = None,
    license: Annotated[str, typer.Option("--license", help="SPDX identifier of the weights' licence.")] = "CC-BY-4.0",
    name: Annotated[str | None, typer.Option("--name", help="Model name (default from the model directory's).",
                                             show_default=False)] = None,
    tile: Annotated[int, typer.Option("--tile", help="Tile side the packaged network uses, as for 'asn2n "
                                      "denoise'; images must be at least half of it on each side.")] = 128,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing package.")] = False,
) -> None:
    """Write a trained model as a bioimage.io model package, for the model zoo and its tools.

    The package's network (TorchScript and PyTorch state-dict weights) computes all of
    'asn2n denoise' on each image, in the image's own units: its test output is 'asn2n
    denoise' of its test input (a crop of the training data, else a synthetic frame), and
    the package passes bioimage.io's model test before it is written.  Its README says
    what differs from 'asn2n denoise' on other inputs.  Needs bioimageio.core (the
    package's 'bioimageio' extra).

    Examples:

      asn2n export cells.model -o cells.zip --author "Ada Lovelace"

      asn2n export movie.model -o mito.zip --channel mito --author "Ada Lovelace" --license MIT
    """
    from .config import InferConfig
    from .export import export_bioimageio

    if fmt != "bioimageio":
        raise ConfigError(f"--format must be bioimageio; got {fmt!r}.")
    path = export_bioimageio(model_dir, output, channels=channel, authors=author, license=license, name=name,
                             infer=InferConfig(tile=tile), overwrite=overwrite)
    _info(f"exported {model_dir} -> {path} (bioimage.io model; it passed bioimageio.core's model test)")


@app.command("import")
@friendly
def import_model(
    package: Annotated[Path, typer.Argument(help="A package written by 'asn2n export'.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model directory to write.", show_default=False)],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a model in that directory.")] = False,
) -> None:
    """Turn a package written by 'asn2n export' back into a model directory for 'asn2n denoise'.

    Example:

      asn2n import cells.zip -o cells.model
    """
    from .export import import_bioimageio

    _info(f"imported {package} -> {import_bioimageio(package, output, overwrite=overwrite)}")


if __name__ == "__main__":  # pragma: no cover
    app()
