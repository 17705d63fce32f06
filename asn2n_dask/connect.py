"""The run's Dask client, from the user's options: the one place a cluster is chosen.

Four routes, decided here and nowhere else: a client the caller already holds (or
``"sync"``: every task in this process), a running scheduler to join (``--scheduler``),
a batch-system cluster started from a profile (``--cluster``, :mod:`asn2n_dask.hpc`),
or an embedded LocalCluster sized from the machine (:mod:`asn2n_dask.cluster`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["ClusterOptions", "open_client"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterOptions:
    """Where a run's tasks go.

    Attributes
    ----------
    client : distributed.Client or "sync", optional
        A client to use as it is; ``"sync"`` runs every task in this process.
    scheduler : str, optional
        Address or scheduler file of a running Dask scheduler to join.
    cluster : path or str, optional
        A SLURM/PBS/LSF profile (a YAML file or a packaged profile's name): batch jobs
        are started, scaled between the profile's min and max jobs, and cancelled at
        the end.
    jobs : int, optional
        The most batch jobs (overrides the profile's ``max_jobs``).
    workers, threads, memory_limit
        Size of an embedded LocalCluster (defaults from the machine).
    dashboard_address : str, optional
        Where the dashboard of a cluster started here listens (``HOST:PORT``).
    """

    client: Any = None
    scheduler: str | None = None
    cluster: str | os.PathLike[str] | None = None
    jobs: int | None = None
    workers: int | None = None
    threads: int | None = None
    memory_limit: str | None = None
    dashboard_address: str | None = None


@contextlib.contextmanager
def open_client(options: ClusterOptions, *, echo: Callable[[str], None] = log.info,
                device: str = "auto") -> Iterator[tuple[Any, int | None]]:
    """The run's client and the torch threads of each worker's network (None: unknown),
    closed (and any cluster started here stopped) on leaving.

    ``echo`` receives the dashboard link; ``device``: ``"cpu"`` sizes an embedded
    cluster for CPU work, otherwise one worker per GPU where there are GPUs.

    Raises
    ------
    ConfigError
        Both a batch-system profile and a scheduler to join are given, or either is
        unusable.
    """
    if options.client is not None:
        yield options.client, None
        return
    if options.cluster is not None:
        if options.scheduler is not None:
            raise ConfigError("give either --cluster (start a batch-system cluster) or --scheduler (join a running "
                              "one), not both.")
        from .hpc import jobqueue_client, load_profile, worker_torch_threads

        threads_per_task = worker_torch_threads(load_profile(options.cluster))
        with jobqueue_client(options.cluster, options.jobs, echo=echo,
                             dashboard_address=options.dashboard_address) as c:
            yield c, threads_per_task
        return
    from .cluster import DEFAULT_DASHBOARD, dask_client

    with dask_client(scheduler=options.scheduler, workers=options.workers, threads=options.threads,
                     memory_limit=options.memory_limit, echo=echo, gpu=device != "cpu",
                     dashboard_address=options.dashboard_address or DEFAULT_DASHBOARD) as (c, torch_threads):
        yield c, torch_threads
