"""bioimage.io packages: the packaged network is ``asn2n denoise``, the package passes
bioimage.io's model test, and ``asn2n import`` gives the model back."""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

from asn2n_dask import InferConfig, NormConfig, RiskThresholds, TrainConfig, fit, load_model
from asn2n_dask.api import denoise_with_risk
from asn2n_dask.checkpoint import ChannelModel, Model
from asn2n_dask.cli import app
from asn2n_dask.config import PRESETS
from asn2n_dask.errors import ConfigError, OutputError
from asn2n_dask.export import (
    CITATIONS,
    _training_frames,
    build_denoiser,
    cover_image,
    export_bioimageio,
    import_bioimageio,
    synthetic_frames,
)
from asn2n_dask.model import UNet
from asn2n_dask.risk import FrameStats
from asn2n_dask.synthetic import noisy_frame

pytest.importorskip("bioimageio.core")
# TorchScript, the PyTorch format of bioimage.io's Java tools, is deprecated by torch
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")
runner = CliRunner()
CPU = InferConfig(device="cpu")
TILE64 = replace(CPU, tile=64)


def close(got, want, rtol=1e-5):
    """Equal to float32 rounding of values in input units."""
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.ptp(want)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny two-channel model trained on a TIFF file (so the package's test input is a
    crop of it), and that file's pixels."""
    d = tmp_path_factory.mktemp("export")
    pixels = np.stack([noisy_frame((96, 112), seed=1)[0], noisy_frame((96, 112), photons=40, seed=2)[0]])
    tifffile.imwrite(d / "train.tif", pixels, metadata={"axes": "CYX"})
    fit(str(d / "train.tif"), config=TrainConfig(preset="tiny", steps=3, patch=32, batch=2), model_dir=d / "m",
        device="cpu")
    return d, pixels


@pytest.fixture(scope="module")
def package(trained):
    """Both channels, both weight formats; bioimage.io's test is run by the test below."""
    d, _ = trained
    return export_bioimageio(d / "m", d / "both.zip", authors=["Test Author"], infer=TILE64, check=False)


def _random_model(norm: NormConfig, dataset_mode: str = "local", estimator: str = "reference",
                  channels: int = 1) -> Model:
    torch.manual_seed(0)
    nets = [UNet(PRESETS["tiny"]).eval() for _ in range(channels)]
    return Model(train=TrainConfig(preset="tiny", patch=32, norm=norm),
                 channels=[ChannelModel(name=str(i), net=n, stats=FrameStats(90.0, 140.0), dataset_mode=dataset_mode,
                                        risk_estimator=estimator) for i, n in enumerate(nets)])


SPARSE = noisy_frame((200, 200), photons=4.0, seed=5)[0][:101, :143]  # mostly dark: high-risk patches; odd sizes
SPARSE[[3, 50, 97], [7, 70, 140]] = 0  # dead pixels: the noise-aware risk scale starts far above the minimum


@pytest.mark.parametrize(("norm", "dataset_mode", "estimator", "infer"), [
    (NormConfig(), "local", "reference", CPU),
    (NormConfig(), "global", "noise-aware", TILE64),  # adaptive on high-risk data: every patch global
    (NormConfig(mode="local"), "local", "reference", replace(TILE64, tta=8)),
    (NormConfig(mode="global"), "local", "reference", replace(TILE64, infer_on="raw", blend="uniform")),
    (NormConfig(mode="dataset"), "local", "noise-aware", replace(TILE64, blend="none", overlap=0.25, tta=2)),
    (NormConfig(adaptive_weight="signal", low_percentile=1.0, risk=RiskThresholds(patch=32)), "local",
     "noise-aware", replace(CPU, tile=48, tta=2, batch=3)),
    (NormConfig(adaptive_weight="class"), "local", "reference", TILE64),
])
def test_the_packaged_network_is_asn2n_denoise(norm, dataset_mode, estimator, infer):
    model = _random_model(norm, dataset_mode, estimator)
    net = torch.jit.script(build_denoiser(model, [0], infer))
    for frame in (SPARSE, noisy_frame((64, 80), seed=7)[0])[: 2 if infer.tta == 1 else 1]:
        x = frame.astype(np.float32)
        with torch.no_grad():
            got = net(torch.from_numpy(x)[None, None])[0, 0].numpy()
        close(got, denoise_with_risk(x, model, axes="YX", config=infer)[0])


