"""The report: checks against known answers and the project's scorer; the page in a real browser."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from asn2n_dask import InferConfig, TrainConfig, fit
from asn2n_dask.checks import foreground_objects, otsu_mask, residual_checks, score_pair, skeleton_stats
from asn2n_dask.cli import app
from asn2n_dask.errors import InputError, OutputError
from asn2n_dask.pipeline import RunOptions, run_pipeline
from asn2n_dask.report import make_report
from asn2n_dask.source import Selection, open_source
from asn2n_dask.synthetic import noisy_frame

from .browser import chromium, load_page

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("ASN2N_ARTIFACTS", ROOT / "artifacts"))


def test_scores_equal_the_project_scorer(scorer):
    rng = np.random.default_rng(0)
    noisy, truth = noisy_frame((90, 110), photons=6.0, seed=1)
    for pred in (noisy.astype(float), truth + rng.normal(0, 0.5, truth.shape), 3.0 * truth - 7.0):
        ours, theirs = score_pair(pred, truth), scorer.score_pair(pred, truth)
        assert ours.keys() == theirs.keys()
        for k in ours:
            assert ours[k] == pytest.approx(theirs[k], rel=1e-12, abs=1e-12), k


def test_objects_are_counted_inside_the_given_background():
    img = np.zeros((60, 60))
    img[5:8, 5:8] = 10  # in the background
    img[40:44, 40:44] = 10  # in the background
    img[20:23, 30:33] = 10  # outside it
    img[50, 10] = 10  # a one-pixel speck
    bg = np.ones(img.shape, bool)
    bg[15:30, 25:40] = False
    r = foreground_objects(otsu_mask(img), bg)
    assert (r["objects"], r["specks"], r["background_objects"]) == (3, 1, 2)
    assert r["background_objects_per_mpx"] == pytest.approx(2 / (3600 / 1e6))


def test_a_skeleton_counts_fragments_branch_points_and_branches():
    line = np.zeros((40, 60), bool)
    line[18:21, 5:55] = True
    r = skeleton_stats(line)
    assert (r["fragments"], r["branch_points"], r["branches"]) == (1, 0, 1)
    assert 44 <= r["mean_branch_px"] <= 52
    plus = np.zeros((61, 61), bool)
    plus[29:32, 5:56] = True
    plus[5:56, 29:32] = True
    broken = line.copy()
    broken[:, 20:23] = broken[:, 40:43] = False  # one filament cut twice
    p, b = skeleton_stats(plus), skeleton_stats(broken)
    assert p["fragments"] == 1 and p["branch_points"] >= 1 and p["branches"] == 4
    assert b["fragments"] == 3 and b["mean_branch_px"] < r["mean_branch_px"] / 2


def test_the_residual_is_noise_when_only_noise_was_removed_and_structured_when_signal_was():
    noisy, truth = noisy_frame((128, 128), photons=10.0, seed=4)
    clean = truth.astype(float)
    rng = np.random.default_rng(5)
    raw = clean + rng.normal(0, 1.0, clean.shape)
    good, good_map = residual_checks(raw, clean)
    assert good["structure_fraction"] < 0.01 and abs(good["lag1"]) < 0.05 and abs(good["mean"]) < 0.05
    flat = np.full(clean.shape, clean.mean())
    smeared = 0.5 * clean + 0.5 * flat  # half of the signal went into the residual
    bad, bad_map = residual_checks(raw, smeared)
    assert bad["structure_fraction"] > 10 * max(good["structure_fraction"], 1e-3)
    assert bad["lag1"] > 0.2 and good_map.shape == bad_map.shape == raw.shape


@pytest.fixture(scope="module")
def zarr_run(tmp_path_factory):
    """An OME-Zarr output of the pipeline for channel 1, time points 1..3 of a (4, 2, 96, 110) input."""
    d = tmp_path_factory.mktemp("report")
    frames = np.stack([np.stack([noisy_frame((96, 110), photons=5.0 + 4 * c, seed=10 * t + c)[0] * (1 - 0.05 * t)
                                 for c in range(2)]) for t in range(4)]).astype(np.uint16)
    z = zarr.create_array(str(d / "in.zarr"), shape=frames.shape, chunks=(1, 1, 64, 64), dtype=frames.dtype,
                          dimension_names=["t", "c", "y", "x"])
    z[...] = frames
    fit(frames[:, 1:], axes="TCYX", config=TrainConfig(preset="tiny", steps=4, patch=32, batch=2, val_every=2),
        model_dir=d / "model")
    run_pipeline(open_source(d / "in.zarr"), d / "out.zarr", d / "model",
                 selection=Selection(channels=(1,), time=(1, 4)), options=RunOptions(infer=InferConfig(tile=32)),
                 client="sync")
    return d, frames


def test_a_report_on_a_pipeline_output_maps_its_frames_to_the_input(zarr_run, tmp_path):
    d, frames = zarr_run
    s = make_report(d / "in.zarr", d / "out.zarr", tmp_path / "r", model_dir=d / "model", frames=2, curve_points=3)
    out = tmp_path / "r"
    assert [f["input_index"] for f in s["frames"]] == [[1, 1], [3, 1]]  # output t 0 and 2 = input t 1 and 3
    assert [f["frame"] for f in s["frames"]] == ["t=0 (input t=1), channel 1", "t=2 (input t=3), channel 1"]
    assert s["denoised"]["risk_labels"] == "from the output"
    den = zarr.open_group(str(d / "out.zarr"), mode="r")["0"][...]
    series = s["time_series"][s["channels"][0]]
    assert series["time"] == [0, 1, 2]
    np.testing.assert_allclose(series["raw_mean"], frames[1:, 1].mean(axis=(1, 2)))
    np.testing.assert_allclose(series["denoised_mean"], den[:, 0].mean(axis=(1, 2)), rtol=1e-6)
    page = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    from_model = sorted(p.name for p in (d / "model").glob("*.png"))
    assert "curves-0.png" in from_model
    assert len(pngs) == 2 * 4 + 1 + len(from_model)  # 4 figures per frame, the time series, the model's figures
    assert page.count("<img src=\"data:image/png;base64,") == len(pngs)
    assert json.loads((out / "summary.json").read_text())["frames"][0]["figures"]["montage"] == "f0-montage.png"
    with pytest.raises(OutputError, match="already holds files"):
        make_report(d / "in.zarr", d / "out.zarr", out)
    make_report(d / "in.zarr", d / "out.zarr", out, overwrite=True, frames=1, curve_points=2)
    assert not (out / "f1-montage.png").exists()  # the earlier report was replaced, not mixed in


def test_mismatched_or_unfinished_outputs_are_refused(zarr_run, tmp_path):
    d, frames = zarr_run
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, frames[0, 0, :50])
    with pytest.raises(InputError, match="give the input the output was made from"):
        make_report(other, d / "out.zarr", tmp_path / "r")
    unfinished = tmp_path / "unfinished.zarr"
    import shutil

    shutil.copytree(d / "out.zarr", unfinished)
    root = zarr.open_group(str(unfinished), mode="r+")
    root.attrs["asn2n"] = {**dict(root.attrs["asn2n"]), "status": "running"}
    with pytest.raises(InputError, match="unfinished asn2n-dask output"):
        make_report(d / "in.zarr", unfinished, tmp_path / "r2")
    assert not (tmp_path / "r2").exists()


def test_the_command_with_ground_truth_and_its_errors(tmp_path, tiny_model, frame):
    from asn2n_dask import denoise

    noisy, truth = frame
    den = denoise(noisy, tiny_model, config=InferConfig(tile=32))
    for name, arr in (("noisy.tif", noisy), ("den.tif", den), ("gt.tif", truth.astype(np.float32))):
        tifffile.imwrite(tmp_path / name, arr)
    runner = CliRunner()
    args = ["report", str(tmp_path / "noisy.tif"), str(tmp_path / "den.tif"), "-o", str(tmp_path / "rep")]
    r = runner.invoke(app, [*args, "--gt", str(tmp_path / "gt.tif"), "--zoom", "40,60,32"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    sc = s["frames"][0]["scores"]
    assert sc["denoised"]["psnr"] > sc["input"]["psnr"]
    assert s["frames"][0]["zoom"] == {"y": 24, "x": 44, "side": 32}
    bad = runner.invoke(app, [*args, "--zoom", "1,2"])
    assert bad.exit_code == 2 and "Y,X,SIDE" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, [*args[:2], str(tmp_path / "nope.tif"), "-o", str(tmp_path / "r3")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_failed_report_leaves_nothing_and_keeps_the_earlier_one(zarr_run, tmp_path, monkeypatch):
    d, _ = zarr_run
    out = tmp_path / "deep" / "r"

    def boom(*args, **kwargs):
        raise RuntimeError("figure failed")

    with monkeypatch.context() as m:
        m.setattr("asn2n_dask.report._fig_time", boom)  # after every per-frame figure was written
        with pytest.raises(RuntimeError, match="figure failed"):
            make_report(d / "in.zarr", d / "out.zarr", out, frames=1, curve_points=2)
    assert _leftovers(tmp_path) == []  # no half report, no staging folder, not even the parent it made
    make_report(d / "in.zarr", d / "out.zarr", out, frames=1, curve_points=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "report.html" in before and ".asn2n-report" in before
    with monkeypatch.context() as m:
        m.setattr("asn2n_dask.report._fig_time", boom)
        with pytest.raises(RuntimeError, match="figure failed"):
            make_report(d / "in.zarr", d / "out.zarr", out, frames=2, curve_points=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier report is untouched
    assert _leftovers(out.parent) == ["r"]


def test_an_unwritable_report_folder_is_one_sentence(zarr_run, tmp_path, monkeypatch):
    d, _ = zarr_run

    def denied(fig, path, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))  # what a read-only folder raises

    monkeypatch.setattr("asn2n_dask.report.save_figure", denied)
    args = ["report", str(d / "in.zarr"), str(d / "out.zarr"), "-o", str(tmp_path / "r"), "--frames", "1",
            "--curve-points", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: cannot write the report to ") and "Permission denied" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in r.output
    assert _leftovers(tmp_path) == []
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: access(p, mode, **k) and Path(p) != tmp_path)  # read-only
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "is not a writable folder" in r.stderr and "Traceback" not in r.output
    assert _leftovers(tmp_path) == []


def test_a_read_only_folder_is_refused_in_one_sentence(zarr_run, tmp_path):
    d, _ = zarr_run
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        try:
            (ro / "probe").mkdir()
        except PermissionError:
            pass
        else:
            pytest.skip("folder permissions do not bind this user (root)")
        r = CliRunner().invoke(app, ["report", str(d / "in.zarr"), str(d / "out.zarr"), "-o", str(ro / "r")])
    finally:
        ro.chmod(0o755)
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1
    assert _leftovers(ro) == []


def test_a_report_is_never_written_into_its_inputs_and_overwrites_only_reports(zarr_run, tmp_path):
    d, _ = zarr_run
    for inside in (d / "in.zarr" / "report", d / "out.zarr", d / "model" / "report", d / "in.zarr"):
        with pytest.raises(OutputError, match="would be inside or around"):
            make_report(d / "in.zarr", d / "out.zarr", inside, model_dir=d / "model", overwrite=True)
    assert not (d / "in.zarr" / "report").exists() and not (d / "model" / "report").exists()
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "summary.json").write_text('{"mine": 1}')  # someone else's summary
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not an asn2n report"):
        make_report(d / "in.zarr", d / "out.zarr", foreign, overwrite=True)
    assert _leftovers(foreign) == ["notes.txt", "summary.json"]
    assert _leftovers(tmp_path) == ["results"]
    ours = tmp_path / "ours"
    make_report(d / "in.zarr", d / "out.zarr", ours, frames=1, curve_points=2)
    (ours / ".asn2n-report").unlink()  # a report from before the marker: our page and summary
    make_report(d / "in.zarr", d / "out.zarr", ours, frames=1, curve_points=2, overwrite=True)
    assert (ours / ".asn2n-report").is_file() and (ours / "report.html").is_file()


def test_the_page_loads_in_a_real_browser_with_every_image(zarr_run, tmp_path):
    if chromium() is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's package)")
    d, _ = zarr_run
    make_report(d / "in.zarr", d / "out.zarr", tmp_path / "r", model_dir=d / "model", frames=2, curve_points=3)
    got = load_page((tmp_path / "r" / "report.html").as_uri(), ARTIFACTS / "report-screenshot.png")
    assert got["errors"] == []
    assert len(got["images"]) == 9 + len(list((d / "model").glob("*.png")))
    assert all(ok for _, ok in got["images"]), got["images"]
    assert got["title"].startswith("asn2n report")
    assert (ARTIFACTS / "report-screenshot.png").stat().st_size > 10_000


def test_napari_layers_of_an_output_with_its_input_selection(zarr_run):
    from asn2n_dask.view import napari_layers

    d, frames = zarr_run
    den = zarr.open_group(str(d / "out.zarr"), mode="r")
    layers = napari_layers(d / "out.zarr")
    kinds = [(layer.layer_type, layer.kwargs["name"]) for layer in layers]
    assert [k for k, _ in kinds] == ["image", "image", "labels"]
    raw, out, risk = layers
    np.testing.assert_array_equal(np.asarray(raw.data), frames[1:4, 1:2])  # the input's selected frames
    np.testing.assert_array_equal(np.asarray(out.data), den["0"][...])
    assert raw.kwargs["channel_axis"] == out.kwargs["channel_axis"] == 1
    assert out.kwargs["scale"] == (1.0, 1.0, 1.0) and len(out.kwargs["contrast_limits"]) == 1
    np.testing.assert_array_equal(np.asarray(risk.data), den["labels/risk-1/0"][...])  # channel 1's label image
    with pytest.raises(InputError, match="is not the one"):
        napari_layers(d / "out.zarr", input=_other_zarr(d))


def _other_zarr(d: Path) -> Path:
    p = d / "other.zarr"
    if not p.exists():
        z = zarr.create_array(str(p), shape=(2, 2, 96, 110), chunks=(1, 1, 96, 110), dtype="uint16",
                              dimension_names=["t", "c", "y", "x"])
        z[...] = 1
    return p


def test_view_without_napari_says_how_to_get_it(zarr_run, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "napari", None)  # as on a machine without the optional extra
    r = CliRunner().invoke(app, ["view", str(zarr_run[0] / "out.zarr")])
    assert r.exit_code == 2 and "pip install asn2n-dask[view]" in r.output and "Traceback" not in r.output


def test_view_without_a_qt_binding_or_a_display_is_one_sentence(zarr_run, monkeypatch):
    import sys
    import types

    out = str(zarr_run[0] / "out.zarr")
    monkeypatch.setitem(sys.modules, "qtpy", None)  # napari installed, no PyQt/PySide (napari's own default)
    r = CliRunner().invoke(app, ["view", out])
    assert r.exit_code == 2, r.output
    assert "a Qt binding" in r.stderr and "pip install asn2n-dask[view]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    # a binding that imports, but Qt cannot start a window: no display, or a platform plugin that does not load
    monkeypatch.setitem(sys.modules, "qtpy", types.ModuleType("qtpy"))
    monkeypatch.setenv("QT_QPA_PLATFORM", "no-such-platform")
    monkeypatch.delenv("DISPLAY", raising=False)
    r = CliRunner().invoke(app, ["view", out])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: Qt cannot open a window here (QT_QPA_PLATFORM is 'no-such-platform')")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_the_output_opens_in_napari_with_channel_names_scale_and_risk_labels(zarr_run):
    """Through napari-ome-zarr (the OME metadata alone) and through asn2n view's layers."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        napari_ome_zarr = pytest.importorskip("napari_ome_zarr")
        components = pytest.importorskip("napari.components")
    from asn2n_dask.view import napari_layers

    d, _ = zarr_run
    out = d / "out.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = napari_ome_zarr.napari_get_reader(str(out))
        found = read(str(out))
    kinds = {kind: (data, kw) for data, kw, kind in found}
    data, kw = kinds["image"]
    assert kw["channel_axis"] == 1 and kw["name"] == ["denoised: 1"] and list(kw["scale"]) == [1.0, 1.0, 1.0]
    assert kw["contrast_limits"][0][1] > kw["contrast_limits"][0][0]  # the run's display window
    assert tuple(data[0].shape) == (3, 1, 96, 110)
    label_data, label_kw = kinds["labels"]
    assert tuple(label_data[0].shape) == (3, 96, 110)  # channel 1's label image: the image layer's axes
    assert label_kw["name"].endswith("/risk-1") and list(label_kw["scale"]) == [1.0, 1.0, 1.0]
    with warnings.catch_warnings():  # napari's own deprecation warnings
        warnings.simplefilter("ignore")
        viewer = components.ViewerModel()
        for layer in napari_layers(out):
            getattr(viewer, f"add_{layer.layer_type}")(layer.data, **layer.kwargs)
    assert [layer.name for layer in viewer.layers] == ["input 1", "denoised 1", "risk 1"]
    assert all(tuple(layer.scale) == (1.0, 1.0, 1.0) for layer in viewer.layers)
