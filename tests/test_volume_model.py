"""Models of 3-D networks: saved and loaded beside 2-D ones, every new field checked."""

import json

import numpy as np
import pytest
import torch

from asn2n_dask import load_model, save_model
from asn2n_dask.checkpoint import ChannelModel, Model
from asn2n_dask.config import VolumeSpec, VolumeTrainConfig
from asn2n_dask.errors import ConfigError, ModelError
from asn2n_dask.model import UNet, UNet3d
from asn2n_dask.train3d import fit_volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def volume_model(depth_axis: str = "Z") -> Model:
    """A tiny3d model of one channel, trained for two steps on a small volume."""
    vol = np.random.default_rng(0).poisson(5.0, (8, 32, 32)).astype(np.uint16)
    cfg = VolumeTrainConfig(preset="tiny3d", steps=2, patch=(8, 16, 16), batch=1)
    fit = fit_volume(vol, cfg)
    spec = VolumeSpec(cfg.preset, fit.patch, cfg.anisotropy, fit.net.kernels, depth_axis)
    return Model(train=cfg, channels=[ChannelModel("0", fit.net, fit.stats, dataset_mode="global")], volume=spec)


@pytest.fixture(scope="module")
def model3d() -> Model:
    return volume_model()


@pytest.fixture()
def model3d_dir(model3d, tmp_path):
    save_model(model3d, tmp_path / "m3")
    return tmp_path / "m3"


def test_a_3d_model_says_dims_3_and_describes_its_networks(model3d_dir, model3d):
    doc = json.loads((model3d_dir / "model.json").read_text())
    assert doc["dims"] == 3 and doc["format_version"] == 2
    assert doc["volume"] == {"preset": "tiny3d", "patch": [8, 16, 16], "anisotropy": 1.0, "pools": [[2, 2, 2]],
                             "depth_axis": "Z"}
    assert doc["widths"] == [4, 8] and doc["train"]["patch"] == [8, 16, 16]
    method = doc["channels"][0]["method"]
    assert (method["spatial_dims"], method["norm_mode"], method["dataset_mode"]) == (3, "global", "global")
    assert doc["channels"][0]["stats"] == model3d.channels[0].stats.to_dict()


def test_a_3d_model_loads_as_it_was_saved(model3d_dir, model3d):
    loaded = load_model(model3d_dir)
    assert loaded.dims == 3 and loaded.volume == model3d.volume
    assert loaded.train == model3d.train
    net = loaded.channels[0].net
    assert isinstance(net, UNet3d) and net.kernels == model3d.channels[0].net.kernels
    assert loaded.volume is not None and loaded.volume.multiple == net.multiple == (2, 2, 2)
    assert loaded.volume.tile_z == 8 and loaded.multiple == 2
    assert loaded.method(0) == model3d.method(0) and loaded.method(0).spatial_dims == 3
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model3d.channels[0].net.eval()(x), rtol=0, atol=0)


def test_a_2d_model_json_is_written_as_before(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "m2")
    doc = json.loads((tmp_path / "m2" / "model.json").read_text())
    assert list(doc) == ["format", "format_version", "package_version", "torch_version", "created", "complete",
                         "widths", "train", "channels", "provenance"]
    assert doc["format_version"] == 1 and doc["channels"][0]["method"]["spatial_dims"] == 2
    loaded = load_model(tmp_path / "m2")
    assert loaded.dims == 2 and loaded.volume is None and isinstance(loaded.channels[0].net, UNet)
    # "dims": 2 said outright is the same model
    doc["dims"] = 2
    (tmp_path / "m2" / "model.json").write_text(json.dumps(doc))
    assert load_model(tmp_path / "m2").dims == 2


def set_volume(key, value):
    return lambda d: d["volume"].update({key: value})


