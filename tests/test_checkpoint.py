import json
import pickle

import numpy as np
import pytest

from asn2n_dask import load_model, save_model
from asn2n_dask.errors import ModelError


@pytest.fixture()
def model_dir(tiny_model, tmp_path):
    save_model(tiny_model, tmp_path / "m")
    return tmp_path / "m"


def test_config_records_options_statistics_and_checksums(model_dir, tiny_model):
    doc = json.loads((model_dir / "model.json").read_text())
    assert doc["format"] == "asn2n-dask-model"
    assert doc["train"]["preset"] == "tiny" and doc["train"]["norm"]["mode"] == "global"
    ch = doc["channels"][0]
    assert set(ch["stats"]) == {"lo", "hi"} and ch["stats"]["hi"] > ch["stats"]["lo"]
    assert len(ch["sha256"]) == 64
    assert ch["history"] and ch["steps"] == tiny_model.channels[0].steps


def test_tampered_weights_are_refused(model_dir):
    w = model_dir / "channel-0.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum"):
        load_model(model_dir)


class Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_a_pickle_posing_as_weights_is_never_unpickled(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = model_dir / "channel-0.safetensors"
    w.write_bytes(pickle.dumps(Payload()))
    doc = json.loads((model_dir / "model.json").read_text())
    import hashlib

    doc["channels"][0]["sha256"] = hashlib.sha256(w.read_bytes()).hexdigest()  # even with a matching checksum
    (model_dir / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="cannot load weights"):
        load_model(model_dir)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("edit", [
    lambda d: d.update(format="other"),
    lambda d: d["train"].update(unknown_option=1),
    lambda d: d["train"].update(preset="huge"),
    lambda d: d.update(channels=[]),
    lambda d: d.pop("train"),
])
def test_malformed_config_is_refused(model_dir, edit):
    doc = json.loads((model_dir / "model.json").read_text())
    edit(doc)
    (model_dir / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError):
        load_model(model_dir)


def test_missing_model_is_refused(tmp_path):
    with pytest.raises(ModelError, match="asn2n fit"):
        load_model(tmp_path)


def test_round_trip_gives_identical_denoising(model_dir, tiny_model, frame):
    from asn2n_dask import InferConfig, denoise

    cfg = InferConfig(tile=32)
    np.testing.assert_array_equal(denoise(frame[0], load_model(model_dir), config=cfg),
                                  denoise(frame[0], tiny_model, config=cfg))


def test_the_risk_estimator_resolved_in_training_is_kept_per_channel(model_dir, tiny_model):
    from asn2n_dask import RiskThresholds

    ch = tiny_model.channels[0]
    assert tiny_model.train.norm.risk.estimator == "auto"
    noise = ch.extra["risk_noise_sd"]  # the low-photon frame's pixel noise on the risk scale
    assert ch.risk_estimator == ("noise-aware" if noise > RiskThresholds().bg_std else "reference")
    loaded = load_model(model_dir)
    assert loaded.channels[0].risk_estimator == ch.risk_estimator
    assert loaded.norm(0).risk.estimator == ch.risk_estimator
    assert loaded.norm(0).risk.patch == tiny_model.train.norm.risk.patch
    # a model written before the choice was kept per channel (nor its method) uses the reference rule
    path = model_dir / "model.json"
    doc = json.loads(path.read_text())
    del doc["channels"][0]["risk_estimator"], doc["channels"][0]["method"]
    path.write_text(json.dumps(doc))
    assert load_model(model_dir).channels[0].risk_estimator == "reference"
    doc["channels"][0]["risk_estimator"] = "guess"
    path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="unknown risk estimator"):
        load_model(model_dir)


@pytest.mark.parametrize("field, edit", [
    ("dataset_mode", lambda d: d["channels"][0].update(dataset_mode="sideways")),
    ("dataset_mode", lambda d: d["channels"][0].update(dataset_mode=3)),
    ("steps", lambda d: d["channels"][0].update(steps="many")),
    ("steps", lambda d: d["channels"][0].update(steps=1e400)),
    ("steps", lambda d: d["channels"][0].update(steps=-3)),
    ("best_step", lambda d: d["channels"][0].update(best_step="last")),
    ("high_risk_ratio", lambda d: d["channels"][0].update(high_risk_ratio="x")),
    ("high_risk_ratio", lambda d: d["channels"][0].update(high_risk_ratio=7.0)),
    ("seconds", lambda d: d["channels"][0].update(seconds=[1])),
    ("history", lambda d: d["channels"][0].update(history=5)),
    ("history", lambda d: d["channels"][0].update(history=[1, 2])),
    ("training", lambda d: d["channels"][0].update(training="yes")),
    ("name", lambda d: d["channels"][0].update(name={"a": 1})),
    ("stats", lambda d: d["channels"][0].update(stats={"lo": "a", "hi": 1})),
    ("stats", lambda d: d["channels"][0].update(stats={"lo": 5.0, "hi": 1.0})),
    ("stats", lambda d: d["channels"][0].update(stats=[0, 1])),
    ("weights", lambda d: d["channels"][0].update(weights=12)),
    ("sha256", lambda d: d["channels"][0].update(sha256=None)),
    ("channels", lambda d: d.update(channels=[1])),
    ("channels", lambda d: d.update(channels={"a": 1})),
    ("format_version", lambda d: d.update(format_version="two")),
    ("train", lambda d: d.update(train=[1])),
    ("train", lambda d: d["train"].update(steps="x")),
    ("train", lambda d: d["train"].update(steps=1e400)),
    ("train", lambda d: d["train"]["norm"].update(risk=5)),
    ("provenance", lambda d: d.update(provenance=[1])),
    ("model.json", lambda d: d.update(provenance="DEEP")),  # nested 100000 deep
    ("model.json", lambda d: d.clear() or d.update({"x": 1}) or None),
])
def test_every_field_of_model_json_is_checked_on_load(model_dir, field, edit):
    doc = json.loads((model_dir / "model.json").read_text())
    edit(doc)
    text = json.dumps(doc).replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    (model_dir / "model.json").write_text(text)
    with pytest.raises(ModelError, match=field) as e:
        load_model(model_dir)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_a_model_json_that_is_not_an_object_is_refused(model_dir):
    for text in ("[1, 2]", '"model"', "null", "1e400", "[" * 100_000 + "]" * 100_000):
        (model_dir / "model.json").write_text(text)
        with pytest.raises(ModelError, match="model.json"):
            load_model(model_dir)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_model_files_get_the_permissions_the_umask_gives(tiny_model, tmp_path, mask):
    import os
    import stat

    import torch

    from asn2n_dask.checkpoint import save_train_state
    from asn2n_dask.train import TrainState

    old = os.umask(mask)
    try:
        save_model(tiny_model, tmp_path / "m")
        save_train_state(tmp_path / "m", {"job": 1}, 0, TrainState(3, {"w": torch.zeros(2)}, {}))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "m").iterdir()}
    assert {"model.json", "channel-0.safetensors", "train-state.json", "train-state-0-3.safetensors"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o666 & ~mask)
