import numpy as np
import pytest
from scipy import stats as sps

from asn2n_dask import RiskThresholds, assess_risk
from asn2n_dask.risk import SAFE, SPARSE_BRIGHT, WEAK_BACKGROUND, FrameStats, classify, dataset_decision, patch_moments


def test_moments_match_scipy_with_unbiased_skewness():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 1.0, (100, 130))
    mean, std, skew = patch_moments(img, 64)
    assert mean.shape == (2, 3)
    for i, j in [(0, 0), (1, 2), (0, 2)]:
        p = img[i * 64 : (i + 1) * 64, j * 64 : (j + 1) * 64].ravel()
        assert mean[i, j] == pytest.approx(p.mean())
        assert std[i, j] == pytest.approx(p.std(ddof=1))
        assert skew[i, j] == pytest.approx(sps.skew(p, bias=False))


def test_classify_follows_the_reference_thresholds():
    t = RiskThresholds()
    mean = np.array([0.1, 0.5, 0.2, 0.5, 0.25])
    std = np.array([0.02, 0.04, 0.1, 0.2, 0.08])
    skew = np.array([1.0, -0.5, 4.0, 4.0, 2.9])
    got = classify(mean, std, skew, t)
    assert got.tolist() == [WEAK_BACKGROUND, WEAK_BACKGROUND, SPARSE_BRIGHT, SAFE, SAFE]


def test_frame_with_dark_background_and_sparse_spots_and_texture():
    rng = np.random.default_rng(1)
    img = rng.normal(100.0, 1.0, (128, 192))  # dark, flat: weak background
    img[:, 128:] += 200 + 150 * np.sin(np.arange(64) / 3.0)  # bright textured: safe
    spots = rng.integers(0, 64, (60, 2))
    img[64 + spots[:, 0], 64 + spots[:, 1]] += 400  # sparse bright spots
    r = assess_risk(img)
    assert r.risk_map.shape == (2, 3)
    assert r.risk_map[0, 0] == WEAK_BACKGROUND
    assert r.risk_map[1, 1] == SPARSE_BRIGHT
    assert (r.risk_map[:, 2] == SAFE).all()
    assert r.high_risk_ratio == pytest.approx(4 / 6)
    assert r.pixel_map(img.shape).shape == img.shape


def test_dataset_decision_uses_the_ratio_over_all_frames():
    t = RiskThresholds(dataset_ratio=0.1)
    ramp = np.tile(np.linspace(0, 1000, 128), (128, 1))
    safe = assess_risk(ramp + np.random.default_rng(0).normal(0, 50, (128, 128)))
    assert safe.high_risk_ratio == 0
    # risk is relative to the scale: a dark frame is weak background on a bright frame's scale
    dark = assess_risk(np.random.default_rng(2).normal(100, 1, (128, 128)), stats=FrameStats(95.0, 1100.0))
    assert dark.high_risk_ratio == 1
    assert dataset_decision([safe] * 10, t) == "local"
    assert dataset_decision([safe] * 9 + [dark], t) == "local"  # exactly 10%: not more than
    assert dataset_decision([safe] * 8 + [dark] * 2, t) == "global"


def test_partial_edge_patches_and_constant_frames():
    r = assess_risk(np.full((70, 5), 7.0))
    assert r.risk_map.shape == (2, 1)
    assert np.isin(r.risk_map, [0, 1, 2]).all()


def test_noise_aware_estimator_finds_the_dark_background_of_a_raw_low_photon_frame():
    from asn2n_dask import RiskThresholds
    from asn2n_dask.synthetic import camera

    photons = np.zeros((256, 256))
    photons[96:160, 96:160] = 8.0 * np.exp(-((np.mgrid[:64, :64] - 32) ** 2).sum(0) / 200.0)  # one blob
    raw = camera(photons, seed=0)
    ref = assess_risk(raw, thresholds=RiskThresholds(estimator="reference"))
    aware = assess_risk(raw, thresholds=RiskThresholds(estimator="noise-aware"))
    assert ref.high_risk_ratio < 0.1  # camera noise alone makes the published rule call it safe
    assert aware.risk_map[0, 0] != 0 and aware.risk_map[3, 3] != 0 and aware.high_risk_ratio > 0.5
    # the default picks the noise-aware estimator for such a frame
    np.testing.assert_array_equal(assess_risk(raw).risk_map, aware.risk_map)


def test_auto_estimator_is_the_reference_rule_on_data_whose_noise_it_can_see():
    from asn2n_dask import RiskThresholds
    from asn2n_dask.risk import frame_stats, noise_level, resolve_estimator

    rng = np.random.default_rng(3)
    clean = np.zeros((256, 256))
    clean[64:192, 64:192] = 1000.0 * rng.random((128, 128)) ** 4  # bright sparse structure, dark background
    quiet = clean + rng.normal(0, 2.0, clean.shape)  # noise 0.2% of the range
    loud = clean + rng.normal(0, 80.0, clean.shape)  # noise 8% of the range: above bg_std (2.8%)
    def noise(img):
        return noise_level([img], 64, frame_stats(img))

    assert noise(quiet) < 0.028 < noise(loud)
    auto = RiskThresholds()
    assert auto.estimator == "auto"
    assert resolve_estimator(auto, noise(quiet)).estimator == "reference"
    assert resolve_estimator(auto, noise(loud)).estimator == "noise-aware"
    for img, est in ((quiet, "reference"), (loud, "noise-aware")):
        np.testing.assert_array_equal(assess_risk(img).risk_map,
                                      assess_risk(img, thresholds=RiskThresholds(estimator=est)).risk_map)
    # a set estimator is never changed
    assert resolve_estimator(RiskThresholds(estimator="reference"), 1.0).estimator == "reference"


def test_noise_variance_is_estimated_without_the_signal():
    from asn2n_dask.risk import patch_noise_var

    yy, xx = np.mgrid[:128, :128]
    ramp = 0.01 * xx + 0.02 * yy
    noise = np.random.default_rng(1).normal(0, 0.05, ramp.shape)
    est = patch_noise_var(ramp + noise, 64)
    np.testing.assert_allclose(est, 0.05**2, rtol=0.15)
    assert np.allclose(patch_noise_var(ramp, 64), 0.0)