@pytest.mark.parametrize("rule", ["auto", "model", "data"])
def test_the_package_normalises_on_the_range_asn2n_denoise_chooses(rule):
    """The training range for an image whose range agrees with it, the image's own for one
    from another camera offset (under ``auto``), as ``InferConfig.norm_range`` says."""
    model = _random_model(NormConfig())
    infer = replace(TILE64, norm_range=rule)
    net = torch.jit.script(build_denoiser(model, [0], infer))
    near = noisy_frame((64, 80), seed=7)[0].astype(np.float32)
    for x in (near, near + 1000.0):
        with torch.no_grad():
            got = net(torch.from_numpy(x)[None, None])[0, 0].numpy()
        close(got, denoise_with_risk(x, model, axes="YX", config=infer)[0])
    with torch.no_grad():  # the rules differ on these frames: the case above is not vacuous
        outs = {r: torch.jit.script(build_denoiser(model, [0], replace(TILE64, norm_range=r)))(
            torch.from_numpy(near)[None, None])[0, 0].numpy() for r in ("model", "data")}
    assert np.abs(outs["model"] - outs["data"]).max() > 0.1


def test_channels_and_batch_entries_are_denoised_each_on_its_own():
    model = _random_model(NormConfig(), channels=2)
    net = build_denoiser(model, [1, 0], TILE64)
    a, b = SPARSE[:64, :96].astype(np.float32), noisy_frame((64, 96), seed=8)[0].astype(np.float32)
    with torch.no_grad():
        both = net(torch.from_numpy(np.stack([np.stack([a, b]), np.stack([b, 3 * a])])))
    for i, image in enumerate(([a, b], [b, 3 * a])):
        for c, mc in enumerate([1, 0]):
            alone = denoise_with_risk(image[c], model, axes="YX", config=TILE64, channel_map=[mc])[0]
            close(both[i, c].numpy(), alone)


def test_package_passes_the_bioimageio_model_test(package):
    import bioimageio.core

    from asn2n_dask.export import _test_package

    torch.manual_seed(123)
    rng = torch.get_rng_state()
    summary = _test_package(bioimageio.core, package)  # bioimageio.core.test_model
    assert torch.equal(torch.get_rng_state(), rng)  # the test seeds torch; the state is given back
    assert summary.status == "passed", [d.name for d in summary.details if d.status == "failed"]
    tested = {d.name for d in summary.details if d.status == "passed"}
    assert {"Reproduce test outputs from test inputs (torchscript)",
            "Reproduce test outputs from test inputs (pytorch_state_dict)"} <= tested


def test_package_run_by_bioimageio_reproduces_asn2n_denoise_on_its_test_input(package, trained, tmp_path):
    import io

    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    d, pixels = trained
    descr = load_model_description(package)
    with zipfile.ZipFile(package) as z:
        test_in = np.load(io.BytesIO(z.read("test_input.npy")))
    assert test_in.shape == (1, 2, 96, 112) and test_in.dtype == np.float32
    np.testing.assert_array_equal(test_in[0], pixels)  # the training data itself (here smaller than the crop)
    tifffile.imwrite(tmp_path / "in.tif", test_in[0], metadata={"axes": "CYX"})
    res = runner.invoke(app, ["denoise", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif"), "--model",
                              str(d / "m"), "--device", "cpu", "--tile", "64"])
    assert res.exit_code == 0, res.output
    ours = tifffile.imread(tmp_path / "out.tif")
    for weights in ("torchscript", "pytorch_state_dict"):
        pipeline = create_prediction_pipeline(descr, weights_format=weights)
        sample = predict(model=pipeline, inputs=test_in)  # whole images: bioimage.io's default (no blocks)
        got = sample.members["denoised"].data.to_numpy()
        assert got.shape == test_in.shape
        close(got[0], ours)


def test_package_files_readme_cover_and_permissions(package):
    with zipfile.ZipFile(package) as z:
        names = set(z.namelist())
        text = z.read("README.md").decode()
        cover = z.read("cover.png")
    assert {"denoiser.pt", "weights.pt", "asn2n_denoiser.py", "test_input.npy", "test_output.npy", "cover.png",
            "README.md"} <= names
    for heading in ("## What the network computes", "## What is and is not included", "## Validation",
                    "## Citation"):
        assert heading in text
    assert "train.tif" in text and all(doi in text for _, doi, _ in CITATIONS if doi)
    assert cover.startswith(b"\x89PNG")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(package.stat().st_mode) == 0o666 & ~mask


def test_cover_is_noisy_and_denoised_side_by_side_on_one_scale():
    noisy = np.arange(40 * 60, dtype=np.float32).reshape(40, 60)
    img = cover_image(noisy, noisy / 2)
    assert img.shape == (40, 80, 3) and img.dtype == np.uint8
    assert img[..., :40, 0].max() == 255 and img[..., 40:, 0].max() == 255  # one scale: the noisy half saturates
    assert img[0, 40, 0] < img[-1, 79, 0]


def test_test_input_without_training_file_is_synthetic_on_the_trained_range():
    model = replace(_random_model(NormConfig()), info={"inputs": ["<array>"]})
    assert _training_frames(model, [0], 64)[0] is None  # trained on an array
    frames = synthetic_frames(model, [0], (64, 80))
    st = model.channels[0].stats
    assert frames.shape == (1, 64, 80) and frames.dtype == np.float32
    assert np.isclose(frames.min(), st.lo) and np.isclose(frames.max(), st.hi)


