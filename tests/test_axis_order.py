"""Any input axis order into OME-Zarr: an ImageJ hyperstack (TZCYX) or a Zarr array
stored TZCYX is written in OME-NGFF's T, C, Z, Y, X order, equal element for element
to the same data given in that order, with its scale, units and channel names moved
along; each task still reads its own region of the input as stored, and the input is
never written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from asn2n_dask import InferConfig, TrainConfig, fit, save_model
from asn2n_dask.axes import canonical_order
from asn2n_dask.cli import app
from asn2n_dask.errors import InputError
from asn2n_dask.io import ImageMeta, read_image, write_image
from asn2n_dask.pipeline import RunOptions, make_plan
from asn2n_dask.source import Source, open_source
from asn2n_dask.synthetic import noisy_frame

runner = CliRunner()
NAMES = ("dapi", "gfp")
T, Z, C, H, W = 2, 3, 2, 48, 64
#: The ImageJ file's calibration, as it reads back: frame interval 2.5 s, Z step 0.5 um,
#: pixels 0.25 um (Y) by 0.2 um (X).
SCALE_TCZYX = (2.5, 1.0, 0.5, 0.25, 0.2)
UNITS_TCZYX = ("second", None, "micrometer", "micrometer", "micrometer")


def digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One (T=2, C=2, Z=3, 48, 64) uint16 stack stored three ways: an ImageJ hyperstack
    (TZCYX), a Zarr v3 array (TZCYX) and an OME-Zarr (TCZYX, the same calibration and
    channel names); and a tiny two-channel model."""
    d = tmp_path_factory.mktemp("order")
    tczyx = np.stack([np.stack([np.stack([noisy_frame((H, W), photons=p, seed=100 * t + 10 * z + c)[0] + off
                                          for z in range(Z)]) for c, (p, off) in enumerate([(5.0, 100), (30.0, 900)])])
                      for t in range(T)]).astype(np.uint16)
    tzcyx = tczyx.transpose(0, 2, 1, 3, 4)
    tifffile.imwrite(d / "ij.tif", tzcyx, imagej=True, resolution=(1 / 0.2, 1 / 0.25), metadata={
        "axes": "TZCYX", "unit": "micron", "spacing": 0.5, "finterval": 2.5, "Labels": list(NAMES) * (T * Z)})
    write_image(d / "tzcyx.zarr", tzcyx, ImageMeta(axes="TZCYX", format="zarr"), chunks=(1, 1, 1, 32, 32))
    write_image(d / "tczyx.zarr", tczyx, ImageMeta(axes="TCZYX", format="ome-zarr", scale=SCALE_TCZYX,
                                                   units=UNITS_TCZYX, channel_names=NAMES))
    save_model(fit(tczyx, axes="TCZYX", channel_names=NAMES,
                   config=TrainConfig(preset="tiny", steps=2, patch=32, batch=2)), d / "model")
    return d, tczyx


def _sync(monkeypatch):
    """Run the chunk tasks in this process (the same tasks as on a cluster, faster to start)."""
    import contextlib

    import asn2n_dask.connect as connect

    @contextlib.contextmanager
    def sync(*args, **kwargs):
        yield "sync", None

    monkeypatch.setattr(connect, "open_client", sync)


def _denoise(src: Path, out: Path, model: Path, *extra: str):
    r = runner.invoke(app, ["-q", "denoise", str(src), "-o", str(out), "--model", str(model), "--tile", "32",
                            *extra])
    assert r.exit_code == 0, r.output
    return zarr.open_group(str(out), mode="r")


def _labels(root) -> list[np.ndarray]:
    attrs = dict(root["labels"].attrs)
    return [root[f"labels/{n}/0"][...] for n in (attrs.get("ome") or attrs)["labels"]]


