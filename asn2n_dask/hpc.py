"""HPC clusters: SLURM, PBS and LSF profiles run through dask-jobqueue.

A profile is a small YAML file.  The package ships one for each batch system, CPU and
GPU (``slurm``, ``slurm-gpu``, ``pbs``, ``pbs-gpu``, ``lsf``: :func:`builtin_profiles`,
``asn2n cluster-profiles``), taken by name (``--cluster slurm-gpu``); a facility copies
one (``asn2n cluster-profiles --show slurm-gpu > site.yaml``), edits it and passes the
file (``--cluster site.yaml``)::

    kind: slurm            # slurm, pbs or lsf
    gpu: true              # one worker per job, one GPU each (the batch system sets
                           # CUDA_VISIBLE_DEVICES)
    min_jobs: 1            # adaptive scaling between these (``--jobs N`` sets max_jobs)
    max_jobs: 8
    security: auto         # TLS between scheduler, workers and client (see below)
    cluster:               # keyword arguments of dask_jobqueue.SLURMCluster / PBSCluster / LSFCluster
      queue: gpu
      account: my-lab
      cores: 4             # Dask threads per job: chunks in flight
      job_cpu: 8           # CPU cores booked per job (SLURM; PBS: ncpus= in resource_spec; LSF: ncpus)
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

``security`` protects the cluster, whose scheduler listens on the network for the
worker jobs: ``auto`` (the default) makes a temporary certificate authority for the
run (distributed's ``Security.temporary()``, which needs ``cryptography``), so that
only this run's workers and client can connect and all traffic is TLS; the worker
jobs read their key from ``shared_temp_directory`` (default ``$HOME/.asn2n/tls``, a
directory that the nodes must see, created with mode 0700; the key files are mode 0600
and removed at the end).  A mapping ``{ca_file: ..., cert: ..., key: ...}`` uses the
site's certificates instead (paths every node sees), and ``none`` switches TLS off
(anyone who can reach the scheduler can run code in the workers: only on a trusted
network).

Each worker's network uses ``booked cores / (processes x threads)`` torch threads
(:func:`worker_torch_threads`), where the booked cores are the job's CPUs (``job_cpu``
on SLURM, ``ncpus=`` in ``resource_spec`` on PBS, ``ncpus`` on LSF; ``cores`` when not
given) and ``cores / processes`` are the Dask threads of each worker process (the
chunks in flight), so the threads of a job never exceed its cores.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Profile", "BuiltinProfile", "builtin_profiles", "builtin_profile", "load_profile", "make_cluster",
           "jobqueue_client", "worker_torch_threads", "TLS_DIRECTORY"]

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
_SCALARS_WITH_VARS = {"local_directory", "python", "interface", "shared_temp_directory"}
#: Where ``security: auto`` writes each run's worker key and certificates for the jobs to
#: read (expanded here and by the job's shell): a directory every node sees.
TLS_DIRECTORY = "$HOME/.asn2n/tls"
_PROFILE_KEYS = {"kind", "gpu", "min_jobs", "max_jobs", "security", "cluster"}
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
        Where the profile was read from (a file, or ``NAME (built in)``).
    security : "auto", "none" or dict
        TLS: a temporary certificate authority for the run, none, or the site's
        certificates (``{"ca_file": ..., "cert": ..., "key": ...}``, absolute paths).
    """

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    gpu: bool = False
    min_jobs: int = 1
    max_jobs: int = 4
    path: str = ""
    security: str | dict[str, str] = "auto"


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


@dataclass(frozen=True)
class BuiltinProfile:
    """A profile shipped with the package (``asn2n_dask/profiles/NAME.yaml``).

    Attributes
    ----------
    name : str
        What ``--cluster`` takes (``slurm-gpu``).
    kind : {"slurm", "pbs", "lsf"}
        The batch system.
    description : str
        One line: the file's first comment.
    text : str
        The YAML as shipped, to copy and edit.
    """

    name: str
    kind: str
    description: str
    text: str


def _profiles_folder() -> Any:
    """The package's profiles (an ``importlib.resources`` traversable)."""
    return files("asn2n_dask") / "profiles"


def profiles_location() -> str:
    """Where the built-in profiles are installed (a folder, for those who copy them)."""
    return str(_profiles_folder())


