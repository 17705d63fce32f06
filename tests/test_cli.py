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
    r = runner.invoke(app, list(map(str, ["fit", d / "noisy.tif", "--model", d / "model", *FAST])))  # not -q
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
    assert bad.exit_code == 2 and "'--risk-estimator'" in bad.stderr and "'magic' is not one of" in bad.stderr


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
    r = invoke(*demo, "-o", foreign)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "did not write" in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert sorted(p.name for p in foreign.iterdir()) == ["noisy.tif"]
    assert (foreign / "noisy.tif").read_bytes() == b"keep me"

    out = tmp_path / "new" / "demo"
    r = invoke(*demo, "-o", out)  # invoke passes -q: nothing but errors
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and r.stderr == ""
    assert {"noisy.tif", "denoised.tif", "model", "report", ".asn2n-demo"} <= {p.name for p in out.iterdir()}
    assert (out / "report" / "report.html").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "model" / "stale.txt").write_text("from the earlier demo")
    again = invoke(*demo, "-o", out)  # the demo's own folder: its files are replaced, nothing else touched
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
    r = invoke("demo", "-o", tmp_path / "demo", *args)
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
                       "'fancy' is not one of 'gaussian', 'uniform', 'none'"),
        "missing model": (["denoise", str(work / "noisy.tif"), "-o", str(work / "o8.tif"), "--model",
                           str(work / "nomodel")], "model.json is missing"),
        "too small to train": (["fit", str(work / "small.tif"), "--model", str(work / "m2")], "at least 4x4"),
        "model exists": (["fit", str(work / "noisy.tif"), "--model", str(work / "model"), *FAST], "already exists"),
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


