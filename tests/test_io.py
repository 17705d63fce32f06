import numpy as np
import pytest
import tifffile
import zarr

from asn2n_dask.errors import InputError, OutputError
from asn2n_dask.io import ImageMeta, cast_output, check_output, read_image, write_image


def test_tiff_round_trip_keeps_axes(tmp_path):
    data = np.arange(2 * 3 * 16 * 20, dtype=np.uint16).reshape(2, 3, 16, 20)
    p = write_image(tmp_path / "x.tif", data, ImageMeta(axes="TCYX", format="tiff"))
    back, meta = read_image(p)
    np.testing.assert_array_equal(back, data)
    assert meta.axes == "TCYX"


def test_plain_tiff_stack_is_a_time_series(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((4, 16, 16), np.uint8), photometric="minisblack")
    assert read_image(tmp_path / "s.tif")[1].axes in ("TYX", "QYX")


def test_zarr_v3_with_dimension_names(tmp_path):
    a = zarr.create_array(str(tmp_path / "a.zarr"), shape=(2, 8, 9), chunks=(1, 4, 4), dtype="float32",
                          dimension_names=["c", "y", "x"])
    a[...] = 1.5
    data, meta = read_image(tmp_path / "a.zarr")
    assert meta.axes == "CYX" and data.shape == (2, 8, 9) and (data == 1.5).all()


def test_zarr_v2_with_xarray_dimensions(tmp_path):
    a = zarr.create_array(str(tmp_path / "b.zarr"), shape=(3, 8, 9), chunks=(1, 8, 9), dtype="uint16",
                          zarr_format=2, attributes={"_ARRAY_DIMENSIONS": ["t", "y", "x"]})
    a[...] = 7
    data, meta = read_image(tmp_path / "b.zarr")
    assert meta.axes == "TYX" and data.dtype == np.uint16


@pytest.mark.parametrize("version,fmt", [("0.4", 2), ("0.5", 3)])
def test_ome_zarr_level0_axes_scale_and_channel_names(tmp_path, version, fmt):
    root = zarr.open_group(str(tmp_path / "o.zarr"), mode="w", zarr_format=fmt)
    ms = {"axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                   {"name": "x", "type": "space", "unit": "micrometer"}],
          "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.1, 0.1]}]},
                       {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.2, 0.2]}]}]}
    omero = {"channels": [{"label": "ER"}, {"label": "Mito"}]}
    if version == "0.4":
        root.attrs.update({"multiscales": [{**ms, "version": "0.4"}], "omero": omero})
    else:
        root.attrs.update({"ome": {"version": "0.5", "multiscales": [ms], "omero": omero}})
    root.create_array("0", shape=(2, 16, 16), chunks=(1, 16, 16), dtype="uint16")[...] = 3
    root.create_array("1", shape=(2, 8, 8), chunks=(1, 8, 8), dtype="uint16")
    data, meta = read_image(tmp_path / "o.zarr")
    assert data.shape == (2, 16, 16) and meta.axes == "CYX" and meta.format == "ome-zarr"
    assert meta.scale == (1.0, 0.1, 0.1) and meta.channel_names == ("ER", "Mito")

    out = write_image(tmp_path / "out.zarr", data.astype(np.float32), meta, attrs={"k": 1})
    back, m2 = read_image(out)
    assert m2.axes == "CYX" and m2.scale == meta.scale and m2.channel_names == meta.channel_names
    assert m2.units == (None, "micrometer", "micrometer")
    assert zarr.open_group(str(out), mode="r").attrs["ome"]["version"] == "0.5"


def test_group_with_several_arrays_names_them(tmp_path):
    root = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    root.create_array("noisy", shape=(4, 4), dtype="uint8")
    root.create_array("gt", shape=(4, 4), dtype="uint8")
    with pytest.raises(InputError, match="gt, noisy"):
        read_image(tmp_path / "g.zarr")
    assert read_image(tmp_path / "g.zarr" / "noisy")[0].shape == (4, 4)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="neither"):
        read_image(tmp_path / "x.png")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match="not a readable TIFF"):
        read_image(tmp_path / "bad.tif")


def test_output_checks(tmp_path):
    (tmp_path / "in.tif").write_bytes(b"x")
    with pytest.raises(OutputError, match="is the input"):
        check_output(tmp_path / "in.tif", inputs=[tmp_path / "in.tif"], overwrite=True)
    with pytest.raises(OutputError, match="already exists"):
        check_output(tmp_path / "in.tif", inputs=[])
    with pytest.raises(OutputError, match=".tif, .tiff or .zarr"):
        check_output(tmp_path / "out.png")


