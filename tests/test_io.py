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
