"""Batch-system profiles, rendered job scripts, and a real multi-process cluster run."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from asn2n_dask.errors import ConfigError
from asn2n_dask.hpc import jobqueue_client, load_profile, make_cluster, worker_torch_threads
from tests.conftest import ROOT

pytest.importorskip("dask_jobqueue")
PROFILES = sorted((ROOT / "cluster").glob("*.yaml"))


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home directory of the test's own: ``security: auto`` writes the workers' TLS key
    under ``$HOME/.asn2n/tls``."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_shipped_profile_renders_a_job_script(path, home):
    prof = load_profile(path)
    with make_cluster(prof) as cluster:
        script = cluster.job_script()
    prefix = {"slurm": "#SBATCH", "pbs": "#PBS", "lsf": "#BSUB"}[prof.kind]
    assert script.startswith("#!/usr/bin/env bash") and prefix in script
    assert "distributed.cli.dask_worker" in script and "--death-timeout" in script
    assert "--local-directory ${TMPDIR:-/tmp}" in script  # node-local scratch, expanded on the node
    if prof.gpu:
        gpu = "--gres=gpu:1" if prof.kind == "slurm" else "ngpus=1"
        assert gpu in script and "module load cuda" in script
        assert "--nworkers" not in script  # one worker per job, one GPU each


def test_slurm_gpu_directives_are_the_profiles(tmp_path, home):
    with make_cluster(load_profile(ROOT / "cluster" / "slurm-gpu.yaml")) as cluster:
        lines = cluster.job_script().splitlines()
    for want in ("#SBATCH -J asn2n", "#SBATCH -p gpu", "#SBATCH -A my-lab", "#SBATCH -t 04:00:00",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --gres=gpu:1", "#SBATCH -e asn2n-logs/asn2n-%J.err"):
        assert want in lines, want


def _profile(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,needle", [
    ("kind: slurm\ncluster:\n  local_directory: /scratch/my dir\n", "shell characters"),
    ("kind: slurm\ncluster:\n  log_directory: /x;rm -rf ~\n", "shell characters"),
    ("kind: slurm\ncluster:\n  queue: 'gpu$(reboot)'\n", "shell characters"),
    ("kind: slurm\ncluster:\n  python: '`id`'\n", "shell characters"),
    ("kind: slurm\ncluster:\n  death_timeout: '60; curl x|sh'\n", "shell characters"),
    ("kind: slurm\ncluster:\n  log_directory: $HOME/logs\n", "shell characters"),
    ("kind: slurm\ncluster:\n  env_extra: ['x']\n", "not supported"),
    ("kind: slurm\ncluster:\n  job_extra_directives: ['--gres=gpu:1; reboot']\n", "plain options"),
    ('kind: slurm\ncluster:\n  job_script_prologue: ["a\\nb"]\n', "single-line"),
    ("kind: slurm\nworkers: 3\n", "unknown key"),
    ("kind: condor\n", "kind must be one of"),
    ("kind: [slurm\n", "not valid YAML"),
    ("kind: slurm\nmin_jobs: 5\nmax_jobs: 2\n", "min_jobs <= max_jobs"),
    ("kind: slurm\ncluster:\n  cores: 0\n", "whole number"),
    ("kind: slurm\ncluster:\n  job_cpu: '16'\n", "whole number"),
    ("kind: slurm\nsecurity: tls\n", "security must be auto, none"),
    ("kind: slurm\nsecurity: {ca_file: /nonexistent/ca.pem, cert: /nonexistent/c.pem}\n", "not a readable file"),
    ("kind: slurm\nsecurity: {cert: /nonexistent/c.pem}\n", "needs ca_file and cert"),
    ("kind: slurm\ncluster:\n  shared_temp_directory: /shared/my dir\n", "shell characters"),
    ("- a\n- list\n", "must be a YAML mapping"),
])
def test_unsafe_or_malformed_profiles_are_refused(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=needle):
        load_profile(_profile(tmp_path, text))


def test_the_cli_refuses_a_bad_profile_in_one_sentence(tmp_path, frame):
    from typer.testing import CliRunner

    from asn2n_dask.cli import app

    p = _profile(tmp_path, "kind: slurm\ncluster:\n  local_directory: /scratch/my dir\n")
    r = CliRunner().invoke(app, ["-q", "denoise", str(tmp_path), "-o", str(tmp_path / "o.zarr"), "--model",
                                 str(tmp_path), "--cluster", str(p)])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_a_profile_that_is_not_text_is_one_sentence(tmp_path):
    p = tmp_path / "binary.yaml"
    p.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not a text file"):
        load_profile(p)


# ---------------------------------------------------------------- threads: no oversubscription
def _job_threads(script: str, kind: str) -> tuple[int, int, int]:
    """(CPU cores booked, worker processes, Dask threads per process) of a job script."""
    booked = {"slurm": r"#SBATCH --cpus-per-task=(\d+)", "pbs": r"#PBS -l select=\d+:ncpus=(\d+)",
              "lsf": r"#BSUB -n (\d+)"}[kind]
    nworkers = re.search(r"--nworkers (\d+)", script)
    return (int(re.search(booked, script).group(1)), int(nworkers.group(1)) if nworkers else 1,
            int(re.search(r"--nthreads (\d+)", script).group(1)))


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_shipped_profiles_run_as_many_threads_as_their_jobs_have_cores(path, home):
    """Each chunk task's network gets booked / (processes x threads) torch threads: all the
    job's cores are used and none is oversubscribed.  A CPU job keeps one chunk in flight
    (memory at one task's peak), its network on every core."""
    prof = load_profile(path)
    with make_cluster(prof) as cluster:
        booked, processes, threads = _job_threads(cluster.job_script(), prof.kind)
    torch_threads = worker_torch_threads(prof)
    assert torch_threads * processes * threads == booked, (torch_threads, processes, threads, booked)
    if not prof.gpu:
        assert (processes, threads, torch_threads) == (1, 1, booked)


@pytest.mark.parametrize("cluster,want", [
    ("cores: 16\n  processes: 1", 1),  # 16 chunks in flight: one torch thread each
    ("cores: 16\n  processes: 4", 1),
    ("cores: 1\n  job_cpu: 16", 16),
    ("cores: 2\n  job_cpu: 16", 8),
    ("cores: 4\n  processes: 2\n  job_cpu: 16", 4),
])
def test_torch_threads_come_from_the_profile(tmp_path, cluster, want):
    assert worker_torch_threads(load_profile(_profile(tmp_path, f"kind: slurm\ncluster:\n  {cluster}\n"))) == want


def test_the_pipeline_gives_batch_workers_the_profiles_torch_threads(tmp_path, home):
    from asn2n_dask.connect import ClusterOptions, open_client

    p = _profile(tmp_path, "kind: slurm\nmin_jobs: 0\nmax_jobs: 1\ncluster:\n  cores: 2\n  job_cpu: 8\n"
                           "  memory: 1GB\n")
    with open_client(ClusterOptions(cluster=p, jobs=1), echo=lambda m: None, device="cpu") as (client,
                                                                                            torch_threads):
        assert client.cluster.job_script()
    assert torch_threads == 4


# ---------------------------------------------------------------- TLS between scheduler, workers and client
def test_shipped_profiles_use_tls_with_a_certificate_made_for_the_run(home):
    for path in PROFILES:
        assert "security: auto" in path.read_text(), path
    messages: list[str] = []
    with jobqueue_client(ROOT / "cluster" / "slurm.yaml", jobs=1, echo=messages.append) as client:
        cluster = client.cluster
        script = cluster.job_script()
        assert cluster.scheduler_address.startswith("tls://") and client.scheduler.address.startswith("tls://")
        assert cluster.security.require_encryption
        for flag in ("--protocol tls://", "--tls-ca-file $HOME/.asn2n/tls/", "--tls-cert $HOME/.asn2n/tls/",
                     "--tls-key $HOME/.asn2n/tls/"):
            assert flag in script, flag
        keys = list((home / ".asn2n" / "tls").iterdir())
        assert len(keys) == 3 and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
        assert stat.S_IMODE((home / ".asn2n" / "tls").stat().st_mode) == 0o700
        key = next(k for k in keys if ".key." in k.name)
        assert f"--tls-key $HOME/.asn2n/tls/{key.name}" in script
        # the dashboard (HTTP, no authentication) listens on this machine only
        assert "TLS; dashboard: http://127.0.0.1:" in messages[0]
    assert not list((home / ".asn2n" / "tls").iterdir())  # the workers' key is removed at the end


def test_a_plain_tcp_client_cannot_join_a_tls_cluster(home, tmp_path):
    from distributed import Client

    with jobqueue_client(_profile(tmp_path, "kind: slurm\nmin_jobs: 0\ncluster:\n  cores: 1\n  memory: 1GB\n"),
                         echo=lambda m: None) as client:
        address = client.scheduler.address.replace("tls://", "tcp://")
        with pytest.raises((OSError, TimeoutError)):
            Client(address, timeout="3s")


def test_security_none_and_site_certificates(tmp_path, home):
    from distributed.security import Security

    plain = load_profile(_profile(tmp_path, "kind: pbs\nsecurity: none\ncluster:\n  cores: 1\n  memory: 1GB\n"))
    with make_cluster(plain) as cluster:
        script = cluster.job_script()
    assert "--tls" not in script and "tls://" not in script and not cluster.security.require_encryption

    made = Security.temporary()  # stands in for the site's certificate authority
    (tmp_path / "ca.pem").write_text(made.tls_ca_file)
    (tmp_path / "cert.pem").write_text(made.tls_worker_cert)
    (tmp_path / "key.pem").write_text(made.tls_worker_key)
    site = load_profile(_profile(tmp_path, f"kind: lsf\nsecurity:\n  ca_file: {tmp_path}/ca.pem\n"
                                           f"  cert: {tmp_path}/cert.pem\n  key: {tmp_path}/key.pem\n"
                                           "cluster:\n  cores: 1\n  memory: 1GB\n"))
    with make_cluster(site) as cluster:
        script = cluster.job_script()
        assert cluster.security.require_encryption and cluster.scheduler_address.startswith("tls://")
    assert (f"--protocol tls:// --tls-ca-file {tmp_path}/ca.pem --tls-cert {tmp_path}/cert.pem "
            f"--tls-key {tmp_path}/key.pem") in script
    assert not (home / ".asn2n").exists()  # nothing written for the site's own certificates


def test_auto_security_without_cryptography_says_how_to_install_it(tmp_path, home, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography", None)  # as where it is not installed
    prof = load_profile(_profile(tmp_path, "kind: slurm\ncluster:\n  cores: 1\n  memory: 1GB\n"))
    with pytest.raises(ConfigError, match=r"needs the cryptography package; pip install .*security: none"):
        make_cluster(prof)


def test_errors_of_dask_jobqueue_at_start_up_are_one_sentence(tmp_path, home):
    blocker = tmp_path / "file"
    blocker.write_text("")
    prof = load_profile(_profile(tmp_path, f"kind: slurm\nsecurity: none\ncluster:\n  cores: 1\n  memory: 1GB\n"
                                           f"  log_directory: {blocker}/logs\n"))
    with pytest.raises(ConfigError, match=r"SLURMCluster could not start \((FileExistsError|NotADirectoryError)"):
        make_cluster(prof)


def test_the_batch_cluster_is_closed_on_error(tmp_path, home):
    p = _profile(tmp_path, "kind: slurm\nmin_jobs: 0\nmax_jobs: 2\ncluster:\n  cores: 1\n  memory: 1GB\n")
    seen = {}
    with pytest.raises(RuntimeError, match="boom"):
        with jobqueue_client(p, jobs=1, echo=lambda m: None) as client:
            seen["cluster"] = client.cluster
            assert client.cluster.job_script()
            raise RuntimeError("boom")
    assert seen["cluster"].status.name == "closed"


# ---------------------------------------------------------------- the batch-script route, run for real
@pytest.fixture(scope="module")
def small_movie(tmp_path_factory):
    from asn2n_dask import TrainConfig, fit, save_model
    from asn2n_dask.synthetic import noisy_frame

    d = tmp_path_factory.mktemp("hpc")
    frames = np.stack([np.stack([noisy_frame((96, 112), photons=8.0, seed=t + 5 * c)[0] for c in range(2)])
                       for t in range(2)])
    odd = d / "my movie;touch INJECTED.zarr"  # a file name with a space and shell characters
    z = zarr.create_array(str(odd), shape=frames.shape, chunks=(1, 1, 48, 56), dtype=frames.dtype,
                          dimension_names=["t", "c", "y", "x"])
    z[...] = frames
    save_model(fit(frames, axes="TCYX", config=TrainConfig(preset="tiny", steps=3, patch=32, batch=2)), d / "model")
    return d, odd


def test_sbatch_script_runs_a_scheduler_and_two_workers_and_quotes_file_names(small_movie, tmp_path):
    """The batch-script route end to end: the script starts `dask scheduler` and (through a
    stand-in `srun` that starts two tasks) two `dask worker` processes, runs asn2n against
    them, and stops them; the result equals a run without a cluster."""
    from asn2n_dask import InferConfig
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import open_source

    d, odd = small_movie
    bindir = tmp_path / "bin"
    bindir.mkdir()
    srun = bindir / "srun"
    seen = tmp_path / "scheduler-seen.json"  # the scheduler file as the workers get it
    srun.write_text(f'#!/usr/bin/env bash\ncp "{tmp_path}/asn2n-scheduler-42.json" "{seen}"\n'
                    'while [[ "${1:-}" == --* ]]; do shift; done\n"$@" &\n"$@" &\nwait\n')
    srun.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "42", "OMP_NUM_THREADS": "1",
           "HOME": str(tmp_path / "home")}
    out = tmp_path / "out.zarr"
    r = subprocess.run(["bash", str(ROOT / "cluster" / "examples" / "denoise.sbatch"), str(odd), str(out),
                        str(d / "model"), "--tile", "32"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower() and "distributed" not in ln]
    assert r.returncode == 0, errors[:5]
    assert not (tmp_path / "INJECTED.zarr").exists() and not Path("INJECTED.zarr").exists()
    assert not (tmp_path / "asn2n-scheduler-42.json").exists()  # cleaned up with the processes
    assert json.loads(seen.read_text())["address"].startswith("tls://")  # nobody joins without the job's key
    assert not (tmp_path / "home" / ".asn2n" / "tls" / "job-42").exists()  # the key is gone with the job
    run_pipeline(open_source(odd), tmp_path / "ref.zarr", d / "model", options=RunOptions(infer=InferConfig(tile=32)),
                 client="sync")
    got = zarr.open_group(str(out), mode="r")
    want = zarr.open_group(str(tmp_path / "ref.zarr"), mode="r")
    np.testing.assert_array_equal(got["0"][...], want["0"][...])
    assert dict(got.attrs)["asn2n"]["status"] == "complete"


def _slurm_node_idle() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "idle" in r.stdout or "mix" in r.stdout


@pytest.mark.skipif(not _slurm_node_idle(), reason="needs a SLURM node (sbatch, an idle node): .ci/slurm-up makes a "
                                                   "one-node SLURM on CI machines where it can")
def test_a_real_slurm_cluster_runs_the_pipeline(small_movie, tmp_path):
    """Submit worker jobs through SLURMCluster with the command a user runs, and compare
    with a run without a cluster.  A worker job that never starts fails the test in
    minutes, not the suite in hours."""
    from asn2n_dask import InferConfig
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import open_source

    d, odd = small_movie
    p = _profile(tmp_path, f"kind: slurm\nmin_jobs: 1\nmax_jobs: 1\ncluster:\n  cores: 1\n  memory: 2GB\n"
                          f"  walltime: '00:10:00'\n  python: {sys.executable}\n")
    cmd = [sys.executable, "-m", "asn2n_dask", "-q", "denoise", str(odd), "-o", str(tmp_path / "slurm.zarr"),
           "--model", str(d / "model"), "--tile", "32", "--cluster", str(p), "--jobs", "1"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--name", "asn2n"], timeout=30)
        pytest.fail("the SLURM worker job did not finish the run in 5 minutes (squeue shows why)")
    assert r.returncode == 0, r.stderr[-2000:]
    run_pipeline(open_source(odd), tmp_path / "ref.zarr", d / "model", options=RunOptions(infer=InferConfig(tile=32)),
                 client="sync")
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "slurm.zarr"))["0"][...],
                                  zarr.open_group(str(tmp_path / "ref.zarr"))["0"][...])


