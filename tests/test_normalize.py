import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from asn2n_dask import NormConfig, RiskThresholds
from asn2n_dask.normalize import (
    denormalize,
    interp_matrix,
    local_weight,
    norm_params,
    normalize,
    patch_ranges,
    patch_ranges_torch,
)
from asn2n_dask.risk import assess_risk, frame_stats

MODES = ["adaptive", "local", "global", "dataset"]

images = hnp.arrays(
    np.float64,
    st.tuples(st.integers(4, 150), st.integers(4, 150)),
    elements=st.floats(0, 60000, allow_nan=False, width=32),
)


def _one_bright_pixel() -> np.ndarray:
    img = np.zeros((91, 110))
    img[0, 0] = 3.0  # the high percentile equals the low one: the range must not collapse to nothing
    return img


@given(images, st.sampled_from(MODES))
@example(_one_bright_pixel(), "local")
@settings(max_examples=60, deadline=None)
def test_normalise_then_invert_is_the_identity(img, mode):
    p = norm_params(img, config=NormConfig(mode=mode))
    back = denormalize(normalize(img, p), p)
    tol = 1e-6 * max(1.0, np.abs(img).max())
    np.testing.assert_allclose(back, img, atol=tol + 1e-7 * np.abs(p.scale).max() * 10)
    assert (p.scale > 0).all()


def scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.normal(100, 1, (192, 192))
    img[:, 128:] += 300 + 200 * np.sin(np.arange(64) / 2.0)
    return img


def test_each_mode_has_its_defining_property():
    img = scene()
    risk = assess_risk(img)
    stats = frame_stats(img, low=0.0, high=99.99)
    gl = norm_params(img, config=NormConfig(mode="global"))
    # global: one offset and one scale for the frame, its percentile range
    assert np.ptp(gl.offset) == 0 and np.ptp(gl.scale) == 0
    np.testing.assert_allclose(gl.offset[0, 0], stats.lo)
    np.testing.assert_allclose(gl.scale[0, 0], stats.span)
    # local: every patch its own range (its minimum and maximum)
    loc = norm_params(img, config=NormConfig(mode="local"))
    lo_l, hi_l = patch_ranges(img, stats, NormConfig(), "local", None)
    v = np.clip(img, stats.lo, stats.hi).reshape(3, 64, 3, 64)
    pmin, pmax = v.min(axis=(1, 3)), v.max(axis=(1, 3))
    wide = pmax - pmin >= 0.05 * stats.span  # narrower ones are widened to min_range_fraction about their centre
    assert wide.any() and (~wide).any()
    np.testing.assert_allclose(lo_l[wide], pmin[wide])
    np.testing.assert_allclose(hi_l[wide], pmax[wide])
    np.testing.assert_allclose((hi_l - lo_l)[~wide], 0.05 * stats.span)
    assert ((lo_l <= pmin) & (hi_l >= pmax))[~wide].all()
    assert len(np.unique(np.round(hi_l - lo_l, 6))) > 3
    np.testing.assert_allclose(loc.offset[0, 0], lo_l[0, 0])  # pixels outside the centres take the nearest
    np.testing.assert_allclose(loc.scale[-1, -1], hi_l[-1, -1] - lo_l[-1, -1])
    # adaptive: risky patches the global range, safe ones move towards their own
    lo_a, hi_a = patch_ranges(img, stats, NormConfig(), "adaptive", risk.risk_map)
    risky = risk.risk_map != 0
    assert risky.any() and (~risky).any()
    np.testing.assert_allclose(lo_a[risky], stats.lo)
    np.testing.assert_allclose(hi_a[risky], stats.hi)
    assert (np.abs(lo_a - stats.lo)[~risky] > 0.1 * stats.span).all()
    assert (np.abs(hi_a - hi_l)[~risky] < 0.01 * stats.span).all()  # clean texture: nearly all its own
    # dataset: global or local for the whole frame, by its high-risk ratio against the threshold
    for ratio_threshold, expect in ((risk.high_risk_ratio - 0.01, gl), (risk.high_risk_ratio + 0.01, loc)):
        cfg = NormConfig(mode="dataset", risk=RiskThresholds(dataset_ratio=ratio_threshold))
        d = norm_params(img, config=cfg, risk=risk)
        assert d.mode == expect.mode
        np.testing.assert_allclose(d.offset, expect.offset)
        np.testing.assert_allclose(d.scale, expect.scale)


