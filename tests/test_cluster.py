"""The embedded cluster: who can reach it, and cluster options that must fail at once.

Every bad cluster option is refused in one sentence with exit status 2 within seconds,
never a hang or a traceback; the embedded cluster listens on this machine only.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from asn2n_dask.cli import app
from asn2n_dask.cluster import dask_client
from asn2n_dask.errors import ConfigError

runner = CliRunner()


def _listening() -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every listening TCP socket of this process and its children."""
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:  # pragma: no cover - a child that ended meanwhile
            continue
        found += [(proc.pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def _loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.split("%")[0]).is_loopback


def test_the_embedded_cluster_listens_on_loopback_only():
    """Scheduler, nanny, worker and dashboard of a default run: nobody else on a shared
    login node can reach them (the scheduler has no authentication)."""
    before = {(ip, port) for _, ip, port in _listening()}
    with dask_client(workers=1, threads=1, gpu=False, echo=lambda m: None) as (client, _):
        client.run(lambda: None)  # the worker process is up
        info = client.scheduler_info()
        sockets = [s for s in _listening() if (s[1], s[2]) not in before]
        assert len({pid for pid, _, _ in sockets}) >= 2  # this process and the worker process
        assert sockets and all(_loopback(ip) for _, ip, _ in sockets), sockets
        assert "127.0.0.1" in client.dashboard_link
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])


def test_dashboard_address_exposes_the_dashboard_and_nothing_else():
    with dask_client(workers=1, threads=1, gpu=False, echo=lambda m: None,
                     dashboard_address=":0") as (client, _):
        client.run(lambda: None)
        port = client.scheduler_info()["services"]["dashboard"]
        exposed = {(ip, p) for _, ip, p in _listening() if not _loopback(ip)}
        assert exposed and {p for _, p in exposed} == {port}, exposed


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "host:99999", "a b:1"])
def test_a_bad_dashboard_address_is_refused(address):
    with pytest.raises(ConfigError, match="dashboard-address"):
        with dask_client(gpu=False, dashboard_address=address, echo=lambda m: None):
            pass


def test_the_cuda_cluster_listens_on_loopback_only(monkeypatch):
    """The LocalCUDACluster path gets the same binding (dask-cuda stood in for: no GPU here)."""
    import sys
    import types

    import torch

    from asn2n_dask import cluster

    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        return "cluster"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=fake))
    assert cluster._cuda_cluster(None, 4) == "cluster"
    assert seen["host"] == "127.0.0.1" and seen["dashboard_address"] == "127.0.0.1:0"
    cluster._cuda_cluster(None, 4, ":8787")
    assert seen["host"] == "127.0.0.1" and seen["dashboard_address"] == ":8787"


# ---------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """A tiny Zarr input and a model for it, so that a run gets as far as its cluster."""
    from asn2n_dask import TrainConfig, fit, save_model
    from asn2n_dask.synthetic import noisy_frame

    d = tmp_path_factory.mktemp("cluster")
    frames = noisy_frame((64, 64), photons=8.0, seed=1)[0][None]
    z = zarr.create_array(str(d / "in.zarr"), shape=frames.shape, chunks=(1, 64, 64), dtype=frames.dtype,
                          dimension_names=["t", "y", "x"])
    z[...] = frames
    save_model(fit(frames[0], config=TrainConfig(preset="tiny", steps=2, patch=32, batch=2)), d / "model")
    return d


def _denoise(d: Path, *options: str, seconds: float = 20.0):
    t0 = time.perf_counter()
    r = runner.invoke(app, ["-q", "denoise", str(d / "in.zarr"), "-o", str(d / "out.zarr"), "-m", str(d / "model"),
                            "--tile", "32", *options])
    took = time.perf_counter() - t0
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert took < seconds, took
    assert not (d / "out.zarr").exists()
    return r.stderr


def test_a_missing_scheduler_file_is_refused_at_once(movie):
    msg = _denoise(movie, "--scheduler", str(movie / "missing.json"), seconds=10)
    assert "missing.json does not exist" in msg and "dask scheduler --scheduler-file" in msg


