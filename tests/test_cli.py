"""The command line, end to end on tiny data, and one test per bad-input case."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from asn2n_dask.cli import app

runner = CliRunner()
FAST = ["--preset", "tiny", "--steps", "3", "--patch", "32", "--batch", "2"]


def invoke(*args: str):
    return runner.invoke(app, ["-q", *map(str, args)])


def digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def work(tmp_path_factory, frame):
    d = tmp_path_factory.mktemp("cli")
    tifffile.imwrite(d / "noisy.tif", frame[0])
    tifffile.imwrite(d / "two.tif", np.stack([frame[0], frame[0][:, ::-1]]), photometric="minisblack",
                     metadata={"axes": "CYX"})
    r = runner.invoke(app, list(map(str, ["fit", d / "noisy.tif", "-o", d / "model", *FAST])))  # not -q
    assert r.exit_code == 0, r.output
    assert "channel 0: risk estimator " in r.stdout  # what training decided, per channel
    return d


def test_fit_denoise_and_run_end_to_end(work):
    r = invoke("denoise", work / "noisy.tif", "-o", work / "out.tif", "--model", work / "model", "--tile", "32")
    assert r.exit_code == 0, r.output
    out = tifffile.imread(work / "out.tif")
    noisy = tifffile.imread(work / "noisy.tif")
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert abs(float(out.mean()) - float(noisy.mean())) < 0.1 * float(noisy.mean())  # input units kept

    r = invoke("run", work / "two.tif", "-o", work / "two-out.zarr", *FAST, "--tile", "32", "--dtype", "input")
    assert r.exit_code == 0, r.output
    from asn2n_dask.io import read_image

    data, meta = read_image(work / "two-out.zarr")
    assert meta.axes == "CYX" and data.shape == (2, 96, 128) and data.dtype == np.uint16
    assert (work / "two-out.zarr.model" / "model.json").exists()


def test_zarr_runs_resume_reuse_their_model_and_refuse_other_jobs(work):
    args = ["run", work / "two.tif", "-o", work / "rerun.zarr", *FAST, "--tile", "32", "--workers", "1"]
    assert invoke(*args).exit_code == 0
    again = runner.invoke(app, list(map(str, args)))  # not -q: the result line is wanted
    assert again.exit_code == 0 and "already complete" in again.stdout
    other = invoke(*[a if a != "3" else "4" for a in args])  # other training steps: another job
    assert other.exit_code == 2 and "model already exists" in other.output
    plan = invoke("denoise", work / "two.tif", "-o", work / "plan.zarr", "--model", work / "rerun.zarr.model",
                  "--tile", "32", "--chunks", "50x64", "--dry-run")
    assert plan.exit_code == 0 and "tasks      8 = 2 planes x 2 x 2 chunks" in plan.stdout
    assert not (work / "plan.zarr").exists()
    (work / "foreign.zarr").mkdir()
    r = invoke("denoise", work / "two.tif", "-o", work / "foreign.zarr", "--model", work / "rerun.zarr.model")
    assert r.exit_code == 2 and "not written by asn2n" in r.output


def test_risk_json(work):
    r = invoke("risk", work / "noisy.tif", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["channels"][0]["dataset_decision"] in ("global", "local")
    assert 0 <= doc["channels"][0]["high_risk"] <= 1
    # the default estimator is resolved from the data and reported with the noise that decided it
    ch = doc["channels"][0]
    assert ch["risk_estimator"] == ("noise-aware" if ch["noise_sd"] > 0.028 else "reference")
    forced = json.loads(invoke("risk", work / "noisy.tif", "--json", "--risk-estimator", "reference").stdout)
    assert forced["channels"][0]["risk_estimator"] == "reference"
    table = invoke("risk", work / "noisy.tif")
    assert table.exit_code == 0 and ch["risk_estimator"] in table.stdout
    bad = invoke("risk", work / "noisy.tif", "--risk-estimator", "magic")
    assert bad.exit_code == 2 and "risk estimator" in bad.output


def test_risk_classifies_sampled_frames_on_the_channel_statistics_as_denoising_does(work, monkeypatch):
    import zarr

    from asn2n_dask.config import InferConfig
    from asn2n_dask.pipeline import RunOptions, run_pipeline
    from asn2n_dask.source import Selection, open_source
    from asn2n_dask.synthetic import camera, noisy_frame

    # a dark frame (noise only) and three with structure: on its own scale the dark frame
    # looks like any other; on the channel's it is weak background
    stack = np.stack([camera(np.zeros((96, 128)), seed=5)]
                     + [noisy_frame((96, 128), photons=p, seed=i)[0] for i, p in enumerate((20.0, 60.0, 120.0))])
    z = zarr.create_array(str(work / "stack.zarr"), shape=stack.shape, chunks=(1, 48, 64), dtype=stack.dtype,
                          dimension_names=["t", "y", "x"])
    z[...] = stack
    run_pipeline(open_source(work / "stack.zarr"), work / "stack-dn.zarr", work / "model", selection=Selection(),
                 options=RunOptions(infer=InferConfig(tile=32)), client="sync")
    labels = zarr.open_group(str(work / "stack-dn.zarr"), mode="r")["labels/risk/0"][...][:, ::64, ::64]
    estimator = json.loads((work / "model" / "model.json").read_text())["channels"][0]["risk_estimator"]

    def whole_image(*args, **kwargs):
        raise AssertionError("asn2n risk read the whole image")

    monkeypatch.setattr("asn2n_dask.io.read_image", whole_image)
    r = invoke("risk", work / "stack.zarr", "--json", "--risk-estimator", estimator)
    assert r.exit_code == 0, r.output
    ch = json.loads(r.stdout)["channels"][0]
    assert ch["weak_background"] == pytest.approx(np.mean(labels == 1)) and np.mean(labels == 1) >= 0.25
    assert ch["sparse_bright"] == pytest.approx(np.mean(labels == 2))
    assert (ch["frames"], ch["frames_total"], ch["patches"]) == (4, 4, 16)
    two = invoke("risk", work / "stack.zarr", "--frames", "2", "--time", "1:4")
    assert two.exit_code == 0 and " 2/3 " in two.stdout, two.output  # sampled frames of the selected ones
    for args, needle in ((["--frames", "0"], "--frames must be at least 1"), (["--time", "7:9"], "--time '7:9'"),
                         (["--channel", "2"], "has no channel axis")):
        bad = invoke("risk", work / "stack.zarr", *args)
        assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and needle in bad.stderr, bad.output
        assert len(bad.stderr.strip().splitlines()) == 1


def test_every_command_has_help_with_an_example():
    for cmd in ("risk", "fit", "denoise", "run", "demo"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Example" in r.output and "asn2n " + cmd in r.output, cmd


def test_demo_writes_only_into_a_new_folder_or_its_own_and_q_prints_nothing(tmp_path):
    demo = ["demo", "--size", "64", "--steps", "2"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "noisy.tif").write_bytes(b"keep me")
    r = invoke(*demo, "--out", foreign)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "did not write" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert sorted(p.name for p in foreign.iterdir()) == ["noisy.tif"]
    assert (foreign / "noisy.tif").read_bytes() == b"keep me"

    out = tmp_path / "new" / "demo"
    r = invoke(*demo, "--out", out)  # invoke passes -q: nothing but errors
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and r.stderr == ""
    assert {"noisy.tif", "denoised.tif", "model", "report", ".asn2n-demo"} <= {p.name for p in out.iterdir()}
    assert (out / "report" / "report.html").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "model" / "stale.txt").write_text("from the earlier demo")
    again = invoke(*demo, "--out", out)  # the demo's own folder: its files are replaced, nothing else touched
    assert again.exit_code == 0, again.output
    assert (out / "notes.txt").read_text() == "mine" and not (out / "model" / "stale.txt").exists()
    rep = invoke("report", out / "noisy.tif", out / "denoised.tif", "-o", tmp_path / "rep")
    assert rep.exit_code == 0 and rep.stdout == "" and rep.stderr == "", rep.output
    loud = runner.invoke(app, ["report", str(out / "noisy.tif"), str(out / "denoised.tif"), "-o",
                               str(tmp_path / "rep"), "--overwrite"])
    assert loud.exit_code == 0 and "report: " in loud.stdout


@pytest.mark.parametrize("args, needle", [
    (["--size", "8"], "--size must be between 32 and 4096"),
    (["--size", "100000"], "--size must be between 32 and 4096"),
    (["--steps", "0"], "--steps must be between 1 and 100000"),
    (["--steps", "10000000"], "--steps must be between 1 and 100000"),
    (["--photons", "0"], "--photons must be above 0"),
    (["--photons", "nan"], "--photons must be above 0"),
    (["--photons", "inf"], "--photons must be above 0"),
])
def test_demo_arguments_are_checked_before_anything_is_written(tmp_path, args, needle):
    r = invoke("demo", "--out", tmp_path / "demo", *args)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and needle in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "demo").exists()


def bad_cases(work: Path, frame) -> dict[str, tuple[list[str], str]]:
    tifffile.imwrite(work / "complex.tif", np.zeros((32, 32), np.complex64))
    tifffile.imwrite(work / "small.tif", np.zeros((3, 3), np.uint16))
    nan = frame[0].astype(np.float32)
    nan[5, 5] = np.nan
    tifffile.imwrite(work / "nan.tif", nan)
    (work / "exists.tif").write_bytes(b"keep me")
    den = ["--model", str(work / "model"), "--tile", "32"]
    return {
        "missing file": (["denoise", str(work / "missing.tif"), "-o", str(work / "o1.tif"), *den], "does not exist"),
        "unsupported format": (["denoise", str(work / "model" / "model.json"), "-o", str(work / "o2.tif"), *den],
                               "neither a TIFF"),
        "unsupported dtype": (["denoise", str(work / "complex.tif"), "-o", str(work / "o3.tif"), *den], "dtype"),
        "too small": (["denoise", str(work / "small.tif"), "-o", str(work / "o4.tif"), *den], "at least 4x4"),
        "NaN": (["denoise", str(work / "nan.tif"), "-o", str(work / "o5.tif"), *den], "NaN"),
        "channel count": (["denoise", str(work / "two.tif"), "-o", str(work / "o6.tif"), *den],
                          "trained for 1 channel"),
        "output exists": (["denoise", str(work / "noisy.tif"), "-o", str(work / "exists.tif"), *den],
                          "already exists"),
        "output is input": (["denoise", str(work / "noisy.tif"), "-o", str(work / "noisy.tif"), "--overwrite", *den],
                            "is the input"),
        "bad option": (["denoise", str(work / "noisy.tif"), "-o", str(work / "o7.tif"), *den, "--blend", "fancy"],
                       "blend must be one of"),
        "missing model": (["denoise", str(work / "noisy.tif"), "-o", str(work / "o8.tif"), "--model",
                           str(work / "nomodel")], "model.json is missing"),
        "too small to train": (["fit", str(work / "small.tif"), "-o", str(work / "m2")], "at least 4x4"),
        "model exists": (["fit", str(work / "noisy.tif"), "-o", str(work / "model"), *FAST], "already exists"),
    }


CASES = ["missing file", "unsupported format", "unsupported dtype", "too small", "NaN", "channel count",
         "output exists", "output is input", "bad option", "missing model", "too small to train", "model exists"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_sentence_exit_2_nothing_written(work, frame, case):
    args, needle = bad_cases(work, frame)[case]
    before = {p.name: digest(p) for p in work.iterdir()}
    r = invoke(*args)
    assert r.exit_code == 2, (case, r.output)
    err = r.stderr.strip()
    assert err.startswith("error: ") and needle in err, err
    assert "Traceback" not in r.output and len(err.splitlines()) == 1
    after = {p.name: digest(p) for p in work.iterdir()}
    assert after == before  # nothing written, nothing modified