@pytest.mark.parametrize("field, edit", [
    ("dims", lambda d: d.update(dims="3")),
    ("dims", lambda d: d.update(dims=4)),
    ("dims", lambda d: d.update(dims=True)),
    ("volume", lambda d: d.pop("dims")),  # a 2-D model cannot carry a volume description
    ("volume", lambda d: d.pop("volume")),
    ("volume", lambda d: d.update(volume=[1])),
    ("volume", set_volume("depth_axis", "Q")),
    ("volume", set_volume("patch", [8, 16])),
    ("volume", set_volume("patch", [7, 16, 16])),  # Z not a multiple of the Z pooling
    ("volume", set_volume("patch", [8, 16, "x"])),
    ("volume", set_volume("pools", [[2, 2, 1]])),
    ("volume", set_volume("pools", [])),
    ("volume", set_volume("preset", "small3d")),  # three levels need two kernels
    ("volume", set_volume("colour", "red")),
    ("volume", lambda d: d["volume"].pop("pools")),
    ("volume.anisotropy", set_volume("anisotropy", 2.0)),
    ("volume", set_volume("anisotropy", -1.0)),
    ("train", lambda d: d["train"].update(norm={**d["train"]["norm"], "mode": "adaptive"})),
    ("train", lambda d: d["train"].update(patch=96)),
    ("dataset_mode", lambda d: d["channels"][0].update(dataset_mode="local")),
    (r"channels\[0\]\.method", lambda d: d["channels"][0]["method"].update(spatial_dims=2)),
])
def test_every_3d_field_is_checked_on_load(model3d_dir, field, edit):
    doc = json.loads((model3d_dir / "model.json").read_text())
    edit(doc)
    (model3d_dir / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=field) as e:
        load_model(model3d_dir)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_a_2d_model_said_to_be_3d_is_refused(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "m2")
    path = tmp_path / "m2" / "model.json"
    doc = json.loads(path.read_text())
    doc["dims"] = 3
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="train is not valid"):
        load_model(tmp_path / "m2")


def test_a_model_pairs_its_options_with_its_networks(model3d, tiny_model):
    with pytest.raises(ConfigError, match="VolumeSpec"):
        Model(train=model3d.train, channels=model3d.channels)
    with pytest.raises(ConfigError, match="TrainConfig"):
        Model(train=tiny_model.train, channels=tiny_model.channels, volume=model3d.volume)


def test_volume_spec_round_trips_and_refuses_what_cannot_be_built():
    spec = VolumeSpec("small3d", (16, 64, 64), 1.5, ((1, 2, 2), (2, 2, 2)), "t")
    assert spec.depth_axis == "T" and spec.multiple == (2, 4, 4)
    assert VolumeSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for kwargs, why in [({"patch": (15, 64, 64)}, "multiple"), ({"patch": (16, 64, 62)}, "multiple"),
                        ({"pools": ((1, 2, 2),)}, "pools"), ({"anisotropy": 0.0}, "anisotropy"),
                        ({"preset": "small"}, "3-D preset"), ({"patch": (0, 64, 64)}, "patch")]:
        with pytest.raises(ConfigError, match=why):
            VolumeSpec(**{**spec.__dict__, **kwargs})


# --- fit(..., dims=3) and denoise on arrays ----------------------------------------------

from asn2n_dask import InferConfig, TrainConfig, denoise, fit  # noqa: E402
from asn2n_dask.errors import InputError  # noqa: E402

TINY3D = VolumeTrainConfig(preset="tiny3d", steps=3, patch=(8, 16, 16), batch=2)
INFER = InferConfig(tile=16, device="cpu")