def test_a_tzcyx_imagej_stack_and_zarr_denoise_to_the_tczyx_result(inputs, tmp_path, monkeypatch):
    d, tczyx = inputs
    _sync(monkeypatch)
    before = {name: digest(d / name) for name in ("ij.tif", "tzcyx.zarr")}
    ref = _denoise(d / "tczyx.zarr", tmp_path / "ref.zarr", d / "model")
    assert ref["0"].shape == tczyx.shape
    for name in ("ij.tif", "tzcyx.zarr"):
        out = _denoise(d / name, tmp_path / f"{name}.out.zarr", d / "model", "--pyramid", "1")
        assert digest(d / name) == before[name]  # the input is never written
        np.testing.assert_array_equal(out["0"][...], ref["0"][...])  # element for element
        for got, want in zip(_labels(out), _labels(ref), strict=True):
            np.testing.assert_array_equal(got, want)
        assert out["1"].shape == (T, C, Z, H // 2, W // 2)
        job = dict(out.attrs)["asn2n"]
        assert job["input_axes"] == job["job"]["input"]["axes"] == "TZCYX"
        assert job["output_axes"] == job["job"]["output_axes"] == "TCZYX"
    # the OME metadata of the ImageJ file's output: axes, scale, units and channel names in TCZYX order
    from ome_zarr_models import v05

    root = zarr.open_group(str(tmp_path / "ij.tif.out.zarr"), mode="r")
    image = v05.image.Image.from_zarr(root)
    ms = image.ome_attributes.multiscales[0]
    assert [(a.name, a.unit) for a in ms.axes] == [("t", "second"), ("c", None), ("z", "micrometer"),
                                                   ("y", "micrometer"), ("x", "micrometer")]
    assert ms.datasets[0].coordinateTransformations[0].scale == list(SCALE_TCZYX)
    assert ms.datasets[1].coordinateTransformations[0].scale == [2.5, 1.0, 0.5, 0.5, 0.4]
    assert [ch["label"] for ch in root.attrs["ome"]["omero"]["channels"]] == list(NAMES)
    assert v05.labels.Labels.from_zarr(root["labels"]).ome_attributes.labels == ["risk-dapi", "risk-gfp"]
    label = v05.image_label.ImageLabel.from_zarr(root["labels/risk-gfp"]).ome_attributes.multiscales[0]
    assert [a.name for a in label.axes] == ["t", "z", "y", "x"]
    assert label.datasets[0].coordinateTransformations[0].scale == [2.5, 0.5, 0.25, 0.2]
    data, meta = read_image(tmp_path / "ij.tif.out.zarr")
    assert meta.axes == "TCZYX" and meta.scale == SCALE_TCZYX and meta.channel_names == NAMES


def test_each_task_reads_its_own_region_of_the_input_as_stored(inputs, tmp_path, monkeypatch):
    """The chunk tasks index the TZCYX array in its own order, one plane's region each:
    no transposed copy of the input is made."""
    from asn2n_dask.pipeline import run_pipeline

    d, tczyx = inputs
    src = open_source(d / "tzcyx.zarr")
    real = Source.open
    reads: list[tuple] = []

    class Spy:
        def __init__(self, arr):
            self.arr = arr

        def __getattr__(self, name):
            return getattr(self.arr, name)

        def __getitem__(self, key):
            if isinstance(key, tuple) and len(key) == 5 and all(isinstance(k, int) for k in key[:3]):
                reads.append(key)  # a plane's region: (t, z, c, rows, columns)
            return self.arr[key]

    monkeypatch.setattr(Source, "open", lambda self: Spy(real(self)))
    plan = make_plan(src, options=RunOptions(chunks=(32, 32)), patch=32)
    assert plan.axes == "TCZYX" and plan.shape == tczyx.shape and plan.order == (0, 2, 1, 3, 4)
    summary = run_pipeline(src, tmp_path / "out.zarr", d / "model", client="sync",
                           options=RunOptions(chunks=(32, 32), infer=InferConfig(tile=32)))
    assert summary.computed == summary.tasks == len(reads) == T * Z * C * 2 * 2
    assert {k[:3] for k in reads} == {(t, z, c) for t in range(T) for z in range(Z) for c in range(C)}
    for key in reads:
        region = np.asarray(real(src)[key])
        assert region.ndim == 2 and region.shape[0] <= H and region.shape[1] <= W
        t, z, c = key[:3]
        np.testing.assert_array_equal(region, tczyx[t, c, z][key[3], key[4]])


def test_the_plan_says_the_output_order_and_refuses_axes_ome_does_not_name(inputs, monkeypatch, tmp_path):
    d, _ = inputs
    r = runner.invoke(app, ["denoise", str(d / "ij.tif"), "-o", str(tmp_path / "o.zarr"), "--model",
                            str(d / "model"), "--tile", "32", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "axes TCZYX (the input's TZCYX in OME order), shape (2, 2, 3, 48, 64)" in r.output
    assert "labels/risk-dapi, labels/risk-gfp (axes TZYX)" in r.output
    assert canonical_order("ZTCYX") == (1, 2, 0, 3, 4)
    zarr.create_array(str(tmp_path / "q.zarr"), shape=(2, 3, 16, 16), chunks=(1, 1, 16, 16), dtype="uint8",
                      dimension_names=["t", "angle", "y", "x"])
    src = open_source(tmp_path / "q.zarr")
    assert src.axes[1] not in "TCZYX"
    with pytest.raises(InputError, match="every axis named T, C, Z, Y or X"):
        make_plan(src)


def test_view_and_report_map_a_tzcyx_input_onto_its_output(inputs, tmp_path, monkeypatch):
    """``asn2n view`` shows the input in the output's order; ``asn2n report`` reads each
    frame of the input at its own index."""
    from asn2n_dask.report import make_report
    from asn2n_dask.view import napari_layers

    d, tczyx = inputs
    _sync(monkeypatch)
    out = tmp_path / "out.zarr"
    _denoise(d / "ij.tif", out, d / "model", "--channel", "gfp", "--time", "1:2")
    layers = napari_layers(out)
    assert [layer.layer_type for layer in layers] == ["image", "image", "labels"]
    np.testing.assert_array_equal(np.asarray(layers[0].data), tczyx[1:2, 1:2])  # the input's selection, TCZYX
    assert layers[0].kwargs["channel_axis"] == 1 and layers[0].kwargs["scale"] == (2.5, 0.5, 0.25, 0.2)
    root = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(np.asarray(layers[2].data), root["labels/risk-gfp/0"][...])
    s = make_report(d / "ij.tif", out, tmp_path / "report", frames=1, curve_points=1)
    (frame,) = s["frames"]
    assert frame["output_index"] == [0, 0, Z // 2] and frame["input_index"] == [1, Z // 2, 1]  # TCZ -> TZC
    assert s["denoised"]["risk_labels"] == "from the output"
    assert s["time_series"]["gfp"]["raw_mean"] == [pytest.approx(float(tczyx[1, 1, Z // 2].mean()))]
