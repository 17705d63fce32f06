"""The range new data is normalised on when a model denoises it (``InferConfig.norm_range``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile

from asn2n_dask import InferConfig, denoise
from asn2n_dask.errors import ConfigError
from asn2n_dask.method import denoising_stats, normalisation_range, ranges_agree
from asn2n_dask.risk import FrameStats
from asn2n_dask.stats import channel_stats

INFER = InferConfig(tile=32, device="cpu")
TRAINED = FrameStats(lo=90.0, hi=120.0)


@pytest.mark.parametrize("data, agree", [
    (FrameStats(91.0, 120.0), True),  # a minimum one ADU off: the same acquisition
    (FrameStats(90.0, 240.0), True),  # a brighter field of the same camera
    (FrameStats(90.0, 100.0), True),  # a dimmer one
    (FrameStats(110.0, 140.0), False),  # another offset: a third of the range shared
    (FrameStats(1090.0, 1120.0), False),  # far off
    (FrameStats(0.0, 1.0), False),  # other units
])
def test_ranges_agree_on_the_same_camera_only(data, agree):
    assert ranges_agree(TRAINED, data) is agree
    assert ranges_agree(data, TRAINED) is agree  # symmetric


def test_each_rule_takes_its_range():
    near, far = FrameStats(91.0, 121.0), FrameStats(1090.0, 1120.0)
    assert normalisation_range(TRAINED, near, "model") == (TRAINED, False)
    assert normalisation_range(TRAINED, far, "model") == (TRAINED, False)
    assert normalisation_range(TRAINED, near, "data") == (near, False)
    assert normalisation_range(TRAINED, near, "auto") == (TRAINED, False)
    assert normalisation_range(TRAINED, far, "auto") == (far, True)
    with pytest.raises(ConfigError, match="normalisation range"):
        normalisation_range(TRAINED, near, "nearest")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="normalisation range"):
        InferConfig(norm_range="train")  # type: ignore[arg-type]


def test_only_the_norm_range_is_replaced(tiny_model, frame):
    data = channel_stats(frame[0][None].astype(np.float32) + 1.0, tiny_model.train.norm)[0]
    (used,) = denoising_stats([tiny_model.method(0)], [data], "model")
    assert used.norm == tiny_model.method(0).stats != data.norm
    assert (used.risk, used.minimum, used.maximum, used.digest) == (data.risk, data.minimum, data.maximum, data.digest)


def _lower_one_pixel(img: np.ndarray, by: float) -> np.ndarray:
    """``img`` with its last pixel set ``by`` below the image's minimum: a new extreme, the
    rest unchanged."""
    out = img.astype(np.float32).copy()
    out[-1, -1] = out.min() - by
    return out


def test_one_extreme_pixel_moves_only_its_neighbourhood(tiny_model, frame):
    """The default range is the minimum to a high percentile.  A frame whose one darkest
    pixel is a few ADU darker is the same data: normalised on its own range, every pixel
    of the result moves; on the model's, most do not move at all and the rest (the
    adaptive scale of the pixel's patch reaches its neighbours' centres) by a small
    fraction of that."""
    img = frame[0].astype(np.float32)
    other = _lower_one_pixel(img, 8.0)
    far = np.ones(img.shape, bool)
    far[-40:, -40:] = False  # outside the pixel's tiles and the network's reach
    cfg = InferConfig(tile=32, device="cpu", norm_range="data")
    moved = np.abs(denoise(img, tiny_model, config=cfg) - denoise(other, tiny_model, config=cfg))[far]
    assert moved.min() > 0.1  # ADU: every far pixel
    for rule in ("auto", "model"):
        cfg = InferConfig(tile=32, device="cpu", norm_range=rule)
        d = np.abs(denoise(img, tiny_model, config=cfg) - denoise(other, tiny_model, config=cfg))[far]
        assert np.median(d) == 0.0
        assert d.max() < 0.1 * moved.min()


def test_model_range_is_the_trained_normalisation(tiny_model, frame):
    """``model`` puts new data where the training data was: denoising a frame with its own
    range equal to the training range gives the same result under every rule."""
    img = frame[0].astype(np.float32)
    outs = [denoise(img, tiny_model, config=InferConfig(tile=32, device="cpu", norm_range=r))
            for r in ("auto", "model", "data")]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[1], outs[2], atol=1e-3)  # the stats pass equals training's to rounding


def test_unlike_data_is_normalised_on_its_own_range_with_a_warning(tiny_model, frame, caplog):
    img = frame[0].astype(np.float32)
    base = denoise(img, tiny_model, config=INFER)
    with caplog.at_level(logging.WARNING, logger="asn2n_dask"):
        shifted = denoise(img + 5000.0, tiny_model, config=INFER)
    np.testing.assert_allclose(shifted - base, 5000.0, atol=1e-2)  # offset-equivariant, as with --norm-range data
    assert any("unlike the model's training data" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asn2n_dask"):
        forced = denoise(img + 5000.0, tiny_model, config=InferConfig(tile=32, device="cpu", norm_range="model"))
    assert not caplog.records  # asked for: no warning
    assert not np.allclose(forced - base, 5000.0, atol=1.0)  # far outside the trained intensities


def test_lazy_and_file_routes_take_the_same_range(tiny_model, frame, tmp_path):
    """A dask array and a .zarr file are normalised on the model's range as numpy is, and
    the output's provenance records the range used."""
    import dask.array as da
    import zarr

    from asn2n_dask.checkpoint import save_model

    img = _lower_one_pixel(frame[0], 6.0)
    want = denoise(img, tiny_model, config=INFER)
    lazy = denoise(da.from_array(img, chunks=(48, 64)), tiny_model, config=INFER).compute()
    np.testing.assert_allclose(lazy, want, rtol=0, atol=1e-4)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, img)
    save_model(tiny_model, tmp_path / "m")
    denoise(src, tmp_path / "out.zarr", model=tmp_path / "m", client="sync", config=INFER)
    root = zarr.open_group(tmp_path / "out.zarr", mode="r")
    out = np.asarray(root["0"]).reshape(img.shape)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-3)
    ranges = root.attrs["asn2n"]["norm_ranges"]
    assert ranges == [tiny_model.method(0).stats.to_dict()]
    assert root.attrs["asn2n"]["stats"][0]["norm"]["lo"] == float(img.min())  # the data's own, kept beside it