def test_cast_output_rounds_and_clips():
    got = cast_output(np.array([-3.2, 1.5, 2.4, 70000.0]), np.uint16)
    assert got.tolist() == [0, 2, 2, 65535]


def test_overwrite_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    meta = ImageMeta(axes="YX", format="tiff")
    write_image(tmp_path / "o.tif", np.zeros((8, 8), np.float32), meta)
    write_image(tmp_path / "o.tif", np.ones((8, 8), np.float32), meta, overwrite=True)
    assert (read_image(tmp_path / "o.tif")[0] == 1).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]


def _ome(tmp_path, name="img.zarr"):
    from asn2n_dask.io import ImageMeta, write_image

    p = tmp_path / name
    write_image(p, np.arange(2 * 40 * 50, dtype=np.uint16).reshape(2, 40, 50),
                ImageMeta(axes="CYX", format="ome-zarr", channel_names=("a", "b")))
    return p


def _edit_attrs(path, fn):
    import json

    meta = path / "zarr.json"
    doc = json.loads(meta.read_text())
    fn(doc["attributes"])
    meta.write_text(json.dumps(doc))


@pytest.mark.parametrize("damage, needle", [
    (lambda p: (p / "zarr.json").write_text("{not json"), "not a readable Zarr store"),
    (lambda p: (p / "zarr.json").write_text('{"zarr_format": 3, "node_type": "spaceship"}'), "not a readable Zarr"),
    (lambda p: _edit_attrs(p, lambda a: a["ome"]["multiscales"][0].update(datasets=[])), "malformed OME-Zarr"),
    (lambda p: _edit_attrs(p, lambda a: a["ome"]["multiscales"][0]["datasets"][0].update(path="9")),
     "malformed OME-Zarr"),
    (lambda p: _edit_attrs(p, lambda a: a["ome"]["multiscales"][0]["axes"].pop(0)), "names 2 axes for a 3-D"),
    (lambda p: _edit_attrs(p, lambda a: a["ome"]["multiscales"][0].update(axes="yx")), "malformed OME-Zarr"),
    (lambda p: _edit_attrs(p, lambda a: a["ome"]["multiscales"][0]["datasets"][0].update(
        coordinateTransformations=[{"type": "scale", "scale": "big"}])), "malformed OME-Zarr"),
    (lambda p: (p / "0" / "zarr.json").unlink(), "malformed OME-Zarr"),
    (lambda p: _edit_attrs(p, lambda a: a["ome"].update(omero={"channels": 5})), None),  # names ignored
])
def test_malformed_zarr_and_ome_metadata_is_refused_in_one_sentence(tmp_path, damage, needle):
    from typer.testing import CliRunner

    from asn2n_dask.cli import app
    from asn2n_dask.source import open_source

    p = _ome(tmp_path)
    damage(p)
    if needle is None:
        assert read_image(p)[1].channel_names is None
        return
    with pytest.raises(InputError, match=needle):
        read_image(p)
    with pytest.raises(InputError, match=needle):
        open_source(p)
    r = CliRunner().invoke(app, ["risk", str(p)])
    assert r.exit_code == 2 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output


# ------------------------------------------------------------------ hostile files
def _cli(*args):
    from typer.testing import CliRunner

    from asn2n_dask.cli import app

    return CliRunner().invoke(app, ["-q", *map(str, args)])


def _one_sentence(r, code=2):
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    return r.output


def _two_series(path):
    with tifffile.TiffWriter(path) as tw:
        tw.write(np.zeros((8, 8), np.uint8), photometric="minisblack")  # a thumbnail first
        tw.write(np.arange(3 * 40 * 48, dtype=np.uint16).reshape(3, 40, 48), photometric="minisblack",
                 metadata={"axes": "TYX"})
    return path


