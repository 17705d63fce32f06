"""The napari plugin: its npe2 manifest validates and names our reader and widget; the
reader opens an output of ``asn2n denoise`` (denoised image per channel and risk labels,
with the output's scale) and leaves any other path to other readers; the dock widget
fits, denoises and shows risk on a headless viewer, in a thread, with progress, and says
the package's refusals in one line.

napari's pytest plugins are off (pyproject's addopts), so viewers are
``napari.components.ViewerModel`` and the widget runs on a QApplication of its own
(``QT_QPA_PLATFORM=offscreen``), as the other napari tests here do.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from asn2n_dask import InferConfig, TrainConfig, denoise, fit, load_model, save_model
from asn2n_dask.api import denoise_with_risk
from asn2n_dask.cli import app
from asn2n_dask.errors import InputError, ModelError
from asn2n_dask.io import ImageMeta, write_image
from asn2n_dask.synthetic import noisy_frame
from asn2n_dask.view import napari_get_reader
from asn2n_dask.widget import DenoiseWidget, layer_axes, network_of
from tests.conftest import ROOT

MANIFEST = ROOT / "asn2n_dask" / "napari.yaml"
SCALE = (2.0, 1.0, 0.1, 0.1)
UNITS = ("second", None, "micrometer", "micrometer")
NAMES = ("mito", "er")
#: The tiny training of the widget test: its options as the widget's fields.
TINY = {"preset": "tiny", "steps": 3, "patch": 32, "batch": 2}


def _quiet_import(name: str):
    with warnings.catch_warnings():  # napari's own deprecation warnings
        warnings.simplefilter("ignore")
        return pytest.importorskip(name)


# ---------------------------------------------------------------- manifest
def test_the_manifest_passes_npe2_validate_with_its_imports():
    """``npe2 validate --imports`` (the CLI, in a child process importing this tree)."""
    _quiet_import("npe2")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "npe2", "validate", str(MANIFEST), "--imports"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr


def test_pyproject_ships_the_manifest_as_the_napari_entry_point():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, _, resource = project["project"]["entry-points"]["napari.manifest"]["asn2n-dask"].partition(":")
    assert (ROOT / module.replace(".", "/") / resource) == MANIFEST
    assert resource in project["tool"]["setuptools"]["package-data"][module]


def test_npe2_reads_an_output_with_our_reader_and_finds_the_widget(output):
    """Through npe2's plugin manager, as napari's File > Open and Plugins menu reach the
    plugin: the reader opens an output and refuses an OME-Zarr that is not one."""
    npe2 = _quiet_import("npe2")
    pm = npe2.PluginManager.instance()
    try:
        pm.get_manifest("asn2n-dask")
        registered = False
    except KeyError:  # not installed with its entry point here: register the manifest of this tree
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
        registered = True
    try:
        layers = npe2.read([str(output)], stack=False, plugin_name="asn2n-dask")
        assert [layer_type for _, _, layer_type in layers] == ["image", "labels", "labels"]
        with pytest.raises(ValueError):  # napari then tries the other readers
            npe2.read([str(output.parent / "in.zarr")], stack=False, plugin_name="asn2n-dask")
        (widget,) = [w for w in pm.iter_widgets() if w.plugin_name == "asn2n-dask"]
        assert widget.display_name == "Denoise" and widget.get_callable() is DenoiseWidget
    finally:
        if registered:
            pm.unregister("asn2n-dask")


# ---------------------------------------------------------------- reader
@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    """An output of ``asn2n denoise`` (tiny model, tile 32) of a (T=2, C=2, 64, 80)
    OME-Zarr with scale, units and channel names."""
    import asn2n_dask.connect as connect

    d = tmp_path_factory.mktemp("plugin")
    frames = np.stack([np.stack([noisy_frame((64, 80), photons=6.0 + 4 * c, seed=10 * t + c)[0] for c in range(2)])
                       for t in range(2)])
    write_image(d / "in.zarr", frames, ImageMeta(axes="TCYX", format="ome-zarr", scale=SCALE, units=UNITS,
                                                 channel_names=NAMES))
    save_model(fit(frames, axes="TCYX", channel_names=NAMES, config=TrainConfig(**TINY)), d / "model")

    @contextlib.contextmanager
    def sync(*args, **kwargs):  # the chunk tasks in this process: the same tasks, faster to start
        yield "sync", None

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(connect, "open_client", sync)
        r = CliRunner().invoke(app, ["-q", "denoise", str(d / "in.zarr"), "-o", str(d / "out.zarr"), "--model",
                                     str(d / "model"), "--tile", "32"])
    assert r.exit_code == 0, r.output
    return d / "out.zarr"


def test_the_reader_opens_an_output_as_channel_layers_and_risk_labels_with_its_scale(output):
    components = _quiet_import("napari.components")
    read = napari_get_reader(str(output))
    assert read is not None
    root = zarr.open_group(str(output), mode="r")
    stats = root.attrs["asn2n"]["job"]["stats"]
    with warnings.catch_warnings():  # napari's own deprecation warnings
        warnings.simplefilter("ignore")
        viewer = components.ViewerModel()
        for data, kwargs, layer_type in read([str(output)]):  # napari passes a list of one path
            getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    layers = {layer.name: layer for layer in viewer.layers}
    assert list(layers) == ["denoised mito", "denoised er", "risk mito", "risk er"]
    for c, name in enumerate(NAMES):
        image, labels = layers[f"denoised {name}"], layers[f"risk {name}"]
        assert type(image).__name__ == "Image" and type(labels).__name__ == "Labels"
        assert image.data.shape == labels.data.shape == (2, 64, 80)
        assert tuple(image.scale) == tuple(labels.scale) == (SCALE[0], SCALE[2], SCALE[3])
        np.testing.assert_array_equal(np.asarray(image.data), root["0"][:, c])
        np.testing.assert_array_equal(np.asarray(labels.data), root[f"labels/risk-{name}/0"][...])
        assert tuple(image.contrast_limits) == (stats[c]["norm"]["lo"], stats[c]["norm"]["hi"])
    assert viewer.dims.ndim == 3  # image and labels share their axes


def test_the_reader_leaves_every_other_path_to_other_readers(output, tmp_path):
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=(8, 8), dtype="uint8")
    tif = tmp_path / "frame.tif"
    tif.write_bytes(b"II*\x00")
    others = [output.parent / "in.zarr",  # an OME-Zarr asn2n wrote, with its record but no risk labels
              plain, tif, tmp_path / "missing.zarr", tmp_path, [str(output), str(output)]]
    for path in others:
        assert napari_get_reader(path if isinstance(path, list) else str(path)) is None, path
    assert napari_get_reader([str(output)]) is not None


# ---------------------------------------------------------------- widget
@pytest.fixture
def qt(monkeypatch):
    """A QApplication (offscreen unless a platform is set) and the notifications napari
    receives while the test runs."""
    monkeypatch.setenv("QT_QPA_PLATFORM", os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    qtwidgets = _quiet_import("qtpy.QtWidgets")
    notifications = _quiet_import("napari.utils.notifications")
    app = qtwidgets.QApplication.instance() or qtwidgets.QApplication([])
    seen: list = []
    notifications.notification_manager.notification_ready.connect(seen.append)
    yield SimpleNamespace(app=app, notes=seen)
    notifications.notification_manager.notification_ready.disconnect(seen.append)


def _viewer(*images):
    components = _quiet_import("napari.components")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viewer = components.ViewerModel()
        for data, kwargs in images:
            viewer.add_image(data, **kwargs)
    return viewer


def _wait(qt, widget, timeout: float = 120.0, during=None) -> None:
    """Run Qt's event loop until the widget's job has finished; ``during()`` is called
    on every turn while it runs."""
    start = time.monotonic()
    while widget.worker is not None:
        qt.app.processEvents()
        if during is not None:
            during()
        time.sleep(0.005)
        assert time.monotonic() - start < timeout, "the job did not finish"
    qt.app.processEvents()


def _set(widget, **values) -> None:
    for name, value in values.items():
        getattr(widget, name).value = value


def test_the_widget_fits_denoises_and_shows_risk_in_a_thread_with_progress(qt, tmp_path):
    stack = np.stack([noisy_frame((64, 64), photons=8.0, seed=s)[0] for s in range(2)])  # (T, Y, X)
    viewer = _viewer((stack, {"name": "cells", "scale": (3.0, 0.5, 0.5), "translate": (0.0, 4.0, 8.0)}))
    proxies = _quiet_import("napari.utils._proxies")
    # as napari docks it: the viewer by this name, behind the proxy that refuses private attributes
    widget = DenoiseWidget(napari_viewer=proxies.PublicOnlyProxy(viewer))
    _set(widget, model_dir=tmp_path / "cells.model", tile=32, norm="global", risk_estimator="reference", **TINY)
    seen = []

    def watch() -> None:  # what the event loop shows while the job runs in its thread
        seen.append((widget.progress.value, widget.progress.max, widget.fit_button.enabled))

    widget.fit()
    assert widget.worker is not None and not widget.fit_button.enabled and widget.stop_button.enabled
    _wait(qt, widget, during=watch)
    assert widget.fit_button.enabled and not widget.stop_button.enabled
    assert any(0 < value and total == TINY["steps"] and not enabled for value, total, enabled in seen), seen
    model = load_model(tmp_path / "cells.model")
    assert [ch.name for ch in model.channels] == ["cells"]
    assert model.train.preset == "tiny" and model.train.steps == 3 and model.train.patch == 32
    assert model.train.batch == 2 and model.train.norm.mode == "global"
    assert model.train.norm.risk.estimator == "reference"
    assert widget.status.value == f"model written to {tmp_path / 'cells.model'}"

    seen.clear()
    widget.denoise()
    _wait(qt, widget, during=watch)
    assert any(total == 2 and not enabled for _, total, enabled in seen), seen  # 2 frames, one step each
    assert [layer.name for layer in viewer.layers] == ["cells", "cells denoised", "cells risk"]
    out, risk = viewer.layers["cells denoised"], viewer.layers["cells risk"]
    assert type(risk).__name__ == "Labels" and out.data.shape == risk.data.shape == stack.shape
    for layer in (out, risk):
        assert tuple(layer.scale) == (3.0, 0.5, 0.5) and tuple(layer.translate) == (0.0, 4.0, 8.0)
    infer = InferConfig(tile=32)
    np.testing.assert_array_equal(out.data, denoise(stack, model, axes="TYX", config=infer))
    np.testing.assert_array_equal(risk.data, denoise_with_risk(stack, model, axes="TYX", config=infer)[1])
    assert set(np.unique(risk.data)) <= {0, 1, 2}
    assert tuple(out.contrast_limits) == tuple(viewer.layers["cells"].contrast_limits)  # input units, one scale
    assert not [n for n in qt.notes if n.severity == "error"]

    viewer.layers.selection.active = viewer.layers["cells"]
    widget.denoise()  # again: the layers are replaced, not added
    _wait(qt, widget)
    assert [layer.name for layer in viewer.layers] == ["cells", "cells denoised", "cells risk"]


def test_the_widget_says_the_package_s_refusals_in_one_line(qt, tmp_path):
    frame = noisy_frame((64, 64), photons=8.0, seed=1)[0]
    viewer = _viewer()
    widget = DenoiseWidget(viewer)
    _set(widget, model_dir=tmp_path / "m", tile=32, **TINY)

    def refused(action, *words: str) -> str:
        qt.notes.clear()
        action()
        _wait(qt, widget)
        (note,) = qt.notes
        text = str(note.message)
        assert note.severity == "error" and "\n" not in text and "Traceback" not in text, text
        assert all(w in text for w in words), text
        assert widget.fit_button.enabled and widget.status.value == text
        return text

    refused(widget.fit, "select an image layer first")  # an empty viewer
    viewer.add_image(frame, name="cells")
    viewer.layers.selection.active = viewer.layers["cells"]
    refused(widget.denoise, "model", str(tmp_path / "m"))  # no model there: refused in the worker thread
    _set(widget, preset="paper", patch=40)
    refused(widget.fit, "training patch must be a multiple of 16")  # the options' own checks
    _set(widget, preset="tiny", patch=32)
    widget.model_dir.line_edit.value = ""  # an empty field
    refused(widget.fit, "choose a model folder first")
    save_model(fit(frame, config=TrainConfig(**TINY)), tmp_path / "m")
    _set(widget, model_dir=tmp_path / "m")
    refused(widget.fit, f"model folder {tmp_path / 'm'} already holds a model; choose a new or empty folder")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "plan.txt").write_text("keep me")
    _set(widget, model_dir=tmp_path / "notes")
    refused(widget.fit, "already holds files")  # never mixed with a folder of something else
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["plan.txt"]
    _set(widget, model_dir=tmp_path / "notes" / "plan.txt")
    refused(widget.fit, "is a file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        viewer.add_image(np.zeros((2, 8, 8, 3), np.uint8), name="rgb", rgb=True)
    viewer.layers.selection.active = viewer.layers["rgb"]
    refused(widget.denoise, "an RGB layer cannot be denoised")
    assert [layer.name for layer in viewer.layers] == ["cells", "rgb"]  # nothing added


def test_stop_ends_a_fit_at_its_next_step(qt, tmp_path):
    frame = noisy_frame((64, 64), photons=8.0, seed=2)[0]
    viewer = _viewer((frame, {"name": "cells"}))
    widget = DenoiseWidget(viewer)
    _set(widget, model_dir=tmp_path / "m", **{**TINY, "steps": 100_000})
    widget.fit()

    def stop_once_started() -> None:
        if widget.progress.value >= 1:  # training has begun
            widget.stop()

    _wait(qt, widget, during=stop_once_started)
    (note,) = qt.notes
    assert note.severity == "info" and "training stopped at" in str(note.message) and "of 100000" in str(note.message)
    assert widget.fit_button.enabled and widget.worker is None
    with pytest.raises(ModelError):  # no finished model was written
        load_model(tmp_path / "m")


def test_a_layer_is_one_channel_and_a_model_of_several_picks_the_network_by_layer_name():
    assert [layer_axes(n) for n in (2, 3, 4)] == ["YX", "TYX", "TZYX"]
    for ndim, rgb in ((5, False), (1, False), (3, True)):
        with pytest.raises(InputError):
            layer_axes(ndim, rgb)
    two = SimpleNamespace(channels=[SimpleNamespace(name="mito"), SimpleNamespace(name="er")])
    assert [network_of(two, n) for n in ("er", "denoised er", "input mito", "image:mito")] == [1, 1, 0, 0]
    with pytest.raises(ModelError, match="channels mito, er, and the layer 'cells' names none"):
        network_of(two, "cells")
    assert network_of(SimpleNamespace(channels=[SimpleNamespace(name="0")]), "cells") == 0