def noisy(shape, seed=0, offset=0.0):
    """A smooth structure plus Poisson noise."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(0, 3, n) for n in shape[-3:]), indexing="ij")
    clean = 20 + 15 * np.sin(grid[0]) * np.cos(grid[1] + grid[2])
    return rng.poisson(np.broadcast_to(clean, shape)).astype(np.float32) + offset


@pytest.fixture(scope="module")
def stack():
    return noisy((2, 8, 32, 32)).astype(np.uint16)  # T, Z, Y, X


@pytest.fixture(scope="module")
def fitted(stack, tmp_path_factory):
    d = tmp_path_factory.mktemp("fit3d") / "model"
    return fit(stack, axes="TZYX", dims=3, volume=TINY3D, device="cpu", model_dir=d), d


def test_fit_dims_3_trains_a_3d_network_per_channel_and_saves_it(fitted):
    model, d = fitted
    assert model.dims == 3 and isinstance(model.channels[0].net, UNet3d)
    assert model.volume == VolumeSpec("tiny3d", (8, 16, 16), 1.0, ((2, 2, 2),), "Z")
    assert model.info["anisotropy"] == {"value": 1.0, "from": "the training options"}
    assert model.channels[0].steps == 3 and [h["step"] for h in model.channels[0].history] == [1, 2, 3]
    assert json.loads((d / "model.json").read_text())["dims"] == 3
    assert (d / "curves-0.csv").read_text().splitlines()[0].startswith("step,train_loss")


def test_each_channels_risk_estimator_and_share_at_risk_are_decided_from_its_slices_and_kept(fitted, stack):
    from asn2n_dask.risk import assess_risk, noise_level
    from asn2n_dask.stats import channel_stats

    model, d = fitted
    ch, thr = model.channels[0], model.train.norm.risk
    assert thr.estimator == "auto"  # the training option; the channel's is resolved
    st = channel_stats(stack.reshape(1, -1, *stack.shape[-2:]), model.train.norm)[0]
    slices = stack.reshape(-1, *stack.shape[-2:])  # 16 slices, 8 of them spread evenly
    picks = [slices[i] for i in np.linspace(0, len(slices) - 1, 8).round().astype(int)]
    noise = noise_level(picks, thr.patch, st.risk_scale(thr))
    assert ch.extra["risk_noise_sd"] == pytest.approx(noise, rel=1e-6)
    assert ch.risk_estimator == ("noise-aware" if noise > thr.bg_std else "reference")
    resolved = model.norm(0).risk
    maps = [assess_risk(s, thresholds=resolved, stats=st.risk_scale(resolved)).risk_map for s in picks]
    assert ch.high_risk_ratio == pytest.approx(np.mean(np.concatenate([m.ravel() for m in maps]) != 0))
    assert ch.dataset_mode == "global"  # a volume is normalised on one global range whatever the share
    again = load_model(d).channels[0]
    assert (again.risk_estimator, again.high_risk_ratio, again.extra.get("risk_noise_sd")) == (
        ch.risk_estimator, ch.high_risk_ratio, ch.extra["risk_noise_sd"])


def test_a_noisy_and_a_quiet_volume_get_the_estimator_their_noise_needs():
    rng = np.random.default_rng(3)
    scene = np.zeros((8, 32, 32), np.float32)
    scene[:, 8:24, 8:24] = 1000.0
    quiet = fit(scene + rng.poisson(20, scene.shape), axes="ZYX", dims=3, volume=TINY3D, device="cpu")
    loud = fit(scene + rng.normal(100, 150, scene.shape), axes="ZYX", dims=3, volume=TINY3D, device="cpu")
    assert quiet.channels[0].risk_estimator == "reference"
    assert loud.channels[0].risk_estimator == "noise-aware"


def test_the_channel_is_normalised_on_its_statistics_over_every_volume(fitted, stack):
    from asn2n_dask.stats import channel_stats

    model, _ = fitted
    expected = channel_stats(stack.reshape(1, -1), model.train.norm)[0].norm  # all time points and slices
    assert model.channels[0].stats == expected == model.method(0).stats


def test_denoising_after_saving_and_loading_gives_the_same_output(fitted, stack):
    model, d = fitted
    before = denoise(stack, model, axes="TZYX", config=INFER)
    after = denoise(stack, load_model(d), axes="TZYX", config=INFER)
    assert before.shape == stack.shape and before.dtype == np.float32
    np.testing.assert_array_equal(before, after)


def test_the_output_is_in_input_units(fitted, stack):
    model, _ = fitted
    out = denoise(stack, model, axes="TZYX", config=INFER)
    shifted = denoise(stack.astype(np.float32) + 1000, model, axes="TZYX", config=INFER)
    np.testing.assert_allclose(shifted - out, 1000, atol=1e-3)


def test_each_volume_is_denoised_on_its_own(fitted, stack):
    """One time point's output equals its volume denoised with the same channel range."""
    from asn2n_dask.predict import network_fn
    from asn2n_dask.predict3d import denoise_volume
    from asn2n_dask.stats import channel_stats

    model, _ = fitted
    out = denoise(stack, model, axes="TZYX", config=INFER)
    stats = channel_stats(stack[None], model.train.norm)[0]
    one = denoise_volume(stack[1], network_fn(model.channels[0].net, "cpu"), stats=stats, infer=INFER,
                         tile_z=8, multiple=(2, 2, 2))
    np.testing.assert_array_equal(out[1], one)


def test_a_dask_array_stays_lazy_and_equals_the_numpy_route(fitted, stack):
    import dask.array as da
    import xarray as xr

    model, _ = fitted
    lazy = denoise(da.from_array(stack, chunks=(1, 4, 16, 16)), model, axes="TZYX", config=INFER)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), denoise(stack, model, axes="TZYX", config=INFER))
    labelled = denoise(xr.DataArray(stack, dims=("t", "z", "y", "x")), model, config=INFER)
    assert labelled.dims == ("t", "z", "y", "x") and labelled.attrs["asn2n"]["volume"]["depth_axis"] == "Z"