# ---------------------------------------------------------------- version, help, options files, renamed options
def help_text(*cmd: str) -> str:
    r = runner.invoke(app, [*cmd, "--help"], env={"TERMINAL_WIDTH": "200", "COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return r.stdout


def option_line(text: str, option: str) -> str:
    """The row of ``option`` in a --help's options panel."""
    return next(line for line in text.splitlines() if line.strip("│ *").startswith(option + " "))


def test_version_prints_the_package_version():
    from asn2n_dask import __version__

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == __version__, r.output


def test_help_lists_the_choices_of_the_config_literals_and_no_placeholders_for_flags():
    from typing import get_args

    from asn2n_dask import config

    choices = {"--preset": config.Preset, "--norm": config.NormMode, "--risk-estimator": config.RiskEstimator,
               "--loss": config.LossKind, "--blend": config.BlendMode, "--infer-on": config.InferOn,
               "--tta": config.TtaCopies, "--infer-precision": config.Precision, "--dtype": config.OutputDtype,
               "--ome": config.OmeVersion, "--precision": config.Precision}
    per_command = {"fit": ["--preset", "--norm", "--risk-estimator", "--loss", "--precision"],
                   "run": ["--preset", "--norm", "--risk-estimator", "--loss", "--blend", "--infer-on", "--tta",
                           "--infer-precision", "--dtype", "--ome"],
                   "denoise": ["--blend", "--infer-on", "--tta", "--infer-precision", "--dtype", "--ome"],
                   "risk": ["--risk-estimator"]}
    own = {("fit", "--preset"): config.AnyPreset, ("run", "--preset"): config.AnyPreset}  # 3-D ones too (--dims 3)
    for cmd, options in per_command.items():
        text = help_text(cmd)
        for option in options:
            line = option_line(text, option)
            allowed = get_args(own.get((cmd, option), choices[option]))
            assert "<" + "|".join(map(str, allowed)) + ">" in line, (cmd, line)
        for flag in ("--json", "--help") if cmd == "risk" else ("--overwrite", "--help"):
            assert "<" not in option_line(text, flag), (cmd, flag)
    top = help_text()
    assert "<int>" not in option_line(top, "--verbose") and "<bool>" not in option_line(top, "--quiet")


def test_options_file_keys_values_and_types(tmp_path):
    from typer.main import get_command

    from asn2n_dask.cli import options_from_file
    from asn2n_dask.errors import ConfigError

    run_cmd = get_command(app).commands["run"]
    good = tmp_path / "run.yaml"
    good.write_text("risk_estimator: Noise-Aware\ninfer-on: raw\ntime: 10:20\nchannel: [mito, 2]\ntta: 4\n"
                    "ome: 0.4\nconsistency: 1e-3\noverwrite: true\nmodel: m.model\nworkers: null\n")
    assert options_from_file(good, run_cmd) == {
        "risk_estimator": "noise-aware", "infer_on": "raw", "time": "10:20", "channel": ["mito", "2"], "tta": 4,
        "ome": "0.4", "consistency": 0.001, "overwrite": True, "model_dir": "m.model", "workers": None}
    for text, needle in [
        ("tiles: 32\n", "unknown option 'tiles'; 'asn2n run' takes anisotropy, axes, batch, blend, channel, chunks,"),
        ("model-dir: m\n", "unknown option 'model-dir'"),  # an old spelling is not a key
        ("norm: fancy\n", "norm must be one of adaptive, local, global, dataset; got 'fancy'."),
        ("steps: 3.5\n", "steps must be a whole number; got 3.5."),
        ("steps: '300'\n", "steps must be a whole number; got '300'."),
        ("overwrite: maybe\n", "overwrite must be true or false; got 'maybe'."),
        ("tta: 3\n", "tta must be one of 1, 2, 4, 8; got 3."),
        ("output: null\n", "output needs a value"),
        ("risk_estimator: auto\nrisk-estimator: auto\n", "given twice"),
        ("- steps\n", "must hold 'option: value' lines"),
        ("steps: [1\n", "is not valid YAML at line"),
    ]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError) as e:
            options_from_file(bad, run_cmd)
        msg = str(e.value)
        assert str(bad) in msg and needle in msg and "\n" not in msg, (text, msg)


def tif_record(path: Path) -> dict:
    with tifffile.TiffFile(path) as tif:
        return json.loads(tif.shaped_metadata[0]["asn2n"])


def test_config_file_values_apply_flags_override_them_and_the_output_records_what_was_resolved(work, tmp_path):
    from asn2n_dask.config import InferConfig, NormConfig, RiskThresholds, TrainConfig

    cfg = tmp_path / "run.yaml"
    cfg.write_text("preset: tiny\nsteps: 3\npatch: 32\nbatch: 2\nnorm: global\nrisk_estimator: reference\n"
                   "tile: 32\nblend: uniform\ntta: 2\noutput: ignored.tif\n")
    out = tmp_path / "out.tif"
    r = runner.invoke(app, ["run", str(work / "noisy.tif"), "--config", str(cfg), "-o", str(out), "--blend", "none",
                            "--seed", "5"])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "ignored.tif").exists()  # -o on the command line overrides the file's output
    rec = tif_record(out)
    assert rec["infer"] == InferConfig(tile=32, blend="none", tta=2).to_dict()  # blend: the flag's
    assert rec["train"] == TrainConfig(preset="tiny", steps=3, patch=32, batch=2, seed=5, norm=NormConfig(
        mode="global", risk=RiskThresholds(estimator="reference"))).to_dict()
    assert rec["options_file"] == str(cfg.absolute())
    # progress in a log (stderr is not a terminal here): plain lines up to the end count
    assert "training: 3/3 (100%)" in r.stderr and "denoising: " in r.stderr, r.stderr
    assert "\x1b" not in r.stderr and "\r" not in r.stderr