def builtin_profiles() -> list[BuiltinProfile]:
    """The profiles shipped with the package, by name.

    Examples
    --------
    >>> [p.name for p in builtin_profiles()]
    ['lsf', 'pbs', 'pbs-gpu', 'slurm', 'slurm-gpu']
    """
    import yaml

    out = []
    for item in _profiles_folder().iterdir():
        if not item.name.endswith(".yaml"):
            continue
        text = item.read_text(encoding="utf-8")
        first = text.splitlines()[0] if text else ""
        out.append(BuiltinProfile(name=item.name[: -len(".yaml")], kind=str(yaml.safe_load(text)["kind"]),
                                  description=first.lstrip("#").strip(), text=text))
    return sorted(out, key=lambda b: b.name)


def builtin_profile(name: str) -> BuiltinProfile:
    """The built-in profile called ``name``.

    Raises
    ------
    ConfigError
        No built-in profile has that name (the message lists the names).
    """
    found = {p.name: p for p in builtin_profiles()}
    if name not in found:
        raise ConfigError(f"no built-in cluster profile is called {name!r}; the built-in profiles are "
                          f"{', '.join(found)} (or give the path of a profile YAML file).")
    return found[name]


def _looks_like_name(ref: str) -> bool:
    """A ``--cluster`` value without a folder or a YAML suffix names a built-in profile."""
    return bool(ref) and "/" not in ref and os.sep not in ref and not ref.lower().endswith((".yaml", ".yml"))


def _profile_text(ref: str | os.PathLike[str]) -> tuple[str, str]:
    """``(label, YAML text)`` of a profile file, or of a built-in profile named ``ref``
    when no such file exists."""
    p = Path(ref)
    if not p.is_file():
        if _looks_like_name(str(ref)):
            return f"{ref} (built in)", builtin_profile(str(ref)).text
        names = [b.name for b in builtin_profiles()]
        hint = f" (the built-in {p.stem} is named without .yaml)" if p.stem in names else ""
        raise ConfigError(f"cluster profile {p} does not exist or is not a file; give the path of a YAML profile or "
                          f"the name of a built-in one: {', '.join(names)}{hint}.")
    try:
        return str(p), p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"cluster profile {p} is not a text file; give a YAML profile (asn2n cluster-profiles "
                          "--show slurm prints one).") from None
    except OSError as e:
        raise ConfigError(f"cluster profile {p} cannot be read ({e.strerror}); check the path and its "
                          "permissions.") from None


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and check a profile: a YAML file, or a built-in profile by name
    (:func:`builtin_profiles`) when no file of that name exists (see the module
    docstring).

    Raises
    ------
    ConfigError
        Missing file or unknown name, bad YAML, unknown kind or option, or an unsafe
        value.
    """
    import yaml

    label, text = _profile_text(path)
    p = Path(label)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"cluster profile {p} is not valid YAML ({str(e).splitlines()[0]}).") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"cluster profile {p} must be a YAML mapping with kind: and cluster: keys (asn2n "
                          f"cluster-profiles --show slurm prints one); got {type(doc).__name__}.")
    unknown = set(doc) - _PROFILE_KEYS
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
    for key in ("cores", "processes", "job_cpu", "ncpus"):
        value = opts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"cluster profile {p}: {key} must be a whole number of at least 1; got {value!r}.")
    security = _check_security(p, doc.get("security", "auto"))
    return Profile(kind=kind, options=dict(opts), gpu=gpu, min_jobs=min_jobs, max_jobs=max_jobs, path=label,
                   security=security)


def _check_security(p: Path, value: Any) -> str | dict[str, str]:
    """The profile's ``security``: "auto", "none", or certificate paths made absolute."""
    if value is None or value is False:
        value = "none"
    if isinstance(value, str) and value.lower() in ("auto", "none"):
        return value.lower()
    if not isinstance(value, dict):
        raise ConfigError(f"cluster profile {p}: security must be auto, none or a mapping of ca_file, cert and key "
                          f"paths; got {value!r}.")
    unknown = set(value) - {"ca_file", "cert", "key"}
    if unknown or "ca_file" not in value or "cert" not in value:
        raise ConfigError(f"cluster profile {p}: security needs ca_file and cert (and key unless the cert file holds "
                          f"it), nothing else; got {', '.join(sorted(map(str, value))) or 'nothing'}.")
    paths: dict[str, str] = {}
    for key, given in value.items():
        if not isinstance(given, str) or not given:
            raise ConfigError(f"cluster profile {p}: security {key} must be a path; got {given!r}.")
        full = Path(os.path.expanduser(given)).absolute()
        if not _PLAIN.match(str(full)):
            raise ConfigError(f"cluster profile {p}: security {key} {str(full)!r} has spaces or shell characters "
                              "that a job script would use unquoted; move the file to a plain path.")
        if not full.is_file() or not os.access(full, os.R_OK):
            raise ConfigError(f"cluster profile {p}: security {key} {full} is not a readable file; give the path "
                              "of the PEM file, which every node must see at the same path.")
        paths[key] = str(full)
    return paths


