"""OME-Zarr outputs that readers accept: every variant validated by ome-zarr-models,
label pyramids matching the image's, one label image per channel that napari-ome-zarr
shows aligned with its channel, named dimensions for xarray, and no unusable input
scale ever copied into an output."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from asn2n_dask import InferConfig, TrainConfig, fit, ome, save_model
from asn2n_dask.io import ImageMeta, read_image, write_image
from asn2n_dask.pipeline import RunOptions, run_pipeline
from asn2n_dask.source import Selection, open_source
from asn2n_dask.synthetic import noisy_frame

INFER = InferConfig(tile=32)
SCALE = (2.0, 1.0, 0.1, 0.1)
UNITS = ("second", None, "micrometer", "micrometer")
VARIANTS = [("0.4", 0), ("0.4", 2), ("0.5", 0), ("0.5", 2)]
#: The risk label image of the one channel of the ``work`` input, over its axes without C.
RISK = "risk-mito"
#: The keys the OME-NGFF specification defines, where our own must not appear.
SPEC_MULTISCALE_KEYS = {"axes", "datasets", "name", "type", "metadata", "coordinateTransformations", "version"}
#: zarr's note on the folder of completion records each time the root group is listed.
PROGRESS_NOTE = "ignore:Object at .asn2n-progress is not recognized"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A (T=2, C=1, 64, 80) OME-Zarr 0.5 input with scale, units and a channel name, a
    (T=2, 64, 80) one without C, a one-channel tiny model, and the output of every
    variant: OME 0.4 and 0.5, with and without --pyramid 2."""
    d = tmp_path_factory.mktemp("ome")
    frames = np.stack([noisy_frame((64, 80), photons=8.0, seed=t)[0] for t in range(2)])
    write_image(d / "in.zarr", frames[:, None], ImageMeta(axes="TCYX", format="ome-zarr", scale=SCALE, units=UNITS,
                                                          channel_names=("mito",)))
    write_image(d / "tyx.zarr", frames, ImageMeta(axes="TYX", format="ome-zarr"))
    save_model(fit(frames, axes="TYX", config=TrainConfig(preset="tiny", steps=2, patch=32, batch=2)), d / "model")
    for version, pyramid in VARIANTS:
        run_pipeline(open_source(d / "in.zarr"), d / f"out-{version}-{pyramid}.zarr", d / "model", client="sync",
                     options=RunOptions(infer=INFER, ome=version, pyramid=pyramid))
    return d


def _attrs(node, version):
    """The OME objects of a group's attributes (under ``ome`` in 0.5, top level in 0.4)."""
    return _attrs_of(dict(node.attrs), version)


def _attrs_of(attrs, version):
    return attrs["ome"] if version == "0.5" else attrs


def _levels(node, version):
    ms = _attrs(node, version)["multiscales"]
    assert len(ms) == 1
    return ms[0]["datasets"]


def _validate(out: Path, version: str):
    """Validate image, labels group and every label image it lists with ome-zarr-models
    (warnings are errors); the first label image is returned."""
    import ome_zarr_models
    from ome_zarr_models import v04, v05

    mod = v04 if version == "0.4" else v05
    root = zarr.open_group(str(out), mode="r", zarr_format=ome.ZARR_FORMAT[version])
    image = mod.image.Image.from_zarr(root)
    labels = mod.labels.Labels.from_zarr(root["labels"])
    found = [mod.image_label.ImageLabel.from_zarr(root[f"labels/{name}"]) for name in labels.ome_attributes.labels]
    assert isinstance(ome_zarr_models.open_ome_zarr(root, version=version), mod.image.Image)
    for label in found:
        assert label.ome_attributes.image_label.source.image == "../../"
        assert len(label.ome_attributes.multiscales[0].datasets) == len(image.ome_attributes.multiscales[0].datasets)
    return image, labels, found[0]