@pytest.mark.parametrize("content,needle", [
    (b"\xff\x00\x13binary", "cannot be read as JSON"),
    (b"{not json", "cannot be read as JSON"),
    (b'{"type": "Scheduler"}', "has no scheduler address"),
])
def test_a_scheduler_file_without_an_address_is_refused(movie, tmp_path, content, needle):
    f = tmp_path / "scheduler.json"
    f.write_bytes(content)
    assert needle in _denoise(movie, "--scheduler", str(f), seconds=10)


def test_an_unreachable_scheduler_is_refused_within_seconds(movie):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    msg = _denoise(movie, "--scheduler", f"tcp://127.0.0.1:{port}", seconds=20)
    assert "cannot reach the Dask scheduler" in msg


@pytest.mark.parametrize("limit", ["1B", "100MiB", "0"])
def test_a_memory_limit_too_small_to_run_a_chunk_is_refused(movie, limit):
    assert "at least 256MiB" in _denoise(movie, "--memory-limit", limit, seconds=10)


def test_run_refuses_bad_cluster_options_before_training(movie, tmp_path):
    t0 = time.perf_counter()
    r = runner.invoke(app, ["-q", "run", str(movie / "in.zarr"), "-o", str(tmp_path / "o.zarr"), "--preset", "tiny",
                            "--steps", "200", "--memory-limit", "1B"])
    assert r.exit_code == 2 and "at least 256MiB" in r.stderr and time.perf_counter() - t0 < 10
    assert not (tmp_path / "o.zarr.model").exists()


@pytest.mark.parametrize("content,needle", [
    (b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00\x00", "not a text file"),
    (b"#!/bin/sh\necho hello\n", "must be a YAML mapping"),
    (b"kind: slurm\ncluster:\n  cores: many\n", "whole number"),
    (b"kind: slurm\nsecurity: maybe\n", "security must be auto, none"),
])
def test_a_cluster_profile_that_is_not_a_profile_is_one_sentence(movie, tmp_path, content, needle):
    f = tmp_path / "profile"
    f.write_bytes(content)
    assert needle in _denoise(movie, "--cluster", str(f), seconds=10)


def test_a_cluster_profile_that_is_a_directory_is_one_sentence(movie, tmp_path):
    assert "does not exist or is not a file" in _denoise(movie, "--cluster", str(tmp_path), seconds=10)


def test_a_cluster_that_fails_to_start_is_one_sentence(movie, monkeypatch):
    """An error of Dask's own while the embedded cluster starts (here: a port that cannot
    be bound) reaches the user as one sentence, not a traceback."""
    import distributed

    def broken(*args, **kwargs):
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(distributed, "LocalCluster", broken)
    msg = _denoise(movie, "--device", "cpu", seconds=20)
    assert "the local Dask cluster could not start (OSError" in msg


def test_the_default_run_works_on_loopback(movie, tmp_path):
    r = runner.invoke(app, ["denoise", str(movie / "in.zarr"), "-o", str(tmp_path / "ok.zarr"), "-m",
                            str(movie / "model"), "--tile", "32", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "dashboard: http://127.0.0.1:" in r.stderr
    assert np.isfinite(zarr.open_group(str(tmp_path / "ok.zarr"), mode="r")["0"][...]).all()


def test_workers_of_the_embedded_cluster_keep_no_profile_history():
    """Dask's statistical profiler kept every second's call tree for 1000 s on each
    worker: memory that grew with the run (benchmarks/pipeline.py --stage tasks).  The
    setting reaches the worker processes and leaves this process's configuration as it was."""
    import dask

    before = dask.config.get("distributed.worker.profile.enabled")

    def profiling(dask_worker) -> tuple[bool, bool]:
        import dask

        return dask.config.get("distributed.worker.profile.enabled"), "profile" in dask_worker.periodic_callbacks

    with dask_client(workers=1, threads=1, gpu=False, echo=lambda m: None) as (client, _):
        assert list(client.run(profiling).values()) == [(False, False)]
        assert dask.config.get("distributed.worker.profile.enabled") == before


def test_the_worker_environment_is_the_worker_config():
    """Batch jobs get the embedded cluster's worker settings as DASK_* variables: Dask
    reads them back as the same settings."""
    import dask

    from asn2n_dask.cluster import WORKER_CONFIG, worker_environment

    read = dask.config.collect_env(worker_environment())
    for key, value in WORKER_CONFIG.items():
        node = read
        for part in key.split("."):
            node = node[part]
        assert node == value, key