def test_a_multi_series_tiff_is_refused_unless_a_series_is_picked(tmp_path):
    from asn2n_dask.source import open_source

    p = _two_series(tmp_path / "two.tif")
    for read in (read_image, open_source):
        with pytest.raises(InputError, match=r"series 0: \(8, 8\) YX.*series 1: \(3, 40, 48\) TYX.*--series"):
            read(p)
        with pytest.raises(InputError, match="--series 2"):
            read(p, series=2)
    data, meta = read_image(p, series=1)
    assert data.shape == (3, 40, 48) and meta.axes == "TYX" and data[1, 2, 3] == 1 * 40 * 48 + 2 * 48 + 3
    src = open_source(p, series=1)
    assert src.shape == (3, 40, 48) and src.axes == "TYX"
    np.testing.assert_array_equal(np.asarray(src.open()[...]), data)
    assert read_image(p, series=0)[0].shape == (8, 8)
    assert "--series" in _one_sentence(_cli("risk", p))
    assert _cli("risk", p, "--series", "1").exit_code == 0
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, np.zeros((16, 16), np.uint8))
    assert read_image(single, series=0)[0].shape == (16, 16)
    with pytest.raises(InputError, match="TIFF"):
        open_source(_ome(tmp_path), series=1)


def _claim(path, width, height):
    """A 16x16 uint8 TIFF whose header claims ``height x width`` pixels."""
    import struct

    tifffile.imwrite(path, np.zeros((16, 16), np.uint8), photometric="minisblack")
    with tifffile.TiffFile(path) as tf:
        tags = tf.pages[0].tags
        where = {k: (tags[k].valueoffset, tags[k].dtype) for k in ("ImageWidth", "ImageLength", "RowsPerStrip")}
    b = bytearray(path.read_bytes())
    for k, v in (("ImageWidth", width), ("ImageLength", height), ("RowsPerStrip", height)):
        off, dt = where[k]
        b[off : off + (2 if dt == 3 else 4)] = struct.pack("<H" if dt == 3 else "<I", min(v, 65535) if dt == 3 else v)
    path.write_bytes(bytes(b))
    return path


def test_size_claims_are_checked_before_anything_is_allocated(tmp_path, monkeypatch, tiny_model):
    import time

    import asn2n_dask.io as io_mod
    from asn2n_dask import save_model
    from asn2n_dask.source import open_source

    t0 = time.perf_counter()
    huge = _claim(tmp_path / "huge.tif", 100000, 100000)
    with pytest.raises(InputError, match="truncated"):
        read_image(huge)
    _one_sentence(_cli("risk", huge))
    zarr.create_array(str(tmp_path / "big.zarr"), shape=(10**6, 10**6), chunks=(4096, 4096), dtype="uint16",
                      dimension_names=["y", "x"])
    with pytest.raises(InputError, match=r"\.zarr output"):
        read_image(tmp_path / "big.zarr")
    zarr.create_array(str(tmp_path / "long.zarr"), shape=(10**8, 64, 64), chunks=(1, 64, 64), dtype="uint16",
                      dimension_names=["t", "y", "x"])
    with pytest.raises(InputError, match=r"GiB"):
        read_image(tmp_path / "long.zarr")
    save_model(tiny_model, tmp_path / "m")  # the .tif output route reads into memory: refused, .zarr suggested
    assert ".zarr" in _one_sentence(_cli("denoise", tmp_path / "long.zarr", "-o", tmp_path / "o.tif", "-m",
                                         tmp_path / "m"))
    assert time.perf_counter() - t0 < 30
    # what is read into memory is compared to the memory available
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, np.zeros((64, 64), np.uint16))
    monkeypatch.setattr(io_mod, "available_memory", lambda: 1000)
    with pytest.raises(InputError, match=r"\.zarr output"):
        read_image(small)
    assert open_source(small).shape == (64, 64)  # a lazy read is not refused


