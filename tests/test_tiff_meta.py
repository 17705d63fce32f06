"""TIFF in and out without losing what the microscope wrote: an ImageJ hyperstack gives an
ImageJ hyperstack, an OME-TIFF an OME-TIFF, a plain TIFF a plain TIFF, each with the
input's pixel sizes, time step and channel names (read back with tifffile, not with the
package); a TIFF input carries them into a .zarr output; odd metadata is dropped with a
warning, never copied; inputs are never written."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from asn2n_dask import InferConfig, TrainConfig, fit, save_model
from asn2n_dask import io as aio
from asn2n_dask.cli import app
from asn2n_dask.io import ImageMeta, read_image, write_image
from asn2n_dask.source import open_source
from asn2n_dask.synthetic import noisy_frame

runner = CliRunner()
NAMES = ["dapi", "gfp"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    """A (T=2, Z=2, C=2, 48, 64) uint16 stack, channels of different brightness."""
    return np.stack([np.stack([np.stack([noisy_frame((48, 64), photons=p, seed=8 * t + 2 * z + c)[0] + off
                                         for c, (p, off) in enumerate([(5.0, 100), (30.0, 1000)])])
                               for z in range(2)]) for t in range(2)]).astype(np.uint16)


@pytest.fixture(scope="module")
def model(stack, tmp_path_factory) -> Path:
    """A tiny two-channel model whose networks are named like the channels."""
    d = tmp_path_factory.mktemp("tiffmeta") / "model"
    planes = stack.reshape(-1, 2, 48, 64)  # (T*Z, C, Y, X)
    save_model(fit(planes, axes="TCYX", channel_names=NAMES,
                   config=TrainConfig(preset="tiny", steps=3, patch=32, batch=2)), d)
    return d


def denoise(src: Path, out: Path, model: Path, *extra: str, quiet: bool = True):
    args = ["denoise", str(src), "-o", str(out), "--model", str(model), "--tile", "32", *extra]
    return runner.invoke(app, (["-q"] if quiet else []) + args)


# ------------------------------------------------------------------ what tifffile reads back
def imagej_view(path: Path) -> dict:
    """The ImageJ metadata of a file as tifffile reads it: axes, shape, resolution tags,
    calibration entries and slice labels."""
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej and not tf.is_ome
        md = tf.imagej_metadata
        s = tf.series[0]
        keys = ("spacing", "unit", "yunit", "zunit", "finterval", "tunit", "Labels", "channels", "slices", "frames")
        return {"axes": s.axes, "shape": s.shape, "resolution": tf.pages.first.resolution,
                **{k: md[k] for k in keys if k in md}}


def ome_view(path: Path) -> dict:
    """The OME ``Pixels`` of a file as tifffile reads them: sizes, dimension order,
    physical sizes and time increment with their units, channel names."""
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and not tf.is_imagej
        px = tifffile.xml2dict(tf.ome_metadata)["OME"]["Image"]["Pixels"]
        chans = px.get("Channel", [])
        chans = chans if isinstance(chans, list) else [chans]
        keep = {k: v for k, v in px.items() if k.startswith(("Size", "Physical", "TimeIncrement", "Dimension"))}
        return {"axes": tf.series[0].axes, **keep, "names": [c.get("Name") for c in chans]}


def same(a: dict, b: dict) -> None:
    """Equal, resolution tags to the precision of a TIFF rational."""
    assert a.keys() == b.keys()
    for k in a:
        if k == "resolution":
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
        else:
            assert a[k] == b[k], k


# ------------------------------------------------------------------ round trips through asn2n denoise
@pytest.mark.parametrize("axes", ["TZCYX", "TCYX"])
def test_an_imagej_hyperstack_gives_an_imagej_hyperstack_with_its_calibration_and_labels(stack, model, tmp_path,
                                                                                           axes):
    data = stack if axes == "TZCYX" else stack[:, 0]
    planes = math.prod(data.shape[:-2])
    md = {"axes": axes, "unit": "micron", "finterval": 2.5, "Labels": [NAMES[i % 2] for i in range(planes)]}
    if "Z" in axes:
        md["spacing"] = 0.5
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, data, imagej=True, resolution=(1 / 0.2, 1 / 0.25), metadata=md)
    before = digest(src)
    r = denoise(src, tmp_path / "out.tif", model)
    assert r.exit_code == 0, r.output
    assert digest(src) == before
    want = imagej_view(src)
    assert want["finterval"] == 2.5 and want["unit"] == "micron" and want["Labels"][:2] == NAMES  # the input as meant
    same(imagej_view(tmp_path / "out.tif"), want)
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert '"command": "denoise"' in tf.imagej_metadata["asn2n"]  # the provenance, beside ImageJ's entries
    out, meta = read_image(tmp_path / "out.tif")
    assert out.dtype == np.float32 and out.shape == data.shape and meta.tiff_flavour == "imagej"
    z = (0.5,) if "Z" in axes else ()
    zu = ("micrometer",) if "Z" in axes else ()
    assert meta.scale == (2.5, *z, 1.0, 0.25, 0.2)
    assert meta.units == ("second", *zu, None, "micrometer", "micrometer")
    assert meta.channel_names == tuple(NAMES)


def test_an_ome_tiff_gives_an_ome_tiff_with_its_physical_sizes_time_increment_and_channel_names(stack, model,
                                                                                                 tmp_path):
    src = tmp_path / "in.ome.tif"
    tifffile.imwrite(src, stack, ome=True, photometric="minisblack", metadata={
        "axes": "TZCYX", "PhysicalSizeX": 0.1625, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.1625,
        "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 300.0, "PhysicalSizeZUnit": "nm", "TimeIncrement": 1.5,
        "TimeIncrementUnit": "s", "Channel": {"Name": NAMES}})
    before = digest(src)
    r = denoise(src, tmp_path / "out.tif", model, "--dtype", "input")
    assert r.exit_code == 0, r.output
    assert digest(src) == before
    want = ome_view(src)
    assert want["PhysicalSizeZ"] == 300.0 and want["TimeIncrement"] == 1.5 and want["names"] == NAMES
    assert ome_view(tmp_path / "out.tif") == want
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        note = tifffile.xml2dict(tf.ome_metadata)["OME"]["StructuredAnnotations"]["MapAnnotation"]
        assert note["Namespace"] == "asn2n-dask" and '"command": "denoise"' in note["Value"]["M"]["value"]
    out, meta = read_image(tmp_path / "out.tif")
    assert out.dtype == np.uint16 and out.shape == stack.shape and meta.tiff_flavour == "ome"
    assert meta.scale == (1.5, 300.0, 1.0, 0.1625, 0.1625)
    assert meta.units == ("second", "nanometer", None, "micrometer", "micrometer")
    assert meta.channel_names == tuple(NAMES)


def test_a_plain_tiff_gives_a_plain_tiff_as_before(stack, model, tmp_path):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, stack[:, 0], photometric="minisblack", metadata={"axes": "TCYX"})
    before = digest(src)
    r = denoise(src, tmp_path / "out.tif", model)
    assert r.exit_code == 0, r.output
    assert digest(src) == before
    with tifffile.TiffFile(tmp_path / "out.tif") as tf:
        assert not tf.is_imagej and not tf.is_ome and tf.is_shaped
        assert tf.series[0].axes == "TCYX" and tf.series[0].shape == stack[:, 0].shape
        assert '"command": "denoise"' in tf.shaped_metadata[0]["asn2n"]
    meta = read_image(tmp_path / "out.tif")[1]
    assert meta.tiff_flavour == "plain" and meta.scale is None and meta.units is None and meta.channel_names is None


@pytest.mark.parametrize("kind", ["imagej", "ome"])
def test_a_tiff_input_carries_its_sizes_time_step_and_channel_names_into_a_zarr_output(stack, model, tmp_path,
                                                                                         kind):
    """OME-Zarr wants T, C, Z, Y, X in that order: an ImageJ TCYX stack, an OME-TIFF
    stored TCZYX (DimensionOrder XYZCT)."""
    from asn2n_dask.pipeline import RunOptions, run_pipeline

    src = tmp_path / "in.tif"
    if kind == "imagej":
        tifffile.imwrite(src, stack[:, 0], imagej=True, resolution=(1 / 0.2, 1 / 0.2), metadata={
            "axes": "TCYX", "unit": "\\u00B5m", "finterval": 2.5, "tunit": "min", "Labels": NAMES * 2})
        axes, scale, units = "TCYX", (2.5, 1.0, 0.2, 0.2), ("minute", None, "micrometer", "micrometer")
    else:
        tifffile.imwrite(src, stack.transpose(0, 2, 1, 3, 4), ome=True, photometric="minisblack", metadata={
            "axes": "TCZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 0.5,
            "TimeIncrement": 150.0, "TimeIncrementUnit": "ms", "Channel": {"Name": NAMES}})
        axes, scale = "TCZYX", (150.0, 1.0, 0.5, 0.2, 0.2)
        units = ("millisecond", None, "micrometer", "micrometer", "micrometer")
    before = digest(src)
    run_pipeline(open_source(src), tmp_path / "out.zarr", model, options=RunOptions(infer=InferConfig(tile=32)),
                 client="sync")
    assert digest(src) == before
    meta = read_image(tmp_path / "out.zarr")[1]
    assert meta.axes == axes and meta.format == "ome-zarr"
    assert meta.scale == scale and meta.units == units and meta.channel_names == tuple(NAMES)


# ------------------------------------------------------------------ units
@pytest.mark.parametrize("written, unit", [("micron", "micrometer"), ("\\u00B5m", "micrometer"),
                                           ("um", "micrometer"), ("nm", "nanometer"), ("mm", "millimeter"),
                                           ("\\u00C5", "angstrom"), ("pixel", None)])
def test_imagej_unit_spellings_become_ome_ngff_words(tmp_path, written, unit):
    path = tmp_path / "u.tif"
    tifffile.imwrite(path, np.zeros((2, 16, 16), np.uint16), imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 3.0, "unit": written})
    meta = read_image(path)[1]
    assert meta.scale == (3.0, 0.25, 0.25) and meta.units == (unit,) * 3


@pytest.mark.parametrize("unit", ["micrometer", "nanometer", "angstrom", "inch"])
@pytest.mark.parametrize("tunit", ["second", "millisecond", "microsecond", "hour"])
def test_units_survive_writing_either_kind_and_reading_back(tmp_path, unit, tunit):
    data = np.zeros((2, 3, 16, 16), np.float32)
    meta = ImageMeta(axes="TZYX", format="tiff", scale=(0.5, 2.0, 0.1, 0.1), units=(tunit, unit, unit, unit))
    for flavour in ("imagej", "ome"):
        out = write_image(tmp_path / f"{flavour}.tif", data, replace(meta, tiff_flavour=flavour))
        got = read_image(out)[1]
        assert got.tiff_flavour == flavour and got.units == meta.units
        np.testing.assert_allclose(got.scale, meta.scale, rtol=1e-6)


# ------------------------------------------------------------------ odd metadata: dropped with a warning
def _imagej(path: Path, **md) -> Path:
    res = md.pop("resolution", (5.0, 5.0))
    tifffile.imwrite(path, np.arange(2 * 2 * 2 * 16 * 16, dtype=np.uint16).reshape(2, 2, 2, 16, 16), imagej=True,
                     resolution=res, metadata={"axes": "TZCYX", "unit": "micron", "spacing": 0.5, "finterval": 2.0,
                                               "Labels": NAMES * 4, **md})
    return path


@pytest.mark.parametrize("entry, value, axis, needle", [
    ("spacing", float("nan"), "Z", "Z spacing"), ("spacing", 0, "Z", "Z spacing"), ("spacing", -1.5, "Z", "Z spacing"),
    ("spacing", "abc", "Z", "Z spacing"), ("finterval", 0, "T", "frame interval"),
    ("finterval", float("-inf"), "T", "frame interval"), ("resolution", ((0, 1), (5, 1)), "X", "XResolution"),
])
def test_an_odd_imagej_size_is_dropped_with_a_warning_and_the_rest_kept(tmp_path, caplog, entry, value, axis, needle):
    path = _imagej(tmp_path / "odd.tif", **{entry: value})
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        meta = read_image(path)[1]
    assert needle in caplog.text and "not used" in caplog.text
    i = meta.axes.index(axis)
    assert meta.scale[i] == 1.0 and meta.units[i] is None  # neither the size nor its unit
    kept = {"T": (2.0, "second"), "Z": (0.5, "micrometer"), "Y": (0.2, "micrometer"), "X": (0.2, "micrometer")}
    for a, (size, unit) in kept.items():
        if a != axis:
            assert meta.scale[meta.axes.index(a)] == pytest.approx(size)
            assert meta.units[meta.axes.index(a)] == unit
    assert meta.channel_names == tuple(NAMES)


@pytest.mark.parametrize("labels, needle", [
    (["dapi", "gfp", "x"], "3 channel names for 2 channels"),
    ([f"plane {i}" for i in range(8)], "differ between planes"),
    (["dapi"] * 8, "several of its channels are named 'dapi'"),
    (["dapi", ""] * 4, "have no name"),
])
def test_imagej_labels_that_do_not_name_the_channels_are_dropped_with_a_warning(tmp_path, caplog, labels, needle):
    path = _imagej(tmp_path / "odd.tif", Labels=labels)
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        meta = open_source(path).meta
    assert needle in caplog.text
    assert meta.channel_names is None and meta.scale == pytest.approx((2.0, 0.5, 1.0, 0.2, 0.2))


def test_an_unknown_unit_is_dropped_with_a_warning_and_the_sizes_kept(tmp_path, caplog):
    path = _imagej(tmp_path / "odd.tif", unit="furlong", tunit="fortnight")
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        meta = read_image(path)[1]
    assert "'furlong'" in caplog.text and "'fortnight'" in caplog.text
    assert meta.units == (None,) * 5 and meta.scale == pytest.approx((2.0, 0.5, 1.0, 0.2, 0.2))


def _ome_xml(**replace: str) -> str:
    """OME-XML for a (T=2, Z=2, C=2, 16, 16) uint16 image as tifffile writes it, with
    ``replace`` substituted (old text -> new text) to damage it."""
    ox = tifffile.OmeXml()
    ox.addimage("uint16", (2, 2, 2, 16, 16), (8, 1, 1, 16, 16, 1), axes="TZCYX", PhysicalSizeX=0.2, PhysicalSizeY=0.2,
                PhysicalSizeZ=0.5, TimeIncrement=2.0, Channel={"Name": NAMES})
    xml = ox.tostring()
    for old, new in replace.items():
        assert old in xml
        xml = xml.replace(old, new)
    return xml


def _ome(path: Path, xml: str) -> Path:
    tifffile.imwrite(path, np.zeros((8, 16, 16), np.uint16), photometric="minisblack", description=xml,
                     metadata=None)
    return path


@pytest.mark.parametrize("damage, needle, axis", [
    ({'PhysicalSizeX="0.2"': 'PhysicalSizeX="-1"'}, "PhysicalSizeX", "X"),
    ({'PhysicalSizeZ="0.5"': 'PhysicalSizeZ="NaN"'}, "PhysicalSizeZ", "Z"),
    ({'TimeIncrement="2.0"': 'TimeIncrement="0"'}, "TimeIncrement", "T"),
    ({'PhysicalSizeY="0.2"': 'PhysicalSizeY="big"'}, "PhysicalSizeY", "Y"),
    ({'PhysicalSizeZ="0.5"': 'PhysicalSizeZ="0.5" PhysicalSizeZUnit="furlong"'}, "'furlong'", None),
    ({' Name="gfp"': ""}, "have no name", "C"),
    ({' Name="gfp"': ' Name="dapi"'}, "named 'dapi'", "C"),
])
def test_odd_ome_metadata_is_dropped_with_a_warning_and_the_rest_kept(tmp_path, caplog, damage, needle, axis):
    path = _ome(tmp_path / "odd.ome.tif", _ome_xml(**damage))
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome and tf.series[0].axes == "TZCYX"
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        meta = read_image(path)[1]
    assert needle in caplog.text
    full = {"T": (2.0, "second"), "Z": (0.5, "micrometer"), "Y": (0.2, "micrometer"), "X": (0.2, "micrometer")}
    for a, (size, unit) in full.items():
        i = meta.axes.index(a)
        if a == axis:
            assert (meta.scale[i], meta.units[i]) == (1.0, None)
        elif axis is None and a == "Z":  # the unknown unit: the size is kept without it
            assert (meta.scale[i], meta.units[i]) == (0.5, None)
        else:
            assert (meta.scale[i], meta.units[i]) == (size, unit)
    assert meta.channel_names == (None if axis == "C" else tuple(NAMES))


def test_a_channel_name_count_that_does_not_match_c_is_dropped_from_an_ome_tiff(tmp_path, caplog):
    third = '<Channel ID="Channel:0:2" SamplesPerPixel="1" Name="extra"><LightPath/></Channel><TiffData'
    path = _ome(tmp_path / "odd.ome.tif", _ome_xml(**{"<TiffData": third}))
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        meta = read_image(path)[1]
    assert "3 channel names for 2 channels" in caplog.text
    assert meta.channel_names is None and meta.scale == (2.0, 0.5, 1.0, 0.2, 0.2)


def test_odd_metadata_is_not_copied_into_the_output_and_the_run_succeeds(stack, model, tmp_path):
    src = _imagej(tmp_path / "odd.tif", spacing=float("nan"), Labels=["dapi", "gfp", "x"])
    before = digest(src)
    r = denoise(src, tmp_path / "out.tif", model, quiet=False)
    assert r.exit_code == 0, r.output
    assert "Z spacing" in r.stderr and "3 channel names for 2 channels" in r.stderr
    assert digest(src) == before
    got = imagej_view(tmp_path / "out.tif")
    assert "spacing" not in got and "Labels" not in got
    assert got["unit"] == "micron" and got["finterval"] == 2.0
    np.testing.assert_allclose(got["resolution"], (5.0, 5.0))


# ------------------------------------------------------------------ layout
@pytest.mark.parametrize("flavour", [None, "plain", "ome", "imagej"])
def test_large_data_is_written_as_bigtiff_except_imagej_which_keeps_its_own_layout(tmp_path, monkeypatch, flavour):
    data = np.ones((2, 16, 16), np.float32)
    meta = ImageMeta(axes="ZYX", format="tiff", tiff_flavour=flavour)
    with tifffile.TiffFile(write_image(tmp_path / "small.tif", data, meta)) as tf:
        assert not tf.is_bigtiff and len(tf.pages) == 2
    monkeypatch.setattr(aio, "BIGTIFF_BYTES", data.nbytes - 1)
    with tifffile.TiffFile(write_image(tmp_path / "large.tif", data, meta)) as tf:
        assert tf.is_bigtiff == (flavour != "imagej")
        assert tf.is_imagej == (flavour == "imagej") and tf.is_ome == (flavour == "ome")
        assert len(tf.pages) == (1 if flavour == "imagej" else 2)  # ImageJ's layout: one IFD, the pixels after it
        np.testing.assert_array_equal(tf.asarray(), data)


@pytest.mark.parametrize("flavour, axes, dtype, needle", [
    ("imagej", "QYX", np.float32, "ImageJ's order"),
    ("imagej", "CTYX", np.float32, "ImageJ's order"),
    ("imagej", "TYX", np.float64, "ImageJ cannot hold float64"),
    ("ome", "QYX", np.float32, "OME-TIFF names only"),
])
def test_what_imagej_or_ome_cannot_hold_is_written_as_a_plain_tiff_with_a_warning(tmp_path, caplog, flavour, axes,
                                                                                  dtype, needle):
    data = np.ones((2, 3, 16, 16) if len(axes) == 4 else (3, 16, 16), dtype)
    meta = ImageMeta(axes=axes, format="tiff", tiff_flavour=flavour, scale=(1.0,) * (len(axes) - 2) + (0.5, 0.5),
                     units=(None,) * (len(axes) - 2) + ("micrometer",) * 2)
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        out = write_image(tmp_path / "out.tif", data, meta)
    assert needle in caplog.text and "plain TIFF" in caplog.text
    with tifffile.TiffFile(out) as tf:
        assert tf.is_shaped and not tf.is_imagej and not tf.is_ome and tf.series[0].axes == axes
        np.testing.assert_array_equal(tf.asarray(), data)


def test_an_uncalibrated_imagej_file_says_nothing_about_sizes(tmp_path):
    """As ImageJ writes a plain image: a slice label, resolution 1 per inch, no unit."""
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.uint16), imagej=True, resolution=(1.0, 1.0), resolutionunit="INCH",
                     metadata={"axes": "YX", "Labels": "avg400_016_1.tif"})
    meta = read_image(path)[1]
    assert meta.tiff_flavour == "imagej" and meta.scale is None and meta.units is None and meta.channel_names is None


@pytest.mark.parametrize("flavour", ["imagej", "ome"])
def test_channel_names_beyond_ascii_or_with_xml_characters_survive(tmp_path, flavour):
    names = ("Ca²⁺", 'a<&"b>')
    meta = ImageMeta(axes="CYX", format="tiff", channel_names=names, tiff_flavour=flavour)
    out = write_image(tmp_path / "n.tif", np.zeros((2, 16, 16), np.float32), meta, attrs={"input": "café.tif"})
    assert read_image(out)[1].channel_names == names
