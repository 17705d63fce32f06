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


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
