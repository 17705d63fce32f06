"""'asn2n fit --dims 3' end to end on tiny TIFF volumes, and one test per refused combination."""

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from asn2n_dask.cli import app

runner = CliRunner()
FAST3D = ["--dims", "3", "--preset", "tiny3d", "--steps", "2", "--batch", "2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def invoke(*args):
    return runner.invoke(app, ["-q", *map(str, args)])


def model_json(path: Path) -> dict:
    return json.loads((path / "model.json").read_text())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli3d")
    rng = np.random.default_rng(0)
    tifffile.imwrite(d / "zyx.tif", rng.poisson(10.0, (8, 32, 32)).astype(np.uint16), metadata={"axes": "ZYX"})
    tifffile.imwrite(d / "tyx.tif", rng.poisson(10.0, (6, 32, 32)).astype(np.uint16), metadata={"axes": "TYX"})
    tifffile.imwrite(d / "small.tif", rng.poisson(10.0, (8, 6, 6)).astype(np.uint16), metadata={"axes": "ZYX"})
    tifffile.imwrite(d / "ij.tif", rng.poisson(10.0, (8, 32, 32)).astype(np.uint16), imagej=True,
                     resolution=(10.0, 10.0), metadata={"spacing": 0.3, "unit": "um", "axes": "ZYX"})
    r = runner.invoke(app, list(map(str, ["fit", d / "zyx.tif", "--model", d / "m3", *FAST3D, "--patch", "8,16,16"])))
    assert r.exit_code == 0, r.output
    assert "channel 0: 3-D network on 8x16x16 sub-volumes" in r.stdout
    # Poisson noise around 10 counts: far above the published rule's background threshold
    assert "risk labels by slice with estimator noise-aware (pixel noise" in r.stdout
    return d


def test_fit_dims_3_writes_a_3d_model(files):
    doc = model_json(files / "m3")
    assert doc["dims"] == 3 and doc["volume"]["preset"] == "tiny3d" and doc["volume"]["depth_axis"] == "Z"
    assert doc["volume"]["patch"] == [8, 16, 16] and doc["train"]["steps"] == 2
    assert (files / "m3" / "curves-0.csv").is_file()


def test_options_not_given_take_the_3d_defaults(files, tmp_path):
    from asn2n_dask.config import VolumeTrainConfig

    r = invoke("fit", files / "zyx.tif", "--model", tmp_path / "m", "--dims", "3", "--preset", "tiny3d",
               "--steps", "1", "--patch", "16")
    assert r.exit_code == 0, r.output
    doc = model_json(tmp_path / "m")
    default = VolumeTrainConfig()
    assert doc["train"]["batch"] == default.batch  # not the 2-D default batch
    assert doc["train"]["patch"] == [default.patch[0], 16, 16]  # one side: Y and X, with the default Z
    assert doc["volume"]["patch"] == [8, 16, 16]  # Z cut to the volume's eight slices


def test_depth_axis_t_and_the_anisotropy_of_the_file(files, tmp_path):
    r = invoke("fit", files / "tyx.tif", "--model", tmp_path / "t", *FAST3D, "--patch", "16", "--depth-axis", "T")
    assert r.exit_code == 0, r.output
    assert model_json(tmp_path / "t")["volume"]["depth_axis"] == "T"
    r = invoke("fit", files / "ij.tif", "--model", tmp_path / "a", *FAST3D, "--patch", "8,16,16")
    assert r.exit_code == 0, r.output
    assert model_json(tmp_path / "a")["volume"]["anisotropy"] == pytest.approx(3.0)  # 0.3 um over 0.1 um
    r = invoke("fit", files / "ij.tif", "--model", tmp_path / "b", *FAST3D, "--patch", "8,16,16", "--anisotropy",
               "1.5")
    assert r.exit_code == 0, r.output
    assert model_json(tmp_path / "b")["volume"]["anisotropy"] == 1.5


def test_dims_3_from_an_options_file(files, tmp_path):
    cfg = tmp_path / "fit.yaml"
    cfg.write_text("dims: 3\ndepth-axis: Z\npreset: tiny3d\nsteps: 1\npatch: 8,16,16\nbatch: 1\n")
    r = invoke("fit", files / "zyx.tif", "--model", tmp_path / "m", "--config", cfg)
    assert r.exit_code == 0, r.output
    doc = model_json(tmp_path / "m")
    assert doc["dims"] == 3 and doc["train"]["batch"] == 1


@pytest.mark.parametrize("name, args, needle", [
    ("zyx", ["--dims", "3", "--preset", "small"], "preset small is a 2-D network; with --dims 3 use tiny3d"),
    ("zyx", ["--preset", "tiny3d"], "preset tiny3d is a 3-D network"),
    ("zyx", [*FAST3D, "--risk-share", "0.3", "--patience", "2"],
     "--risk-share and --patience apply to 2-D training only"),
    ("zyx", [*FAST3D, "--resume"], "--resume applies to 2-D training only"),
    ("zyx", [*FAST3D, "--offset-jitter", "0.05"], "--offset-jitter applies to 2-D training only"),
    ("zyx", [*FAST3D, "--norm", "local"], "one global scale"),
    ("zyx", ["--anisotropy", "2"], "--anisotropy applies to 3-D training only; add --dims 3"),
    ("zyx", ["--depth-axis", "T"], "--depth-axis applies to 3-D training only"),
    ("zyx", [*FAST3D, "--patch", "8,16"], "--patch with --dims 3 takes Z,Y,X"),
    ("zyx", ["--patch", "8,16,16"], "--patch takes one side in pixels for 2-D training"),
    ("zyx", [*FAST3D, "--anisotropy", "0"], "anisotropy"),
    ("zyx", [*FAST3D, "--depth-axis", "T"], "with depth axis T its Z axis would be left out"),
    ("tyx", FAST3D, "without the Z axis that volumes (depth axis Z) need"),
    ("small", FAST3D, "too small in Y-X"),
])
def test_bad_combinations_exit_with_one_sentence(files, tmp_path, name, args, needle):
    r = invoke("fit", files / f"{name}.tif", "--model", tmp_path / "m", *args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "m" / "model.json").exists()
