"""A channel's method: decided once at fit time, saved with the model, read everywhere."""

from __future__ import annotations

import json

import pytest

from asn2n_dask.config import NormConfig, RiskThresholds
from asn2n_dask.errors import ConfigError, ModelError
from asn2n_dask.method import ChannelMethod, applied_mode, decide_method
from asn2n_dask.risk import FrameStats

STATS = FrameStats(100.0, 300.0)


def _decide(norm: NormConfig, noise: float, ratio: float, seen: list[NormConfig] | None = None) -> ChannelMethod:
    calls: list[str] = []

    def noise_sd() -> float:
        calls.append("noise")
        return noise

    def high_risk_ratio(resolved: NormConfig) -> float:
        if seen is not None:
            seen.append(resolved)
        return ratio

    m = decide_method(norm, STATS, noise_sd=noise_sd, high_risk_ratio=high_risk_ratio)
    assert calls == (["noise"] if norm.risk.estimator == "auto" else [])  # measured only when needed
    return m


def test_auto_is_resolved_from_the_noise_and_the_ratio_is_measured_with_the_result():
    seen: list[NormConfig] = []
    loud = _decide(NormConfig(), noise=RiskThresholds().bg_std * 2, ratio=0.0, seen=seen)
    assert loud.risk_estimator == "noise-aware" and loud.noise_sd == RiskThresholds().bg_std * 2
    assert seen[-1].risk.estimator == "noise-aware"  # the high-risk share is classified with it
    quiet = _decide(NormConfig(), noise=RiskThresholds().bg_std / 2, ratio=0.0, seen=seen)
    assert quiet.risk_estimator == "reference" and seen[-1].risk.estimator == "reference"
    fixed = _decide(NormConfig(risk=RiskThresholds(estimator="noise-aware")), noise=0.0, ratio=0.0)
    assert fixed.risk_estimator == "noise-aware" and fixed.noise_sd is None


@pytest.mark.parametrize(("mode", "ratio", "dataset_mode", "applied", "fraction"), [
    ("adaptive", 0.5, "global", "adaptive", 1.0),  # adaptive_floor on data the dataset rule calls high-risk
    ("adaptive", 0.05, "local", "adaptive", 0.05),
    ("dataset", 0.5, "global", "global", 0.05),
    ("dataset", 0.1, "local", "local", 0.05),  # not more than dataset_ratio: local
    ("local", 0.9, "global", "local", 0.05),
    ("global", 0.0, "local", "global", 0.05),
])
def test_the_dataset_decision_and_the_range_floor_follow_the_rule(mode, ratio, dataset_mode, applied, fraction):
    norm = NormConfig(mode=mode)
    m = _decide(norm, noise=0.0, ratio=ratio)
    assert (m.norm_mode, m.dataset_mode, m.mode, m.range_fraction, m.high_risk_ratio) == (
        mode, dataset_mode, applied, fraction, ratio)
    assert applied_mode(norm, m.dataset_mode) == (m.mode, m.range_fraction)
    assert m.norm(norm) == NormConfig(mode=mode, risk=RiskThresholds(estimator=m.risk_estimator))
    with pytest.raises(ValueError, match="decided for"):
        m.norm(NormConfig(mode="local" if mode != "local" else "global"))


def test_without_a_decision_the_image_decides_dataset_mode():
    assert applied_mode(NormConfig(mode="dataset"), None, 0.11) == ("global", 0.05)
    assert applied_mode(NormConfig(mode="dataset"), None, 0.10) == ("local", 0.05)
    assert applied_mode(NormConfig(mode="adaptive", adaptive_floor=0.3), None, 0.9) == ("adaptive", 0.05)
    with pytest.raises(ValueError, match="dataset decision"):
        applied_mode(NormConfig(mode="dataset"), None)


def test_a_method_round_trips_through_json_and_bad_ones_are_refused():
    m = _decide(NormConfig(mode="dataset"), noise=0.2, ratio=0.4)
    assert ChannelMethod.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    good = m.to_dict()
    for bad, why in [({**good, "extra": 1}, "unknown"), ({k: v for k, v in good.items() if k != "stats"}, "no"),
                     ({**good, "risk_estimator": "auto"}, "risk estimator"), ({**good, "dataset_mode": "x"}, "dataset"),
                     ({**good, "range_fraction": 2.0}, "fraction"), ({**good, "high_risk_ratio": 10**400}, "ratio"),
                     ({**good, "noise_sd": -1.0}, "noise_sd"), ({**good, "stats": [0, 1]}, "stats"),
                     ({**good, "spatial_dims": 3}, "spatial_dims"), ({**good, "spatial_dims": True}, "spatial_dims")]:
        with pytest.raises(ConfigError, match=why):
            ChannelMethod.from_dict(bad)