def test_adaptive_mixes_where_a_frame_holds_both_kinds_of_patch():
    img = scene()
    risk = assess_risk(img)
    ad = norm_params(img, config=NormConfig(mode="adaptive"), risk=risk)
    gl = norm_params(img, config=NormConfig(mode="global"))
    loc = norm_params(img, config=NormConfig(mode="local"))
    # neither the global nor the local field
    span = gl.scale[0, 0]
    assert np.abs(ad.offset - gl.offset).max() > 0.1 * span  # safe patches: their own placement
    assert np.abs(ad.scale - loc.scale).max() > 0.1 * span  # risky patches: not their own stretch
    # deep inside the risky region the adaptive transform is the global one
    np.testing.assert_allclose(ad.scale[:96, :32], gl.scale[:96, :32])
    np.testing.assert_allclose(ad.offset[:96, :32], gl.offset[:96, :32])
    # the clean structured patches (signal far above noise) take nearly their local range
    lo_l, hi_l = patch_ranges(img, frame_stats(img, low=0.0, high=99.99), NormConfig(), "local", None)
    w = local_weight(img, frame_stats(img, low=0.0, high=99.99), NormConfig(), risk.risk_map, lo_l, hi_l)
    assert (w[risk.risk_map != 0] == 0).all() and (w[:, 2] > 0.95).all()
    np.testing.assert_allclose(ad.scale[:, 160:], loc.scale[:, 160:], rtol=0.03)
    # local mode stretches the dark background far more than adaptive does
    assert normalize(img, loc)[:, :64].std() > 5 * normalize(img, ad)[:, :64].std()
    # the published rule (weight by class only) is the local field on safe patches
    cl = norm_params(img, config=NormConfig(mode="adaptive", adaptive_weight="class"), risk=risk)
    np.testing.assert_allclose(cl.scale[:, 160:], loc.scale[:, 160:])
    np.testing.assert_allclose(cl.offset[:96, :32], gl.offset[:96, :32])


def test_a_noise_dominated_safe_patch_stays_near_the_global_range():
    # a safe patch whose range is mostly its noise moves towards its local range only by
    # the share of its variance that is signal
    rng = np.random.default_rng(1)
    img = rng.normal(100, 10, (128, 128))
    img[:, 64:] += 10 * np.sin(np.arange(64) / 3.0)  # texture of half the noise's variance
    stats = frame_stats(img, low=0.0, high=99.99)
    safe = np.zeros((2, 2), np.int8)
    signal = NormConfig(adaptive_weight="signal")
    w = local_weight(img, stats, signal, safe)
    assert (w[:, 0] < 0.06).all() and (0.2 < w[:, 1]).all() and (w[:, 1] < 0.5).all()
    lo_l, hi_l = patch_ranges(img, stats, signal, "local", None)
    lo_a, hi_a = patch_ranges(img, stats, signal, "adaptive", safe)
    np.testing.assert_allclose(lo_a, stats.lo + w * (lo_l - stats.lo))
    np.testing.assert_allclose(hi_a, stats.hi + w * (hi_l - stats.hi))
    # the range weight: the noise explains the pure-noise patches' ranges entirely, and most
    # of the textured ones'
    rng_cfg = NormConfig(adaptive_weight="range")
    wr = local_weight(img, stats, rng_cfg, safe, lo_l, hi_l)
    assert (wr[:, 0] == 0).all() and (wr[:, 1] < w[:, 1]).all()
    lo_r, hi_r = patch_ranges(img, stats, rng_cfg, "adaptive", safe)
    np.testing.assert_allclose(lo_r, stats.lo + wr * (lo_l - stats.lo))