def test_an_explicit_z_tile_is_used_and_checked(fitted, stack):
    from asn2n_dask.errors import ConfigError

    model, _ = fitted
    default = denoise(stack, model, axes="TZYX", config=INFER)
    assert not np.array_equal(denoise(stack, model, axes="TZYX", config=INFER, tile_z=4), default)
    with pytest.raises(ConfigError, match="multiple of 2"):
        denoise(stack, model, axes="TZYX", config=INFER, tile_z=3)


def test_depth_axis_t_takes_a_time_series_as_one_volume():
    movie = noisy((6, 32, 32), seed=1)
    model = fit(movie, axes="TYX", dims=3, depth_axis="T", volume=TINY3D, device="cpu")
    assert model.volume is not None and model.volume.depth_axis == "T"
    assert model.volume.patch == (6, 16, 16)  # cut to the six time points, a multiple of the Z pooling
    out = denoise(movie, model, axes="TYX", config=INFER)
    assert out.shape == movie.shape and out.dtype == np.float32
    with pytest.raises(InputError, match="Z axis would be left out; denoise it with a model trained with depth axis Z"):
        denoise(noisy((2, 6, 32, 32)), model, axes="TZYX", config=INFER)
    with pytest.raises(InputError, match="without the T axis .* a model trained with depth axis Z"):
        denoise(noisy((2, 32, 32)), model, axes="CYX", config=INFER)


@pytest.mark.parametrize("data, axes, depth, match", [
    (noisy((4, 32, 32)), "TYX", "Z", "without the Z axis"),
    (noisy((4, 32, 32)), None, "Z", "without the Z axis"),  # a bare 3-D array is TYX
    (noisy((2, 4, 32, 32)), "TZYX", "T", "Z axis would be left out"),
    (noisy((4, 32, 32)), "QYX", "T", "without the T axis"),
    (noisy((4, 6, 6)), "ZYX", "Z", "too small in Y-X"),
])
def test_axes_that_do_not_allow_the_depth_axis_are_refused(data, axes, depth, match):
    with pytest.raises(InputError, match=match) as e:
        fit(data, axes=axes, dims=3, depth_axis=depth, volume=TINY3D, device="cpu")
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


@pytest.mark.parametrize("kwargs, match", [
    ({"dims": 4}, "dims must be 2"),
    ({"dims": 3, "config": TrainConfig(preset="tiny")}, "VolumeTrainConfig"),
    ({"dims": 3, "resume": True}, "2-D training only"),
    ({"dims": 3, "depth_axis": "Q"}, "depth axis must be Z or T"),
    ({"dims": 3, "anisotropy": -1.0}, "anisotropy"),
    ({"volume": TINY3D}, "pass dims=3"),
    ({"anisotropy": 2.0}, "pass dims=3"),
])
def test_options_of_the_other_kind_of_network_are_refused(kwargs, match):
    from asn2n_dask.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        fit(noisy((8, 32, 32)), axes="ZYX", device="cpu", **{"volume": TINY3D if kwargs.get("dims") == 3 else None,
                                                             **kwargs})


