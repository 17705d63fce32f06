"""HPC clusters: SLURM, PBS and LSF profiles run through dask-jobqueue.

A profile is a small YAML file (see ``cluster/*.yaml``)::

    kind: slurm            # slurm, pbs or lsf
    gpu: true              # one worker per job, one GPU each (the batch system sets
                           # CUDA_VISIBLE_DEVICES)
    min_jobs: 1            # adaptive scaling between these (``--jobs N`` sets max_jobs)
    max_jobs: 8
    cluster:               # keyword arguments of dask_jobqueue.SLURMCluster / PBSCluster / LSFCluster
      queue: gpu
      account: my-lab
      cores: 8
      memory: 64GB
      walltime: "04:00:00"
      job_extra_directives: ["--gres=gpu:1"]
      job_script_prologue: ["module load cuda", "source /apps/asn2n/bin/activate"]
      local_directory: ${TMPDIR:-/tmp}
      log_directory: /scratch/my-lab/asn2n-logs

Only known options are accepted, and values that dask-jobqueue writes unquoted into
job scripts (directory and program paths, names, directives) must not contain spaces
or shell metacharacters; a shell variable (``$TMPDIR``, ``${TMPDIR:-/tmp}``) is allowed
only where the shell expands it (``local_directory``, ``python``, ``interface``).  A
profile that breaks this is refused with one clear sentence, so nothing can be
injected into a job script.  Prologue lines are the administrator's shell set-up and
are taken as written (one command per item).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Profile", "load_profile", "make_cluster", "jobqueue_client"]

KINDS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "lsf": "LSFCluster"}
_PLAIN = re.compile(r"^[A-Za-z0-9_./:@%+=,~-]+$")
#: Where a shell variable may stand (the worker command line, which the shell expands):
#: ``$VAR``, ``${VAR}`` or ``${VAR:-default}``.
_WITH_VARS = re.compile(r"^(?:[A-Za-z0-9_./:@%+=,~-]|\$[A-Za-z_][A-Za-z0-9_]*"
                        r"|\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[A-Za-z0-9_./:@%+=,~-]*)?\})+$")
_SAFE_DIRECTIVE = re.compile(r"^[A-Za-z0-9_./:@%+=,~ \-]+$")
_SHEBANG = re.compile(r"^#![A-Za-z0-9_./ -]+$")
#: The dask-jobqueue options a profile may set, by how they are checked.
_SCALARS = {"queue", "account", "project", "walltime", "memory", "log_directory", "job_name", "name", "protocol",
            "resource_spec", "job_cpu", "job_mem", "ncpus", "mem", "death_timeout", "lsf_units", "cores",
            "processes", "nanny", "use_stdin"}
_SCALARS_WITH_VARS = {"local_directory", "python", "interface"}
_LISTS = {"job_extra_directives", "worker_extra_args", "job_directives_skip"}
_LINES = {"job_script_prologue"}


@dataclass(frozen=True)
class Profile:
    """A checked cluster profile.

    Attributes
    ----------
    kind : {"slurm", "pbs", "lsf"}
    options : dict
        Keyword arguments of the dask-jobqueue cluster class.
    gpu : bool
        One worker per job, pinned to the job's GPU.
    min_jobs, max_jobs : int
        Adaptive scaling bounds.
    path : str
        Where the profile was read from.
    """

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    gpu: bool = False
    min_jobs: int = 1
    max_jobs: int = 4
    path: str = ""


def _check_option(where: str, key: str, value: Any) -> None:
    """Refuse any value that dask-jobqueue would write into a job script unsafely."""
    if key in _SCALARS or key in _SCALARS_WITH_VARS or key == "shebang":
        if value is None or isinstance(value, (bool, int, float)):
            return
        pattern = _SHEBANG if key == "shebang" else (_WITH_VARS if key in _SCALARS_WITH_VARS else _PLAIN)
        if not isinstance(value, str) or not pattern.match(value):
            extra = " (a $VARIABLE or ${VARIABLE:-default} is allowed here)" if key in _SCALARS_WITH_VARS else ""
            raise ConfigError(f"{where}: {key} {value!r} has spaces or shell characters that a job script would "
                              f"use unquoted; use a plain value{extra}.")
    elif key in _LISTS:
        if not isinstance(value, list) or not all(isinstance(v, str) and _SAFE_DIRECTIVE.match(v) for v in value):
            raise ConfigError(f"{where}: {key} must be a list of plain options (no quotes, semicolons, $ or "
                              "newlines).")
    elif key in _LINES:
        if not isinstance(value, list) or not all(isinstance(v, str) and "\n" not in v for v in value):
            raise ConfigError(f"{where}: {key} must be a list of single-line commands.")
    else:
        known = sorted(_SCALARS | _SCALARS_WITH_VARS | _LISTS | _LINES | {"shebang"})
        raise ConfigError(f"{where}: cluster option {key!r} is not supported; use one of {', '.join(known)}.")


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and check a YAML profile (see the module docstring).

    Raises
    ------
    ConfigError
        Missing file, bad YAML, unknown kind or option, or an unsafe value.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"cluster profile {p} does not exist; see cluster/README.md for examples.")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"cluster profile {p} is not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"cluster profile {p} must be a mapping with kind: and cluster: keys.")
    unknown = set(doc) - {"kind", "gpu", "min_jobs", "max_jobs", "cluster"}
    if unknown:
        raise ConfigError(f"cluster profile {p}: unknown key(s) {', '.join(sorted(unknown))}.")
    kind = str(doc.get("kind", "")).lower()
    if kind not in KINDS:
        raise ConfigError(f"cluster profile {p}: kind must be one of {', '.join(KINDS)}; got {doc.get('kind')!r}.")
    opts = doc.get("cluster") or {}
    if not isinstance(opts, dict):
        raise ConfigError(f"cluster profile {p}: cluster: must be a mapping of {KINDS[kind]} options.")
    for key, value in opts.items():
        _check_option(str(p), str(key), value)
    try:
        min_jobs, max_jobs = int(doc.get("min_jobs", 1)), int(doc.get("max_jobs", 4))
    except (TypeError, ValueError):
        raise ConfigError(f"cluster profile {p}: min_jobs and max_jobs must be integers.") from None
    if not 0 <= min_jobs <= max_jobs or max_jobs < 1:
        raise ConfigError(f"cluster profile {p}: need 0 <= min_jobs <= max_jobs and max_jobs >= 1.")
    gpu = bool(doc.get("gpu", False))
    if gpu:
        opts = {**opts, "processes": 1}  # one worker per job: the job's GPU
    return Profile(kind=kind, options=dict(opts), gpu=gpu, min_jobs=min_jobs, max_jobs=max_jobs, path=str(p))


def make_cluster(profile: Profile, **overrides: Any) -> Any:
    """The dask-jobqueue cluster of a profile (its scheduler starts in this process)."""
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError("cluster profiles need dask-jobqueue: pip install 'asn2n-dask[hpc]'.") from None
    cls = getattr(dask_jobqueue, KINDS[profile.kind])
    try:
        return cls(**{"job_name": "asn2n", **profile.options, **overrides})
    except TypeError as e:
        raise ConfigError(f"cluster profile {profile.path}: {e}.") from None


@contextlib.contextmanager
def jobqueue_client(path: str | os.PathLike[str], jobs: int | None = None,
                    echo: Callable[[str], None] = print) -> Iterator[Any]:
    """A client on a batch-system cluster that adapts between the profile's min and max
    jobs (``jobs`` overrides the max), and cancels every job at the end, on error or
    Ctrl-C included."""
    from distributed import Client

    profile = load_profile(path)
    if jobs is not None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1; got {jobs}.")
        profile = Profile(profile.kind, profile.options, profile.gpu, min(profile.min_jobs, jobs), jobs,
                          profile.path)
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(make_cluster(profile))
        cluster.adapt(minimum_jobs=profile.min_jobs, maximum_jobs=profile.max_jobs)
        client = stack.enter_context(Client(cluster))
        echo(f"{profile.kind} cluster from {profile.path}: {profile.min_jobs} to {profile.max_jobs} job(s); "
             f"dashboard: {client.dashboard_link}")
        yield client
