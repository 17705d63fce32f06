"""Where the chunk tasks run: an embedded LocalCluster, or a cluster that already exists.

``dask_client()`` starts a LocalCluster sized from the machine (worker processes,
threads, a memory limit per worker) or joins a running scheduler by address, prints the
dashboard link, and closes what it started on exit (also on error or Ctrl-C).  On a
machine with CUDA GPUs and ``dask-cuda`` installed, the embedded cluster is a
``LocalCUDACluster``: one worker per GPU, each pinned to its device.

The embedded cluster listens on the loopback interface only: its scheduler has no
authentication, and anyone who can reach it can run code in its workers, so on a shared
login node it must not be reachable by other users.  Its dashboard follows
``dashboard_address`` (``127.0.0.1:0`` by default: a free port on loopback, reached
from elsewhere through an SSH tunnel; ``:8787`` exposes it on every interface).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from .config import MIN_MEMORY_LIMIT
from .errors import ConfigError

__all__ = ["dask_client", "default_workers", "relax_malloc_trim", "AllocatorPlugin", "check_dashboard_address",
           "check_memory_limit", "check_scheduler", "DEFAULT_DASHBOARD", "MIN_MEMORY_LIMIT", "WORKER_CONFIG",
           "worker_environment"]

log = logging.getLogger(__name__)

#: Where the embedded cluster's scheduler and workers listen: this machine only.
LOOPBACK = "127.0.0.1"
#: The dashboard's default address: a free port on loopback.
DEFAULT_DASHBOARD = "127.0.0.1:0"
#: Seconds to wait for a running scheduler to answer (``--scheduler``).
CONNECT_TIMEOUT = 5
#: Dask settings of the workers this package starts (embedded clusters, batch jobs).
#: Dask's statistical profiler samples each worker thread's stack every 10 ms and keeps
#: every second's call tree for 1000 s (``distributed.admin.low-level-log-length``
#: cycles, twice: overall and per task prefix): a worker running small chunks grew by
#: about 4 KB a chunk (300 KB a second) for the run's first 17 minutes, for a tree that
#: only the dashboard's Profile page shows (``benchmarks/pipeline.py --stage tasks``).
#: Workers of a running scheduler (``--scheduler``) keep their own settings.
WORKER_CONFIG: dict[str, Any] = {"distributed.worker.profile.enabled": False}
_ADDRESS = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])?:[0-9]{1,5}$")


def check_dashboard_address(address: str) -> str:
    """Check a dashboard address (``HOST:PORT`` or ``:PORT``, port 0 for any free one).

    Raises
    ------
    ConfigError
        Anything else, or a port above 65535.
    """
    if not isinstance(address, str) or not _ADDRESS.match(address) or int(address.rsplit(":", 1)[1]) > 65535:
        raise ConfigError(f"--dashboard-address must be HOST:PORT or :PORT (e.g. {DEFAULT_DASHBOARD}, or :8787 to "
                          f"expose it on every interface); got {address!r}.")
    return address


def check_memory_limit(memory_limit: str) -> str:
    """Check a worker memory limit: a size (``4GiB``) of at least :data:`MIN_MEMORY_LIMIT`.

    Raises
    ------
    ConfigError
        Not a size, or below the floor (a worker that small pauses before its first
        chunk, and the run would wait for ever).
    """
    from dask.utils import parse_bytes

    try:
        size = parse_bytes(memory_limit)
    except (ValueError, TypeError):
        raise ConfigError(f"--memory-limit {memory_limit!r} is not a size like 4GiB or 8GB.") from None
    if size < MIN_MEMORY_LIMIT:
        raise ConfigError(f"--memory-limit must be at least 256MiB per worker (a smaller worker pauses before its "
                          f"first chunk); got {memory_limit!r}, give e.g. 4GiB or leave it out.")
    return memory_limit


def check_scheduler(scheduler: str) -> str:
    """Check ``--scheduler`` before anything runs: a scheduler file must exist and hold an
    address (the address itself is tried when the run starts)."""
    _scheduler_address(scheduler)
    return scheduler


def worker_environment() -> dict[str, str]:
    """:data:`WORKER_CONFIG` as environment variables (``DASK_DISTRIBUTED__WORKER__...``),
    for workers started by a job script or a command line."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): repr(value)
            for key, value in WORKER_CONFIG.items()}