@given(images, st.sampled_from(["range", "signal", "class"]), st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_numpy_and_torch_ranges_are_equal(img, weight, seed):
    cfg = NormConfig(mode="adaptive", adaptive_weight=weight, risk=RiskThresholds(patch=16))
    stats = frame_stats(img, low=0.0, high=99.99)
    ny, nx = -(-img.shape[0] // 16), -(-img.shape[1] // 16)
    risk_map = np.random.default_rng(seed).integers(0, 3, (ny, nx)).astype(np.int8)
    lo, hi = patch_ranges(img, stats, cfg, "adaptive", risk_map)
    lo_t, hi_t = patch_ranges_torch(torch.from_numpy(img), stats, cfg, "adaptive", torch.from_numpy(risk_map))
    tol = 1e-9 * max(1.0, stats.span)
    np.testing.assert_allclose(lo_t.numpy(), lo, atol=tol)
    np.testing.assert_allclose(hi_t.numpy(), hi, atol=tol)


def test_the_transform_is_smooth_without_block_edges():
    p = norm_params(scene(), config=NormConfig(mode="adaptive"))
    for field in (p.scale, p.offset):
        steps = np.abs(np.diff(field, axis=1))
        # the largest pixel-to-pixel change is a small share of the total change
        assert steps.max() < 0.05 * (field.max() - field.min())


@pytest.mark.parametrize("n,patch", [(1, 64), (64, 64), (65, 64), (200, 64), (10, 4)])
def test_interpolation_rows_sum_to_one(n, patch):
    m = interp_matrix(n, patch)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert (m >= 0).all()


def test_dataset_mode_follows_the_given_decision():
    img = scene()
    g = norm_params(img, config=NormConfig(mode="dataset"), dataset_mode="global")
    l_ = norm_params(img, config=NormConfig(mode="dataset"), dataset_mode="local")
    assert g.mode == "global" and l_.mode == "local"
    assert np.ptp(g.scale) == 0 and np.ptp(l_.scale) > 0


def test_the_adaptive_floor_on_high_risk_data():
    img = scene()
    risk = assess_risk(img)
    gl = norm_params(img, config=NormConfig(mode="global"))
    span = gl.scale[0, 0]
    default = NormConfig(mode="adaptive")
    low = norm_params(img, config=default, risk=risk, dataset_mode="local")  # data the dataset rule calls low-risk
    high = norm_params(img, config=default, risk=risk, dataset_mode="global")  # ... and high-risk
    # low-risk data: safe patches keep their own placement and stretch
    assert low.scale[:, 160:].min() < 0.9 * span
    assert np.abs(low.offset[:, 160:] - gl.offset[:, 160:]).min() > 0.1 * span
    # high-risk data, default floor 1: every patch takes the global range, adaptive == global
    np.testing.assert_allclose(high.scale, gl.scale)
    np.testing.assert_allclose(high.offset, gl.offset)
    # without the floor the dataset decision does not change adaptive
    free = NormConfig(mode="adaptive", adaptive_floor=0.05)
    np.testing.assert_allclose(norm_params(img, config=free, risk=risk, dataset_mode="global").offset, low.offset)
    half = norm_params(img, config=NormConfig(mode="adaptive", adaptive_floor=0.5), risk=risk, dataset_mode="global")
    assert span * 0.5 * (1 - 1e-12) <= half.scale.min() < 0.9 * span
    np.testing.assert_allclose(denormalize(normalize(img, half), half), img, atol=1e-6 * np.abs(img).max())


def test_models_saved_before_the_weight_option_keep_their_rule():
    old = NormConfig.from_dict({"mode": "adaptive", "low_percentile": 0.0, "high_percentile": 99.99,
                                "min_range_fraction": 0.05, "adaptive_floor": 1.0, "risk": {}})
    assert old.adaptive_weight == "class" and old.adaptive_floor == 1.0
    assert NormConfig.from_dict(NormConfig().to_dict()) == NormConfig()