def test_test_input_is_a_crop_of_the_training_file_while_it_can_be_read(trained):
    d, pixels = trained
    model = load_model(d / "m")
    frames, where = _training_frames(model, [1], 64)
    np.testing.assert_array_equal(frames, pixels[1:, 16:80, 24:88])  # the centre 64x64 of channel 1
    assert where == "train.tif"
    gone = replace(model, info={**model.info, "inputs": [str(d / "moved.tif")]})
    frames, where = _training_frames(gone, [1], 64)
    assert frames is None and "moved.tif, which cannot be read" in where


def test_cli_exports_one_channel_and_imports_it_back(trained, tmp_path):
    d, pixels = trained
    out = tmp_path / "mito.zip"
    res = runner.invoke(app, ["export", str(d / "m"), "-o", str(out), "--channel", "1", "--author", "A. Author",
                              "--license", "MIT", "--tile", "64"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["import", str(out), "-o", str(tmp_path / "back")])
    assert res.exit_code == 0, res.output
    back, orig = load_model(tmp_path / "back"), load_model(d / "m")
    assert [c.name for c in back.channels] == ["1"] and back.train == orig.train
    x = pixels[1].astype(np.float32)
    cfg = replace(CPU, tile=64)
    np.testing.assert_array_equal(denoise_with_risk(x, back, axes="YX", config=cfg)[0],
                                  denoise_with_risk(x, orig, axes="YX", config=cfg, channel_map=[1])[0])


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"authors": []}, ConfigError, "author"),
    ({"authors": ["A/B"]}, ConfigError, "slash"),
    ({"license": "my own"}, ConfigError, "SPDX"),
    ({"channels": ["mito"]}, ConfigError, "not a channel"),
    ({"channels": ["0", "0"]}, ConfigError, "twice"),
    ({"weights": ["onnx"]}, ConfigError, "weight formats"),
    ({"infer": InferConfig(tile=256)}, ConfigError, "smaller --tile"),
])
def test_bad_export_options_are_refused_before_anything_is_written(trained, tmp_path, kwargs, error, match):
    d, _ = trained
    with pytest.raises(error, match=match):
        export_bioimageio(d / "m", tmp_path / "x.zip", **{"authors": ["A"], **kwargs})
    assert not list(tmp_path.iterdir())


def test_export_refuses_outputs_it_must_not_write(trained, tmp_path):
    d, _ = trained
    with pytest.raises(OutputError, match=r"\.zip"):
        export_bioimageio(d / "m", tmp_path / "x.tar", authors=["A"])
    (tmp_path / "x.zip").write_text("keep")
    res = runner.invoke(app, ["export", str(d / "m"), "-o", str(tmp_path / "x.zip"), "--author", "A"])
    assert res.exit_code == 2 and "already exists" in res.output and "Traceback" not in res.output
    assert (tmp_path / "x.zip").read_text() == "keep"
    res = runner.invoke(app, ["export", str(d / "m"), "-o", str(tmp_path / "y.zip"), "--author", "A", "--format",
                              "onnx"])
    assert res.exit_code == 2 and "--format" in res.output


def test_a_package_failing_the_model_test_is_not_written(trained, tmp_path, monkeypatch):
    import asn2n_dask.export as export
    from asn2n_dask.errors import ModelError

    d, _ = trained
    real = export.build_denoiser

    def broken(model, channels, infer):
        den = real(model, channels, infer)
        with torch.no_grad():
            den.channels[0].net.head.bias.add_(5.0)  # not the network the test output was made with
        return den

    monkeypatch.setattr(export, "build_denoiser", broken)
    with pytest.raises(ModelError, match="model test"):
        export_bioimageio(d / "m", tmp_path / "x.zip", authors=["A"], channels=["0"], weights=["torchscript"])
    assert not list(tmp_path.iterdir())


def test_import_refuses_what_asn2n_did_not_export(tmp_path, package):
    from asn2n_dask.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        import_bioimageio(tmp_path / "none.zip", tmp_path / "m")
    (tmp_path / "other.zip").write_text("not a package")
    res = runner.invoke(app, ["import", str(tmp_path / "other.zip"), "-o", str(tmp_path / "m")])
    assert res.exit_code == 2 and "not a bioimage.io model package" in res.output
    assert not (tmp_path / "m").exists()
    import_bioimageio(package, tmp_path / "m")
    with pytest.raises(OutputError, match="already exists"):
        import_bioimageio(package, tmp_path / "m")


def test_export_and_import_have_help_with_an_example():
    for cmd in ("export", "import"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Example" in r.output and f"asn2n {cmd} " in r.output, cmd