@pytest.mark.parametrize("version, pyramid", VARIANTS)
def test_every_output_variant_validates_with_ome_zarr_models(work, version, pyramid):
    image, labels, label = _validate(work / f"out-{version}-{pyramid}.zarr", version)
    assert len(image.ome_attributes.multiscales[0].datasets) == pyramid + 1
    assert labels.ome_attributes.labels == [RISK]
    assert label.ome_attributes.image_label.source.image == "../../"
    assert len(label.ome_attributes.multiscales[0].datasets) == pyramid + 1


@pytest.mark.parametrize("version, pyramid", VARIANTS)
def test_our_attributes_stay_outside_the_spec_objects(work, version, pyramid):
    root = zarr.open_group(str(work / f"out-{version}-{pyramid}.zarr"), mode="r")
    attrs = dict(root.attrs)
    assert attrs["asn2n"]["status"] == "complete" and attrs["asn2n"]["stats"]
    assert set(attrs) == ({"ome", "asn2n"} if version == "0.5" else {"multiscales", "omero", "asn2n"})
    for node, kind, name in ((root, "mean", "denoised"), (root[f"labels/{RISK}"], "mode", RISK)):
        spec = _attrs(node, version)
        assert version == "0.4" or "asn2n" not in spec  # 0.4 has no OME namespace: our key is the spec's sibling
        ms = spec["multiscales"][0]
        assert set(ms) <= SPEC_MULTISCALE_KEYS, set(ms) - SPEC_MULTISCALE_KEYS
        assert ms["type"] == kind and ms["name"] == name and ms["metadata"]["method"] == f"asn2n_dask.ome.block_{kind}"
        assert "stats" not in json.dumps(ms)
    assert set(dict(root[f"labels/{RISK}"].attrs)) == ({"ome"} if version == "0.5" else {"multiscales", "image-label"})