def test_anisotropy_comes_from_the_input_s_scale_unless_given(tmp_path):
    import tifffile
    import xarray as xr

    vol = noisy((8, 32, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", vol, imagej=True, resolution=(10.0, 10.0),
                     metadata={"spacing": 0.3, "unit": "um", "axes": "ZYX"})
    m = fit(str(tmp_path / "ij.tif"), dims=3, volume=TINY3D, device="cpu")
    assert m.volume is not None and m.volume.anisotropy == pytest.approx(3.0)
    assert m.volume.pools == ((1, 2, 2),)  # Z three times coarser: not pooled
    assert m.info["anisotropy"]["from"] == "the input's pixel sizes"
    given = fit(str(tmp_path / "ij.tif"), dims=3, volume=TINY3D, device="cpu", anisotropy=1.5)
    assert given.volume is not None and given.volume.anisotropy == 1.5 and given.info["anisotropy"]["from"] == "given"
    tifffile.imwrite(tmp_path / "plain.tif", vol, metadata={"axes": "ZYX"})  # no sizes: the training option's
    plain = fit(str(tmp_path / "plain.tif"), dims=3, volume=replace_config(anisotropy=2.0), device="cpu")
    assert plain.volume is not None and plain.volume.anisotropy == 2.0
    coords = {"z": np.arange(8) * 0.5, "y": np.arange(32) * 0.25, "x": np.arange(32) * 0.25}
    labelled = fit(xr.DataArray(vol, dims=("z", "y", "x"), coords=coords), dims=3, volume=TINY3D, device="cpu")
    assert labelled.volume is not None and labelled.volume.anisotropy == pytest.approx(2.0)


def replace_config(**kwargs):
    from dataclasses import replace

    return replace(TINY3D, **kwargs)


def test_several_channels_of_a_file_get_a_network_each(tmp_path):
    import tifffile

    two = np.stack([noisy((8, 32, 32), seed=2), 3 * noisy((8, 32, 32), seed=3)], axis=1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "zc.tif", two, imagej=True, metadata={"axes": "ZCYX"})
    model = fit(str(tmp_path / "zc.tif"), dims=3, volume=TINY3D, device="cpu", channels=["1"])
    assert [ch.name for ch in model.channels] == ["1"]
    assert model.channels[0].stats.hi > 2 * noisy((8, 32, 32), seed=3).max()  # the second channel's range
    both = fit(str(tmp_path / "zc.tif"), dims=3, volume=TINY3D, device="cpu")
    assert both.n_channels == 2
    out = denoise(two, both, axes="ZCYX", config=INFER)
    assert out.shape == two.shape and out[:, 1].mean() > 2 * out[:, 0].mean()


def test_the_file_routes_give_the_array_result(fitted, tmp_path):
    import tifffile
    import zarr

    from asn2n_dask.api import denoise_to_file, denoise_with_risk
    from asn2n_dask.source import Selection, open_source

    model, d = fitted
    vol = noisy((8, 32, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", vol, metadata={"axes": "ZYX"})
    want = denoise(vol, model, axes="ZYX", config=INFER)
    tol = 1e-5 * float(np.ptp(vol))
    denoise(str(tmp_path / "v.tif"), str(tmp_path / "a.zarr"), model=str(d), config=INFER, client="sync")
    denoise(str(tmp_path / "v.tif"), str(tmp_path / "b.zarr"), model=model, config=INFER, client="sync")
    for name in ("a.zarr", "b.zarr"):
        np.testing.assert_allclose(zarr.open_group(str(tmp_path / name), mode="r")["0"][...], want, rtol=0, atol=tol)
    denoise_to_file(open_source(tmp_path / "v.tif"), Selection(), tmp_path / "o.tif", model, infer=INFER)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "o.tif"), want, rtol=0, atol=tol)
    with pytest.raises(ModelError, match="no risk classes"):
        denoise_with_risk(noisy((8, 32, 32)), model, axes="ZYX")


def test_the_weights_digest_and_the_model_s_checksum_cover_3d_networks(fitted, stack, tmp_path):
    from asn2n_dask.api import _weights_digest
    from asn2n_dask.resume import model_sha

    model, d = fitted
    other = fit(stack, axes="TZYX", dims=3, volume=replace_config(seed=1), device="cpu", model_dir=tmp_path / "o")
    assert _weights_digest(other) != _weights_digest(model)
    assert _weights_digest(load_model(d)) == _weights_digest(model)
    doc = json.loads((tmp_path / "o" / "model.json").read_text())
    assert model_sha(tmp_path / "o") != model_sha(d)
    assert doc["channels"][0]["sha256"] != json.loads((d / "model.json").read_text())["channels"][0]["sha256"]


@pytest.mark.parametrize("axes, shape, depth", [("TZYX", (2, 3, 8, 8), "Z"), ("ZCTYX", (3, 2, 4, 8, 8), "Z"),
                                                 ("CTYX", (2, 5, 8, 8), "T"), ("QTYX", (2, 5, 8, 8), "T")])
def test_volumes_round_trip_through_the_layout(axes, shape, depth):
    from asn2n_dask.axes import from_volumes, to_volumes

    data = np.arange(np.prod(shape)).reshape(shape)
    vols = to_volumes(data, axes, depth)
    assert vols.shape[-3] == shape[axes.index(depth)] and vols.shape[0] == (shape[axes.index("C")]
                                                                           if "C" in axes else 1)
    np.testing.assert_array_equal(from_volumes(vols, axes, depth, shape), data)
    # every volume is one (depth, Y, X) block of the input
    assert {tuple(v[:, 0, 0]) for c in vols for v in c} == {
        tuple(np.moveaxis(data, axes.index(depth), -3)[idx][:, 0, 0])
        for idx in np.ndindex(np.moveaxis(data, axes.index(depth), -3).shape[:-3])}