def test_the_job_script_key_is_readable_by_its_owner_only(tmp_path):
    from asn2n_dask.hpc import write_job_tls

    d = write_job_tls(tmp_path / "tls" / "job-1")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("ca.pem", "cert.pem", "key.pem"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    assert "PRIVATE KEY" in (d / "key.pem").read_text() and "CERTIFICATE" in (d / "ca.pem").read_text()
    r = subprocess.run([sys.executable, "-m", "asn2n_dask.hpc", "tls"], capture_output=True, text=True)
    assert r.returncode != 0 and "usage" in r.stderr


def test_job_scripts_give_workers_the_embedded_clusters_settings(tmp_path, home):
    """The worker settings (cluster.WORKER_CONFIG) are exported before the profile's own
    set-up lines, which keep their order after them."""
    from asn2n_dask.cluster import worker_environment

    with make_cluster(load_profile(ROOT / "cluster" / "slurm-gpu.yaml")) as cluster:
        lines = cluster.job_script().splitlines()
    exports = [f"export {k}={v}" for k, v in worker_environment().items()]
    assert exports and all(e in lines for e in exports)
    assert max(lines.index(e) for e in exports) < lines.index("module load cuda")
    plain = "kind: pbs\ncluster:\n  cores: 1\n  memory: 1GB\n"  # no prologue of its own
    with make_cluster(load_profile(_profile(tmp_path, plain))) as cluster:
        assert all(e in cluster.job_script().splitlines() for e in exports)