def _security(profile: Profile) -> Any:
    """The ``distributed.security.Security`` of a profile, or None for ``security: none``."""
    from distributed.security import Security

    if profile.security == "none":
        return None
    if profile.security == "auto":
        try:
            return Security.temporary()  # require_encryption=True
        except ImportError:
            raise ConfigError(f"cluster profile {profile.path}: security: auto (the default) needs the cryptography "
                              "package; pip install 'asn2n-dask[hpc]' (or pip install cryptography), or set "
                              "security: none in the profile on a trusted network.") from None
    sec = profile.security
    assert isinstance(sec, dict)
    cert, key = sec["cert"], sec.get("key")
    return Security(tls_ca_file=sec["ca_file"], tls_client_cert=cert, tls_client_key=key,
                    tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key,
                    require_encryption=True)


def _setting(profile: Profile, key: str) -> Any:
    """A cluster option of the profile, else dask-jobqueue's configured default."""
    value = profile.options.get(key)
    if value is None:
        import dask

        value = dask.config.get(f"jobqueue.{profile.kind}.{key.replace('_', '-')}", None)
    return value


def worker_torch_threads(profile: Profile) -> int:
    """Torch threads for the network of each chunk task on this profile's workers.

    A job books some CPU cores and runs ``processes`` worker processes with
    ``cores // processes`` Dask threads each, every thread one chunk in flight; the
    booked cores are divided between all of these, so a job never runs more threads
    than it has cores (at least one each).
    """
    cores = int(_setting(profile, "cores") or 1)
    processes = _setting(profile, "processes")
    if processes is None:
        from distributed.deploy.utils import nprocesses_nthreads

        processes = nprocesses_nthreads(cores)[0]
    processes = max(1, int(processes))
    threads = max(1, cores // processes)
    booked: Any = None
    if profile.kind == "slurm":
        booked = _setting(profile, "job_cpu")
    elif profile.kind == "lsf":
        booked = _setting(profile, "ncpus")
    else:
        found = re.search(r"(?:^|:)ncpus=(\d+)", str(_setting(profile, "resource_spec") or ""))
        booked = int(found.group(1)) if found else None
    return max(1, int(booked or cores) // (processes * threads))


def make_cluster(profile: Profile, dashboard_address: str | None = None, **overrides: Any) -> Any:
    """The dask-jobqueue cluster of a profile (its scheduler starts in this process).

    Its job script exports the workers' Dask settings (:data:`asn2n_dask.cluster.WORKER_CONFIG`)
    before the profile's ``job_script_prologue``.

    Parameters
    ----------
    profile : Profile
    dashboard_address : str, optional
        Where the scheduler's dashboard listens (``HOST:PORT``); default
        ``127.0.0.1:0``, a free port reached from elsewhere through an SSH tunnel.
    **overrides
        More keyword arguments of the dask-jobqueue cluster class.

    Raises
    ------
    ConfigError
        dask-jobqueue or cryptography missing, or the cluster fails to start (one
        sentence).
    """
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError("cluster profiles need dask-jobqueue: pip install 'asn2n-dask[hpc]'.") from None
    import dask

    from .cluster import DEFAULT_DASHBOARD, check_dashboard_address, worker_environment

    cls = getattr(dask_jobqueue, KINDS[profile.kind])
    scheduler_options = dict(dask.config.get(f"jobqueue.{profile.kind}.scheduler-options", None) or {})
    scheduler_options["dashboard_address"] = check_dashboard_address(
        dashboard_address or scheduler_options.get("dashboard_address") or DEFAULT_DASHBOARD)
    kwargs: dict[str, Any] = {"job_name": "asn2n", **profile.options, "scheduler_options": scheduler_options}
    # the workers' Dask settings (cluster.WORKER_CONFIG), first: the profile's set-up lines may still change them
    prologue = kwargs.get("job_script_prologue", dask.config.get(f"jobqueue.{profile.kind}.job-script-prologue", None))
    kwargs["job_script_prologue"] = [f"export {k}={v}" for k, v in worker_environment().items()] + list(prologue or [])
    security = _security(profile)
    if security is not None and profile.security == "auto":  # in-memory keys, written out for the jobs
        tls_dir = str(kwargs.setdefault("shared_temp_directory", TLS_DIRECTORY))
        local = Path(os.path.expanduser(os.path.expandvars(tls_dir)))
        try:
            local.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cluster profile {profile.path}: cannot create {local} for the workers' TLS key "
                              f"({e.strerror}); set shared_temp_directory to a directory every node sees.") from None
    if security is not None:
        kwargs.update(security=security, protocol="tls://")
    kwargs.update(overrides)
    try:
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - dask-jobqueue's errors reach the user as one sentence
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ConfigError(f"cluster profile {profile.path}: the {KINDS[profile.kind]} could not start "
                          f"({type(e).__name__}{': ' + first if first else ''}); check the profile's cluster: "
                          "options against dask-jobqueue's documentation.") from None


def _remove_worker_keys(cluster: Any) -> None:
    """Delete the worker key and certificates that dask-jobqueue wrote for the jobs
    (``security: auto``), now rather than when the cluster object is collected."""
    for key in ("ca_file", "cert", "key"):
        handle = getattr(cluster, f"_job_{key}", None)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()


def _dashboard_link(client: Any, dashboard_address: str | None) -> str:
    """The dashboard link as reachable: distributed names the scheduler's host even when
    the dashboard listens on loopback only."""
    from urllib.parse import urlsplit, urlunsplit

    from .cluster import DEFAULT_DASHBOARD

    link = str(client.dashboard_link)
    host = (dashboard_address or DEFAULT_DASHBOARD).rsplit(":", 1)[0]
    parts = urlsplit(link)
    if host and host not in ("0.0.0.0", "[::]") and parts.port is not None:
        return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}"))
    return link


