"""Denoise a time-lapse on a SLURM cluster, or, without SLURM, show the job it would submit.

    python examples/cluster_slurm.py [OUT_DIR] [--profile slurm | PROFILE.yaml] [--jobs N]

With SLURM (``sbatch`` on PATH): makes a small synthetic time-lapse Zarr (replace it with
your own store), trains a tiny model on it, and denoises it with Dask workers started
as SLURM jobs from the profile (adaptive between the profile's min and max jobs, all
cancelled at the end).  Without SLURM: writes the worker job script the profile
renders to OUT_DIR/worker-job.sh and prints it, with the command that runs the real
thing; nothing is submitted.  Edit the profile (queue, account, memory, walltime,
modules) for your facility: ``asn2n cluster-profiles --show slurm > site.yaml``, then
``--profile site.yaml``; see cluster/README.md.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import zarr

from asn2n_dask import InferConfig, TrainConfig, denoise, fit
from asn2n_dask.hpc import load_profile, make_cluster
from asn2n_dask.synthetic import noisy_frame


def make_timelapse(path: Path, frames: int = 4, size: int = 256) -> None:
    data = np.stack([np.stack([noisy_frame((size, size), photons=p, seed=2 * t + c)[0] for c, p in
                               enumerate((12.0, 5.0))]) for t in range(frames)])
    arr = zarr.create_array(str(path), shape=data.shape, chunks=(1, 1, size // 2, size // 2), dtype=data.dtype,
                            dimension_names=["t", "c", "y", "x"])
    arr[...] = data


def main(out: Path, profile: str, jobs: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    prof = load_profile(profile)  # a built-in name or a file; unknown options and unsafe values are refused
    if shutil.which("sbatch") is None:
        with make_cluster(prof) as cluster:
            script = cluster.job_script()
        path = out / "worker-job.sh"
        path.write_text(script)
        print(f"no SLURM here: this is the worker job {profile} submits (also in {path}):\n")
        print(script)
        print("on the cluster's login node, run:\n"
              f"  asn2n denoise movie.zarr -o movie-dn.zarr --model movie.model --cluster {profile} --jobs {jobs}")
        return path
    src = out / "timelapse.zarr"
    if not src.exists():
        make_timelapse(src)
    model_dir = out / "model"
    if not (model_dir / "model.json").exists():
        fit(str(src), config=TrainConfig(preset="tiny", steps=100, patch=64, batch=4), model_dir=model_dir)
    result = out / "denoised.zarr"
    summary = denoise(str(src), str(result), model=str(model_dir), config=InferConfig(tile=64), cluster=str(profile),
                      jobs=jobs)
    print(f"output: {result} ({summary.computed} chunks computed on SLURM workers, {summary.skipped} already done)")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, default=Path("slurm-example"))
    ap.add_argument("--profile", default="slurm", help="a built-in profile's name or a profile YAML file")
    ap.add_argument("--jobs", type=int, default=4)
    a = ap.parse_args()
    main(a.out, a.profile, a.jobs)
