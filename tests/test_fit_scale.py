"""Training at scale: files read lazily, per-channel models, resume, early stopping,
data-parallel training, and what is written beside the model."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from asn2n_dask import TrainConfig, fit, load_model
from asn2n_dask.cli import app
from asn2n_dask.io import ImageMeta, write_image
from asn2n_dask.synthetic import noisy_frame

CFG = TrainConfig(preset="tiny", steps=10, patch=32, batch=4, val_every=2, checkpoint_every=3)


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """A (T=3, C=2, 128, 160) uint16 OME-Zarr with channel names."""
    d = tmp_path_factory.mktemp("fitscale")
    frames = np.stack([np.stack([noisy_frame((128, 160), photons=5.0 + 10 * c, seed=7 * t + c)[0]
                                 for c in range(2)]) for t in range(3)])
    write_image(d / "movie.zarr", frames, ImageMeta(axes="TCYX", format="ome-zarr", channel_names=("er", "mito")))
    return d, frames


def _crashed_fit(d, model_dir):
    """A training of ``CFG`` interrupted at step 4 (after its checkpoint at step 3)."""

    def crash(what, step, total):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(str(d / "movie.zarr"), config=CFG, model_dir=model_dir, progress=crash)


def _weights(model):
    return [v for ch in model.channels for v in ch.net.state_dict().values()]


def test_a_crashed_training_resumed_equals_an_uninterrupted_one(movie, tmp_path):
    d, _ = movie
    whole = fit(str(d / "movie.zarr"), config=CFG, model_dir=tmp_path / "whole")

    class Crash(Exception):
        pass

    def crash(what, step, total):
        if what.endswith("mito") and step == 7:  # the second channel, after its checkpoint at step 6
            raise Crash

    with pytest.raises(Crash):
        fit(str(d / "movie.zarr"), config=CFG, model_dir=tmp_path / "resumed", progress=crash)
    assert (tmp_path / "resumed" / "train-state.json").is_file()
    assert not json.loads((tmp_path / "resumed" / "model.json").read_text())["complete"]
    again = fit(str(d / "movie.zarr"), config=CFG, model_dir=tmp_path / "resumed", resume=True)
    for a, b in zip(_weights(whole), _weights(again)):
        assert torch.equal(a, b)
    def timeless(model):
        return [[{k: v for k, v in h.items() if k != "seconds"} for h in c.history] for c in model.channels]

    assert timeless(whole) == timeless(again)
    assert not (tmp_path / "resumed" / "train-state.json").exists()
    assert json.loads((tmp_path / "resumed" / "model.json").read_text())["complete"]


def test_resume_refuses_a_checkpoint_of_other_options(movie, tmp_path):
    from asn2n_dask.errors import InputError

    d, _ = movie

    _crashed_fit(d, tmp_path / "m")
    with pytest.raises(InputError, match="other data or options"):
        fit(str(d / "movie.zarr"), config=TrainConfig(**{**CFG.to_dict(), "seed": 5}), model_dir=tmp_path / "m",
            resume=True)


def test_early_stopping_keeps_the_best_weights(movie):
    d, frames = movie
    cfg = TrainConfig(preset="tiny", steps=200, patch=32, batch=4, val_every=1, patience=2, lr=5.0)
    m = fit(frames[:, :1], axes="TCYX", config=cfg)
    ch = m.channels[0]
    assert ch.extra["stopped_early"] and ch.steps < 200
    vals = [h["val_loss"] for h in ch.history]
    assert ch.best_step == ch.history[int(np.nanargmin(vals))]["step"]
    assert ch.steps - ch.best_step == 2


def test_fit_all_channels_of_a_zarr_writes_curves_montages_and_provenance(movie, tmp_path):
    d, frames = movie
    r = CliRunner().invoke(app, ["-q", "fit", str(d / "movie.zarr"), "--model", str(tmp_path / "models"), "--channels",
                                 "all", "--preset", "tiny", "--steps", "6", "--patch", "32", "--batch", "4",
                                 "--val-every", "2", "--risk-share", "0.5"])
    assert r.exit_code == 0, r.output
    m = load_model(tmp_path / "models")
    assert [c.name for c in m.channels] == ["er", "mito"]
    doc = json.loads((tmp_path / "models" / "model.json").read_text())
    prov = doc["provenance"]
    assert prov["inputs"] == [str((d / "movie.zarr").absolute())] and prov["shape"] == [list(frames.shape)]
    assert set(prov["statistics"]) == {"er", "mito"}
    assert all(len(s["digest"]) == 64 for s in prov["statistics"].values())
    assert prov["wall_seconds"] > 0 and doc["package_version"] and doc["torch_version"]
    for c, ch in enumerate(m.channels):
        rows = list(csv.DictReader(open(tmp_path / "models" / f"curves-{c}.csv")))
        assert [int(r["step"]) for r in rows] == [h["step"] for h in ch.history] == [2, 4, 6]
        assert all(r["val_loss"] for r in rows)
        for name in (f"curves-{c}.png", f"montage-{c}.png"):
            assert (tmp_path / "models" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 0.0 <= ch.extra["risk_share_seen"] <= 1.0  # the share achieved (this data has no risky patches)
    assert not (tmp_path / "models" / "train-state.json").exists()


def test_one_channel_model_is_picked_by_name_when_denoising(movie, tmp_path):
    from asn2n_dask import InferConfig, denoise
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import Selection, open_source

    d, frames = movie
    r = CliRunner().invoke(app, ["-q", "fit", str(d / "movie.zarr"), "--model", str(tmp_path / "mito"), "--channels",
                                 "mito", "--preset", "tiny", "--steps", "3", "--patch", "32", "--batch", "2"])
    assert r.exit_code == 0, r.output
    m = load_model(tmp_path / "mito")
    assert [c.name for c in m.channels] == ["mito"]
    src = open_source(d / "movie.zarr")
    run_pipeline(src, tmp_path / "out.zarr", tmp_path / "mito", selection=Selection.parse(src, ["mito"]),
                 options=RunOptions(infer=InferConfig(tile=32)), client="sync")
    import zarr

    got = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"][...]
    want = denoise(frames[:, 1], m, axes="TYX", config=InferConfig(tile=32))
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-5, atol=1e-3)


def test_a_checkpoint_left_in_place_is_not_silently_overwritten(movie, tmp_path):
    d, _ = movie

    _crashed_fit(d, tmp_path / "m")
    r = CliRunner().invoke(app, ["-q", "fit", str(d / "movie.zarr"), "--model", str(tmp_path / "m"), "--preset", "tiny",
                                 "--steps", "10", "--patch", "32", "--batch", "4"])
    assert r.exit_code == 2 and "--resume" in r.stderr


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this Python")
def test_data_parallel_two_processes_match_one_process(movie, tmp_path):
    """torchrun with 2 gloo processes, each half of every batch, gives the losses and
    weights of one process on the whole batches."""
    d, _ = movie
    args = ["fit", str(d / "movie.zarr"), "--channels", "er", "--preset", "tiny", "--steps", "6", "--patch", "32",
            "--batch", "4", "--val-every", "2", "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "asn2n_dask", "-q", *args[:-1], "--model", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "asn2n_dask", "-q", *args[:-1],
                          "--model", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    m1, m2 = load_model(tmp_path / "one"), load_model(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "model.json").read_text())["provenance"]["processes"] == 2
    h1, h2 = m1.channels[0].history, m2.channels[0].history
    np.testing.assert_allclose([h["train_loss"] for h in h1], [h["train_loss"] for h in h2], rtol=1e-4)
    np.testing.assert_allclose([h["val_loss"] for h in h1], [h["val_loss"] for h in h2], rtol=1e-4)
    for a, b in zip(_weights(m1), _weights(m2)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_training_uses_the_statistics_of_the_pipeline_reduction_pass(movie):
    from asn2n_dask.pipeline import RunOptions, compute_stats, make_plan
    from asn2n_dask.source import Selection, open_source

    d, _ = movie
    cfg = TrainConfig(preset="tiny", steps=2, patch=32, batch=2)
    m = fit(str(d / "movie.zarr"), config=cfg, channels=["mito"], time="1:3")  # patches from t = 1, 2 only
    src = open_source(d / "movie.zarr")
    plan = make_plan(src, Selection.parse(src, ["mito"]), options=RunOptions())
    stats = compute_stats(plan, cfg.norm)  # what denoising normalises with (every time point)
    assert m.channels[0].stats == stats[0].norm
    assert m.info["statistics"]["mito"] == stats[0].to_dict()


def test_resume_of_a_finished_model_is_refused_instead_of_retraining(movie, tmp_path):
    d, _ = movie
    args = ["-q", "fit", str(d / "movie.zarr"), "--model", str(tmp_path / "m"), "--preset", "tiny", "--steps", "2",
            "--patch", "32", "--batch", "2"]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = (tmp_path / "m" / "model.json").read_bytes()
    r = CliRunner().invoke(app, [*args, "--resume"])
    assert r.exit_code == 2 and "nothing to resume" in r.stderr
    assert (tmp_path / "m" / "model.json").read_bytes() == before