@contextlib.contextmanager
def jobqueue_client(path: str | os.PathLike[str], jobs: int | None = None,
                    echo: Callable[[str], None] = print, dashboard_address: str | None = None) -> Iterator[Any]:
    """A client on a batch-system cluster that adapts between the profile's min and max
    jobs (``jobs`` overrides the max), and cancels every job at the end, on error or
    Ctrl-C included.  ``dashboard_address``: see :func:`make_cluster`."""
    from dataclasses import replace

    from distributed import Client

    from .errors import Asn2nError

    profile = load_profile(path)
    if jobs is not None:
        if jobs < 1:
            raise ConfigError(f"--jobs must be at least 1; got {jobs}.")
        profile = replace(profile, min_jobs=min(profile.min_jobs, jobs), max_jobs=jobs)
    with contextlib.ExitStack() as stack:
        cluster = make_cluster(profile, dashboard_address)
        stack.callback(_remove_worker_keys, cluster)  # after the cluster has closed
        stack.enter_context(cluster)
        try:
            cluster.adapt(minimum_jobs=profile.min_jobs, maximum_jobs=profile.max_jobs)
            client = stack.enter_context(Client(cluster))
        except Asn2nError:
            raise
        except Exception as e:  # noqa: BLE001 - Dask's start-up errors reach the user as one sentence
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"cluster profile {profile.path}: the cluster started but its client could not "
                              f"connect ({type(e).__name__}{': ' + first if first else ''}); check the profile's "
                              "interface and security settings.") from None
        tls = "TLS" if cluster.security is not None and cluster.security.require_encryption else "no TLS"
        echo(f"{profile.kind} cluster from {profile.path}: {profile.min_jobs} to {profile.max_jobs} job(s), {tls}; "
             f"dashboard: {_dashboard_link(client, dashboard_address)}")
        yield client


def write_job_tls(directory: str | os.PathLike[str]) -> Path:
    """Write a temporary certificate authority and one certificate signed by it, for the
    scheduler, workers and client of one batch allocation (the scripts in
    ``cluster/examples``): ``ca.pem``, ``cert.pem`` and ``key.pem`` in ``directory``
    (created with mode 0700; the files 0600).  Whoever lacks them cannot join.

    Run as ``python -m asn2n_dask.hpc tls DIRECTORY``; the scripts then point Dask at the
    files through its configuration variables and delete the folder at the end.
    """
    try:
        from distributed.security import Security

        sec = Security.temporary()
    except ImportError:
        raise ConfigError("TLS between scheduler and workers needs the 'cryptography' package: pip install "
                          "cryptography.") from None
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    d.chmod(0o700)
    for name, text in (("ca.pem", sec.tls_ca_file), ("cert.pem", sec.tls_scheduler_cert),
                       ("key.pem", sec.tls_scheduler_key)):
        fd = os.open(d / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(str(text))
    return d


if __name__ == "__main__":  # python -m asn2n_dask.hpc tls DIRECTORY
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "tls":
        sys.exit("usage: python -m asn2n_dask.hpc tls DIRECTORY")
    try:
        write_job_tls(sys.argv[2])
    except (ConfigError, OSError) as err:
        sys.exit(f"error: {err}")
