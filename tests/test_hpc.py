"""Batch-system profiles, rendered job scripts, and a real multi-process cluster run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from asn2n_dask.errors import ConfigError
from asn2n_dask.hpc import jobqueue_client, load_profile, make_cluster
from tests.conftest import ROOT

pytest.importorskip("dask_jobqueue")
PROFILES = sorted((ROOT / "cluster").glob("*.yaml"))


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_shipped_profile_renders_a_job_script(path):
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


def test_slurm_gpu_directives_are_the_profiles(tmp_path):
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


def test_the_batch_cluster_is_closed_on_error(tmp_path):
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
    srun.write_text('#!/usr/bin/env bash\nwhile [[ "${1:-}" == --* ]]; do shift; done\n"$@" &\n"$@" &\nwait\n')
    srun.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "42", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out.zarr"
    r = subprocess.run(["bash", str(ROOT / "cluster" / "examples" / "denoise.sbatch"), str(odd), str(out),
                        str(d / "model"), "--tile", "32"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower() and "distributed" not in ln]
    assert r.returncode == 0, errors[:5]
    assert not (tmp_path / "INJECTED.zarr").exists() and not Path("INJECTED.zarr").exists()
    assert not (tmp_path / "asn2n-scheduler-42.json").exists()  # cleaned up with the processes
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