@pytest.mark.parametrize("text, needle", [
    ("tiles: 32\n", "unknown option 'tiles'; 'asn2n denoise' takes"),
    ("blend: fancy\n", "blend must be one of gaussian, uniform, none; got 'fancy'."),
])
def test_a_bad_config_file_is_refused_in_one_sentence_before_anything_is_done(work, tmp_path, text, needle):
    cfg = tmp_path / "denoise.yaml"
    cfg.write_text(text)
    r = invoke("denoise", work / "noisy.tif", "-o", tmp_path / "o.tif", "-m", work / "model", "--config", cfg)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and needle in r.stderr, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.tif").exists()
    missing = invoke("fit", work / "noisy.tif", "--model", tmp_path / "m", "--config", tmp_path / "none.yaml")
    assert missing.exit_code == 2 and "options file" in missing.stderr and "does not exist" in missing.stderr


def test_renamed_options_keep_their_old_spelling_with_one_warning(work, tmp_path):
    from asn2n_dask.cli import renamed_options

    assert renamed_options("fit", ["a.tif", "-o", "m", "--", "-o"]) == (["a.tif", "--model", "m", "--", "-o"],
                                                                        ["-o"])
    assert renamed_options("fit", ["-om", "--output=n"]) == (["--model", "m", "--model=n"], ["-o", "--output"])
    assert renamed_options("run", ["x", "-o", "y.tif", "--model-dir", "m"]) == (
        ["x", "-o", "y.tif", "--model", "m"], ["--model-dir"])
    assert renamed_options("demo", ["--out", "d", "--output", "e"]) == (["--output", "d", "--output", "e"], ["--out"])
    # the old spellings reach the new options: each refusal names the path given with the old spelling
    cases = [(["fit", work / "noisy.tif", "-o", work / "model", *FAST], "-o of 'asn2n fit'",
              f"a model already exists in {work / 'model'}"),
             (["run", work / "noisy.tif", "-o", tmp_path / "r.tif", "--model-dir", work / "model", *FAST],
              "--model-dir of 'asn2n run'", f"a model already exists in {work / 'model'}"),
             (["demo", "--out", work], "--out of 'asn2n demo'", f"--output {work} already holds files")]
    for args, old, needle in cases:
        r = runner.invoke(app, list(map(str, args)))
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and lines[0].startswith(f"warning: {old} is deprecated; use --"), r.output
        assert lines[-1].startswith("error: ") and needle in lines[-1], r.output
        quiet = invoke(*args)
        assert "warning" not in quiet.stderr and quiet.exit_code == 2


def test_help_states_the_limits_that_the_configuration_enforces(monkeypatch):
    """The limits in --help are read from the constants the configuration checks
    (changed there, the help follows), not restated."""
    import importlib

    from typer.main import get_command

    import asn2n_dask.cli as cli
    from asn2n_dask import config, ome, plan, store

    changed = {(config, "MAX_PATCH"): 777, (config, "MAX_BATCH"): 333, (config, "MIN_TILE"): 12,
               (config, "MAX_TILE"): 2222, (config, "MAX_OVERLAP"): 0.66, (config, "MIN_STRIDE"): 5,
               (config, "MIN_MEMORY_LIMIT"): 99 * 2**20, (plan, "MIN_CHUNK"): 48, (plan, "DEFAULT_CHUNK"): (512, 4000),
               (store, "MIN_LEVEL"): 24, (ome, "MAX_LEVELS"): 7}
    for (module, name), value in changed.items():
        monkeypatch.setattr(module, name, value)
    try:
        helps = {p.opts[0]: p for p in get_command(importlib.reload(cli).app).commands["run"].params}
        assert "at most 777" in helps["--patch"].help and "1 to 333" in helps["--batch"].help
        assert "12 to 2222" in helps["--tile"].help and "up to 333" in helps["--tile-batch"].help
        assert "[0, 0.66]" in helps["--overlap"].help and "at least 5 pixels" in helps["--overlap"].help
        assert "at least 48" in helps["--chunks"].help and "512 to 4000" in helps["--chunks"].help
        assert "at least 99MiB" in helps["--memory-limit"].help
        assert "smaller than 24" in helps["--pyramid"].help and helps["--pyramid"].max == 7
    finally:
        monkeypatch.undo()
        importlib.reload(cli)
