"""The CUDA paths: per-chunk work on the GPU against the CPU reference, bf16, training.

These run where a CUDA GPU is visible (a GPU node, a workstation); elsewhere they are
skipped, and the CPU paths they compare against are tested by the rest of the suite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from asn2n_dask import InferConfig, NormConfig, TrainConfig, fit, save_model
from asn2n_dask.pipeline import RunOptions, run_pipeline
from asn2n_dask.predict import denoise_window, network_fn, window_plan
from asn2n_dask.source import open_source
from asn2n_dask.stats import channel_stats
from asn2n_dask.synthetic import noisy_frame

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 on the GPU without TF32, so it can be compared with the CPU at float tolerance."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(scope="module")
def frame_and_model():
    img = noisy_frame((200, 230), photons=8.0, seed=5)[0]
    model = fit(img, config=TrainConfig(preset="small", steps=6, patch=32, batch=4, val_every=3))
    return img, model


@pytest.mark.parametrize("mode", ["adaptive", "local", "global"])
def test_the_whole_chunk_on_the_gpu_equals_the_cpu_numpy_reference(frame_and_model, mode):
    img, model = frame_and_model
    ch = model.channels[0]
    norm, infer = NormConfig(mode=mode), InferConfig(tile=32, precision="fp32")
    stats = channel_stats(img[None], norm)[0]
    h, w = img.shape
    plan = window_plan((h, w), (40, 170, 30, 200), infer, norm.risk.patch)
    (ry0, ry1), (rx0, rx1) = plan.read
    region = img[ry0:ry1, rx0:rx1]
    kw = dict(stats=stats, norm=norm, infer=infer, multiple=model.multiple)
    gpu, gpu_risk = denoise_window(region, plan, (h, w), network_fn(ch.net, "cuda", "fp32"), device="cuda",
                                   engine="torch", **kw)
    ref, ref_risk = denoise_window(region, plan, (h, w), network_fn(ch.net, "cpu"), device="cpu",
                                   engine="numpy", **kw)
    np.testing.assert_array_equal(gpu_risk, ref_risk)
    np.testing.assert_allclose(gpu, ref, rtol=0, atol=1e-4 * float(np.ptp(img)))


def test_bf16_stays_close_to_fp32(frame_and_model):
    img, model = frame_and_model
    ch = model.channels[0]
    h, w = img.shape
    infer = InferConfig(tile=32)
    stats = channel_stats(img[None])[0]
    plan = window_plan((h, w), (0, h, 0, w), infer, 64)
    outs = [denoise_window(img, plan, (h, w), network_fn(ch.net, "cuda", p), stats=stats, infer=infer,
                           device="cuda", multiple=model.multiple)[0] for p in ("fp32", "bf16")]
    err = np.abs(outs[1] - outs[0])
    assert np.isfinite(outs[1]).all()
    assert float(np.median(err)) < 0.01 * float(np.ptp(outs[0]))
    assert float(err.max()) < 0.1 * float(np.ptp(outs[0]))


def test_the_pipeline_on_a_gpu_worker_equals_the_cpu_pipeline(frame_and_model, tmp_path):
    img, model = frame_and_model
    frames = np.stack([img, img[::-1]])[:, None]  # (T=2, C=1, Y, X)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=frames.shape, chunks=(1, 1, 64, 64), dtype=frames.dtype,
                          dimension_names=["t", "c", "y", "x"])
    z[...] = frames
    save_model(model, tmp_path / "model")
    outs = []
    for device in ("cuda", "cpu"):
        infer = InferConfig(tile=32, device=device, precision="fp32", batch=64)
        s = run_pipeline(open_source(tmp_path / "in.zarr"), tmp_path / f"{device}.zarr", tmp_path / "model",
                         options=RunOptions(infer=infer, chunks=(96, 96)), client="sync")
        assert s.computed == s.tasks
        outs.append(zarr.open_group(str(tmp_path / f"{device}.zarr"), mode="r")["0"][...])
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-4 * float(np.ptp(frames)))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_on_the_gpu_learns(precision):
    img = noisy_frame((384, 384), photons=8.0, seed=2)[0]
    cfg = TrainConfig(preset="tiny", steps=40, patch=32, batch=8, val_every=10, precision=precision)
    model = fit(img, config=cfg, device="cuda")
    hist = model.channels[0].history
    assert len(hist) == 4 and all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert model.info["device"].startswith("cuda")