@pytest.mark.parametrize("version, pyramid", VARIANTS)
def test_the_risk_labels_have_the_image_levels_shapes_and_scales(work, version, pyramid):
    """The label image of a channel: the image's levels, shapes and scales without C."""
    root = zarr.open_group(str(work / f"out-{version}-{pyramid}.zarr"), mode="r")
    image, labels = _levels(root, version), _levels(root[f"labels/{RISK}"], version)
    assert [d["path"] for d in labels] == [d["path"] for d in image] == [str(lv) for lv in range(pyramid + 1)]
    axes = [a["name"] for a in _attrs(root[f"labels/{RISK}"], version)["multiscales"][0]["axes"]]
    assert axes == ["t", "y", "x"]
    for lv, (d, lab) in enumerate(zip(image, labels)):
        scale = d["coordinateTransformations"][0]["scale"]
        assert scale == [SCALE[0], SCALE[1], SCALE[2] * 2**lv, SCALE[3] * 2**lv]
        assert lab["coordinateTransformations"][0]["scale"] == [SCALE[0], SCALE[2] * 2**lv, SCALE[3] * 2**lv]
        assert root[d["path"]].shape == (2, 1, 64 >> lv, 80 >> lv)
        assert root[f"labels/{RISK}/{d['path']}"].shape == (2, 64 >> lv, 80 >> lv)
        assert root[f"labels/{RISK}/{d['path']}"].dtype == np.uint8
    for lv in range(1, pyramid + 1):  # each image level: the mean of 2x2 blocks of the level above
        above = root[str(lv - 1)][...].astype(np.float64)
        mean = above.reshape(2, 1, above.shape[2] // 2, 2, above.shape[3] // 2, 2).mean(axis=(3, 5))
        np.testing.assert_allclose(root[str(lv)][...], mean.astype(np.float32), rtol=1e-6)


def _mode_2x2(labels: np.ndarray) -> np.ndarray:
    """Oracle: per 2x2 block of the last two axes, the most frequent value (the smallest on ties)."""
    h, w = labels.shape[-2] // 2 * 2, labels.shape[-1] // 2 * 2
    blocks = labels[..., :h, :w].reshape(labels.shape[:-2] + (h // 2, 2, w // 2, 2))
    counts = np.stack([(blocks == v).sum(axis=(-3, -1)) for v in range(256)])
    return np.argmax(counts, axis=0).astype(labels.dtype)


def test_label_levels_take_the_most_frequent_value_never_an_average(work, tmp_path, monkeypatch):
    """Risk labels whose 2x2 blocks mix classes (the real ones are constant over whole
    normalisation patches): each level is the blocks' most frequent value, which an
    average would not give."""
    import asn2n_dask.predict as predict

    real = predict.denoise_window

    def mixed(region, wp, *args, **kwargs):
        out, risk = real(region, wp, *args, **kwargs)
        y0, y1, x0, x1 = wp.window
        yy, xx = np.mgrid[y0:y1, x0:x1]
        return out, ((yy * 7 + xx * 3 + (yy // 2) * (xx // 2)) % 3).astype(risk.dtype)

    monkeypatch.setattr(predict, "denoise_window", mixed)
    out = tmp_path / "mixed.zarr"
    run_pipeline(open_source(work / "in.zarr"), out, work / "model", client="sync",
                 options=RunOptions(infer=INFER, pyramid=2, chunks=(32, 48)))
    root = zarr.open_group(str(out), mode="r")
    level0 = root[f"labels/{RISK}/0"][...]
    assert set(np.unique(level0)) == {0, 1, 2}
    for lv in (1, 2):
        above = root[f"labels/{RISK}/{lv - 1}"][...]
        got = root[f"labels/{RISK}/{lv}"][...]
        np.testing.assert_array_equal(got, _mode_2x2(above))
        assert set(np.unique(got)) <= {0, 1, 2}
        if lv == 1:  # the pattern tells the two apart
            averaged = above.reshape(2, above.shape[1] // 2, 2, above.shape[2] // 2, 2).mean(axis=(2, 4))
            assert (got != averaged.astype(np.uint8)).mean() > 0.1
    _validate(out, "0.5")


def test_block_mode_and_block_mean_as_coarsen_reductions():
    import dask.array as da

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(3, 2, 10, 14), dtype=np.uint8)
    labels[0, 0, :2, :2] = [[1, 2], [2, 1]]  # a tie: the smaller value
    got = da.coarsen(ome.block_mode, da.from_array(labels, chunks=(1, 1, 4, 6)), {2: 2, 3: 2}).compute()
    assert got.dtype == np.uint8 and got[0, 0, 0, 0] == 1
    np.testing.assert_array_equal(got, _mode_2x2(labels))
    mean = da.coarsen(ome.block_mean, da.from_array(labels, chunks=(1, 1, 4, 6)), {2: 2, 3: 2}).compute()
    np.testing.assert_allclose(mean, labels.reshape(3, 2, 5, 2, 7, 2).mean(axis=(3, 5)))


@pytest.mark.filterwarnings(PROGRESS_NOTE)
@pytest.mark.parametrize("version, pyramid", VARIANTS)
def test_every_level_opens_in_xarray_with_the_axes_as_dims(work, version, pyramid):
    """Image and label levels: ``xr.open_zarr(OUT, group=GROUP, drop_variables=OTHER_LEVELS)``
    (a pyramid's levels share dimension names at different sizes, so one level at a time)."""
    import xarray as xr

    out = work / f"out-{version}-{pyramid}.zarr"
    root = zarr.open_group(str(out), mode="r")
    paths = [str(lv) for lv in range(pyramid + 1)]
    for group, dims in ((None, ("t", "c", "y", "x")), (f"labels/{RISK}", ("t", "y", "x"))):
        for path in paths:
            ds = xr.open_zarr(out, group=group, consolidated=False, drop_variables=[p for p in paths if p != path])
            arr = root[f"{group}/{path}" if group else path]
            assert ds[path].dims == dims and ds[path].shape == arr.shape
            assert ds[path].dtype == arr.dtype  # a Zarr v2 fill value would make xarray mask pixels as NaN
            np.testing.assert_array_equal(ds[path].values, arr[...])
    if pyramid == 0:  # a single level opens with the plain call
        assert xr.open_zarr(out, consolidated=False)["0"].dims == ("t", "c", "y", "x")


def test_napari_ome_zarr_reads_label_levels_aligned_with_the_image(work, tmp_path):
    """A (T, Y, X) output through napari-ome-zarr: image and risk labels come as the same
    levels with the same scale, and in a viewer each time point shows the labels of
    that time point."""
    with warnings.catch_warnings():  # napari's own deprecation warnings
        warnings.simplefilter("ignore")
        napari_ome_zarr = pytest.importorskip("napari_ome_zarr")
        components = pytest.importorskip("napari.components")
    out = tmp_path / "tyx-dn.zarr"
    run_pipeline(open_source(work / "tyx.zarr"), out, work / "model", client="sync",
                 options=RunOptions(infer=INFER, ome="0.4", pyramid=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = {kind: (data, kw) for data, kw, kind in napari_ome_zarr.napari_get_reader(str(out))(str(out))}
        viewer = components.ViewerModel()
        for kind, (data, kw) in found.items():
            getattr(viewer, f"add_{kind}")(data, **kw)
    (image, image_kw), (labels, labels_kw) = found["image"], found["labels"]
    shapes = [(2, 64, 80), (2, 32, 40), (2, 16, 20)]
    assert [tuple(a.shape) for a in labels] == [tuple(a.shape) for a in image] == shapes
    assert list(labels_kw["scale"]) == list(image_kw["scale"])
    for t in (0, 1):
        viewer.dims.set_current_step(0, t)
        shown = []
        for layer in viewer.layers:
            layer.refresh()
            shown.append(int(layer._data_slice.point[0]))
        assert shown == [t, t]


def _napari_layers(out: Path):
    """The layers napari-ome-zarr makes of ``out``, added to a headless viewer."""
    with warnings.catch_warnings():  # napari's own deprecation warnings
        warnings.simplefilter("ignore")
        napari_ome_zarr = pytest.importorskip("napari_ome_zarr")
        components = pytest.importorskip("napari.components")
        viewer = components.ViewerModel()
        for data, kw, kind in napari_ome_zarr.napari_get_reader(str(out))(str(out)):
            getattr(viewer, f"add_{kind}")(data, **kw)
        for layer in viewer.layers:
            layer.visible = True  # labels come hidden, and napari slices only what is shown
    return viewer


def _shown(layer) -> np.ndarray:
    """The 2-D slice a layer displays now."""
    layer.refresh()
    return np.asarray(layer._slice.image.raw)


@pytest.fixture(scope="module")
def two_channels(tmp_path_factory):
    """A (T=3, C=2, 64, 80) OME-Zarr input with channels "mito" and "er", a two-channel
    tiny model, and outputs: OME 0.4, OME 0.5 with --pyramid 2, and --channel er with
    --pyramid 1.  Each label image is then painted 1 + t + 3 c (c the input channel) at
    every level, so that what a viewer shows tells the time point and channel apart."""
    d = tmp_path_factory.mktemp("ome2")
    frames = np.stack([np.stack([noisy_frame((64, 80), photons=6.0 + 4 * c, seed=10 * t + c)[0] for c in range(2)])
                       for t in range(3)])
    write_image(d / "in.zarr", frames, ImageMeta(axes="TCYX", format="ome-zarr", scale=SCALE, units=UNITS,
                                                 channel_names=("mito", "er")))
    save_model(fit(frames, axes="TCYX", config=TrainConfig(preset="tiny", steps=2, patch=32, batch=2)), d / "model")
    runs = {"0.4": ("0.4", 0, None), "0.5-pyramid": ("0.5", 2, None), "er": ("0.5", 1, (1,))}
    for name, (version, pyramid, channels) in runs.items():
        out = d / f"{name}.zarr"
        run_pipeline(open_source(d / "in.zarr"), out, d / "model", client="sync", selection=Selection(channels),
                     options=RunOptions(infer=INFER, ome=version, pyramid=pyramid))
        root = zarr.open_group(str(out), mode="r+")
        for c, channel in enumerate(("mito", "er")):
            if f"risk-{channel}" in root["labels"]:
                for lv in range(pyramid + 1):
                    arr = root[f"labels/risk-{channel}/{lv}"]
                    arr[...] = (1 + np.arange(3) + 3 * c).astype(np.uint8)[:, None, None] * np.ones(arr.shape[1:],
                                                                                                  np.uint8)
    return d, runs


@pytest.mark.parametrize("run", ["0.4", "0.5-pyramid", "er"])
def test_one_label_image_per_channel_that_napari_shows_with_its_channel_at_every_time_point(two_channels, run):
    """A (T, C, Y, X) output through napari-ome-zarr in a headless viewer: the image
    comes as one (T, Y, X) layer per channel and each channel's risk labels as one
    (T, Y, X) layer; at every time point, each image layer and its channel's label
    layer show that time point's slices of the stored arrays."""
    d, runs = two_channels
    version, pyramid, channels = runs[run]
    out = d / f"{run}.zarr"
    names = ["er"] if channels else ["mito", "er"]
    image, labels, label = _validate(out, version)
    assert labels.ome_attributes.labels == [f"risk-{n}" for n in names]
    assert [a.name for a in label.ome_attributes.multiscales[0].axes] == ["t", "y", "x"]
    root = zarr.open_group(str(out), mode="r")
    viewer = _napari_layers(out)
    shown_images = {layer.name.split(": ")[-1]: layer for layer in viewer.layers if type(layer).__name__ == "Image"}
    shown_labels = {layer.name.split("/")[-1]: layer for layer in viewer.layers if type(layer).__name__ == "Labels"}
    assert sorted(shown_images) == sorted(names) and sorted(shown_labels) == sorted(f"risk-{n}" for n in names)
    assert viewer.dims.ndim == 3  # image and label layers share the axes (t, y, x)
    for k, name in enumerate(names):
        img, lab = shown_images[name], shown_labels[f"risk-{name}"]
        assert img.ndim == lab.ndim == 3 and list(img.scale) == list(lab.scale) == [SCALE[0], SCALE[2], SCALE[3]]
        c = ["mito", "er"].index(name)  # the input channel
        seen = []
        for t in range(3):
            viewer.dims.set_current_step(viewer.dims.ndim - 3, t)  # the image layers' time axis
            level = img.data_level
            assert lab.data_level == level
            np.testing.assert_array_equal(_shown(img), root[str(level)][t, k])
            np.testing.assert_array_equal(_shown(lab), root[f"labels/risk-{name}/{level}"][t])
            assert (_shown(lab) == 1 + t + 3 * c).all()  # this time point's labels, of this channel
            seen.append(_shown(img))
        assert not np.array_equal(seen[0], seen[1])  # the time points differ: the check tells them apart


def test_a_run_stopped_while_finishing_is_not_complete_and_resumes(work, tmp_path, monkeypatch):
    """Stopped after the label pyramid, before the image metadata: not presented as
    complete; the same run again finishes it without recomputing a chunk."""
    import asn2n_dask.store as store

    class Stopped(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stopped

    monkeypatch.setattr(store.ome, "image_attrs", stop)
    out = tmp_path / "stopped.zarr"
    opts = RunOptions(infer=INFER, pyramid=2)
    with pytest.raises(Stopped):
        run_pipeline(open_source(work / "in.zarr"), out, work / "model", client="sync", options=opts)
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["asn2n"]["status"] == "running" and "ome" not in attrs
    monkeypatch.undo()
    summary = run_pipeline(open_source(work / "in.zarr"), out, work / "model", client="sync", options=opts)
    assert summary.resumed and summary.computed == 0 and summary.skipped == summary.tasks
    image, _, label = _validate(out, "0.5")
    assert len(image.ome_attributes.multiscales[0].datasets) == len(label.ome_attributes.multiscales[0].datasets) == 3
    assert dict(zarr.open_group(str(out), mode="r").attrs)["asn2n"]["status"] == "complete"


# ------------------------------------------------------------------ input scales
BAD_SCALES = {
    "nan": "[2.0, 1.0, NaN, 0.1]",
    "infinite": "[2.0, 1.0, Infinity, 0.1]",
    "negative": "[2.0, 1.0, -0.1, 0.1]",
    "zero": "[2.0, 1.0, 0, 0.1]",
    "string": '[2.0, 1.0, "0.1", "0.1"]',
    "boolean": "[2.0, true, 0.1, 0.1]",
    "null": "[2.0, null, 0.1, 0.1]",
    "too few": "[0.1, 0.1]",
}


def _ome_input(path: Path, version: str, scale_json: str) -> Path:
    """A (T=2, C=1, 64, 80) OME-Zarr input whose level-0 scale is ``scale_json``, as written."""
    frames = np.stack([noisy_frame((64, 80), photons=8.0, seed=t)[0] for t in range(2)])[:, None]
    root = zarr.open_group(str(path), mode="w", zarr_format=ome.ZARR_FORMAT[version])
    arr = root.create_array("0", shape=frames.shape, chunks=(1, 1, 64, 80), dtype=frames.dtype,
                            **ome.array_kwargs(version, "TCYX"))
    arr[...] = frames
    attrs = ome.image_attrs(version, "TCYX", units=UNITS, channels=[{"label": "mito"}])
    _attrs_of(attrs, version)["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = "@scale@"
    if version == "0.5":
        doc = json.loads((path / "zarr.json").read_text())
        doc["attributes"] = attrs
        meta, text = path / "zarr.json", json.dumps(doc)
    else:
        meta, text = path / ".zattrs", json.dumps(attrs)
    meta.write_text(text.replace('"@scale@"', scale_json))
    return path


def _output_scales(out: Path) -> list[list[float]]:
    version = "0.4" if (out / ".zattrs").is_file() else "0.5"
    root = zarr.open_group(str(out), mode="r")
    (label,) = _attrs(root["labels"], version)["labels"]  # the one channel's
    return [d["coordinateTransformations"][0]["scale"] for node in (root, root[f"labels/{label}"])
            for d in _levels(node, version)]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("bad", sorted(BAD_SCALES))
def test_an_unusable_input_scale_is_dropped_with_a_warning(tmp_path, caplog, version, bad):
    p = tmp_path / "in.zarr"
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        _ome_input(p, version, BAD_SCALES[bad])
        _, meta = read_image(p)
        src = open_source(p)
    assert meta.scale is None and src.meta.scale is None and meta.axes == src.axes == "TCYX"
    assert "pixel scale" in caplog.text and "not used" in caplog.text
    # nor does one given in code reach a written image
    caplog.clear()
    scale = json.loads(BAD_SCALES[bad].replace("NaN", '"nan"').replace("Infinity", '"inf"'))
    scale = [float(v) if v in ("nan", "inf") else v for v in scale]
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        w = write_image(tmp_path / "w.zarr", np.zeros((2, 1, 16, 16), np.uint16),
                        ImageMeta(axes="TCYX", format="ome-zarr", scale=tuple(scale)))
    assert "pixel scale" in caplog.text
    written = zarr.open_group(str(w), mode="r").attrs["ome"]["multiscales"][0]["datasets"][0]
    assert written["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("version_in, bad, version_out", [("0.4", "nan", "0.5"), ("0.5", "string", "0.4"),
                                                          ("0.4", "negative", "0.4"), ("0.5", "infinite", "0.5")])
def test_an_unusable_input_scale_never_reaches_the_output(work, tmp_path, caplog, version_in, bad, version_out):
    p = _ome_input(tmp_path / "in.zarr", version_in, BAD_SCALES[bad])
    out = tmp_path / "out.zarr"
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        run_pipeline(open_source(p), out, work / "model", client="sync",
                     options=RunOptions(infer=INFER, ome=version_out, pyramid=1))
    assert "pixel scale" in caplog.text
    assert _output_scales(out) == [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    text = "".join(f.read_text() for f in out.rglob("*") if f.name in ("zarr.json", ".zattrs"))
    assert "NaN" not in text and "Infinity" not in text and '"0.1"' not in text and "-0.1" not in text
    _validate(out, version_out)


def test_valid_scale_and_the_builders_refuse_what_is_not_a_size():
    assert ome.valid_scale([2, 0.5], 2) == (2.0, 0.5)
    for bad in ([1.0, math.nan], [1.0, math.inf], [1.0, 0.0], [1.0, -1.0], [1.0, "0.5"], [1.0, True], [1.0, None],
                [1.0], "1 1", [1.0, 1e308], [1.0, 10**400], None):
        assert ome.valid_scale(bad, 2) is None, bad
        if bad is not None:
            with pytest.raises(ValueError, match="scale"):
                ome.image_attrs("0.5", "YX", scale=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version"):
        ome.image_attrs("0.3", "YX")


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_the_builders_give_attributes_the_spec_models_accept(version):
    """The pure dicts, validated without any file by ome-zarr-models' attribute models."""
    from ome_zarr_models import v04, v05

    mod = v04 if version == "0.4" else v05
    image = ome.image_attrs(version, "TCZYX", levels=3, scale=(1.0, 1.0, 0.5, 0.2, 0.2),
                            units=("second", None, "micrometer", "micrometer", "micrometer"),
                            channels=[{"label": "a", "color": "00FF00",
                                       "window": {"start": 0, "end": 9, "min": 0, "max": 10}}])
    label = ome.label_attrs(version, "TCZYX", levels=3, scale=(1.0, 1.0, 0.5, 0.2, 0.2), name="risk",
                            classes={1: ("weak background", (0, 0, 255, 128))})
    group = ome.labels_attrs(version, ["risk"])
    body = (lambda a: a["ome"]) if version == "0.5" else (lambda a: a)
    ms = mod.image.ImageAttrs.model_validate(body(image)).multiscales[0]
    assert [d.coordinateTransformations[0].scale for d in ms.datasets] == [
        [1.0, 1.0, 0.5, 0.2 * 2**lv, 0.2 * 2**lv] for lv in range(3)]  # Z is never halved
    assert ms.type == "mean"
    assert mod.image_label.ImageLabelAttrs.model_validate(body(label)).multiscales[0].type == "mode"
    assert mod.labels.LabelsAttrs.model_validate(body(group)).labels == ["risk"]
    bare = body(ome.image_attrs(version, "CYX", channels=[{"label": "a"}]))  # no colour, no display window
    assert ("omero" in bare) == (version == "0.5")  # 0.4 requires both: none is written rather than an invalid one
    mod.image.ImageAttrs.model_validate(bare)
    kw = ome.array_kwargs(version, "TCZYX")
    names = kw.get("dimension_names") or kw["attributes"]["_ARRAY_DIMENSIONS"]
    assert names == ["t", "c", "z", "y", "x"]


def test_label_image_names_are_the_channels_plain_names_else_their_positions():
    assert ome.channel_label_names("risk", None) == ["risk"]
    assert ome.channel_label_names("risk", ["mito", "ER-488", "ch.2"]) == ["risk-mito", "risk-ER-488", "risk-ch.2"]
    for names in (["a/b", "c"], ["Zellkern", "Mitochondrien ü"], ["..", "x"], ["__x", "y"], ["", "y"], ["Er", "eR"],
                  ["x" * 65, "y"]):
        assert ome.channel_label_names("risk", names) == ["risk-0", "risk-1"], names
    assert ome.drop_channel("TCZYX", (1, 2, 3, 4, 5), ["s", None, "m", "m", "m"], None) == (
        "TZYX", (1, 3, 4, 5), ("s", "m", "m", "m"), None)
    assert ome.drop_channel("TYX", (1, 2, 3)) == ("TYX", (1, 2, 3))
