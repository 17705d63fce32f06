"""Refusals found by trying the command line as a hostile user would: each one is one
sentence and exit status 2, said before any training, and leaves nothing behind."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import tifffile
import typer
import zarr
from typer.testing import CliRunner

from asn2n_dask.cli import app, friendly
from asn2n_dask.errors import OutputError

runner = CliRunner()
FAST = ["--preset", "tiny", "--steps", "3", "--patch", "32", "--batch", "2"]


def invoke(*args):
    return runner.invoke(app, ["-q", *map(str, args)])


def noisy(shape, seed=0):
    return np.random.default_rng(seed).poisson(100, shape).astype(np.uint16)


def refused(r, *words):
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "unexpected" not in r.output, r.output
    for w in words:
        assert w in r.output, r.output


def test_a_tiff_with_two_unnamed_axes_asks_for_axes_and_then_reads_them(tmp_path):
    path = tmp_path / "qq.tif"
    tifffile.imwrite(path, noisy((2, 3, 64, 64)), photometric="minisblack")  # tifffile calls its axes QQYX
    refused(invoke("risk", path), "2 of its axes unnamed (QQYX)", "--axes TCYX")
    r = invoke("risk", path, "--axes", "TCYX", "--json")
    assert r.exit_code == 0, r.output
    assert len(__import__("json").loads(r.stdout)["channels"]) == 3  # C named by --axes: 3 channels


def test_a_one_bit_tiff_is_called_a_mask_not_a_damaged_file(tmp_path):
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random((64, 64)) > 0.5)
    r = invoke("risk", path)
    refused(r, "1-bit")
    assert "damaged" not in r.output


def test_an_unfinished_output_is_refused_as_an_input_and_by_the_report(tmp_path):
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(raw, noisy((64, 64)))
    out = tmp_path / "out.zarr"
    group = zarr.open_group(str(out), mode="w")
    group.create_array("0", shape=(64, 64), chunks=(32, 32), dtype="float32")  # what an interrupted run leaves
    group.attrs["asn2n"] = {"status": "running"}
    refused(invoke("risk", out), "unfinished")
    refused(invoke("report", raw, out, "-o", tmp_path / "rep"), "unfinished")
    assert not (tmp_path / "rep").exists()


def test_a_seed_beyond_64_bits_is_refused_before_training(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy((64, 64)))
    refused(invoke("run", tmp_path / "in.tif", "-o", tmp_path / "out.tif", *FAST, "--seed", str(2**64)), "seed")
    assert not (tmp_path / "out.tif.model").exists()


def test_a_model_directory_holding_other_files_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy((64, 64)))
    other = tmp_path / "images"
    other.mkdir()
    (other / "thesis.txt").write_text("keep me")
    refused(invoke("fit", tmp_path / "in.tif", "-m", other, *FAST), "holds other files (thesis.txt)")
    assert sorted(p.name for p in other.iterdir()) == ["thesis.txt"]


def test_run_refuses_a_foreign_or_shared_output_before_it_trains(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy((64, 64)))
    foreign = tmp_path / "home.zarr"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    refused(invoke("run", tmp_path / "in.tif", "-o", foreign, *FAST, "--overwrite"), "not written by asn2n-dask")
    assert not (tmp_path / "home.zarr.model").exists()  # nothing trained
    same = tmp_path / "same.zarr"
    refused(invoke("run", tmp_path / "in.tif", "-o", same, "-m", same, *FAST), "choose another --model")
    assert not same.exists()


def test_a_tiff_that_does_not_fit_on_the_disk_is_said_to_and_leaves_no_file(tmp_path, monkeypatch):
    import asn2n_dask.io as io

    def short_write(tmp, *args, **kwargs):
        tmp.write_bytes(b"II*\0")  # what a full disk leaves: a beginning
        raise OSError("65536 requested and 4 written")

    monkeypatch.setattr(io, "_write_tiff", short_write)
    meta = io.ImageMeta(axes="YX", format="tiff")
    with pytest.raises(OutputError, match="full"):
        io.write_image(tmp_path / "out.tif", np.zeros((8, 8), np.float32), meta)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("error", "words"), [
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out.tif"), "/mnt/ro/out.tif is on a read-only"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/x.tif"), "/proc/x.tif: no such file"),
])
def test_a_path_that_cannot_be_written_is_one_sentence(capsys, error, words):
    @friendly
    def denoise():
        raise error

    with pytest.raises(typer.Exit) as e:
        denoise()
    assert e.value.exit_code == 2
    said = capsys.readouterr().err
    assert words in said and "bug" not in said


def test_an_interrupted_fit_says_how_to_resume_it(capsys):
    @friendly
    def fit():
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit):
        fit()
    assert "--resume" in capsys.readouterr().err


def test_a_constant_channel_agrees_with_its_own_range():
    from asn2n_dask.method import ranges_agree
    from asn2n_dask.risk import FrameStats

    assert ranges_agree(FrameStats(500.0, 500.0), FrameStats(500.0, 500.0))
    assert not ranges_agree(FrameStats(500.0, 500.0), FrameStats(900.0, 900.0))


def test_import_refuses_to_put_a_model_where_a_file_is(tmp_path):
    pytest.importorskip("bioimageio.spec")
    package, taken = tmp_path / "model.zip", tmp_path / "image.tif"
    package.write_bytes(b"PK")
    taken.write_bytes(b"mine")
    refused(invoke("import", package, "-o", taken), "is a file")
    assert taken.read_bytes() == b"mine"