def test_fit_decides_once_and_the_model_keeps_it(tiny_model, tmp_path):
    from asn2n_dask import load_model, save_model

    m = tiny_model.method(0)
    ch = tiny_model.channels[0]
    assert (m.risk_estimator, m.dataset_mode, m.high_risk_ratio, m.stats) == (
        ch.risk_estimator, ch.dataset_mode, ch.high_risk_ratio, ch.stats)
    assert m.noise_sd == ch.extra["risk_noise_sd"]  # "auto" was measured
    save_model(tiny_model, tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    assert doc["format_version"] == 1 and doc["channels"][0]["method"] == m.to_dict()
    assert doc["channels"][0]["risk_estimator"] == m.risk_estimator  # the fields older readers read
    assert load_model(tmp_path / "m").method(0) == m


def _old_model_json(tiny_model, tmp_path, **edits):
    """``tiny_model`` saved, then its model.json as a version without ``method`` wrote it."""
    from asn2n_dask import save_model

    save_model(tiny_model, tmp_path / "old")
    path = tmp_path / "old" / "model.json"
    doc = json.loads(path.read_text())
    for ch in doc["channels"]:
        del ch["method"]
    for key, value in edits.items():
        if value is None:
            del doc["channels"][0][key]
        elif key == "norm":
            doc["train"]["norm"] = value
        else:
            doc["channels"][0][key] = value
    path.write_text(json.dumps(doc))
    return tmp_path / "old"


def test_an_old_model_json_loads_to_the_method_it_was_trained_with(tiny_model, tmp_path):
    from asn2n_dask import load_model

    assert load_model(_old_model_json(tiny_model, tmp_path)).method(0) == tiny_model.method(0)


def test_older_model_json_fields_default_as_they_always_did(tiny_model, tmp_path):
    from asn2n_dask import load_model

    # an adaptive model saved with no risk estimator per channel, no adaptive_weight (so the floor it was
    # trained with), decided global
    norm = {k: v for k, v in tiny_model.train.norm.to_dict().items() if k not in ("adaptive_weight", "adaptive_floor")}
    norm["mode"] = "adaptive"
    d = _old_model_json(tiny_model, tmp_path, risk_estimator=None, norm=norm, dataset_mode="global")
    m = load_model(d).method(0)
    assert (m.risk_estimator, m.norm_mode, m.dataset_mode, m.mode, m.range_fraction) == (
        "reference", "adaptive", "global", "adaptive", 1.0)
    # a set estimator was the one every channel used; no dataset decision recorded: local
    norm = {**tiny_model.train.norm.to_dict(), "mode": "dataset", "risk": {"estimator": "noise-aware"}}
    d = _old_model_json(tiny_model, tmp_path / "x", risk_estimator=None, norm=norm, dataset_mode=None)
    m = load_model(d).method(0)
    assert (m.risk_estimator, m.dataset_mode, m.mode, m.range_fraction) == ("noise-aware", "local", "local", 0.05)


def test_a_method_that_disagrees_with_the_other_fields_is_refused(tiny_model, tmp_path):
    from asn2n_dask import load_model, save_model

    save_model(tiny_model, tmp_path / "m")
    path = tmp_path / "m" / "model.json"
    original = json.loads(path.read_text())
    flipped = "global" if tiny_model.channels[0].dataset_mode == "local" else "local"
    for edit in (lambda ch: ch.update(dataset_mode=flipped), lambda ch: ch["method"].update(range_fraction=0.5),
                 lambda ch: ch["method"].update(spatial_dims=3)):
        doc = json.loads(json.dumps(original))
        edit(doc["channels"][0])
        path.write_text(json.dumps(doc))
        with pytest.raises(ModelError, match=r"channels\[0\]\.method") as e:
            load_model(tmp_path / "m")
        assert "\n" not in str(e.value) and str(e.value).endswith(".")