@pytest.mark.parametrize("damage, needle", [
    (lambda c: c.write_bytes(b"\x00" * 100), "damaged"),          # wrong decoded size
    (lambda c: c.write_bytes(b"garbage" * 10), "damaged"),        # undecodable
    (lambda c: (c.unlink(), c.symlink_to("/dev/zero")), "not a regular file"),
])
def test_damaged_zarr_chunks_are_refused_in_one_sentence(tmp_path, damage, needle):
    import subprocess
    import sys

    from asn2n_dask.source import open_source

    for compressed in (False, True):
        p = tmp_path / f"d{int(compressed)}.zarr"
        a = zarr.create_array(str(p), shape=(64, 64), chunks=(32, 32), dtype="uint16", dimension_names=["y", "x"],
                              **({} if compressed else {"compressors": None}))
        a[...] = 5
        damage(p / "c" / "0" / "1")
        with pytest.raises(InputError, match=needle):
            read_image(p)
        src = open_source(p)
        with pytest.raises(InputError, match=needle):
            np.asarray(src.open()[:, 32:])
        assert (np.asarray(src.open()[:32, :32]) == 5).all()  # the sound chunks still read
    r = subprocess.run([sys.executable, "-m", "asn2n_dask", "risk", str(p)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_truncated_tiff_is_refused_in_one_sentence(tmp_path):
    from asn2n_dask.source import open_source

    full = tmp_path / "full.tif"
    tifffile.imwrite(full, np.random.default_rng(0).poisson(20, (4, 64, 64)).astype(np.uint16),
                     photometric="minisblack")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated"):
        read_image(cut)
    with pytest.raises(InputError, match="truncated"):
        open_source(cut)
    _one_sentence(_cli("fit", cut, "--model", tmp_path / "m", "--preset", "tiny", "--steps", "2", "--patch", "32"))


@pytest.mark.parametrize("transforms", ["scale", ["scale"], [{"type": "scale", "scale": 5}], 7])
def test_ome_coordinate_transformations_of_the_wrong_type_are_malformed(tmp_path, transforms):
    p = _ome(tmp_path)
    _edit_attrs(p, lambda a: a["ome"]["multiscales"][0]["datasets"][0].update(coordinateTransformations=transforms))
    with pytest.raises(InputError, match="malformed OME-Zarr"):
        read_image(p)
    _one_sentence(_cli("risk", p))


@pytest.mark.parametrize("scale", [[1.0, "NaN", 0.1], [1.0, 0.1, 0.0], [1.0, -0.1, 0.1], [1.0, 0.1],
                                   [1.0, "Infinity", 0.1]])
def test_a_non_finite_or_non_positive_scale_is_dropped_with_a_warning(tmp_path, caplog, scale):
    import json
    import math

    p = _ome(tmp_path)
    doc = json.loads((p / "zarr.json").read_text())
    doc["attributes"]["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": scale}]
    (p / "zarr.json").write_text(json.dumps(doc).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity"))
    with caplog.at_level("WARNING", logger="asn2n_dask"):
        data, meta = read_image(p)
    assert meta.scale is None and "scale" in caplog.text
    # nor is a bad scale given in code ever written into OME metadata
    bad = ImageMeta(axes="CYX", format="ome-zarr", scale=(1.0, float("nan"), -1.0))
    out = write_image(tmp_path / "w.zarr", data, bad)
    written = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    got = written["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert all(math.isfinite(v) and v > 0 for v in got)


def test_the_files_own_axes_win_over_contradicting_axes_options(tmp_path):
    from asn2n_dask.source import open_source

    ij = tmp_path / "ij.tif"
    stack = np.arange(2 * 3 * 2 * 16 * 16, dtype=np.uint16).reshape(2, 3, 2, 16, 16)
    tifffile.imwrite(ij, stack, imagej=True, metadata={"axes": "TZCYX"})
    assert read_image(ij)[1].axes == "TZCYX"
    with pytest.raises(InputError, match="TZCYX"):
        open_source(ij, "TCZYX")
    assert open_source(ij, "TZCYX").axes == "TZCYX"  # agreeing is fine
    assert "TZCYX" in _one_sentence(_cli("risk", ij, "--axes", "TCZYX"))
    # a file that names no axes (tifffile's Q, ImageJ's I) takes them from --axes
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    assert open_source(plain, "CYX").axes == "CYX"
    r = _cli("risk", plain, "--axes", "CYX", "--json")
    assert r.exit_code == 0 and '"axes": "CYX"' in r.output, r.output
    zarr.create_array(str(tmp_path / "bare.zarr"), shape=(2, 3, 16, 16), chunks=(1, 1, 16, 16), dtype="uint8")
    assert open_source(tmp_path / "bare.zarr", "TCYX").axes == "TCYX"
    zarr.create_array(str(tmp_path / "named.zarr"), shape=(2, 16, 16), dtype="uint8", dimension_names=["c", "y", "x"])
    with pytest.raises(InputError, match="CYX"):
        open_source(tmp_path / "named.zarr", "TYX")


def test_cast_output_keeps_float_outputs_finite():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cast_output(np.array([-1e6, 1.0, 70000.0], np.float32), np.float16)
    assert np.isfinite(got).all() and got.tolist() == [-65504.0, 1.0, 65504.0]
