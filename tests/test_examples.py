import runpy
import sys
from pathlib import Path

import numpy as np
import tifffile

from tests.conftest import ROOT


def test_denoise_tiff_example_runs_and_improves_the_frame(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["denoise_tiff.py", str(tmp_path), "--steps", "120"])
    runpy.run_path(str(ROOT / "examples" / "denoise_tiff.py"), run_name="__main__")
    assert (tmp_path / "before_after.png").stat().st_size > 10_000
    from asn2n_dask.synthetic import noisy_frame

    noisy, truth = noisy_frame((192, 192), photons=8.0, seed=1)
    clean = tifffile.imread(tmp_path / "denoised.tif")
    assert np.sqrt(np.mean((clean - truth) ** 2)) < 0.7 * np.sqrt(np.mean((noisy - truth) ** 2))


def test_demo_command(tmp_path):
    from typer.testing import CliRunner

    from asn2n_dask.cli import app

    r = CliRunner().invoke(app, ["demo", "-o", str(tmp_path), "--size", "96", "--steps", "5"])  # not -q: paths
    assert r.exit_code == 0, r.output
    for name in ("noisy.tif", "denoised.tif", "before_after.png", "model/model.json"):
        assert (tmp_path / name).exists(), name
    assert Path(r.stdout.splitlines()[-1].split()[-1]).exists()


def test_denoise_timelapse_example_runs_and_resumes(tmp_path, monkeypatch, capsys):
    import zarr

    argv = ["denoise_timelapse.py", str(tmp_path), "--frames", "2", "--size", "96", "--steps", "3", "--workers", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "examples" / "denoise_timelapse.py"), run_name="__main__")
    root = zarr.open_group(str(tmp_path / "denoised.zarr"), mode="r")
    assert root["0"].shape == (2, 2, 96, 96)
    assert root["labels/risk-0/0"].shape == root["labels/risk-1/0"].shape == (2, 96, 96)  # one per channel, no C
    assert dict(root.attrs)["asn2n"]["status"] == "complete"
    runpy.run_path(str(ROOT / "examples" / "denoise_timelapse.py"), run_name="__main__")
    assert "0 chunks computed" in capsys.readouterr().out


def test_train_per_channel_example_writes_one_network_per_channel_with_curves(tmp_path, monkeypatch, capsys):
    from asn2n_dask import load_model

    monkeypatch.setattr(sys, "argv", ["train_per_channel.py", str(tmp_path), "--frames", "2", "--size", "128",
                                      "--steps", "6"])
    runpy.run_path(str(ROOT / "examples" / "train_per_channel.py"), run_name="__main__")
    m = load_model(tmp_path / "models")
    assert [c.name for c in m.channels] == ["tubulin", "mito"]
    for i in range(2):
        for name in (f"curves-{i}.png", f"curves-{i}.csv", f"montage-{i}.png"):
            assert (tmp_path / "models" / name).is_file(), name
    assert "channel mito: 6 steps" in capsys.readouterr().out


def test_cluster_slurm_example_renders_the_job_without_slurm(tmp_path, monkeypatch, capsys):
    import shutil

    import pytest

    pytest.importorskip("dask_jobqueue")
    which = shutil.which
    # as on a machine without SLURM (where SLURM is up, tests/test_hpc.py submits for real)
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "sbatch" else which(name, *a, **k))
    monkeypatch.setattr(sys, "argv", ["cluster_slurm.py", str(tmp_path), "--jobs", "3"])
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the per-run TLS key goes under $HOME/.asn2n/tls
    runpy.run_path(str(ROOT / "examples" / "cluster_slurm.py"), run_name="__main__")
    script = (tmp_path / "worker-job.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash") and "#SBATCH" in script and "dask_worker" in script
    printed = capsys.readouterr().out
    assert "no SLURM here" in printed and "--jobs 3" in printed and script.strip() in printed


def test_compare_normalisation_example_reports_each_mode(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setattr(sys, "argv", ["compare_normalisation.py", str(tmp_path), "--size", "128", "--steps", "12"])
    runpy.run_path(str(ROOT / "examples" / "compare_normalisation.py"), run_name="__main__")
    printed = capsys.readouterr().out.splitlines()
    for mode in ("adaptive", "local", "global"):
        s = json.loads((tmp_path / f"report-{mode}" / "summary.json").read_text())
        assert set(s["frames"][0]["scores"]["denoised"]) >= {"psnr", "false_obj", "false_fg"}
        assert (tmp_path / f"report-{mode}" / "report.html").is_file()
        assert any(line.split()[0] == mode for line in printed[1:])