def _start_error(what: str, e: BaseException) -> ConfigError:
    """One sentence for an error raised by Dask while a cluster starts."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return ConfigError(f"{what} could not start ({type(e).__name__}{': ' + first if first else ''}); check the "
                       "cluster options, or run with -vv to see Dask's log.")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def relax_malloc_trim() -> bool:
    """Undo, in this process, the allocator setting a Dask nanny gives its worker.

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``.  Setting it
    switches off glibc's dynamic mmap threshold, which stays at 128 KiB: every larger
    buffer (each activation of each network pass) becomes a fresh ``mmap``, zero-filled
    page by page on first touch and unmapped when freed.  A network pass in a worker
    then took 1.3-1.8x as long as in a plain process (tiny U-Net, 16 tiles of 128²,
    2 cores).  This sets the two thresholds to where glibc's dynamic rule tops out
    (mmap above 32 MiB, trim above 64 MiB), so buffers are reused again; memory stays
    bounded by the largest tensors, the same as in any process without the variable.

    Run on every worker by :class:`AllocatorPlugin`, which the pipeline registers before
    its statistics pass.  Returns whether the setting was changed (only where the
    variable is set, on glibc).
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 64 << 20))


class AllocatorPlugin(WorkerPlugin):
    """Runs :func:`relax_malloc_trim` on every worker of a cluster, also on workers
    that join or restart later."""

    name = "asn2n-allocator"

    def setup(self, worker: Any) -> None:
        relax_malloc_trim()


#: Chunks in flight per GPU worker: while one is on the GPU the others are read and
#: written (one H100, `benchmarks/results/gpu.md`: 11.1, 18.4 and 22.3 Mpx/s with 1, 2 and 4 on a
#: 268 MB time-lapse, not counting the statistics pass).
GPU_THREADS = 4


