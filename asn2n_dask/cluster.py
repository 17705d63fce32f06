"""Where the chunk tasks run: an embedded LocalCluster, or a cluster that already exists.

``dask_client()`` starts a LocalCluster sized from the machine (worker processes,
threads, a memory limit per worker) or joins a running scheduler by address, prints the
dashboard link, and closes what it started on exit (also on error or Ctrl-C).  On a
machine with CUDA GPUs and ``dask-cuda`` installed, the embedded cluster is a
``LocalCUDACluster``: one worker per GPU, each pinned to its device.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from .errors import ConfigError

__all__ = ["dask_client", "default_workers", "relax_malloc_trim", "AllocatorPlugin"]

log = logging.getLogger(__name__)


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
                processes: bool = True, gpu: bool = True) -> Iterator[tuple[Any, int | None]]:
    """A ``distributed.Client`` for the run, and the torch threads each worker should use.

    Parameters
    ----------
    scheduler : str, optional
        Address (``tcp://host:8786``) of a running scheduler, or a scheduler file
        (``*.json``).  Default: start an embedded cluster.
    workers, threads : int, optional
        Embedded cluster: worker processes and threads per worker.
    memory_limit : str, optional
        Embedded cluster: memory per worker (``"4GiB"``; default: the machine's memory
        shared between the workers).
    echo : callable
        Receives the dashboard link.
    processes : bool
        Embedded cluster: worker processes (True) or threads of this process.
    gpu : bool
        Embedded cluster, when CUDA is available: one worker per GPU (``dask-cuda``; one
        worker without it), each with :data:`GPU_THREADS` chunks in flight unless
        ``threads`` says otherwise.  False for CPU work.
    """
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            if scheduler.endswith(".json"):
                client = Client(scheduler_file=scheduler, timeout="30s")
            else:
                client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError, ValueError) as e:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler} ({e}); check the address and "
                              "that the scheduler is running.") from None
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
        from dask.utils import parse_bytes

        try:
            parse_bytes(memory_limit)
        except (ValueError, TypeError):
            raise ConfigError(f"--memory-limit {memory_limit!r} is not a size like 4GiB or 8GB.") from None
    torch_threads = max(1, _cores() // (n * t))
    cluster: Any
    with contextlib.ExitStack() as stack:
        cuda = _cuda_cluster(memory_limit, t) if gpu else None
        if cuda is not None:
            cluster = stack.enter_context(cuda)
        else:
            cluster = stack.enter_context(LocalCluster(
                n_workers=n, threads_per_worker=t, processes=processes, memory_limit=memory_limit or "auto",
                dashboard_address=":0", silence_logs=logging.ERROR))
        client = stack.enter_context(Client(cluster))
        echo(f"started a local Dask cluster ({len(cluster.workers)} worker(s) x {t} thread(s)); dashboard: "
             f"{client.dashboard_link}")
        yield client, torch_threads


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover - torch is a dependency
        return False


def _cuda_cluster(memory_limit: str | None, threads: int) -> Any:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        from dask_cuda import LocalCUDACluster  # type: ignore[import-not-found]
    except ImportError:
        return None
    return LocalCUDACluster(dashboard_address=":0", memory_limit=memory_limit or "auto", threads_per_worker=threads,
                            silence_logs=logging.ERROR)