def default_workers(gpu: bool = False) -> tuple[int, int, int]:
    """(worker processes, threads per worker, torch threads per worker) for this machine.

    On CPU one process whose network uses every core is fastest (the work of a chunk
    is one big batched computation); one thread per worker keeps one chunk in flight
    per process, so memory stays at one task's peak.  With a GPU (``gpu=True``), one
    worker with :data:`GPU_THREADS` threads, so that reading and writing chunks overlap
    the GPU's work.
    """
    cores = _cores()
    if gpu:
        return 1, GPU_THREADS, max(1, cores // GPU_THREADS)
    return 1, 1, cores


@contextlib.contextmanager
def dask_client(*, scheduler: str | None = None, workers: int | None = None, threads: int | None = None,
                memory_limit: str | None = None, echo: Callable[[str], None] = log.info,
                processes: bool = True, gpu: bool = True,
                dashboard_address: str = DEFAULT_DASHBOARD) -> Iterator[tuple[Any, int | None]]:
    """A ``distributed.Client`` for the run, and the torch threads each worker should use.

    Parameters
    ----------
    scheduler : str, optional
        Address (``tcp://host:8786``) of a running scheduler, or a scheduler file
        (``*.json``, written by ``dask scheduler --scheduler-file``).  Default: start an
        embedded cluster.  A scheduler that does not answer within
        :data:`CONNECT_TIMEOUT` seconds is refused.
    workers, threads : int, optional
        Embedded cluster: worker processes and threads per worker.
    memory_limit : str, optional
        Embedded cluster: memory per worker (``"4GiB"``, at least
        :data:`MIN_MEMORY_LIMIT`; default: the machine's memory shared between the
        workers).
    echo : callable
        Receives the dashboard link.
    processes : bool
        Embedded cluster: worker processes (True) or threads of this process.
    gpu : bool
        Embedded cluster, when CUDA is available: one worker per GPU (``dask-cuda``; one
        worker without it), each with :data:`GPU_THREADS` chunks in flight unless
        ``threads`` says otherwise.  False for CPU work.
    dashboard_address : str
        Embedded cluster: where its dashboard listens (``HOST:PORT``; default a free
        port on loopback).  The scheduler and workers always listen on loopback.

    Raises
    ------
    ConfigError
        A missing or unreadable scheduler file, a scheduler that does not answer, bad
        sizes, or a cluster that fails to start (one sentence, never Dask's traceback).
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler is not None:
        address = _scheduler_address(scheduler)
        try:
            client = Client(address, timeout=f"{CONNECT_TIMEOUT}s")
        except Exception as e:  # noqa: BLE001 - whatever Dask raises, the user gets one sentence
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler} within {CONNECT_TIMEOUT} s ({first}); "
                              "check the address and that the scheduler is running.") from None
        echo(f"joined the Dask scheduler at {scheduler}; dashboard: {client.dashboard_link}")
        try:
            yield client, None
        finally:
            client.close()
        return
    n_default, t_default, _ = default_workers(gpu and _cuda_available())
    n = workers or n_default
    t = threads or t_default
    if n < 1 or t < 1:
        raise ConfigError(f"--workers and --threads must be at least 1; got {n} and {t}.")
    if memory_limit is not None:
        check_memory_limit(memory_limit)
    check_dashboard_address(dashboard_address)
    torch_threads = max(1, _cores() // (n * t))
    cluster: Any
    with contextlib.ExitStack() as stack:
        try:
            with _workers_ignore_ctrl_c(), dask.config.set(WORKER_CONFIG):  # nannies copy it to their workers
                cuda = _cuda_cluster(memory_limit, t, dashboard_address) if gpu else None
                if cuda is not None:
                    cluster = stack.enter_context(cuda)
                else:
                    cluster = stack.enter_context(LocalCluster(
                        n_workers=n, threads_per_worker=t, processes=processes, memory_limit=memory_limit or "auto",
                        host=LOOPBACK, dashboard_address=dashboard_address, silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        except Exception as e:  # noqa: BLE001 - Dask's start-up errors reach the user as one sentence
            raise _start_error("the local Dask cluster", e) from None
        echo(f"started a local Dask cluster ({len(cluster.workers)} worker(s) x {t} thread(s)); dashboard: "
             f"{client.dashboard_link}")
        yield client, torch_threads


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start worker processes with Ctrl-C (SIGINT) ignored, then restore this process's
    handler.  The terminal sends Ctrl-C to the whole process group: this process stops
    the run and closes the cluster, which ends its workers; left to themselves they would
    each print a traceback of their own.  Spawned processes keep an ignored SIGINT, and
    Python then installs no KeyboardInterrupt handler in them."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def _scheduler_address(scheduler: str) -> str:
    """The address in ``scheduler``: itself, or the ``address`` of a scheduler file.

    A path that exists, or one ending in ``.json``, is a scheduler file; it must be
    readable JSON with an ``address`` (distributed would wait for a missing one for
    ever).
    """
    path = Path(scheduler).expanduser()
    if not (scheduler.endswith(".json") or path.is_file()):
        return scheduler
    if not path.is_file():
        raise ConfigError(f"scheduler file {scheduler} does not exist; give the file written by 'dask scheduler "
                          "--scheduler-file FILE.json' (start the scheduler first) or its address tcp://HOST:PORT.")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"scheduler file {scheduler} cannot be read as JSON ({type(e).__name__}); give the file "
                          "written by 'dask scheduler --scheduler-file FILE.json'.") from None
    address = doc.get("address") if isinstance(doc, dict) else None
    if not isinstance(address, str) or not address:
        raise ConfigError(f"scheduler file {scheduler} has no scheduler address; give the file written by 'dask "
                          "scheduler --scheduler-file FILE.json'.")
    return address


def _cuda_cluster(memory_limit: str | None, threads: int, dashboard_address: str = DEFAULT_DASHBOARD) -> Any:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        from dask_cuda import LocalCUDACluster  # type: ignore[import-not-found]
    except ImportError:
        return None
    return LocalCUDACluster(host=LOOPBACK, dashboard_address=dashboard_address, memory_limit=memory_limit or "auto",
                            threads_per_worker=threads, silence_logs=logging.ERROR)
